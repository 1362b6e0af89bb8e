//! The GPU context turns wgpu failures into errors, never panics.

use densegpu::gpu::{grid, shaders, Kernel, Window};
use densegpu::ops::elementwise::kernels::ElementwiseParams;
use densegpu::{block_on, Error, Gpu};

#[test]
fn an_invalid_binding_is_an_error_not_a_panic() {
    let gpu = block_on(Gpu::new()).expect("this test needs a GPU adapter");
    // A buffer that may not be bound as storage: creating the bind group fails validation
    // outside any error scope, which wgpu's default handler would turn into a panic.
    let not_storage = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("not storage"),
        size: 1024,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let relu = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
    let words = ElementwiseParams { len: 16, ..Default::default() };
    let window = |start| Window { buffer: &not_storage, start, size: 256 };
    let d = gpu.dispatch(&relu, &words, &[window(0), window(256)], grid(16, 256));
    match block_on(gpu.run(&[d])).and_then(|()| gpu.wait()) {
        Err(Error::Validation(m)) => assert!(!m.is_empty()),
        other => panic!("expected a validation error, got {other:?}"),
    }
    // The device stays usable afterwards.
    let ok = block_on(gpu.storage_buffer("ok", 64)).unwrap();
    gpu.write_f32(&ok, 0, &[1.0; 16]);
    assert_eq!(block_on(gpu.read_f32(&ok, 0, 16)).unwrap(), vec![1.0; 16]);
}

/// WebGPU rejects a launch whose writable bindings overlap; wgpu on Vulkan does not, so the
/// check in `Gpu::dispatch` is what keeps native runs honest about the browser's rule.
#[test]
#[should_panic(expected = "overlap in one buffer")]
fn overlapping_bindings_are_refused_on_every_platform() {
    let gpu = block_on(Gpu::new()).expect("this test needs a GPU adapter");
    let buffer = block_on(gpu.storage_buffer("aliased", 1024)).unwrap();
    let relu = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
    let x = Window { buffer: &buffer, start: 0, size: 512 };
    let y = Window { buffer: &buffer, start: 256, size: 512 };
    gpu.dispatch(&relu, &ElementwiseParams::default(), &[x, y], grid(16, 256));
}

#[test]
fn a_buffer_above_the_binding_limit_is_refused_with_the_numbers() {
    let gpu = block_on(Gpu::new()).expect("this test needs a GPU adapter");
    let too_big = gpu.max_binding_bytes() + 4;
    let err = block_on(gpu.storage_buffer("huge", too_big)).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains(&too_big.to_string()), "{err}");
}

/// A parameter block declared for another shader than the kernel's is refused before anything
/// runs: its fields would land in the wrong places.
#[test]
#[should_panic(expected = "given the parameter block of")]
fn a_parameter_block_of_another_shader_is_refused() {
    let gpu = block_on(Gpu::new()).expect("this test needs a GPU adapter");
    let buffer = block_on(gpu.storage_buffer("x", 1024)).unwrap();
    let relu = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
    let x = Window { buffer: &buffer, start: 0, size: 256 };
    let y = Window { buffer: &buffer, start: 256, size: 256 };
    gpu.dispatch(&relu, &densegpu::ops::sgd::kernels::SgdParams::default(), &[x, y], grid(16, 256));
}

/// The tuner's device clock: where the adapter has timestamp queries, a launch of a large ReLU
/// measures more than nothing and no more than the wall clock around the whole call (the
/// pass is part of it); without them the call says so (`None`). Either way the launch runs.
#[test]
fn device_timestamps_time_a_launch_within_the_wall_clock() {
    let gpu = block_on(Gpu::new()).expect("this test needs a GPU adapter");
    let len: u32 = 1 << 22;
    let bytes = len as u64 * 4;
    let buffer = block_on(gpu.storage_buffer("timed", 2 * bytes)).unwrap();
    let values: Vec<f32> = (0..len).map(|i| if i % 2 == 0 { -1.0 } else { i as f32 }).collect();
    gpu.write_f32(&buffer, 0, &values);
    gpu.fill_f32(&buffer, len as u64, len as usize, f32::NAN);
    let relu = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
    let x = Window { buffer: &buffer, start: 0, size: bytes };
    let y = Window { buffer: &buffer, start: bytes, size: bytes };
    let d = gpu.dispatch(&relu, &ElementwiseParams { len, ..Default::default() }, &[x, y], grid(len as u64, 256));
    let start = std::time::Instant::now();
    let timed = block_on(gpu.time_on_device(&[d])).unwrap();
    gpu.wait().unwrap();
    let wall = start.elapsed().as_secs_f64();
    println!("{}: timestamps {}, device {timed:?} s, wall {wall} s", gpu.describe(), gpu.has_timestamps());
    match timed {
        Some(seconds) => {
            assert!(gpu.has_timestamps());
            assert!(seconds > 0.0 && seconds <= wall, "device {seconds} s against wall {wall} s");
        }
        None => assert!(!gpu.has_timestamps(), "timestamps out of order on {}", gpu.describe()),
    }
    let out = block_on(gpu.read_f32(&buffer, len as u64, len as usize)).unwrap();
    assert!(out.iter().zip(&values).all(|(o, v)| *o == v.max(0.0)), "the timed launch ran");
}
