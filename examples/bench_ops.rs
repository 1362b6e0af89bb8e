//! Micro-benchmark of the conv2d kernels at the real shapes of DenseNet-BC-100 (k = 12) on
//! CIFAR at batch 64. `cargo run --release --example bench_ops -- [--kernels K] [filter]`
//! prints a markdown table; a filter keeps the rows whose name contains it (e.g. `3x3`).
//! `--kernels register` or `workgroup` runs every row with that family (its default
//! candidates), `auto` (the default) with the tuned choice for each shape and direction,
//! tuning what the cache does not hold; the table names the kernel of each cell.
//!
//! `--peak` measures the adapter's own ceiling instead (`densegpu::peak`): the bandwidth of a
//! WGSL copy kernel and the rate of a WGSL kernel of independent fused multiply-adds, which the
//! step profiler's roofline divides by.

use clap::Parser;
use densegpu::gpu::{Dispatch, View};
use densegpu::ops::conv::kernels::{self as conv, ConvDirection, ConvKernel};
use densegpu::ops::conv::Conv2dShape;
use densegpu::tune::{self, Autotune, Cache};
use densegpu::{block_on, Gpu};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// register, workgroup or auto (tuned, from the cache where it holds the shape).
    #[arg(long, default_value = "auto", value_parser = ["auto", "register", "workgroup"])]
    kernels: String,
    /// Measure the adapter's copy bandwidth and FMA rate, and nothing else.
    #[arg(long)]
    peak: bool,
    /// Keeps the rows whose name contains this.
    #[arg(default_value = "")]
    filter: String,
}

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
    let b = block_on(gpu.storage_buffer(label, len as u64 * 4)).expect("allocating a benchmark buffer");
    let values: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.618).sin()).collect();
    gpu.write_f32(&b, 0, &values);
    b
}

/// CPU time consumed so far by every thread of this process (lavapipe's workers included),
/// from /proc: on a shared machine it measures a kernel's work without the time it spent
/// waiting for a core. `None` where /proc is unavailable.
fn cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// (wall seconds, CPU seconds) per launch: one warm-up submission (which also compiles the
/// pipeline), then the fastest of five submissions of about 0.1 s each. The minimum, because
/// on a shared machine other processes only ever add time.
fn time(gpu: &Gpu, make: &dyn Fn() -> Vec<Dispatch>) -> (f64, f64) {
    let once = |count: usize| -> (f64, f64) {
        let dispatches: Vec<Dispatch> = (0..count).flat_map(|_| make()).collect();
        let (start, cpu_start) = (Instant::now(), cpu_seconds().unwrap_or(0.0));
        block_on(gpu.run(&dispatches)).and_then(|()| gpu.wait()).expect("running the benchmark");
        let cpu = cpu_seconds().unwrap_or(0.0) - cpu_start;
        (start.elapsed().as_secs_f64() / count as f64, cpu / count as f64)
    };
    once(1);
    let estimate = once(1).0;
    let count = ((0.1 / estimate).ceil() as usize).clamp(2, 100);
    (0..5).map(|_| once(count)).fold((f64::INFINITY, f64::INFINITY), |a, b| (a.0.min(b.0), a.1.min(b.1)))
}

fn main() {
    let args = Args::parse();
    let gpu = block_on(Gpu::new()).expect("a GPU adapter");
    if args.peak {
        match block_on(densegpu::peak::measure(&gpu)) {
            Ok(p) => println!(
                "device: {}; timing by {}\ncopy: {:.2} GB/s (read + written, {} MiB each way)\nfma: {:.2} GFLOP/s",
                gpu.describe(),
                tune::clock(&gpu),
                p.bytes_per_second / 1e9,
                densegpu::peak::COPY_BYTES >> 20,
                p.flops_per_second / 1e9
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = tune::set_kernels(&gpu, &args.kernels) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    println!("device: {}; kernels: {}", gpu.describe(), args.kernels);
    // What a training session on this adapter plans for split weight gradients.
    let scratch_bytes = densegpu::executor::split_scratch_bytes(&gpu);
    let scratch = (scratch_bytes > 0).then(|| buffer(&gpu, "split scratch", (scratch_bytes / 4) as u32));
    let mut cache = Cache::load();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("batch {BATCH}; GFLOP/s = 2 x forward multiply-adds / time, for every direction.");
    println!("ms and GFLOP/s are wall clock; cpu GFLOP/s divides by CPU time / {threads} cores instead,");
    println!("i.e. the rate with the machine to itself (the wall numbers suffer from other load).\n");
    println!("| conv | fwd kernel | fwd ms | fwd GFLOP/s | fwd cpu GFLOP/s | bwd-in kernel | bwd-in ms | bwd-in GFLOP/s | bwd-in cpu GFLOP/s | bwd-w kernel | bwd-w ms | bwd-w GFLOP/s | bwd-w cpu GFLOP/s |");
    println!("|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|");
    let mut totals = [0.0f64; 3];
    for (name, s) in cases() {
        if !name.contains(&args.filter) {
            continue;
        }
        let x = buffer(&gpu, "x", s.input_elems());
        let w = buffer(&gpu, "w", s.weight_elems());
        let y = buffer(&gpu, "y", s.output_elems());
        let v = |b| View::new(b, 0);
        let directions = [ConvDirection::Forward, ConvDirection::BackwardInput, ConvDirection::BackwardWeight];
        let kernels: Vec<ConvKernel> = directions
            .iter()
            .map(|&d| {
                if args.kernels == "auto" && gpu.forced_family().is_none() {
                    let mut out_of_race = Vec::new();
                    let tuned =
                        tune::tune_shape(&gpu, &mut cache, d, &s, Autotune::Cached, scratch_bytes, &mut out_of_race);
                    densegpu::block_on(tuned).expect("tuning");
                }
                conv::choose(&gpu, d, &s)
            })
            .collect();
        let scratch = scratch.as_ref().map(v);
        let seconds = [
            time(&gpu, &|| vec![conv::forward_with(&gpu, kernels[0], &s, v(&x), v(&w), v(&y))]),
            time(&gpu, &|| {
                vec![conv::backward_input_with(&gpu, kernels[1], &s, (0, s.c_in), v(&y), v(&w), v(&x), false)]
            }),
            time(&gpu, &|| conv::backward_weight_with(&gpu, kernels[2], &s, v(&x), None, v(&y), v(&w), scratch, false)),
        ];
        let gflops = |t: f64| s.flops_forward() as f64 / t / 1e9;
        print!("| {name} |");
        for (i, &(wall, cpu)) in seconds.iter().enumerate() {
            totals[i] += wall;
            let kernel = kernels[i].name();
            print!(" {kernel} | {:.2} | {:.1} | {:.1} |", wall * 1e3, gflops(wall), gflops(cpu / threads as f64));
        }
        println!();
    }
    println!(
        "\ntotal ms over the rows: forward {:.1}, backward input {:.1}, backward weight {:.1}",
        totals[0] * 1e3,
        totals[1] * 1e3,
        totals[2] * 1e3
    );
    cache.save().expect("writing the kernel cache");
}
