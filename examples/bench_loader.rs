//! Throughput of the streamed image-folder loader: training-transform images per second at
//! 224×224 for 1, 2, … decoding workers, then the peak resident memory (VmHWM).
//!
//! ```text
//! cargo run --release --example bench_loader -- --generate 2000
//! cargo run --release --example bench_loader -- --data DIR --workers 1,2
//! cargo run --release --example bench_loader -- --generate 20000 --size 160x120 --out /tmp/small --only-generate
//! ```
//!
//! `--generate N` writes N ImageNet-sized JPEGs (500×375 by default: smooth random gradients
//! plus noise, quality 90) into a temporary folder (or `--out DIR`, kept) as
//! `train/<class>/*.jpg`; `--data DIR` reads an existing image folder's `train/` instead.
//!
//! `--transform` picks what each image goes through after decoding:
//! - `train` (the default): [`densegpu::data::train_transform`], torchvision's
//!   `RandomResizedCrop` + `RandomHorizontalFlip` + ImageNet normalisation, Pillow-exact;
//! - `eval`: [`densegpu::data::eval_transform`], `Resize(256)` + `CenterCrop(224)` + normalisation;
//! - `fast`: a stand-in, shorter side to 256, centre crop 224, random flip, normalisation, with
//!   only the crop resized by `fast_image_resize` (SIMD bilinear, no Pillow rounding);
//! - `image`: the same stand-in, the whole image resized by `image::imageops::resize`
//!   (Triangle) before cropping.
//!
//! Add an arm to [`transform`] to measure another [`Transform`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use densegpu::data::{
    ImageFolderStream, Split, StreamLoader, StreamLoaderOptions, StreamOptions, StreamRng, Transform,
};
use fast_image_resize as fir;
use image::RgbImage;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Images per second of the streamed image-folder loader, and its peak memory")]
struct Args {
    /// Write this many JPEGs into a fresh folder and read those.
    #[arg(long)]
    generate: Option<usize>,
    /// Read DIR/train/<class>/* (an image folder) instead of generating one.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where --generate writes (kept); a temporary folder, removed at the end, otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop after generating.
    #[arg(long)]
    only_generate: bool,
    /// Size of generated images, WIDTHxHEIGHT.
    #[arg(long, default_value = "500x375")]
    size: String,
    /// Worker counts to measure, comma-separated; default 1 up to the machine's cores.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Images to time per worker count (whole batches; default: one epoch).
    #[arg(long)]
    images: Option<usize>,
    /// train, eval, fast or image (see the module doc).
    #[arg(long, default_value = "train")]
    transform: String,
    /// Output side in pixels.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// Milliseconds to hold each batch, standing in for a training step: the workers then fill
    /// their whole window ahead, so the peak memory is the loader's bound.
    #[arg(long, default_value_t = 0)]
    step_ms: u64,
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel lookup tables for `(v/255 − mean) / std`.
fn tables() -> [[f32; 256]; 3] {
    let mut t = [[0f32; 256]; 3];
    for (c, tc) in t.iter_mut().enumerate() {
        for (v, o) in tc.iter_mut().enumerate() {
            *o = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    t
}

/// Interleaved RGB `side`×`side` bytes into normalised CHW `f32`, mirrored when `flip`.
fn normalise(rgb: &[u8], side: usize, flip: bool, t: &[[f32; 256]; 3]) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for y in 0..side {
        let src = &rgb[y * side * 3..(y + 1) * side * 3];
        for x in 0..side {
            let sx = if flip { side - 1 - x } else { x };
            let p = &src[sx * 3..sx * 3 + 3];
            let o = y * side + x;
            r[o] = t[0][p[0] as usize];
            g[o] = t[1][p[1] as usize];
            b[o] = t[2][p[2] as usize];
        }
    }
    out
}

/// The transform named by `--transform` (see the module doc): 3 × `crop` × `crop` `f32`.
fn transform(kind: &str, crop: u32) -> Transform {
    let t = tables();
    let short = crop * 256 / 224;
    if kind == "train" {
        return Arc::new(move |img: &RgbImage, rng: &mut StreamRng| densegpu::data::train_transform(img, crop, rng));
    }
    if kind == "eval" {
        return Arc::new(move |img: &RgbImage, _: &mut StreamRng| densegpu::data::eval_transform(img, crop));
    }
    if kind == "image" {
        return Arc::new(move |img: &RgbImage, rng: &mut StreamRng| {
            let (w, h) = img.dimensions();
            let s = short as f64 / w.min(h) as f64;
            let (nw, nh) = (((w as f64 * s).round() as u32).max(crop), ((h as f64 * s).round() as u32).max(crop));
            let resized = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
            let (l, top) = ((nw - crop) / 2, (nh - crop) / 2);
            let cropped = image::imageops::crop_imm(&resized, l, top, crop, crop).to_image();
            normalise(cropped.as_raw(), crop as usize, rng.random_bool(0.5), &t)
        });
    }
    assert_eq!(kind, "fast", "--transform is train, eval, fast or image");
    Arc::new(move |img: &RgbImage, rng: &mut StreamRng| {
        let (w, h) = img.dimensions();
        // The centre crop of the resized image, in source pixels.
        let side = w.min(h) as f64 * crop as f64 / short as f64;
        let (l, top) = ((w as f64 - side) / 2.0, (h as f64 - side) / 2.0);
        let src = fir::images::ImageRef::new(w, h, img.as_raw(), fir::PixelType::U8x3).expect("an RGB buffer");
        let mut dst = fir::images::Image::new(crop, crop, fir::PixelType::U8x3);
        let opts = fir::ResizeOptions::new()
            .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
            .crop(l, top, side, side);
        fir::Resizer::new().resize(&src, &mut dst, &opts).expect("resize");
        normalise(dst.buffer(), crop as usize, rng.random_bool(0.5), &t)
    })
}

/// Writes `n` gradient-plus-noise JPEGs (quality 90) of `w`×`h` into `dir/train/c0..c9/`.
fn generate(dir: &Path, n: usize, w: u32, h: u32) {
    let classes = 10;
    for c in 0..classes {
        std::fs::create_dir_all(dir.join(format!("train/c{c}"))).unwrap();
    }
    let threads = densegpu::data::default_workers();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let mut rng = StreamRng::seed_from_u64(i as u64);
                    let corners: [[f32; 3]; 4] =
                        std::array::from_fn(|_| std::array::from_fn(|_| rng.random::<f32>() * 255.0));
                    let img = RgbImage::from_fn(w, h, |x, y| {
                        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
                        image::Rgb(std::array::from_fn(|c| {
                            let top = corners[0][c] * (1.0 - fx) + corners[1][c] * fx;
                            let bottom = corners[2][c] * (1.0 - fx) + corners[3][c] * fx;
                            let noise = rng.random_range(-12.0..12.0f32);
                            (top * (1.0 - fy) + bottom * fy + noise).clamp(0.0, 255.0) as u8
                        }))
                    });
                    let path = dir.join(format!("train/c{}/{i:06}.jpg", i % classes));
                    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
                    image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90).encode_image(&img).unwrap();
                }
            });
        }
    });
}

/// Peak resident set size of this process in KiB (VmHWM), where /proc tells it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> densegpu::Result<()> {
    let args = Args::parse();
    let (w, h) = args
        .size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .expect("--size is WIDTHxHEIGHT");
    let mut _tmp = None;
    let dir = match (&args.data, args.generate) {
        (Some(d), None) => d.clone(),
        (None, Some(n)) => {
            let dir = match &args.out {
                Some(d) => d.clone(),
                None => _tmp.insert(tempfile::tempdir().expect("a temporary folder")).path().to_path_buf(),
            };
            let t = Instant::now();
            generate(&dir, n, w, h);
            eprintln!("generated {n} {w}x{h} JPEGs in {} in {:.1} s", dir.display(), t.elapsed().as_secs_f64());
            dir
        }
        _ => panic!("give either --data DIR or --generate N"),
    };
    if args.only_generate {
        return Ok(());
    }
    let listed = Instant::now();
    let stream = ImageFolderStream::open(&dir, Split::Train, StreamOptions::default())?;
    println!(
        "{} images in {} classes listed in {:.2} s ({} other files ignored); transform {}, crop {}",
        stream.len(),
        stream.classes().len(),
        listed.elapsed().as_secs_f64(),
        stream.ignored_files(),
        args.transform,
        args.crop
    );
    let workers =
        if args.workers.is_empty() { (1..=densegpu::data::default_workers()).collect() } else { args.workers.clone() };
    for n in workers {
        let opts = StreamLoaderOptions { workers: n, ..StreamLoaderOptions::train(args.batch_size, 0) };
        let loader = StreamLoader::new(stream.clone(), opts, transform(&args.transform, args.crop))?;
        let batches =
            args.images.map_or(loader.batches_per_epoch(), |i| i / args.batch_size).min(loader.batches_per_epoch());
        let t = Instant::now();
        let mut images = 0;
        for batch in loader.epoch(0).take(batches) {
            images += batch?.len();
            std::thread::sleep(std::time::Duration::from_millis(args.step_ms));
        }
        let s = t.elapsed().as_secs_f64();
        println!("workers {n}: {images} images in {s:.2} s = {:.0} images/s", images as f64 / s);
    }
    match peak_rss_kib() {
        Some(kib) => println!("peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
        None => println!("peak RSS: /proc/self/status not available"),
    }
    Ok(())
}
