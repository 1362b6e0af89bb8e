//! Top-5 classes of images: `cargo run --release --example predict -- --weights W IMAGE...`.
//! Reads PNG and JPEG (greyscale, CMYK, RGBA and 16-bit are converted; a decompression bomb is
//! refused). Classes are named from `--classes DIR` (the sorted class folders of `DIR/train`, as
//! the model was trained), CIFAR-10's names for a 10-class CIFAR model, else their index. An
//! ImageNet model (ImageNet stem) gets torchvision's
//! evaluation transform, `Resize(S·256/224)` + `CenterCrop(S)` + ImageNet normalisation
//! (`data::transforms::eval_transform`), as its training validates; a CIFAR model gets the
//! shorter side resized to its input size, a centre crop and CIFAR-10 normalisation.

use clap::Parser;
use densegpu::checkpoint;
use densegpu::data::{
    decode_rgb, eval_transform, ImageFolderStream, Normalization, Split, StreamOptions, CIFAR10_CLASSES,
};
use densegpu::train::softmax;
use densegpu::{block_on, Error, Gpu, MemoryMode, Session};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser)]
struct Args {
    /// A densegpu weights file, or a torchvision DenseNet state dict in safetensors form (its
    /// architecture is then read from the tensor names and shapes).
    #[arg(long)]
    weights: PathBuf,
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Name classes after the image folder the model was trained on: DIR/train's sorted class
    /// folders.
    #[arg(long, value_name = "DIR")]
    classes: Option<PathBuf>,
    /// One JSON object per line and image: path, top5, logits (raw eval-mode logits).
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

/// The image as normalised CHW floats of `size`x`size`: torchvision's evaluation transform for
/// an ImageNet model (`imagenet`), today's CIFAR path otherwise.
fn prepare(path: &Path, size: u32, imagenet: bool) -> densegpu::Result<Vec<f32>> {
    let img = decode_rgb(path, &StreamOptions::default())?;
    if imagenet {
        return Ok(eval_transform(&img, size));
    }
    let (w, h) = (img.width(), img.height());
    let scale = size as f32 / w.min(h) as f32;
    let (rw, rh) = (((w as f32 * scale).round() as u32).max(size), ((h as f32 * scale).round() as u32).max(size));
    let resized = image::imageops::resize(&img, rw, rh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((rw - size) / 2, (rh - size) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, size, size).to_image();
    let plane = (size * size) as usize;
    let mut chw = vec![0u8; 3 * plane];
    for (i, p) in crop.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = p[c];
        }
    }
    let mut out = vec![0.0; chw.len()];
    Normalization::CIFAR10.apply(&chw, &mut out);
    Ok(out)
}

fn run(args: Args) -> densegpu::Result<()> {
    let weights = checkpoint::load_weights(&args.weights)?;
    let config = weights.model_config().map_err(|e| Error::Data(format!("{}: {e}", args.weights.display())))?;
    let graph = config.build(1, MemoryMode::Efficient)?;
    let mut session = block_on(Session::new(Arc::new(block_on(Gpu::new())?), graph, 0))?;
    checkpoint::apply_weights(&session, &weights)?;
    // On stderr: stdout is the results.
    if let Some(line) = densegpu::run::choose_kernels(&session, densegpu::Pass::Eval, &args.kernels, args.autotune)? {
        eprintln!("{line}");
    }
    let names: Vec<String> = match &args.classes {
        Some(dir) => {
            let classes = ImageFolderStream::open(dir, Split::Train, StreamOptions::default())?.classes().to_vec();
            if classes.len() != config.num_classes as usize {
                return Err(Error::Data(format!(
                    "{}/train has {} class folders but the model has {} classes; pass the folder it was trained on",
                    dir.display(),
                    classes.len(),
                    config.num_classes
                )));
            }
            classes
        }
        None if config.small_inputs && config.num_classes == 10 => {
            CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect()
        }
        None => (0..config.num_classes).map(|i| format!("class {i}")).collect(),
    };
    for path in &args.images {
        let input = prepare(path, config.image_size, !config.small_inputs)?;
        let (logits, _) = block_on(session.eval_batch(&input, &[0]))?;
        let probabilities = softmax(&logits);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        let top5: Vec<(String, f64)> = order.iter().take(5).map(|&i| (names[i].clone(), probabilities[i])).collect();
        if args.json {
            let top: Vec<_> = top5.iter().map(|(c, p)| serde_json::json!({ "class": c, "probability": p })).collect();
            println!("{}", serde_json::json!({ "path": path.display().to_string(), "top5": top, "logits": logits }));
        } else {
            let shown: Vec<String> = top5.iter().map(|(c, p)| format!("{c} {:.1}%", 100.0 * p)).collect();
            println!("{}: {}", path.display(), shown.join(", "));
        }
    }
    Ok(())
}
