//! Test accuracy of saved weights: `cargo run --release --example eval -- --weights W --data DIR`.

use clap::Parser;
use densegpu::checkpoint;
use densegpu::{block_on, Gpu, MemoryMode, Session};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// A densegpu weights file, or a torchvision DenseNet state dict in safetensors form (its
    /// architecture is then read from the tensor names and shapes).
    #[arg(long)]
    weights: PathBuf,
    /// CIFAR-10 as binary batches or train/test image folders.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> densegpu::Result<()> {
    let weights = checkpoint::load_weights(&args.weights)?;
    let config =
        weights.model_config().map_err(|e| densegpu::Error::Data(format!("{}: {e}", args.weights.display())))?;
    let test = densegpu::data::load(&args.data)?.test;
    let graph = config.build(args.batch_size, MemoryMode::Efficient)?;
    let mut session = block_on(Session::new(Arc::new(block_on(Gpu::new())?), graph, 0))?;
    checkpoint::apply_weights(&session, &weights)?;
    let e = block_on(densegpu::train::evaluate(&mut session, &test))?;
    if args.json {
        println!("{}", serde_json::json!({ "test_accuracy": e.accuracy, "test_loss": e.loss, "images": e.images }));
    } else {
        println!("test accuracy {:.2}% (loss {:.4}) on {} images", 100.0 * e.accuracy, e.loss, e.images);
    }
    Ok(())
}
