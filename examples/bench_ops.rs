//! Micro-benchmark of the conv2d kernels at the real shapes of DenseNet-BC-100 (k = 12) on
//! CIFAR at batch 64. `cargo run --release --example bench_ops [filter]` prints a markdown
//! table; a filter keeps the rows whose name contains it (e.g. `3x3`).

use densegpu::gpu::{Dispatch, View};
use densegpu::ops::conv::{self, Conv2dShape};
use densegpu::Gpu;
use std::time::{Duration, Instant};

const BATCH: u32 = 64;

fn shape(c_in: u32, hw: u32, c_out: u32, k: u32) -> Conv2dShape {
    Conv2dShape { n: BATCH, c_in, h: hw, w: hw, c_out, kh: k, kw: k, stride: 1, pad: k / 2 }
}

/// (name, shape): the stem, the first, middle and last bottleneck of each dense block, the
/// growth conv at each resolution, and both transitions.
fn cases() -> Vec<(&'static str, Conv2dShape)> {
    vec![
        ("stem 3x3 3->24 @32", shape(3, 32, 24, 3)),
        ("block1 1x1 24->48 @32", shape(24, 32, 48, 1)),
        ("block1 1x1 120->48 @32", shape(120, 32, 48, 1)),
        ("block1 1x1 204->48 @32", shape(204, 32, 48, 1)),
        ("growth 3x3 48->12 @32", shape(48, 32, 12, 3)),
        ("transition1 1x1 216->108 @32", shape(216, 32, 108, 1)),
        ("block2 1x1 108->48 @16", shape(108, 16, 48, 1)),
        ("block2 1x1 204->48 @16", shape(204, 16, 48, 1)),
        ("block2 1x1 288->48 @16", shape(288, 16, 48, 1)),
        ("growth 3x3 48->12 @16", shape(48, 16, 12, 3)),
        ("transition2 1x1 300->150 @16", shape(300, 16, 150, 1)),
        ("block3 1x1 150->48 @8", shape(150, 8, 48, 1)),
        ("block3 1x1 246->48 @8", shape(246, 8, 48, 1)),
        ("block3 1x1 330->48 @8", shape(330, 8, 48, 1)),
        ("growth 3x3 48->12 @8", shape(48, 8, 12, 3)),
    ]
}

fn buffer(gpu: &Gpu, label: &str, len: u32) -> wgpu::Buffer {
    let b = pollster::block_on(gpu.storage_buffer(label, len as u64 * 4)).expect("allocating a benchmark buffer");
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.618).sin()).collect();
    gpu.write_f32(&b, 0, &values);
    b
}

/// Seconds per launch: one warm-up submission (which also compiles the pipeline), then the
/// fastest of five submissions of about 0.1 s each. The minimum, because the machine is shared:
/// other processes only ever add time.
fn time(gpu: &Gpu, make: &dyn Fn() -> Dispatch) -> f64 {
    let once = |count: usize| -> Duration {
        let dispatches: Vec<Dispatch> = (0..count).map(|_| make()).collect();
        let start = Instant::now();
        gpu.run_blocking(&dispatches).expect("running the benchmark");
        start.elapsed()
    };
    once(1);
    let estimate = once(1).as_secs_f64();
    let count = ((0.1 / estimate).ceil() as usize).clamp(2, 100);
    (0..5).map(|_| once(count).as_secs_f64() / count as f64).fold(f64::INFINITY, f64::min)
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let gpu = Gpu::new_blocking().expect("a GPU adapter");
    println!("device: {}", gpu.describe());
    println!("batch {BATCH}; GFLOP/s = 2 x forward multiply-adds / time, for every direction\n");
    println!("| conv | forward ms | forward GFLOP/s | backward input ms | backward input GFLOP/s | backward weight ms | backward weight GFLOP/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut totals = [0.0f64; 3];
    for (name, s) in cases() {
        if !name.contains(&filter) {
            continue;
        }
        let x = buffer(&gpu, "x", s.input_elems());
        let w = buffer(&gpu, "w", s.weight_elems());
        let y = buffer(&gpu, "y", s.output_elems());
        let v = |b| View::new(b, 0);
        let seconds = [
            time(&gpu, &|| conv::conv2d_forward(&gpu, &s, v(&x), v(&w), v(&y))),
            time(&gpu, &|| conv::conv2d_backward_input(&gpu, &s, v(&y), v(&w), v(&x), false)),
            time(&gpu, &|| conv::conv2d_backward_weight(&gpu, &s, v(&x), v(&y), v(&w), false)),
        ];
        let gflops = |t: f64| s.flops_forward() as f64 / t / 1e9;
        print!("| {name} |");
        for (i, t) in seconds.iter().enumerate() {
            totals[i] += t;
            print!(" {:.2} | {:.1} |", t * 1e3, gflops(*t));
        }
        println!();
    }
    println!(
        "\ntotal ms over the rows: forward {:.1}, backward input {:.1}, backward weight {:.1}",
        totals[0] * 1e3,
        totals[1] * 1e3,
        totals[2] * 1e3
    );
}
