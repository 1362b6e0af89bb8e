//! Images per second of full training steps (forward, recompute, backward, SGD) on random
//! data, for each memory mode, with the planned and allocated memory.
//!
//!     cargo run --release --example bench_train -- --depth 100 --growth-rate 12 --batch-size 64
//!
//! `--mode naive` (or efficient, minimal) runs one mode only, so that an outside tool such as
//! `/usr/bin/time -v` measures that mode's peak resident memory alone. `--max-shard-images N`
//! splits each batch into shards of at most N images (the planner shards on its own only what
//! does not fit a storage binding), to measure what shards cost.
//!
//!     cargo run --release --example bench_train -- --model densenet121 --image-size 224 --batch-size 64 --mode minimal
//!
//! `--profile FILE` profiles one more step after the timed ones (see `densegpu::profile`):
//!
//!     cargo run --release --example bench_train -- --mode efficient --steps 1 --profile step.json

use clap::Parser;
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::schedule::ScheduleOptions;
use densegpu::{block_on, Gpu, Pass, Session, SgdHyper};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    depth: u32,
    #[arg(long, default_value_t = 12)]
    growth_rate: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// Timed steps per mode, after one untimed warm-up step; 0 times a single step without
    /// warm-up.
    #[arg(long, default_value_t = 3)]
    steps: u32,
    /// naive, efficient, minimal, or all.
    #[arg(long, default_value = "all")]
    mode: String,
    /// An ImageNet model instead of DenseNet-BC: densenet121, densenet169, densenet201 or
    /// densenet161.
    #[arg(long)]
    model: Option<String>,
    /// Input side in pixels (default: 32, or 224 with --model).
    #[arg(long)]
    image_size: Option<u32>,
    /// At most this many images per batch shard.
    #[arg(long)]
    max_shard_images: Option<u32>,
    /// Conv kernels: auto (tuned per shape on this adapter), register or workgroup.
    #[arg(long, default_value = "auto", value_parser = ["auto", "register", "workgroup"])]
    kernels: String,
    /// With --kernels auto: cached, full or off (see `tune`). Tuning happens before the clock
    /// starts.
    #[arg(long, default_value = "cached", value_parser = clap::value_parser!(densegpu::tune::Autotune))]
    autotune: densegpu::tune::Autotune,
    /// After the timed steps, profile one more step: print where its time went and write its
    /// Chrome trace to FILE (with the mode's name before the extension when several modes
    /// run). Open it in Perfetto or chrome://tracing.
    #[arg(long, value_name = "FILE")]
    profile: Option<std::path::PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> densegpu::Result<()> {
    let modes: Vec<MemoryMode> = if args.mode == "all" { MemoryMode::ALL.to_vec() } else { vec![args.mode.parse()?] };
    let gpu = Arc::new(block_on(Gpu::new())?);
    let mut config = match &args.model {
        Some(name) => DenseNetConfig::by_name(name, 1000)?,
        None => DenseNetConfig::cifar_bc(args.depth, args.growth_rate, 10)?,
    };
    if let Some(size) = args.image_size {
        config.image_size = size;
    }
    let size = config.image_size as usize;
    println!("adapter: {}", gpu.describe());
    let name = match &args.model {
        Some(name) => name.clone(),
        None => format!("DenseNet-BC-{} k={}", args.depth, args.growth_rate),
    };
    let timing = match args.steps {
        0 => "1 timed step, no warm-up (pipelines compile inside it)".to_string(),
        n => format!("{n} timed steps after 1 warm-up step"),
    };
    println!("{name} at {size}x{size}, batch {}, {timing}", args.batch_size);
    println!(
        "{:<10} {:>9} {:>10} {:>14} {:>14}  batch shards",
        "mode", "img/s", "s/step", "planned MiB", "allocated MiB"
    );
    let n = args.batch_size as usize;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(0);
    let images: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.random_range(-2.0..2.0)).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..config.num_classes)).collect();
    let mut baseline = None;
    for mode in modes {
        let graph = config.build(args.batch_size, mode)?;
        let mut session = block_on(Session::new(gpu.clone(), graph, 0))?;
        let options = ScheduleOptions { max_shard_images: args.max_shard_images, ..*session.schedule_options() };
        session.set_schedule_options(options);
        if let Some(line) = densegpu::run::choose_kernels(&session, Pass::Train, &args.kernels, args.autotune)? {
            println!("{line}");
        }
        let plan = session.memory_plan(Pass::Train)?;
        let planned = plan.report().total;
        let shards = plan.shards.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("+");
        let sgd = SgdHyper::densenet_cifar();
        // `--steps 0` times one step with no warm-up (its pipelines compile inside it), for a
        // model too slow on a CPU driver for two steps.
        if args.steps > 0 {
            block_on(session.train_step(&images, &labels, &sgd))?;
        }
        let start = Instant::now();
        for _ in 0..args.steps.max(1) {
            block_on(session.train_step(&images, &labels, &sgd))?;
        }
        let per_step = start.elapsed().as_secs_f64() / args.steps.max(1) as f64;
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let overhead = match baseline {
            None if mode == MemoryMode::Naive => {
                baseline = Some(per_step);
                String::new()
            }
            Some(b) => format!("  ({:+.1}% time vs naive)", 100.0 * (per_step / b - 1.0)),
            None => String::new(),
        };
        println!(
            "{:<10} {:>9.2} {:>10.3} {:>14.1} {:>14.1}  {shards}{overhead}",
            mode.name(),
            n as f64 / per_step,
            per_step,
            mib(planned),
            mib(session.allocated_bytes())
        );
        if let Some(path) = &args.profile {
            let path =
                if args.mode == "all" { path.with_extension(format!("{}.json", mode.name())) } else { path.clone() };
            let (_, mut profile) = block_on(session.profile_train_step(&images, &labels, &sgd))?;
            profile.unprofiled_wall = Some(per_step);
            println!("{}", densegpu::run::save_profile(&gpu, &profile, &path)?);
        }
    }
    if let Some(kib) = peak_resident_kib() {
        // On lavapipe GPU memory is process memory, so this is the arena's real footprint
        // plus the driver, the shaders and the host copies of one batch.
        println!("peak resident memory of this process: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}

/// The process's peak resident set (VmHWM), where the OS reports it (Linux).
fn peak_resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
