//! The image-folder layout: `DIR/train/<class>/*.{png,jpg,jpeg}` and `DIR/test/<class>/*`.
//! Classes are the training sub-folders sorted by name; images within a class are read in file
//! name order, class after class.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use super::{Dataset, TrainTest, CHANNELS};
use crate::{Error, Result};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Decodes one PNG or JPEG (the format is read from the bytes, not the name) into 3×H×W
/// bytes. Greyscale and RGBA images are converted to RGB. `name` is what messages call the
/// file; a size other than `height`×`width` is an error, found from the file's header before
/// any pixel is decoded.
pub fn decode_image(bytes: &[u8], name: &str, height: usize, width: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; CHANNELS * height * width];
    decode_into(bytes, name, height, width, &mut out)?;
    Ok(out)
}

fn decode_into(bytes: &[u8], name: &str, height: usize, width: usize, out: &mut [u8]) -> Result<()> {
    use image::ImageDecoder;
    let corrupt = |e: image::ImageError| {
        Error::Data(format!(
            "cannot decode {name} as an image: {e}; the file is corrupt or not a PNG/JPEG: replace or remove it"
        ))
    };
    let decoder = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Data(format!("cannot read {name}: {e}")))?
        .into_decoder()
        .map_err(corrupt)?;
    // The size the header declares, checked before any pixel is decoded: a small file may
    // declare a huge image, which the lenient JPEG decoder would fill in, at length.
    let (w, h) = decoder.dimensions();
    if w as usize != width || h as usize != height {
        return Err(Error::Data(format!(
            "{name} is {w}x{h} (width x height) but this dataset's images must be {width}x{height}: resize it to \
             {width}x{height} (every image of a dataset must have the same size)"
        )));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let rgb = img.into_rgb8();
    let plane = height * width;
    for (p, px) in rgb.pixels().enumerate() {
        out[p] = px.0[0];
        out[plane + p] = px.0[1];
        out[2 * plane + p] = px.0[2];
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Data(format!("cannot list {}: {e}", dir.display())))?;
        // Hidden entries (.DS_Store, ._foo.jpg from macOS archives) are never images.
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Class folders of `split_dir`, sorted by name, each with its image files sorted by name.
fn scan_split(split_dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for class_dir in list_dir(split_dir)? {
        if !class_dir.is_dir() {
            continue;
        }
        let name = class_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files: Vec<PathBuf> = list_dir(&class_dir)?.into_iter().filter(|p| is_image(p) && p.is_file()).collect();
        if files.is_empty() {
            return Err(Error::Data(format!(
                "class folder {} holds no .png, .jpg or .jpeg images; add images or remove the folder",
                class_dir.display()
            )));
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(Error::Data(format!(
            "{} has no class folders; an image folder holds <class>/*.png|jpg|jpeg under train/ and test/",
            split_dir.display()
        )));
    }
    Ok(classes)
}

fn decode_files(dir: &Path, files: &[PathBuf], height: usize, width: usize) -> Result<Vec<u8>> {
    let per = CHANNELS * height * width;
    let mut images = Vec::new();
    crate::files::try_reserve(&mut images, (files.len() * per) as u64, || {
        format!("{}: {} images of {height}x{width}", dir.display(), files.len())
    })?;
    images.resize(files.len() * per, 0);
    let decode = |files: &[PathBuf], out: &mut [u8]| -> Result<()> {
        for (path, dst) in files.iter().zip(out.chunks_exact_mut(per)) {
            let bytes = crate::files::read(path)?;
            decode_into(&bytes, &path.display().to_string(), height, width, dst)?;
        }
        Ok(())
    };
    let threads = if cfg!(target_arch = "wasm32") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
    };
    if threads <= 1 || files.len() < 64 {
        decode(files, &mut images)?;
        return Ok(images);
    }
    let chunk = files.len().div_ceil(threads);
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .zip(images.chunks_mut(chunk * per))
            .map(|(f, out)| s.spawn(move || decode(f, out)))
            .collect();
        handles.into_iter().map(|h| h.join().expect("image decoding thread panicked")).collect()
    });
    // Chunks are in file order, so the first error reported is the first bad file.
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(images)
}

fn load_split(
    split_dir: &Path,
    scanned: Vec<(String, Vec<PathBuf>)>,
    classes: &[String],
    height: usize,
    width: usize,
) -> Result<Dataset> {
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (name, class_files) in scanned {
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(Error::Data(format!(
                "{} is a class the training set does not have (training classes: {}); every test class needs a folder under train/",
                split_dir.join(&name).display(),
                classes.join(", ")
            )));
        };
        labels.extend(std::iter::repeat_n(label as u32, class_files.len()));
        files.extend(class_files);
    }
    let images = decode_files(split_dir, &files, height, width)?;
    Ok(Dataset { images, labels, classes: classes.to_vec(), height, width })
}

/// Reads an image folder whose images are all `height`×`width`.
pub fn load_image_folder(dir: impl AsRef<Path>, height: usize, width: usize) -> Result<TrainTest> {
    let dir = dir.as_ref();
    let train_dir = dir.join("train");
    let test_dir = dir.join("test");
    for d in [&train_dir, &test_dir] {
        if !d.is_dir() {
            return Err(Error::Data(format!(
                "{} is missing; an image folder holds train/<class>/*.png|jpg|jpeg and test/<class>/*",
                d.display()
            )));
        }
    }
    let train_scan = scan_split(&train_dir)?;
    let test_scan = scan_split(&test_dir)?;
    let classes: Vec<String> = train_scan.iter().map(|(name, _)| name.clone()).collect();
    let train = load_split(&train_dir, train_scan, &classes, height, width)?;
    let test = load_split(&test_dir, test_scan, &classes, height, width)?;
    Ok(TrainTest { train, test })
}
