//! How closely this device's first training step follows the CPU reference (f64 per op, which
//! agrees with float64 PyTorch to about 1e-7): per parameter tensor, the relative L2 error
//! ‖gpu − reference‖ / ‖reference‖ of the gradients, with the median and the worst.
//!
//! ```sh
//! cargo run --release --example fidelity                      # BC-16 k=8, batch 32, synthetic
//! cargo run --release --example fidelity -- --data DIR --init torchvision --all
//! ```

use clap::{Parser, ValueEnum};
use densegpu::checkpoint::NamedTensor;
use densegpu::data::{synthetic, BatchLoader, LoaderOptions};
use densegpu::{block_on, selftest, DenseNetConfig, Gpu, MemoryMode, Session};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Init {
    /// densegpu's: conv weights N(0, 2 / fan_out), the DenseNet paper's recipe.
    Densegpu,
    /// torchvision's `kaiming_normal_`: conv weights N(0, 2 / fan_in).
    Torchvision,
}

#[derive(Parser)]
struct Args {
    /// CIFAR-10 (binary batches or image folders); the first batch in file order is used.
    /// Without it, the built-in synthetic set.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    depth: u32,
    #[arg(long, default_value_t = 8)]
    growth_rate: u32,
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    #[arg(long, value_enum, default_value = "naive")]
    memory: MemoryMode,
    /// How the conv weights are drawn; batch norms get γ in [0.5, 1.5] and β in [−0.2, 0.2]
    /// either way, as a trained network has them.
    #[arg(long, value_enum, default_value = "densegpu")]
    init: Init,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print every tensor's error, not only the summary.
    #[arg(long)]
    all: bool,
    /// Also write a safetensors file with the initial weights (torchvision names), the batch
    /// (`input`, NCHW, and `labels`), and both gradients (`densegpu_grad.<name>`,
    /// `reference_grad.<name>`), to compare with another framework on the same step.
    #[arg(long)]
    dump: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> densegpu::Result<()> {
    let data = match &args.data {
        Some(dir) => densegpu::data::load(dir)?,
        None => synthetic(args.batch_size as usize, 0, 1),
    };
    let classes = data.train.num_classes() as u32;
    let config = DenseNetConfig::cifar_bc(args.depth, args.growth_rate, classes)?;
    let graph = config.build(args.batch_size, args.memory)?;
    let gpu = Arc::new(block_on(Gpu::new())?);
    let mut session = block_on(Session::new(gpu.clone(), graph.clone(), args.seed))?;
    let mut rng = rand_pcg::Pcg64::seed_from_u64(args.seed);
    for (name, shape, values) in block_on(session.state_dict())? {
        let new: Vec<f32> = if name.contains("norm") && name.ends_with(".weight") {
            values.iter().map(|_| rng.random_range(0.5..1.5)).collect()
        } else if name.contains("norm") && name.ends_with(".bias") {
            values.iter().map(|_| rng.random_range(-0.2..0.2)).collect()
        } else if args.init == Init::Torchvision && name.contains("conv") && name.ends_with(".weight") {
            let fan_in: usize = shape[1..].iter().product();
            let normal = rand_distr::Normal::new(0.0f32, (2.0 / fan_in as f32).sqrt()).unwrap();
            values.iter().map(|_| rand_distr::Distribution::sample(&normal, &mut rng)).collect()
        } else {
            continue;
        };
        session.set_tensor(&name, &new)?;
    }
    let loader = BatchLoader::new(data.train, LoaderOptions::eval(args.batch_size as usize))?;
    let batch = loader.batch(0, 0);
    if batch.labels.len() != args.batch_size as usize {
        return Err(densegpu::Error::Data(format!(
            "the data holds only {} training images; give --batch-size {} or more images",
            batch.labels.len(),
            batch.labels.len()
        )));
    }
    let initial = block_on(densegpu::checkpoint::session_weights(&session))?;
    let f = block_on(selftest::step_fidelity(&mut session, &batch.images, &batch.labels))?;
    if let Some(path) = &args.dump {
        let mut dumped = initial;
        let [c, n, h, w] = graph.shape(graph.input.unwrap());
        let shape = vec![n as usize, c as usize, h as usize, w as usize];
        dumped.push(NamedTensor { name: "input".into(), shape, data: batch.images.clone() });
        let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
        dumped.push(NamedTensor { name: "labels".into(), shape: vec![labels.len()], data: labels });
        for t in &f.tensors {
            for (prefix, data) in [("densegpu_grad", &t.device), ("reference_grad", &t.reference)] {
                let name = format!("{prefix}.{}", t.name);
                dumped.push(NamedTensor { name, shape: t.shape.clone(), data: data.clone() });
            }
        }
        densegpu::checkpoint::save_weights(path, &config, &dumped)?;
    }
    if args.all {
        for t in &f.tensors {
            println!("{:<60} {:.2e}", t.name, t.rel_err);
        }
    }
    let worst = f.worst();
    println!(
        "{} on {}: loss {:.7} (reference {:.7}); gradients of {} tensors: median {:.2e}, worst {:.2e} ({})",
        args.memory,
        gpu.describe(),
        f.loss,
        f.reference_loss,
        f.tensors.len(),
        f.median(),
        worst.rel_err,
        worst.name
    );
    Ok(())
}
