//! Every shader, hand-written or generated, parses and validates with naga, with no GPU needed,
//! so a shader error is caught on any machine before a device ever sees it.

use densegpu::gpu::shaders;
use densegpu::ops::conv::{
    self,
    wgsl::{ConvTiles, REGISTER_TILES, WORKGROUP},
};

/// Parses and validates a complete module source, panicking with naga's report if it fails.
fn validate(name: &str, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    // Subgroup operations only where a candidate uses them (the device then has the feature).
    let capabilities = match source.contains("subgroup") {
        true => naga::valid::Capabilities::SUBGROUP,
        false => naga::valid::Capabilities::empty(),
    };
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities);
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

/// Every register candidate's module holds every kernel the host launches, each with the
/// workgroup size its launch grid assumes and no binding beyond the ones the host binds (the
/// uniform block at 0 and `kernel.buffers` storage buffers after it).
#[test]
fn every_register_candidate_has_every_kernel_the_host_launches() {
    let kernels = conv::kernels::kernels();
    assert_eq!(shaders::CONV_REGISTER.len(), REGISTER_TILES.len());
    assert!(std::ptr::eq(shaders::CONV_REGISTER[0], &shaders::CONV), "the first candidate is the default module");
    assert_eq!(kernels.len(), 10 * REGISTER_TILES.len());
    for (tiles, shader) in REGISTER_TILES.iter().zip(shaders::CONV_REGISTER) {
        assert_eq!(shader.name, tiles.name);
        assert!(tiles.fits(&wgpu::Limits::default()), "{} fits WebGPU's default limits", tiles.name);
        let tight = wgpu::Limits {
            max_compute_invocations_per_workgroup: tiles.conv3_workgroup.max(WORKGROUP) - 1,
            ..Default::default()
        };
        assert!(!tiles.fits(&tight), "{}: a smaller workgroup limit rules it out", tiles.name);
        assert!(shaders::ALL.iter().any(|s| std::ptr::eq(*s, shader)), "{} is registered", tiles.name);
        let source = shader.source();
        let (module, info) = validate(shader.name, &source);
        let own: Vec<_> = kernels.iter().filter(|k| std::ptr::eq(k.shader, shader)).collect();
        assert_eq!(own.len(), 10, "{}", tiles.name);
        for kernel in own {
            let (index, entry) = module
                .entry_points
                .iter()
                .enumerate()
                .find(|(_, e)| e.name == kernel.entry)
                .unwrap_or_else(|| panic!("{} has no entry point {}", tiles.name, kernel.entry));
            assert_eq!(entry.stage, naga::ShaderStage::Compute, "{}", kernel.entry);
            let is_3x3 = kernel.entry.starts_with("conv3x3_s1") && !kernel.entry.ends_with("weight_grad");
            let workgroup = if is_3x3 { tiles.conv3_workgroup } else { WORKGROUP };
            assert_eq!(entry.workgroup_size, [workgroup, 1, 1], "{} {}'s workgroup size", tiles.name, kernel.entry);
            let uses = info.get_entry_point(index);
            for (handle, global) in module.global_variables.iter() {
                let Some(binding) = &global.binding else { continue };
                if !uses[handle].is_empty() {
                    assert_eq!(binding.group, 0, "{}", kernel.entry);
                    assert!(
                        binding.binding <= kernel.buffers,
                        "{} {} uses binding {} but the host binds only {} buffers",
                        tiles.name,
                        kernel.entry,
                        binding.binding,
                        kernel.buffers
                    );
                }
            }
        }
    }
}

/// The generator follows its tile description: other tiles, including segment widths the
/// shipped tiles do not use, give other kernels that still validate.
#[test]
fn other_conv_tiles_generate_valid_wgsl() {
    let small = ConvTiles {
        name: "small",
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
        wgrad3_cols: 3,
        wgrad3_pixels: 4,
        // Rows and taps that do not fill the subgroups' 8 loads.
        subgroup_weights: true,
    };
    let default = REGISTER_TILES[0];
    let shipped = default.wgsl();
    for tiles in [small, ConvTiles { wgrad3_pixels: 12, conv3_narrow_pixels: 4, ..default }] {
        let body = tiles.wgsl();
        assert_ne!(body, shipped, "{tiles:?} changes the kernels");
        let (module, _) = validate(&format!("conv with {tiles:?}"), &format!("{}\n{body}", shaders::COMMON));
        for kernel in conv::kernels::kernels() {
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

/// Every workgroup-family candidate's two modules (scalar and vector loads) hold every entry
/// point the host launches, each with the candidate's workgroup size (64 for the combine
/// pass), binding no more buffers than the host binds, and with at most 64 accumulators per
/// invocation; the vector module binds `src` as `vec4`s.
#[test]
fn every_workgroup_candidate_has_every_kernel_the_host_launches() {
    use conv::workgroup::{self, GEMM_TILES, MAX_ACCUMULATORS, WEIGHT_GRAD_TILES};
    let kernels = workgroup::kernels();
    assert_eq!(kernels.len(), (7 + 4) * (GEMM_TILES.len() + WEIGHT_GRAD_TILES.len()));
    for tile in GEMM_TILES.iter().chain(&WEIGHT_GRAD_TILES) {
        assert!(tile.tile_rows * tile.tile_cols <= MAX_ACCUMULATORS, "{tile:?}");
        assert!((64..=256).contains(&tile.workgroup()), "{tile:?}: 64 to 256 invocations");
        assert!(tile.fits(&wgpu::Limits::default()), "{} fits WebGPU's default limits", tile.name);
        assert_eq!(workgroup::candidate(tile.name), Some(*tile));
        let (scalar, vector) = workgroup::modules(tile);
        for (shader, entries) in [(scalar, 7), (vector, 4)] {
            assert!(shaders::ALL.iter().any(|s| std::ptr::eq(*s, shader)), "{} is registered", tile.name);
            let source = shader.source();
            let vec4 = source.contains("src: array<vec4<f32>>");
            assert_eq!(vec4, std::ptr::eq(shader, vector), "{}: only the vector module binds vec4s", tile.name);
            let (module, info) = validate(shader.name, &source);
            let own: Vec<_> = kernels.iter().filter(|k| std::ptr::eq(k.shader, shader)).collect();
            assert_eq!(own.len(), entries, "{}", tile.name);
            assert_eq!(module.entry_points.len(), entries, "{}: no entry point the host never launches", tile.name);
            for kernel in own {
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
}
