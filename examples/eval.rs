//! Test accuracy of saved weights: `cargo run --release --example eval -- --weights W --data DIR`.
//!
//! A CIFAR model (CIFAR stem) is tested on CIFAR-10's test set (binary batches or 32x32
//! image folders), as `train_cifar` tests it. An ImageNet model (ImageNet stem) is tested on
//! `DIR/val/<class>/*` (or `DIR/test/<class>/*`), images of any size, through torchvision's
//! evaluation transform (`data::transforms::eval_transform`: `Resize(S·256/224)` +
//! `CenterCrop(S)` + ImageNet normalisation); classes are `DIR/train`'s sorted folder names when
//! it exists, else the split's own. The images are decoded one batch at a time, in one thread.

use clap::Parser;
use densegpu::checkpoint;
use densegpu::data::eval_transform;
use densegpu::{block_on, Error, Gpu, MemoryMode, Session};
use std::path::{Path, PathBuf};
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
    let imagenet = !config.small_inputs;
    let test = if imagenet { None } else { Some(densegpu::data::load(&args.data)?.test) };
    let files = if imagenet { labelled_files(&args.data)? } else { Vec::new() };
    let graph = config.build(args.batch_size, MemoryMode::Efficient)?;
    let mut session = block_on(Session::new(Arc::new(block_on(Gpu::new())?), graph, 0))?;
    checkpoint::apply_weights(&session, &weights)?;
    let e = match &test {
        Some(test) => block_on(densegpu::train::evaluate(&mut session, test))?,
        None => {
            let size = config.image_size;
            let mut failed = None;
            let batches = files.chunks(args.batch_size as usize).map_while(|chunk| {
                let mut images = Vec::with_capacity(chunk.len() * 3 * (size * size) as usize);
                for (path, _) in chunk {
                    match image::open(path) {
                        Ok(img) => images.extend(eval_transform(&img.to_rgb8(), size)),
                        Err(e) => {
                            failed = Some(Error::Data(format!("cannot read image {}: {e}", path.display())));
                            return None;
                        }
                    }
                }
                Some((images, chunk.iter().map(|&(_, label)| label).collect()))
            });
            let e = block_on(densegpu::train::evaluate_batches(&mut session, batches))?;
            if let Some(err) = failed {
                return Err(err);
            }
            e
        }
    };
    if args.json {
        println!("{}", serde_json::json!({ "test_accuracy": e.accuracy, "test_loss": e.loss, "images": e.images }));
    } else {
        println!("test accuracy {:.2}% (loss {:.4}) on {} images", 100.0 * e.accuracy, e.loss, e.images);
    }
    Ok(())
}

/// The images of `dir/val` (else `dir/test`), class folder after class folder, each file name
/// sorted, with labels from `dir/train`'s sorted class folders (else the split's own).
fn labelled_files(dir: &Path) -> densegpu::Result<Vec<(PathBuf, u32)>> {
    let sorted = |d: &Path| -> densegpu::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| Error::Data(format!("cannot list {}: {e}", d.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        v.sort();
        Ok(v)
    };
    let split = [dir.join("val"), dir.join("test")].into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        Error::Data(format!("{} holds neither val/ nor test/ (<class>/<image> folders)", dir.display()))
    })?;
    let class_root = if dir.join("train").is_dir() { dir.join("train") } else { split.clone() };
    let classes: Vec<_> = sorted(&class_root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    let mut files = Vec::new();
    for class_dir in sorted(&split)?.into_iter().filter(|p| p.is_dir()) {
        let name = class_dir.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            Error::Data(format!("{} is a class {} does not have", class_dir.display(), class_root.display()))
        })?;
        files.extend(sorted(&class_dir)?.into_iter().filter(|p| p.is_file()).map(|p| (p, label as u32)));
    }
    if files.is_empty() {
        return Err(Error::Data(format!("{} holds no images in <class>/ folders", split.display())));
    }
    Ok(files)
}
