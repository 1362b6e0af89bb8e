//! Writes the evaluation transform's bytes (before normalisation) as PNGs, to compare them with
//! torchvision's: `cargo run --release --example transform_dump -- --size 224 --out DIR IMAGE...`
//! writes `DIR/<image file stem>.png`, `Resize(size·256/224)` + `CenterCrop(size)` of each image.

use clap::Parser;
use densegpu::data::transforms::eval_crop;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 224)]
    size: u32,
    #[arg(long)]
    out: PathBuf,
    /// Write the decoded image unchanged (to tell decoder differences from the transform's).
    #[arg(long)]
    decoded: bool,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    for path in &args.images {
        let img = image::open(path)?.to_rgb8();
        let stem = path.file_stem().ok_or("image path without a file name")?.to_string_lossy();
        let dst = args.out.join(format!("{stem}.png"));
        if args.decoded { img } else { eval_crop(&img, args.size) }.save(&dst)?;
        println!("{} -> {}", path.display(), dst.display());
    }
    Ok(())
}
