//! Tunes the conv kernels of a model on this adapter and prints, for every conv shape and
//! direction, each candidate's time and the one chosen (see `densegpu::tune`).
//!
//! `cargo run --release --example tune -- [--depth 100 --growth-rate 12 --batch-size 64]
//! [--image-size 32] [--mode efficient] [--autotune cached|full]`. With `cached` (the default)
//! it times only what the cache does not hold; `full` times everything again.

use clap::Parser;
use densegpu::densenet::{DenseNetConfig, MemoryMode};
use densegpu::tune::{self, Autotune, Source};
use densegpu::{block_on, Gpu, Pass, Session};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// DenseNet-BC depth (3n·2 + 4 layers: 40, 100, 190, 250).
    #[arg(long, default_value_t = 100)]
    depth: u32,
    #[arg(long, default_value_t = 12)]
    growth_rate: u32,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// An ImageNet model instead of DenseNet-BC: densenet121, densenet169, densenet201 or
    /// densenet161.
    #[arg(long)]
    model: Option<String>,
    /// Input side in pixels (default: 32, or 224 with --model).
    #[arg(long)]
    image_size: Option<u32>,
    /// naive, efficient or minimal.
    #[arg(long, default_value = "efficient")]
    mode: MemoryMode,
    /// cached or full (off tunes nothing).
    #[arg(long, default_value = "cached", value_parser = clap::value_parser!(Autotune))]
    autotune: Autotune,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> densegpu::Result<()> {
    let mut config = match &args.model {
        Some(name) => DenseNetConfig::by_name(name, 1000)?,
        None => DenseNetConfig::cifar_bc(args.depth, args.growth_rate, 10)?,
    };
    if let Some(size) = args.image_size {
        config.image_size = size;
    }
    let gpu = Arc::new(block_on(Gpu::new())?);
    println!("device: {}; timing by {}", gpu.describe(), tune::clock(&gpu));
    let graph = config.build(args.batch_size, args.mode)?;
    let session = block_on(Session::new(gpu.clone(), graph, 0))?;
    let start = Instant::now();
    let tuned = tune::tune(&session, Pass::Train, args.autotune, &mut |t| match t.source {
        Source::Cache => println!("{}: {} (cached)", t.key, t.chosen),
        Source::OnlyCandidate => {
            println!(
                "{}: {} (the other candidates' family lost by 2x or more on this class of shapes)",
                t.key, t.chosen
            )
        }
        Source::Timed => {
            // A candidate's time is the fastest of its timed launches, all shown after it.
            let ms = |s: &f64| format!("{:.2}", s * 1e3);
            let times: Vec<String> = (t.timings.iter())
                .map(|c| match c.same_as {
                    Some(twin) => format!("{} = {twin} (the same kernel)", c.candidate),
                    None => {
                        let each: Vec<String> = c.launches.iter().map(ms).collect();
                        format!(
                            "{} {} ms ({}; warm-up {} ms)",
                            c.candidate,
                            ms(&c.seconds),
                            each.join("/"),
                            ms(&c.warm_up)
                        )
                    }
                })
                .collect();
            println!("{}: {} | chosen {}", t.key, times.join(", "), t.chosen);
        }
    })?;
    let count = |source| tuned.iter().filter(|t| t.source == source).count();
    let (register, workgroup) = tune::family_counts(&tuned);
    println!(
        "tuned {} conv shapes in {:.1} s ({} timed, {} left one candidate, {} from the cache); {register} chose a register kernel, {workgroup} a workgroup kernel",
        tuned.len(),
        start.elapsed().as_secs_f64(),
        count(Source::Timed),
        count(Source::OnlyCandidate),
        count(Source::Cache),
    );
    Ok(())
}
