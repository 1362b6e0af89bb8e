//! Test accuracy of saved weights: `cargo run --release --example eval -- --weights W --data DIR`.
//!
//! A CIFAR model (CIFAR stem) is tested on CIFAR-10's test set (binary batches or 32x32
//! image folders), as `train_cifar` tests it. An ImageNet model (ImageNet stem) is tested on
//! `DIR/val/<class>/*` (or `DIR/test/<class>/*`), images of any size, streamed from disk as
//! `train_imagenet` validates: torchvision's evaluation transform
//! (`data::transforms::eval_transform`: `Resize(S·256/224)` + `CenterCrop(S)` + ImageNet
//! normalisation) on `--workers` threads. Classes are `DIR/train`'s sorted folder names when it
//! exists, else the split's own, and their number must be the model's.

use clap::Parser;
use densegpu::checkpoint;
use densegpu::data::{
    default_workers, eval_transform, ImageFolderStream, Split, StreamLoader, StreamLoaderOptions, StreamOptions,
    Transform,
};
use densegpu::{block_on, DenseNetConfig, Error, Gpu, MemoryMode, Session};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// A densegpu weights file, or a torchvision DenseNet state dict in safetensors form (its
    /// architecture is then read from the tensor names and shapes).
    #[arg(long)]
    weights: PathBuf,
    /// CIFAR-10 as binary batches or train/test image folders; for an ImageNet model, a folder
    /// with val/<class>/* (or test/<class>/*).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Decoding threads for an image folder. Default: the machine's cores.
    #[arg(long)]
    workers: Option<usize>,
    /// Leave out an unreadable or corrupt image (and count it) instead of stopping with an
    /// error naming it.
    #[arg(long)]
    skip_bad_images: bool,
    #[arg(long)]
    json: bool,
    /// Conv kernels: auto (tuned per shape on this adapter, sharing training's cache),
    /// register (for CPU drivers) or workgroup (for GPUs).
    #[arg(long, default_value = "auto", value_parser = ["auto", "register", "workgroup"])]
    kernels: String,
    /// With --kernels auto: cached (time only shapes the cache lacks), full (time all again) or
    /// off (the device type's default, no timing).
    #[arg(long, env = "DENSEGPU_AUTOTUNE", default_value = "cached", value_parser = clap::value_parser!(densegpu::tune::Autotune))]
    autotune: densegpu::tune::Autotune,
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
    let imagenet = !config.small_inputs;
    let test = if imagenet { None } else { Some(densegpu::data::load(&args.data)?.test) };
    let val = if imagenet { Some(image_folder(&args, &config)?) } else { None };
    let graph = config.build(args.batch_size, MemoryMode::Efficient)?;
    let mut session = block_on(Session::new(Arc::new(block_on(Gpu::new())?), graph, 0))?;
    checkpoint::apply_weights(&session, &weights)?;
    // On stderr: stdout is the results.
    if let Some(line) = densegpu::run::choose_kernels(&session, densegpu::Pass::Eval, &args.kernels, args.autotune)? {
        eprintln!("{line}");
    }
    let e = match (&test, &val) {
        (Some(test), _) => block_on(densegpu::train::evaluate(&mut session, test))?,
        (None, Some(val)) => {
            let batches = val.epoch(0).map(|b| b.map(|b| (b.images, b.labels)));
            block_on(densegpu::train::try_evaluate_batches(&mut session, batches))?
        }
        (None, None) => unreachable!("one of the two is loaded"),
    };
    let bad = val.as_ref().map_or(0, |v| v.bad_images().len());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "test_accuracy": e.accuracy, "top5_accuracy": e.top5_accuracy, "test_loss": e.loss,
                "images": e.images, "bad_images": bad,
            })
        );
    } else {
        println!(
            "test accuracy {:.2}% (top-5 {:.2}%, loss {:.4}) on {} images{}",
            100.0 * e.accuracy,
            100.0 * e.top5_accuracy,
            e.loss,
            e.images,
            if bad > 0 { format!(", {bad} bad images skipped") } else { String::new() }
        );
    }
    Ok(())
}

/// `DIR/val` (else `DIR/test`) streamed through the evaluation transform at the model's size.
/// Errors when the folder is not an image folder or its class count is not the model's.
fn image_folder(args: &Args, config: &DenseNetConfig) -> densegpu::Result<StreamLoader> {
    let stream = ImageFolderStream::open(&args.data, Split::Eval, StreamOptions::default())?;
    if stream.classes().len() != config.num_classes as usize {
        return Err(Error::Data(format!(
            "{} has {} classes but the model in {} has {}; evaluate on a folder with a class folder for each of \
             the model's classes (labels are the sorted folder names of {}/train, else of {})",
            args.data.display(),
            stream.classes().len(),
            args.weights.display(),
            config.num_classes,
            args.data.display(),
            stream.split_dir().display()
        )));
    }
    let size = config.image_size;
    let transform: Transform = Arc::new(move |img, _| eval_transform(img, size));
    let mut opts = StreamLoaderOptions::eval(args.batch_size as usize);
    opts.workers = args.workers.unwrap_or_else(default_workers);
    opts.skip_bad_images = args.skip_bad_images;
    StreamLoader::new(stream, opts, transform)
}
