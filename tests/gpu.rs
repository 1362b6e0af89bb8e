//! The GPU context turns wgpu failures into errors, never panics.

use densegpu::gpu::{grid, shaders, Kernel};
use densegpu::{Error, Gpu};

#[test]
fn an_invalid_binding_is_an_error_not_a_panic() {
    let gpu = Gpu::new_blocking().expect("this test needs a GPU adapter");
    // A buffer that may not be bound as storage: creating the bind group fails validation
    // outside any error scope, which wgpu's default handler would turn into a panic.
    let not_storage = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 1024,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let relu = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
    let mut words = vec![0u32; 12];
    words[0] = 16;
    let d = gpu.dispatch(&relu, &words, &[&not_storage, &not_storage], grid(16, 256));
    match gpu.run_blocking(&[d]) {
        Err(Error::Validation(m)) => assert!(!m.is_empty()),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // The device stays usable afterwards.
    let ok = pollster::block_on(gpu.storage_buffer("ok", 64)).unwrap();
    gpu.write_f32(&ok, 0, &[1.0; 16]);
    assert_eq!(gpu.read_f32_blocking(&ok, 0, 16).unwrap(), vec![1.0; 16]);
}

#[test]
fn a_buffer_above_the_binding_limit_is_refused_with_the_numbers() {
    let gpu = Gpu::new_blocking().expect("this test needs a GPU adapter");
    let too_big = gpu.max_binding_bytes() + 4;
    let err = pollster::block_on(gpu.storage_buffer("huge", too_big)).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains(&too_big.to_string()), "{err}");
}
