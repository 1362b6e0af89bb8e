//! The streamed image folder: listing and its errors, decoding of every kind of PNG and JPEG,
//! batches that do not depend on the worker count, bit-exact mid-epoch resume, and bad files
//! (corrupt, truncated, decompression bombs), skipped or not. Every folder is one the tests
//! write; nothing is downloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use densegpu::data::{
    BatchSource, ImageFolderStream, Split, StreamLoader, StreamLoaderOptions, StreamOptions, StreamRng, Transform,
};
use densegpu::Error;
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};
use rand::Rng;

fn data_err<T>(r: densegpu::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(Error::Data(m)) => m,
        Err(other) => panic!("expected Error::Data, got {other:?}"),
    }
}

/// An RGB image of `w`×`h` whose pixels encode `tag` and their position.
fn rgb(w: u32, h: u32, tag: u32) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([((x * 3 + tag * 37) % 256) as u8, ((y * 5 + tag * 11) % 256) as u8, ((x + y + tag * 53) % 256) as u8])
    })
}

/// Saves `img` at `path`, the format following the extension.
fn save(path: &Path, img: DynamicImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let format = image::ImageFormat::from_path(path.to_string_lossy().to_lowercase()).unwrap();
    img.save_with_format(path, format).unwrap();
}

/// `dir/train/{cat,dog,emu}` with images of several sizes and formats (RGB, greyscale,
/// grey+alpha, RGBA, 16-bit PNG; RGB and greyscale JPEG, one with an upper-case extension),
/// plus two files that are not images; and `dir/val/{cat,dog}`. 14 training images in all.
fn write_folder(dir: &Path) {
    let t = dir.join("train");
    let mut tag = 0;
    let mut next = || {
        tag += 1;
        tag
    };
    for (class, sizes) in
        [("cat", [(40, 30), (17, 23), (64, 48), (33, 33)]), ("dog", [(30, 40), (50, 20), (24, 24), (70, 45)])]
    {
        for (k, &(w, h)) in sizes.iter().enumerate() {
            let ext = if k % 2 == 0 { "png" } else { "jpg" };
            save(&t.join(class).join(format!("{k}.{ext}")), DynamicImage::ImageRgb8(rgb(w, h, next())));
        }
    }
    let e = t.join("emu");
    let g = next();
    save(
        &e.join("grey.png"),
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(31, 29, |x, y| Luma([(x * 7 + y + g) as u8]))),
    );
    save(&e.join("grey.jpg"), DynamicImage::ImageLuma8(ImageBuffer::from_fn(45, 37, |x, y| Luma([(x * 4 + y) as u8]))));
    save(
        &e.join("greyalpha.png"),
        DynamicImage::ImageLumaA8(ImageBuffer::from_fn(20, 26, |x, y| LumaA([(x + y * 9) as u8, 77]))),
    );
    save(
        &e.join("rgba.png"),
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(36, 28, |x, y| Rgba([x as u8, y as u8, 200, 10]))),
    );
    save(
        &e.join("deep.png"),
        DynamicImage::ImageRgb16(ImageBuffer::from_fn(27, 35, |x, y| {
            Rgb([(x * 2000) as u16, (y * 1500) as u16, 0x8000])
        })),
    );
    save(&e.join("UPPER.JPG"), DynamicImage::ImageRgb8(rgb(52, 39, next())));
    std::fs::write(e.join("notes.txt"), "not an image").unwrap();
    std::fs::write(e.join(".DS_Store"), [0u8; 16]).unwrap();
    save(&dir.join("val/cat/v.png"), DynamicImage::ImageRgb8(rgb(21, 19, next())));
    save(&dir.join("val/dog/v.jpg"), DynamicImage::ImageRgb8(rgb(44, 30, next())));
}

/// A transform from any size to 3×4×4: 16 samples on a grid, each plus a random draw, so
/// that both the pixels and the per-image generator show in the batch.
fn grid_transform() -> Transform {
    Arc::new(|img: &image::RgbImage, rng: &mut StreamRng| {
        let (w, h) = img.dimensions();
        let mut out = vec![0f32; 3 * 16];
        for gy in 0..4 {
            for gx in 0..4 {
                let p = img.get_pixel(gx * (w - 1) / 3, gy * (h - 1) / 3);
                for c in 0..3 {
                    out[c * 16 + (gy * 4 + gx) as usize] = p.0[c] as f32 / 255.0 + rng.random::<f32>();
                }
            }
        }
        out
    })
}

fn loader(dir: &Path, batch_size: usize, workers: usize, skip_bad_images: bool) -> StreamLoader {
    let stream = ImageFolderStream::open(dir, Split::Train, StreamOptions::default()).unwrap();
    let opts =
        StreamLoaderOptions { workers, queue_depth: 1, skip_bad_images, ..StreamLoaderOptions::train(batch_size, 7) };
    StreamLoader::new(stream, opts, grid_transform()).unwrap()
}

fn epoch(l: &StreamLoader, e: u64, start: usize) -> Vec<densegpu::data::Batch> {
    l.epoch_from(e, start).map(|b| b.unwrap()).collect()
}

#[test]
fn a_folder_is_listed_with_train_classes_and_non_images_counted() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let s = ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()).unwrap();
    assert_eq!(s.classes(), ["cat", "dog", "emu"]);
    assert_eq!(s.len(), 14);
    assert_eq!(s.ignored_files(), 2, "notes.txt and .DS_Store");
    assert_eq!(&s.labels()[..4], [0, 0, 0, 0]);
    assert_eq!(s.labels()[13], 2);
    // Val has no emu: labels still follow train's classes.
    let v = ImageFolderStream::open(tmp.path(), Split::Eval, StreamOptions::default()).unwrap();
    assert_eq!(v.split_dir(), tmp.path().join("val"));
    assert_eq!((v.len(), v.labels()), (2, &[0u32, 1][..]));
    assert_eq!(v.classes(), s.classes());
    let m = data_err(ImageFolderStream::open(tmp.path(), Split::Test, StreamOptions::default()));
    assert!(m.contains("test") && m.contains("missing"), "{m}");
}

#[test]
fn images_in_sub_folders_of_a_class_are_found_in_torchvision_order() {
    let tmp = tempfile::tempdir().unwrap();
    let cat = tmp.path().join("train/cat");
    // torchvision's ImageFolder walks a class folder with sorted(os.walk(...)): the folder's own
    // files first, then each sub-folder's, sub-folders in name order.
    save(&cat.join("b/x.png"), DynamicImage::ImageRgb8(rgb(9, 9, 1)));
    save(&cat.join("a/deeper/y.png"), DynamicImage::ImageRgb8(rgb(9, 9, 2)));
    save(&cat.join("a/w.png"), DynamicImage::ImageRgb8(rgb(9, 9, 3)));
    save(&cat.join("z.png"), DynamicImage::ImageRgb8(rgb(9, 9, 4)));
    std::fs::write(cat.join("b/notes.txt"), "not an image").unwrap();
    save(&tmp.path().join("train/dog/only/d.jpg"), DynamicImage::ImageRgb8(rgb(9, 9, 5)));
    let s = ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()).unwrap();
    let paths: Vec<PathBuf> = (0..s.len()).map(|i| s.path(i)).collect();
    let t = tmp.path().join("train");
    assert_eq!(
        paths,
        [
            t.join("cat/z.png"),
            t.join("cat/a/w.png"),
            t.join("cat/a/deeper/y.png"),
            t.join("cat/b/x.png"),
            t.join("dog/only/d.jpg")
        ]
    );
    assert_eq!(s.labels(), [0, 0, 0, 0, 1]);
    assert_eq!(s.ignored_files(), 1);
    assert_eq!(s.decode(2).unwrap(), rgb(9, 9, 2), "a nested image decodes");
}

#[test]
fn an_evaluation_folder_without_train_names_its_own_classes() {
    let tmp = tempfile::tempdir().unwrap();
    save(&tmp.path().join("val/b/1.png"), DynamicImage::ImageRgb8(rgb(9, 9, 1)));
    save(&tmp.path().join("val/a/2.png"), DynamicImage::ImageRgb8(rgb(9, 9, 2)));
    let v = ImageFolderStream::open(tmp.path(), Split::Eval, StreamOptions::default()).unwrap();
    assert_eq!(v.classes(), ["a", "b"]);
    assert_eq!(v.labels(), [0, 1]);
    // Training still needs train/.
    let m = data_err(ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()));
    assert!(m.contains("train") && m.contains("missing"), "{m}");
}

#[test]
fn every_kind_of_image_decodes_to_rgb() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let s = ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()).unwrap();
    let find = |name: &str| (0..s.len()).find(|&i| s.path(i).file_name().unwrap() == name).unwrap();
    let png = s.decode(find("2.png")).unwrap();
    assert_eq!(png, rgb(64, 48, 3), "an RGB PNG is exact");
    let jpg = s.decode(find("1.jpg")).unwrap();
    assert_eq!(jpg.dimensions(), (17, 23));
    for name in ["1.jpg", "grey.jpg", "UPPER.JPG"] {
        let i = find(name);
        let want = image::open(s.path(i)).unwrap().into_rgb8();
        let got = s.decode(i).unwrap();
        let worst = want.as_raw().iter().zip(got.as_raw()).map(|(&a, &b)| a.abs_diff(b)).max();
        assert!(worst <= Some(1), "{name}: off by {worst:?} from the image crate's decoding");
    }
    let grey = s.decode(find("grey.png")).unwrap();
    assert_eq!(grey.get_pixel(3, 2).0, [(3 * 7 + 2 + 9) as u8; 3]);
    assert_eq!(s.decode(find("grey.jpg")).unwrap().dimensions(), (45, 37));
    assert_eq!(s.decode(find("greyalpha.png")).unwrap().get_pixel(1, 1).0, [10; 3]);
    assert_eq!(s.decode(find("rgba.png")).unwrap().get_pixel(5, 6).0, [5, 6, 200], "alpha is dropped");
    let deep = s.decode(find("deep.png")).unwrap();
    assert_eq!(deep.get_pixel(0, 0).0, [0, 0, 128], "16-bit is scaled to 8");
    assert_eq!(deep.get_pixel(26, 34).0[0], (26.0f64 * 2000.0 / 257.0).round() as u8);
    assert_eq!(s.decode(find("UPPER.JPG")).unwrap().dimensions(), (52, 39));
}

#[test]
fn batches_are_the_same_whatever_the_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let inline = loader(tmp.path(), 4, 0, false);
    assert_eq!(inline.batches_per_epoch(), 3, "14 images, batches of 4, the short one dropped");
    let want: Vec<_> = (0..2).map(|e| epoch(&inline, e, 0)).collect();
    for workers in [1, 3] {
        let l = loader(tmp.path(), 4, workers, false);
        for (e, want) in want.iter().enumerate() {
            assert_eq!(&epoch(&l, e as u64, 0), want, "{workers} workers, epoch {e}");
        }
    }
    let b = &want[0][1];
    assert_eq!((b.images.len(), b.labels.len(), b.epoch, b.index), (4 * 48, 4, 0, 1));
    assert_ne!(want[0], want[1], "each epoch has its own order and draws");
    // Without drop_last, the short last batch comes too.
    let mut l = loader(tmp.path(), 4, 2, false);
    l = StreamLoader::new(
        l.stream().clone(),
        StreamLoaderOptions { drop_last: false, ..l.options().clone() },
        grid_transform(),
    )
    .unwrap();
    let all = epoch(&l, 0, 0);
    assert_eq!(all.iter().map(|b| b.labels.len()).collect::<Vec<_>>(), [4, 4, 4, 2]);
    assert_eq!(&all[..3], &want[0][..], "the same images and draws as with drop_last");
}

#[test]
fn a_mid_epoch_resume_sees_the_same_batches() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    for workers in [1, 3] {
        let l = loader(tmp.path(), 3, workers, false);
        let full = epoch(&l, 5, 0);
        assert_eq!(full.len(), 4);
        for start in 0..=4 {
            assert_eq!(epoch(&l, 5, start), full[start..], "{workers} workers, resumed at batch {start}");
        }
        assert_eq!(l.batch(5, 2).unwrap(), full[2]);
        // The trainer's view of the same loader.
        let via_trait: Vec<_> = BatchSource::epoch_from(&l, 5, 1).map(|b| b.unwrap()).collect();
        assert_eq!(via_trait, full[1..]);
        // Dropping an epoch early stops its workers without disturbing the next one.
        let mut it = l.epoch_from(5, 0);
        assert_eq!(it.next().unwrap().unwrap(), full[0]);
        drop(it);
        assert_eq!(epoch(&l, 5, 3), full[3..]);
    }
}

#[test]
fn an_empty_class_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let empty = tmp.path().join("train/fox");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.md"), "no images here").unwrap();
    let m = data_err(ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()));
    assert!(m.contains(&empty.display().to_string()) && m.contains("no .png, .jpg or .jpeg"), "{m}");
}

#[test]
fn a_val_class_missing_from_train_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    save(&tmp.path().join("val/yak/y.png"), DynamicImage::ImageRgb8(rgb(8, 8, 1)));
    let m = data_err(ImageFolderStream::open(tmp.path(), Split::Val, StreamOptions::default()));
    assert!(m.contains(&tmp.path().join("val/yak").display().to_string()), "{m}");
    assert!(m.contains("training set does not have") && m.contains("cat, dog, emu"), "{m}");
    // Train alone still opens.
    ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()).unwrap();
}

/// CRC-32 (IEEE) of `bytes`, for a PNG chunk.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A small valid PNG whose header is rewritten to claim `w`×`h` pixels.
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(rgb(8, 8, 0))
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), width, height, 5 more bytes, CRC.
    assert_eq!(&bytes[12..16], b"IHDR");
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A small valid baseline JPEG whose frame header is rewritten to claim `w`×`h` pixels.
fn bomb_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = jpeg(rgb(16, 16, 0));
    let sof = bytes.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
    // Marker (2), length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

fn jpeg(img: image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
    bytes
}

/// Adds to `dir/train/dog` a corrupt file, a truncated PNG and JPEG and two decompression
/// bombs (PNG and JPEG); returns their paths, the bombs first.
fn add_bad_files(dir: &Path) -> Vec<PathBuf> {
    let d = dir.join("train/dog");
    let jpeg_bomb = d.join("bomb.jpeg");
    std::fs::write(&jpeg_bomb, bomb_jpeg(30_000, 30_000)).unwrap();
    let truncated_jpeg = d.join("truncated.jpg");
    let noisy = ImageBuffer::from_fn(64, 64, |x, y| Rgb([(x * y % 251) as u8, (x ^ y) as u8, (x * 7 + y * 3) as u8]));
    let whole = jpeg(noisy);
    std::fs::write(&truncated_jpeg, &whole[..whole.len() * 2 / 3]).unwrap();
    let corrupt = d.join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xFF\xD8\xFF this is not really a JPEG").unwrap();
    let truncated = d.join("truncated.png");
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(rgb(60, 60, 5))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    let bomb = d.join("bomb.png");
    std::fs::write(&bomb, bomb_png(30_000, 30_000)).unwrap();
    vec![bomb, jpeg_bomb, corrupt, truncated, truncated_jpeg]
}

#[test]
fn bad_images_are_named_and_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let bad = add_bad_files(tmp.path());
    let s = ImageFolderStream::open(tmp.path(), Split::Train, StreamOptions::default()).unwrap();
    assert_eq!(s.len(), 19);
    let index = |p: &Path| (0..s.len()).find(|&i| s.path(i) == p).unwrap();
    for p in &bad[..2] {
        let m = data_err(s.decode(index(p)));
        assert!(m.contains(&p.display().to_string()) && m.contains("decompression bomb"), "{m}");
    }
    for p in &bad[2..] {
        let m = data_err(s.decode(index(p)));
        assert!(m.contains(&p.display().to_string()) && m.contains("corrupt, truncated"), "{m}");
    }
    // A real image over a tighter memory limit is refused the same way.
    let tight = ImageFolderStream::open(
        tmp.path(),
        Split::Train,
        StreamOptions { max_decode_bytes: 1000, ..Default::default() },
    )
    .unwrap();
    let m = data_err(tight.decode(index(&tmp.path().join("train/cat/2.png"))));
    assert!(m.contains("2.png") && m.contains("too large"), "{m}");
    let m = data_err(tight.decode(index(&tmp.path().join("train/cat/1.jpg"))));
    assert!(m.contains("1.jpg") && m.contains("too large"), "{m}");

    // Without skipping, the epoch ends with the first bad file it meets, by name.
    for workers in [0, 1, 3] {
        let l = loader(tmp.path(), 19, workers, false);
        let mut it = l.epoch(0);
        let m = data_err(it.next().unwrap());
        assert!(bad.iter().any(|p| m.contains(&p.display().to_string())), "{m}");
        assert!(it.next().is_none(), "an error ends the epoch");
    }
}

#[test]
fn skipped_bad_images_are_counted_and_batches_stay_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path());
    let mut bad = add_bad_files(tmp.path());
    bad.sort();
    let want: Vec<_> = {
        let l = loader(tmp.path(), 4, 0, true);
        let e: Vec<_> = (0..3).map(|e| epoch(&l, e, 0)).collect();
        assert_eq!(l.bad_images(), bad);
        e
    };
    for b in want.iter().flatten() {
        assert_eq!(b.labels.len(), 4, "a skipped image is replaced, so batches keep their size");
    }
    for workers in [1, 3] {
        let l = loader(tmp.path(), 4, workers, true);
        for (e, want) in want.iter().enumerate() {
            assert_eq!(&epoch(&l, e as u64, 0), want, "{workers} workers, epoch {e}");
            assert_eq!(epoch(&l, e as u64, 2), want[2..], "{workers} workers, epoch {e} resumed");
        }
        assert_eq!(l.bad_images(), bad);
    }
}
