//! The data module: both on-disk layouts and their errors, the download against a local
//! server, the loader's determinism and order, augmentation, the validation split and the
//! synthetic set. Everything runs on files the tests write; nothing needs a GPU or a network
//! beyond 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use densegpu::data::{
    crop_flip, detect_layout, download_cifar10, load, load_cifar10_binary, load_image_folder, parse_cifar10_batch,
    synthetic, BatchLoader, CropFlip, Dataset, Layout, LoaderOptions, Normalization, CIFAR10_CLASSES, CIFAR10_MEAN,
    CIFAR10_STD, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, SYNTHETIC_CLASSES,
};
use densegpu::Error;

const PIXELS: usize = 3 * 32 * 32;

/// A record whose pixels encode (`tag`, position), so each image is recognisable.
fn record(label: u8, tag: u32) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..PIXELS as u32).map(|p| ((p * 7 + tag * 31) % 251) as u8));
    r
}

/// Writes the six batch files into `dir`, `per_file` records each; returns the records in
/// file order (train files 1..5, then test).
fn write_binary(dir: &Path, per_file: usize) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let mut all = Vec::new();
    for (f, name) in CIFAR10_TRAIN_FILES.iter().chain([&CIFAR10_TEST_FILE]).enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let tag = (f * 100 + i) as u32;
            let r = record(((f * 3 + i) % 10) as u8, tag);
            bytes.extend_from_slice(&r);
            all.push(r);
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    all
}

fn message(e: Error) -> String {
    match e {
        Error::Data(m) | Error::Config(m) => m,
        other => panic!("expected a data or configuration error, got {other:?}"),
    }
}

fn data_err<T: std::fmt::Debug>(r: densegpu::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(Error::Data(m)) => m,
        Err(other) => panic!("expected Error::Data, got {other:?}"),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

#[test]
fn cifar_binary_loads_in_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let records = write_binary(tmp.path(), 3);
    assert_eq!(detect_layout(tmp.path()).unwrap(), Layout::CifarBinary(tmp.path().to_path_buf()));
    let data = load(tmp.path()).unwrap();
    assert_eq!(data.train.len(), 15);
    assert_eq!(data.test.len(), 3);
    assert_eq!((data.train.height, data.train.width), (32, 32));
    assert_eq!(data.train.classes, CIFAR10_CLASSES.map(String::from).to_vec());
    for (i, r) in records[..15].iter().enumerate() {
        assert_eq!(data.train.labels[i], r[0] as u32, "train label {i}");
        assert_eq!(data.train.image(i), &r[1..], "train image {i}");
    }
    for (i, r) in records[15..].iter().enumerate() {
        assert_eq!(data.test.labels[i], r[0] as u32);
        assert_eq!(data.test.image(i), &r[1..]);
    }
}

#[test]
fn cifar_binary_inside_archive_folder_and_meta_names() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("cifar-10-batches-bin");
    write_binary(&inner, 1);
    let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    std::fs::write(inner.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    assert_eq!(detect_layout(tmp.path()).unwrap(), Layout::CifarBinary(inner.clone()));
    let data = load(tmp.path()).unwrap();
    assert_eq!(data.train.len(), 5);
    assert_eq!(data.test.classes, names);
}

#[test]
fn cifar_binary_errors_name_file_and_problem() {
    let one = record(3, 1);
    let mut truncated = one.clone();
    truncated.extend_from_slice(&one[..100]);
    let msg = message(parse_cifar10_batch(&truncated, "data_batch_2.bin").unwrap_err());
    assert_mentions(&msg, &["data_batch_2.bin", "3173 bytes", "3073", "truncated"]);
    let msg = message(parse_cifar10_batch(&[], "empty.bin").unwrap_err());
    assert_mentions(&msg, &["empty.bin", "0 bytes"]);

    let mut bad = one.clone();
    bad.extend(record(10, 2));
    let msg = message(parse_cifar10_batch(&bad, "test_batch.bin").unwrap_err());
    assert_mentions(&msg, &["test_batch.bin", "record 1", "label 10", "0..9"]);
    assert_eq!(parse_cifar10_batch(&one, "x").unwrap().labels, vec![3]);

    // The same problems through files, which must be named by path.
    let tmp = tempfile::tempdir().unwrap();
    write_binary(tmp.path(), 2);
    let bad_path = tmp.path().join("data_batch_4.bin");
    std::fs::write(&bad_path, &truncated).unwrap();
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &[&bad_path.display().to_string(), "3073"]);

    write_binary(tmp.path(), 2);
    std::fs::remove_file(tmp.path().join("test_batch.bin")).unwrap();
    let msg = data_err(load_cifar10_binary(tmp.path()));
    assert_mentions(&msg, &["test_batch.bin", "cannot read", "not found", "--download"]);
    // The error says what happened, not only that it did.
    std::fs::create_dir(tmp.path().join("test_batch.bin")).unwrap();
    let msg = data_err(load_cifar10_binary(tmp.path()));
    assert_mentions(&msg, &["test_batch.bin", "is a directory"]);
    assert!(!msg.contains("permission"), "{msg}");
}

fn save(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

fn pattern(tag: u32) -> impl Fn(u32, u32) -> [u8; 3] {
    move |x, y| [(x * 8 + tag) as u8, (y * 8) as u8, (x * 3 + y * 5 + tag * 40) as u8]
}

#[test]
fn image_folder_loads_sorted_classes_as_nchw() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Written out of order: classes and files must come back sorted by name.
    save(&root.join("train/zebra/b.png"), 32, 32, pattern(3));
    save(&root.join("train/zebra/a.png"), 32, 32, pattern(2));
    save(&root.join("train/ant/only.png"), 32, 32, pattern(1));
    save(&root.join("train/ant/photo.JPG"), 32, 32, |_, _| [200, 40, 90]);
    std::fs::write(root.join("train/ant/notes.txt"), "not an image").unwrap();
    save(&root.join("test/zebra/t.jpeg"), 32, 32, |_, _| [10, 120, 250]);

    assert_eq!(detect_layout(root).unwrap(), Layout::ImageFolder(root.to_path_buf()));
    let data = load(root).unwrap();
    assert_eq!(data.train.classes, vec!["ant", "zebra"]);
    assert_eq!(data.train.labels, vec![0, 0, 1, 1]);
    assert_eq!(data.test.labels, vec![1]);
    assert_eq!(data.test.classes, data.train.classes);

    // PNG is lossless: every byte is known, laid out as R plane, G plane, B plane.
    let check = |img: &[u8], tag: u32| {
        let f = pattern(tag);
        for y in 0..32u32 {
            for x in 0..32u32 {
                let p = (y * 32 + x) as usize;
                let rgb = f(x, y);
                assert_eq!([img[p], img[1024 + p], img[2048 + p]], rgb, "pixel ({x},{y}) of pattern {tag}");
            }
        }
    };
    check(data.train.image(0), 1);
    check(data.train.image(2), 2);
    check(data.train.image(3), 3);
    // JPEG is lossy; a flat colour survives within a few levels.
    let jpg = data.train.image(1);
    for (c, want) in [200i32, 40, 90].into_iter().enumerate() {
        let got = jpg[c * 1024 + 500] as i32;
        assert!((got - want).abs() <= 6, "jpeg channel {c}: {got} vs {want}");
    }
}

#[test]
fn image_folder_declared_size() {
    let tmp = tempfile::tempdir().unwrap();
    save(&tmp.path().join("train/a/x.png"), 16, 8, pattern(0));
    save(&tmp.path().join("test/a/y.png"), 16, 8, pattern(0));
    let data = load_image_folder(tmp.path(), 8, 16).unwrap();
    assert_eq!((data.train.height, data.train.width, data.train.image(0).len()), (8, 16, 3 * 128));
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &["x.png", "16x8", "32x32", "resize it to 32x32", "every image of a dataset"]);
    // No option to declare another size exists on the command line; the message offers none.
    assert!(!msg.contains("declare"), "{msg}");
}

#[test]
fn image_folder_errors_name_file_and_problem() {
    let make = || {
        let tmp = tempfile::tempdir().unwrap();
        save(&tmp.path().join("train/cat/1.png"), 32, 32, pattern(0));
        save(&tmp.path().join("train/dog/1.png"), 32, 32, pattern(1));
        save(&tmp.path().join("test/cat/1.png"), 32, 32, pattern(2));
        load(tmp.path()).expect("the valid folder loads");
        tmp
    };

    let tmp = make();
    let bad = tmp.path().join("train/dog/2.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &[&bad.display().to_string(), "cannot decode"]);

    let tmp = make();
    let big = tmp.path().join("test/cat/2.png");
    save(&big, 64, 48, pattern(0));
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &[&big.display().to_string(), "64x48", "32x32"]);

    let tmp = make();
    let empty = tmp.path().join("train/emu");
    std::fs::create_dir_all(&empty).unwrap();
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &[&empty.display().to_string(), "no .png"]);

    let tmp = make();
    save(&tmp.path().join("test/horse/1.png"), 32, 32, pattern(0));
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &["horse", "training set does not have", "cat, dog"]);

    let tmp = make();
    std::fs::remove_dir_all(tmp.path().join("test")).unwrap();
    let msg = data_err(load(tmp.path()));
    assert_mentions(&msg, &[&tmp.path().join("test").display().to_string(), "missing"]);
}

#[test]
fn missing_and_unrecognised_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let msg = data_err(load(&missing));
    assert_mentions(&msg, &[&missing.display().to_string(), "does not exist", "--download"]);

    std::fs::write(tmp.path().join("readme.md"), "hi").unwrap();
    std::fs::create_dir(tmp.path().join("images")).unwrap();
    let msg = data_err(load(tmp.path()));
    assert_mentions(
        &msg,
        &[
            &tmp.path().display().to_string(),
            "data_batch_1.bin",
            "test_batch.bin",
            "train/<class>",
            "images, readme.md",
        ],
    );

    let msg = data_err(load(tmp.path().join("readme.md")));
    assert_mentions(&msg, &["readme.md", "not a dataset directory"]);
}

// ---- download against a server on 127.0.0.1 that this test starts --------------------------

/// Serves `responses` in order, one per connection, then stops; also stops after 30 s
/// whatever happens. Returns the URL and the number of requests served.
fn serve(responses: Vec<(u16, Vec<u8>)>) -> (String, thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        let mut queue = responses.into_iter().peekable();
        while queue.peek().is_some() && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, body) = queue.next().unwrap();
                    let reason = if status == 200 { "OK" } else { "Internal Server Error" };
                    let head = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        served
    });
    (url, handle)
}

/// A .tar.gz shaped like the official one: `cifar-10-batches-bin/` with the six batches.
fn make_archive(per_file: usize) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    write_binary(&tmp.path().join("cifar-10-batches-bin"), per_file);
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    builder.append_dir_all("cifar-10-batches-bin", tmp.path().join("cifar-10-batches-bin")).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(bytes))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn download_verifies_and_unpacks() {
    let archive = make_archive(2);
    let (url, server) = serve(vec![(200, archive.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar");
    let out = download_cifar10(&url, &dir, &md5_hex(&archive).to_uppercase()).unwrap();
    assert_eq!(out, dir.join("cifar-10-batches-bin"));
    assert_eq!(server.join().unwrap(), 1);
    assert_eq!(entries(&dir), vec!["cifar-10-batches-bin"], "only the unpacked data is left");
    let data = load(&dir).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (10, 2));

    // A complete folder is not fetched again: this URL has no server behind it.
    let (dead_url, dead) = serve(vec![]);
    dead.join().unwrap();
    assert_eq!(download_cifar10(&dead_url, &dir, "0").unwrap(), out);
}

#[test]
fn download_checksum_mismatch_removes_partial_file() {
    let archive = make_archive(1);
    let good = md5_hex(&archive);
    let wrong = "0123456789abcdef0123456789abcdef";
    let (url, server) = serve(vec![(200, archive)]);
    let tmp = tempfile::tempdir().unwrap();
    let msg = data_err(download_cifar10(&url, tmp.path(), wrong));
    server.join().unwrap();
    assert_mentions(&msg, &[&good, wrong, &url, "MD5"]);
    assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
}

#[test]
fn download_server_error_and_bad_archive() {
    let (url, server) = serve(vec![(500, b"oops".to_vec())]);
    let tmp = tempfile::tempdir().unwrap();
    let msg = data_err(download_cifar10(&url, tmp.path(), "c58f30108f718f92721af3b95e74349a"));
    server.join().unwrap();
    assert_mentions(&msg, &[&url, "HTTP 500"]);
    assert!(entries(tmp.path()).is_empty());

    // The right checksum of something that is not the CIFAR archive.
    let junk = b"not a tarball".to_vec();
    let (url, server) = serve(vec![(200, junk.clone())]);
    let msg = data_err(download_cifar10(&url, tmp.path(), &md5_hex(&junk)));
    server.join().unwrap();
    assert_mentions(&msg, &[&url, "unpack"]);
    assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
}

// ---- loader ------------------------------------------------------------------------------

fn run_epochs(loader: &BatchLoader, epochs: u64) -> Vec<(Vec<f32>, Vec<u32>)> {
    (0..epochs).flat_map(|e| loader.epoch(e).map(|b| (b.images, b.labels))).collect()
}

#[test]
fn loader_is_deterministic_with_prefetch() {
    let data = synthetic(100, 0, 5).train;
    let opts = |seed, prefetch| LoaderOptions { prefetch, ..LoaderOptions::train(16, seed) };
    let a = run_epochs(&BatchLoader::new(data.clone(), opts(7, 2)).unwrap(), 2);
    let b = run_epochs(&BatchLoader::new(data.clone(), opts(7, 3)).unwrap(), 2);
    let inline = run_epochs(&BatchLoader::new(data.clone(), opts(7, 0)).unwrap(), 2);
    assert_eq!(a.len(), 12, "100 / 16 = 6 full batches per epoch, last one dropped");
    assert!(a.iter().all(|(img, l)| l.len() == 16 && img.len() == 16 * PIXELS));
    assert_eq!(a, b);
    assert_eq!(a, inline);
    assert_ne!(a[..6], a[6..], "epochs differ");
    let other = run_epochs(&BatchLoader::new(data.clone(), opts(8, 2)).unwrap(), 2);
    assert_ne!(a, other, "a different seed gives different batches");

    // Resuming mid-epoch gives the batches an uninterrupted run saw.
    let loader = BatchLoader::new(data.clone(), opts(7, 2)).unwrap();
    let resumed: Vec<_> = loader.epoch_from(1, 4).map(|b| (b.images, b.labels)).collect();
    assert_eq!(resumed, a[10..]);
    assert_eq!(loader.epoch_from(1, 4).next().unwrap().index, 4);
    assert_eq!(loader.batch(1, 5).labels, a[11].1);
    // An epoch dropped early stops its prefetch thread instead of hanging.
    let mut it = loader.epoch(0);
    it.next();
    drop(it);

    // Augmentation alone (no shuffling) still changes from epoch to epoch, reproducibly.
    let fixed = BatchLoader::new(data.clone(), LoaderOptions { shuffle: false, ..opts(7, 0) }).unwrap();
    assert_eq!(fixed.batch(0, 0), fixed.batch(0, 0));
    assert_eq!(fixed.batch(0, 0).labels, fixed.batch(1, 0).labels);
    assert_ne!(fixed.batch(0, 0).images, fixed.batch(1, 0).images);

    // Shuffled, every image appears once per epoch.
    let mut order = loader.order(3);
    order.sort_unstable();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
}

#[test]
fn unshuffled_batches_follow_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let records = write_binary(tmp.path(), 3);
    let train = load(tmp.path()).unwrap().train;
    let loader = BatchLoader::new(train, LoaderOptions::eval(4)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 4);
    let batches: Vec<_> = loader.epoch(0).collect();
    assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 4, 3]);
    let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    let images: Vec<f32> = batches.iter().flat_map(|b| b.images.clone()).collect();
    let mut want = Vec::new();
    for r in &records[..15] {
        for (i, &v) in r[1..].iter().enumerate() {
            let c = i / 1024;
            want.push((v as f32 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]);
        }
    }
    assert_eq!(labels, records[..15].iter().map(|r| r[0] as u32).collect::<Vec<_>>());
    assert_eq!(images.len(), want.len());
    for (i, (g, w)) in images.iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-5, "value {i}: {g} vs {w}");
    }
}

#[test]
fn crop_and_flip_give_known_pixels() {
    // 4x4 image with one value per (channel, y, x).
    let (h, w, pad) = (4, 4, 1);
    let src: Vec<u8> = (0..3 * h * w).map(|i| i as u8 + 1).collect();
    let mut dst = vec![0u8; src.len()];
    crop_flip(&src, &mut dst, h, w, pad, CropFlip::identity(pad));
    assert_eq!(dst, src);

    // Window at (0,0) of the padded image: shift right and down by one, zeros enter.
    crop_flip(&src, &mut dst, h, w, pad, CropFlip { x: 0, y: 0, flip: false });
    #[rustfmt::skip]
    assert_eq!(&dst[..16], &[0, 0, 0, 0,
                             0, 1, 2, 3,
                             0, 5, 6, 7,
                             0, 9, 10, 11]);
    assert_eq!(&dst[16..20], &[0, 0, 0, 0]);
    assert_eq!(dst[16 + 5], 17);

    // Window at (2,1) then mirrored: crop shifts left by one, flip reverses each row.
    crop_flip(&src, &mut dst, h, w, pad, CropFlip { x: 2, y: 1, flip: true });
    #[rustfmt::skip]
    assert_eq!(&dst[..16], &[0, 4, 3, 2,
                             0, 8, 7, 6,
                             0, 12, 11, 10,
                             0, 16, 15, 14]);
}

#[test]
fn augmented_padding_is_zero_before_normalisation() {
    // All-white images: a loaded value is either white or padding, normalised.
    let data = Dataset {
        images: vec![255; 64 * PIXELS],
        labels: vec![0; 64],
        classes: vec!["white".into()],
        height: 32,
        width: 32,
    };
    let loader = BatchLoader::new(data, LoaderOptions::train(64, 1)).unwrap();
    let batch = loader.batch(0, 0);
    let (mut padded, mut pad_rows) = (0, 0);
    for (n, img) in batch.images.chunks_exact(PIXELS).enumerate() {
        for c in 0..3 {
            let white = (1.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
            let zero = -CIFAR10_MEAN[c] / CIFAR10_STD[c];
            let plane = &img[c * 1024..(c + 1) * 1024];
            for &v in plane {
                assert!(v == white || v == zero, "image {n} channel {c}: {v} is neither {white} nor {zero}");
            }
            padded += plane.iter().filter(|&&v| v == zero).count();
            // The padding forms whole rows and columns of at most 4 pixels each side.
            let zero_cols = (0..32).filter(|&x| (0..32).all(|y| plane[y * 32 + x] == zero)).count();
            let zero_rows = (0..32).filter(|&y| plane[y * 32..y * 32 + 32].iter().all(|&v| v == zero)).count();
            assert!(zero_cols <= 4 && zero_rows <= 4);
            pad_rows += zero_rows;
        }
    }
    assert!(padded > 0 && pad_rows > 0, "64 random crops of padding 4 include some padding");
    let plain = BatchLoader::new(loader.dataset().clone(), LoaderOptions::eval(64)).unwrap().batch(0, 0);
    assert!(plain.images.iter().all(|&v| v > 1.0), "no padding without augmentation");
    let mut n = vec![0f32; PIXELS];
    Normalization::NONE.apply(&[255u8; PIXELS], &mut n);
    assert!(n.iter().all(|&v| v == 1.0));
}

#[test]
fn validation_split_is_deterministic_and_disjoint() {
    let mut data = synthetic(200, 0, 1).train;
    // Make each image identifiable by its first byte.
    for i in 0..data.len() {
        let n = data.image_bytes();
        data.images[i * n] = i as u8;
    }
    let (train, valid) = data.split_validation(50, 9).unwrap();
    assert_eq!((train.len(), valid.len()), (150, 50));
    let ids = |d: &Dataset| (0..d.len()).map(|i| d.image(i)[0] as usize).collect::<Vec<_>>();
    let (t, v) = (ids(&train), ids(&valid));
    assert!(t.windows(2).all(|w| w[0] < w[1]) && v.windows(2).all(|w| w[0] < w[1]), "original order kept");
    let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>());
    assert_eq!(data.split_validation(50, 9).unwrap().1, valid);
    assert_ne!(ids(&data.split_validation(50, 10).unwrap().1), v);
    let (all_train, none) = data.split_validation(0, 9).unwrap();
    assert_eq!((all_train, none.len()), (data.clone(), 0));
    assert!(data.split_validation(200, 9).is_err());
}

#[test]
fn synthetic_is_deterministic_balanced_and_learnable() {
    let a = synthetic(2000, 500, 42);
    assert_eq!(a, synthetic(2000, 500, 42));
    assert_ne!(a.train.images, synthetic(2000, 500, 43).train.images);
    assert_ne!(a.train.images[..PIXELS * 10], a.test.images[..PIXELS * 10], "train and test differ");
    assert_eq!(a.train.class_counts(), vec![200; 10]);
    assert_eq!(a.test.class_counts(), vec![50; 10]);
    assert_eq!(synthetic(23, 0, 1).train.class_counts(), vec![3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
    assert_eq!(a.train.classes, SYNTHETIC_CLASSES.map(String::from).to_vec());

    // Nearest class mean on raw pixels: far above the 10% of guessing, so the classes carry
    // real signal, yet far from perfect, so a network has more to learn.
    let mut means = vec![vec![0f64; PIXELS]; 10];
    for i in 0..a.train.len() {
        let m = &mut means[a.train.labels[i] as usize];
        for (s, &v) in m.iter_mut().zip(a.train.image(i)) {
            *s += v as f64 / 200.0;
        }
    }
    let correct = (0..a.test.len())
        .filter(|&i| {
            let img = a.test.image(i);
            let dist = |m: &Vec<f64>| m.iter().zip(img).map(|(a, &b)| (a - b as f64).powi(2)).sum::<f64>();
            let best = (0..10).min_by(|&x, &y| dist(&means[x]).total_cmp(&dist(&means[y]))).unwrap();
            best as u32 == a.test.labels[i]
        })
        .count();
    let accuracy = correct as f64 / a.test.len() as f64;
    eprintln!("synthetic nearest-class-mean accuracy: {accuracy:.3}");
    assert!(accuracy > 0.3, "nearest-class-mean accuracy {accuracy}");
}

#[test]
fn loader_rejects_bad_options() {
    let data = synthetic(10, 0, 0).train;
    let msg = message(BatchLoader::new(data.clone(), LoaderOptions::train(0, 0)).err().unwrap());
    assert_mentions(&msg, &["batch size 0"]);
    let mut broken = data;
    broken.labels[3] = 12;
    let msg = message(BatchLoader::new(broken, LoaderOptions::train(4, 0)).err().unwrap());
    assert_mentions(&msg, &["image 3", "label 12"]);
}

/// Manual timing check on the real image folder: `cargo test --release --test data --
/// --ignored --nocapture shared_cifar10_timing`.
#[test]
#[ignore]
fn shared_cifar10_timing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cifar10");
    let t = Instant::now();
    let data = load(&dir).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
    assert_eq!(data.train.class_counts(), vec![5000; 10]);
    let loader = BatchLoader::new(data.train, LoaderOptions::train(64, 0)).unwrap();
    let t = Instant::now();
    let batches = loader.epoch(0).count();
    eprintln!(
        "loaded {dir:?} in {load_s:.2} s; one augmented epoch of {batches} batches in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}
