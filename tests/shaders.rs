//! Every WGSL file parses and validates with naga, with no GPU needed, so a shader error is
//! caught on any machine before a device ever sees it.

use densegpu::gpu::shaders;

#[test]
fn every_shader_validates_with_naga() {
    assert!(shaders::ALL.len() >= 7, "every op family's shader is registered");
    for shader in shaders::ALL {
        let source = shader.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{} does not parse:\n{}", shader.name, e.emit_to_string(&source)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
        validator
            .validate(&module)
            .unwrap_or_else(|e| panic!("{} does not validate:\n{}", shader.name, e.emit_to_string(&source)));
        assert!(
            module.entry_points.iter().all(|e| e.stage == naga::ShaderStage::Compute),
            "{} holds only compute kernels",
            shader.name
        );
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    // The check above must be able to fail: an undefined identifier is caught.
    let broken = format!("{}\nfn f() -> f32 {{ return undefined_name; }}", shaders::COMMON);
    assert!(naga::front::wgsl::parse_str(&broken).is_err());
}
