//! Every shader, hand-written or generated, parses and validates with naga, with no GPU needed,
//! so a shader error is caught on any machine before a device ever sees it.

use densegpu::gpu::shaders;
use densegpu::ops::conv::{
    self,
    wgsl::{ConvTiles, TILES, WORKGROUP},
};

/// Parses and validates a complete module source, panicking with naga's report if it fails.
fn validate(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name} does not validate:\n{}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_shader_validates_with_naga() {
    assert!(shaders::ALL.len() >= 7, "every op family's shader is registered");
    assert!(shaders::ALL.iter().any(|s| std::ptr::eq(*s, &shaders::CONV)), "the generated conv shader is registered");
    for shader in shaders::ALL {
        let (module, _) = validate(shader.name, &shader.source());
        assert!(
            module.entry_points.iter().all(|e| e.stage == naga::ShaderStage::Compute),
            "{} holds only compute kernels",
            shader.name
        );
    }
}

/// The generated conv shader holds every kernel the host launches, each with the workgroup
/// size its launch grid assumes and no binding beyond the ones the host binds (the uniform
/// block at 0 and `kernel.buffers` storage buffers after it).
#[test]
fn the_generated_conv_shader_has_every_kernel_the_host_launches() {
    let source = shaders::CONV.source();
    let (module, info) = validate(shaders::CONV.name, &source);
    for kernel in conv::kernels::KERNELS {
        assert!(std::ptr::eq(kernel.shader, &shaders::CONV), "{} is a conv kernel", kernel.entry);
        let (index, entry) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == kernel.entry)
            .unwrap_or_else(|| panic!("the conv shader has no entry point {}", kernel.entry));
        assert_eq!(entry.stage, naga::ShaderStage::Compute, "{}", kernel.entry);
        let is_3x3 = kernel.entry.starts_with("conv3x3_s1") && !kernel.entry.ends_with("weight_grad");
        let workgroup = if is_3x3 { TILES.conv3_workgroup } else { WORKGROUP };
        assert_eq!(entry.workgroup_size, [workgroup, 1, 1], "{}'s workgroup size", kernel.entry);
        let uses = info.get_entry_point(index);
        for (handle, global) in module.global_variables.iter() {
            let Some(binding) = &global.binding else { continue };
            if !uses[handle].is_empty() {
                assert_eq!(binding.group, 0, "{}", kernel.entry);
                assert!(
                    binding.binding <= kernel.buffers,
                    "{} uses binding {} but the host binds only {} buffers",
                    kernel.entry,
                    binding.binding,
                    kernel.buffers
                );
            }
        }
    }
}

/// The generator follows its tile description: other tiles, including segment widths the
/// shipped tiles do not use, give other kernels that still validate.
#[test]
fn other_conv_tiles_generate_valid_wgsl() {
    let small = ConvTiles {
        gemm_rows: 3,
        gemm_pixels: 8,
        conv3_rows: 2,
        conv3_pixels: 4,
        conv3_lines: 1,
        conv3_narrow_pixels: 12,
        conv3_narrow_lines: 3,
        conv3_workgroup: 64,
        wgrad1_rows: 5,
        wgrad1_cols: 7,
        wgrad3_rows: 1,
        wgrad3_pixels: 4,
    };
    let shipped = TILES.wgsl();
    for tiles in [small, ConvTiles { wgrad3_pixels: 12, conv3_narrow_pixels: 4, ..TILES }] {
        let body = tiles.wgsl();
        assert_ne!(body, shipped, "{tiles:?} changes the kernels");
        let (module, _) = validate(&format!("conv with {tiles:?}"), &format!("{}\n{body}", shaders::COMMON));
        for kernel in conv::kernels::KERNELS {
            assert!(module.entry_points.iter().any(|e| e.name == kernel.entry), "{tiles:?}: {}", kernel.entry);
        }
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    // The check above must be able to fail: an undefined identifier is caught.
    let broken = format!("{}\nfn f() -> f32 {{ return undefined_name; }}", shaders::COMMON);
    assert!(naga::front::wgsl::parse_str(&broken).is_err());
}

/// Every workgroup-family candidate's module holds every entry point the host launches, each
/// with the candidate's workgroup size (64 for the combine pass), binding no more buffers than
/// the host binds, and with at most 64 accumulators per invocation.
#[test]
fn every_workgroup_candidate_has_every_kernel_the_host_launches() {
    use conv::workgroup::{self, GEMM_TILES, MAX_ACCUMULATORS, WEIGHT_GRAD_TILES};
    let kernels = workgroup::kernels();
    assert_eq!(kernels.len(), 7 * (GEMM_TILES.len() + WEIGHT_GRAD_TILES.len()));
    for tile in GEMM_TILES.iter().chain(&WEIGHT_GRAD_TILES) {
        assert!(tile.tile_rows * tile.tile_cols <= MAX_ACCUMULATORS, "{tile:?}");
        assert!((64..=256).contains(&tile.workgroup()), "{tile:?}: 64 to 256 invocations");
        let (_, shader) = workgroup::candidate(tile.name).unwrap();
        let source = shader.source();
        let (module, info) = validate(shader.name, &source);
        for kernel in kernels.iter().filter(|k| std::ptr::eq(k.shader, shader)) {
            let (index, entry) = (module.entry_points.iter().enumerate())
                .find(|(_, e)| e.name == kernel.entry)
                .unwrap_or_else(|| panic!("{} has no entry point {}", tile.name, kernel.entry));
            let size = if kernel.entry.ends_with("combine") { 64 } else { tile.workgroup() };
            assert_eq!(entry.workgroup_size, [size, 1, 1], "{} {}", tile.name, kernel.entry);
            let uses = info.get_entry_point(index);
            for (handle, global) in module.global_variables.iter() {
                let Some(binding) = &global.binding else { continue };
                if !uses[handle].is_empty() {
                    assert!(
                        binding.binding <= kernel.buffers,
                        "{} {} binds {}",
                        tile.name,
                        kernel.entry,
                        binding.binding
                    );
                }
            }
        }
    }
}
