//! Prints the planned training memory of a DenseNet in every memory mode, before anything
//! runs and without a GPU.
//!
//!     cargo run --release --example memory -- --depth 100 --growth-rate 12 --batch-size 64
//!     cargo run --release --example memory -- --model densenet121 --image-size 224 --json
//!     cargo run --release --example memory -- --budget 1024MiB

use clap::Parser;
use densegpu::densenet::{largest_batch, memory_plans_json, plan_training, DenseNetConfig, MemoryMode};

#[derive(Parser)]
#[command(about = "Planned training memory of a DenseNet in each memory mode")]
struct Args {
    /// DenseNet-BC depth for CIFAR (6n+4).
    #[arg(long, default_value_t = 100)]
    depth: u32,
    #[arg(long, default_value_t = 12)]
    growth_rate: u32,
    /// An ImageNet model instead: densenet121, densenet169, densenet201 or densenet161.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    image_size: Option<u32>,
    #[arg(long)]
    classes: Option<u32>,
    #[arg(long, default_value_t = 64)]
    batch_size: u32,
    /// Also report the largest batch whose plan fits in this many bytes (e.g. 1024MiB, 2GiB).
    #[arg(long, value_parser = parse_bytes)]
    budget: Option<u64>,
    /// The device's storage-binding limit (WebGPU's default is 128MiB).
    #[arg(long, value_parser = parse_bytes, default_value = "128MiB")]
    binding_limit: u64,
    /// One JSON object on one line, all figures in bytes.
    #[arg(long)]
    json: bool,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("`{s}` is not a size like 512MiB, 2GiB or 1000000"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit `{other}` in `{s}`: use B, KiB, MiB, GiB, KB, MB or GB")),
    };
    Ok((number * scale as f64) as u64)
}

/// "1 (whole batch)", or e.g. "3 of 51+51+50 images".
fn describe_shards(shards: &densegpu::memory::shards::BatchShards) -> String {
    if shards.len() == 1 {
        return "1 (whole batch)".into();
    }
    let sizes: Vec<String> = shards.sizes.iter().map(|n| n.to_string()).collect();
    format!("{} of {} images", shards.len(), sizes.join("+"))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> densegpu::Result<()> {
    let mut config = match &args.model {
        Some(name) => DenseNetConfig::by_name(name, args.classes.unwrap_or(1000))?,
        None => DenseNetConfig::cifar_bc(args.depth, args.growth_rate, args.classes.unwrap_or(10))?,
    };
    if let Some(size) = args.image_size {
        config.image_size = size;
    }
    let limits = densegpu::memory::arena_limits(args.binding_limit);
    if args.json {
        println!("{}", memory_plans_json(&config, args.batch_size, &limits, args.budget));
        return Ok(());
    }
    let mut modes = Vec::new();
    for mode in MemoryMode::ALL {
        let report = plan_training(&config, args.batch_size, mode, &limits, None).map(|p| (p.report(), p.shards));
        let largest = args.budget.map(|b| largest_batch(&config, mode, &limits, Some(b)));
        modes.push((mode, report, largest));
    }
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    println!(
        "Planned training memory, batch {}, {} parameters, binding limit {} MiB (MiB):",
        args.batch_size,
        config.build(1, MemoryMode::Naive)?.parameter_count(),
        mib(args.binding_limit)
    );
    println!(
        "{:<10} {:>11} {:>10} {:>10} {:>12} {:>10} {:>10}  batch shards",
        "mode", "parameters", "gradients", "optimizer", "activations", "workspace", "total"
    );
    for (mode, report, _) in &modes {
        match report {
            Ok((r, shards)) => println!(
                "{:<10} {:>11} {:>10} {:>10} {:>12} {:>10} {:>10}  {}",
                mode.name(),
                mib(r.parameters),
                mib(r.gradients),
                mib(r.optimizer),
                mib(r.activations),
                mib(r.workspace),
                mib(r.total),
                describe_shards(shards)
            ),
            Err(e @ densegpu::Error::TooLarge(_)) => println!("{:<10} does not fit: {e}", mode.name()),
            Err(e) => println!("{:<10} cannot train: {e}", mode.name()),
        }
    }
    if let Some(b) = args.budget {
        println!("\nLargest batch whose plan fits in {} MiB:", mib(b));
        for (mode, _, largest) in &modes {
            match largest {
                Some(Some(n)) => println!("{:<10} {n}", mode.name()),
                _ => println!("{:<10} none (not even 1 image)", mode.name()),
            }
        }
    }
    Ok(())
}
