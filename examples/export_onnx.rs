//! Exports a weights file (densegpu's safetensors, or a torchvision DenseNet state dict) as an
//! ONNX model.
//!
//! ```text
//! cargo run --release --example export_onnx -- --weights W.safetensors --out model.onnx [--fold]
//! ```

use clap::Parser;
use densegpu::checkpoint;
use densegpu::onnx::{self, ExportOptions, Normalization};
use densegpu::{DenseNetConfig, MemoryMode};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Export DenseNet weights as an ONNX model (eval mode, dynamic batch)")]
struct Args {
    /// Weights file written by densegpu (or a torchvision state dict in safetensors form).
    #[arg(long)]
    weights: PathBuf,
    /// Where to write the model; written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Fold batch norms into the convs before them where exact (smaller, faster, less readable).
    #[arg(long)]
    fold: bool,
    /// Make the model take raw [0, 1] pixels and normalise them itself.
    #[arg(long)]
    normalize_input: bool,
    /// Per-channel input mean, comma-separated (default: CIFAR-10's).
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-channel input std, comma-separated (default: CIFAR-10's).
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// ONNX opset.
    #[arg(long, default_value_t = onnx::MIN_OPSET)]
    opset: i64,
    /// For weights without a densegpu config: densenet121, densenet169, densenet201 or
    /// densenet161. Without it the architecture is read from the tensor names and shapes.
    #[arg(long)]
    model: Option<String>,
    /// For weights without a densegpu config: the input image size (default 224 for an
    /// ImageNet stem, 32 for a CIFAR one).
    #[arg(long)]
    image_size: Option<u32>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> densegpu::Result<()> {
    let weights = checkpoint::load_weights(&args.weights)?;
    let config = match (&weights.config, &args.model) {
        (Some(c), _) => c.clone(),
        (None, Some(name)) => {
            let classes = weights.tensor("classifier.bias").map(|t| t.data.len() as u32).ok_or_else(|| {
                densegpu::Error::Data(format!(
                    "{}: no `classifier.bias` to count the classes from",
                    args.weights.display()
                ))
            })?;
            DenseNetConfig { image_size: args.image_size.unwrap_or(224), ..DenseNetConfig::by_name(name, classes)? }
        }
        (None, None) => {
            let inferred = weights
                .model_config()
                .map_err(|e| densegpu::Error::Data(format!("{}: {e}", args.weights.display())))?;
            DenseNetConfig { image_size: args.image_size.unwrap_or(inferred.image_size), ..inferred }
        }
    };
    let graph = config.build(1, MemoryMode::Efficient)?;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        weights.tensors.into_iter().map(|t| (t.name, t.shape, t.data)).collect();
    let cifar = Normalization::cifar10();
    let options = ExportOptions {
        opset: args.opset,
        fold_batch_norm: args.fold,
        normalization: Some(Normalization {
            mean: args.mean.unwrap_or(cifar.mean),
            std: args.std.unwrap_or(cifar.std),
        }),
        normalize_input: args.normalize_input,
        fold_input_normalization: args.fold,
    };
    onnx::export_to_file(&args.out, &graph, Some(&config), &tensors, &options)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({size} bytes, {} parameters, opset {}{})",
        args.out.display(),
        graph.parameter_count(),
        args.opset,
        if args.fold { ", batch norms folded" } else { "" }
    );
    Ok(())
}
