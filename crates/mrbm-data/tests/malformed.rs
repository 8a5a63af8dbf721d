//! Every malformed-input case gives a typed error that names the file (and
//! never panics).

use std::io::Write;
use std::path::{Path, PathBuf};

use mrbm_data::folder::{self, decode_items, Item};
use mrbm_data::ops::{Crop, ImageOps, Size};
use mrbm_data::{cifar, idx, load_dataset, Ctl, DataError, DatasetParams, Split};

fn idx_bytes(ty: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A valid pair: 3 images of 2x2, labels 0, 1, 2.
fn good_pair() -> (Vec<u8>, Vec<u8>) {
    (
        idx_bytes(8, &[3, 2, 2], &(0..12).collect::<Vec<u8>>()),
        idx_bytes(8, &[3], &[0, 1, 2]),
    )
}

fn names(err: &DataError, file: &str) {
    let msg = err.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
}

#[test]
fn idx_valid_pair_reads_raw_and_gzip() {
    let d = tempfile::tempdir().unwrap();
    let (im, lb) = good_pair();
    let a = idx::read_idx(&write(d.path(), "i", &im), &write(d.path(), "l", &lb)).unwrap();
    let b = idx::read_idx(
        &write(d.path(), "i.gz", &gz(&im)),
        &write(d.path(), "l.gz", &gz(&lb)),
    )
    .unwrap();
    assert_eq!(a.shape(), [3, 1, 2, 2]);
    assert_eq!(a.pixels(), b.pixels());
    assert_eq!(b.labels, vec![0, 1, 2]);
    assert_eq!(a.image(2), &[8, 9, 10, 11]);
}

#[test]
fn idx_truncated_file() {
    let d = tempfile::tempdir().unwrap();
    let (im, lb) = good_pair();
    let p = write(d.path(), "short-images-idx3-ubyte", &im[..im.len() - 5]);
    let e = idx::read_idx(&p, &write(d.path(), "l", &lb)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                offset: 23,
                expected: 28,
                actual: 23,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, "short-images-idx3-ubyte");
    // Shorter than the magic number, and inside the dimensions.
    for cut in [2, 9] {
        let p = write(d.path(), "tiny", &im[..cut]);
        let e = idx::read_idx(&p, &write(d.path(), "l", &lb)).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
        names(&e, "tiny");
    }
}

#[test]
fn idx_truncated_gzip_stream() {
    let d = tempfile::tempdir().unwrap();
    let (im, lb) = good_pair();
    let z = gz(&im);
    let p = write(d.path(), "cut-images.gz", &z[..z.len() / 2]);
    let e = idx::read_idx(&p, &write(d.path(), "l", &lb)).unwrap_err();
    assert!(matches!(e, DataError::Gzip { .. }), "{e:?}");
    names(&e, "cut-images.gz");
}

#[test]
fn idx_wrong_magic_type_and_rank() {
    let d = tempfile::tempdir().unwrap();
    let (im, lb) = good_pair();
    let l = write(d.path(), "labels", &lb);
    let mut bad = im.clone();
    bad[0] = 0x1a;
    let e = idx::read_idx(&write(d.path(), "magic", &bad), &l).unwrap_err();
    assert!(matches!(e, DataError::BadHeader { offset: 0, .. }), "{e:?}");
    names(&e, "magic");
    let mut bad = im.clone();
    bad[2] = 0x0d; // float data
    let e = idx::read_idx(&write(d.path(), "type", &bad), &l).unwrap_err();
    assert!(matches!(e, DataError::BadHeader { offset: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("0x08"), "{e}");
    // Images and labels swapped: a 1-d file where a 3-d one belongs.
    let e = idx::read_idx(&l, &write(d.path(), "images", &im)).unwrap_err();
    assert!(matches!(e, DataError::BadHeader { offset: 3, .. }), "{e:?}");
    names(&e, "labels");
}

#[test]
fn idx_counts_disagree() {
    let d = tempfile::tempdir().unwrap();
    let (im, _) = good_pair();
    let lb = idx_bytes(8, &[4], &[0, 1, 2, 3]);
    let e =
        idx::read_idx(&write(d.path(), "imgs", &im), &write(d.path(), "lbls", &lb)).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                n_images: 3,
                n_labels: 4,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, "imgs");
    names(&e, "lbls");
}

#[test]
fn idx_trailing_bytes_and_overflowing_dims() {
    let d = tempfile::tempdir().unwrap();
    let (mut im, lb) = good_pair();
    im.extend_from_slice(&[0; 7]);
    let l = write(d.path(), "l", &lb);
    let e = idx::read_idx(&write(d.path(), "long", &im), &l).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::TrailingBytes {
                offset: 28,
                extra: 7,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, "long");
    let huge = idx_bytes(8, &[u32::MAX, u32::MAX, u32::MAX], &[]);
    let e = idx::read_idx(&write(d.path(), "huge", &huge), &l).unwrap_err();
    assert!(
        matches!(e, DataError::BadHeader { .. } | DataError::Truncated { .. }),
        "{e:?}"
    );
    names(&e, "huge");
}

fn cifar_record(label: u8, fill: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend(std::iter::repeat_n(fill, cifar::PIXELS));
    r
}

#[test]
fn cifar_reads_and_rejects_bad_sizes_and_labels() {
    let d = tempfile::tempdir().unwrap();
    let mut good = cifar_record(3, 7);
    good.extend(cifar_record(9, 1));
    let set = cifar::read_cifar10(&write(d.path(), "ok.bin", &good), true).unwrap();
    assert_eq!(set.shape(), [2, 3, 32, 32]);
    assert_eq!(set.labels, vec![3, 9]);
    assert_eq!(set.image(1)[3071], 1);

    let e = cifar::read_cifar10(&write(d.path(), "odd.bin", &good[..good.len() - 1]), true)
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadRecordSize {
                size: 6145,
                record: 3073,
                rest: 3072,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, "odd.bin");

    let mut bad = cifar_record(3, 7);
    bad.extend(cifar_record(12, 0));
    let e = cifar::read_cifar10(&write(d.path(), "label.bin", &bad), true).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadLabel {
                offset: 3073,
                index: 1,
                value: 12,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, "label.bin");

    let e = cifar::read_cifar10(&write(d.path(), "empty.bin", &[]), true).unwrap_err();
    assert!(matches!(e, DataError::NoImages { .. }), "{e:?}");
    names(&e, "empty.bin");

    // A folder missing its batches names the first file it expected.
    let e = cifar::read_cifar10(d.path(), false).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    names(&e, "test_batch.bin");
}

/// A small real JPEG (w x h, a colour ramp).
fn jpeg(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 128]))
        .save(&p)
        .unwrap();
    p
}

fn items(paths: &[PathBuf]) -> Vec<Item> {
    paths
        .iter()
        .map(|p| Item {
            path: p.clone(),
            label: 0,
        })
        .collect()
}

#[test]
fn corrupt_jpeg_in_folder_is_an_error_or_skipped() {
    let d = tempfile::tempdir().unwrap();
    let a = jpeg(d.path(), "cls/a.jpg", 20, 16);
    let junk = write(d.path(), "cls/junk.jpg", b"this is not a jpeg at all");
    let full = std::fs::read(&a).unwrap();
    let cut = write(d.path(), "cls/cut.jpg", &full[..full.len() / 2]);
    // A JPEG header followed by garbage where the frame header belongs.
    let mut mangled = full[..20].to_vec();
    mangled.extend(std::iter::repeat_n(0x55u8, 400));
    mangled.extend_from_slice(&[0xFF, 0xD9]);
    let mangled = write(d.path(), "cls/mangled.jpg", &mangled);
    for bad in [&junk, &cut, &mangled] {
        let e = decode_items(
            &items(&[a.clone(), bad.clone()]),
            &ImageOps::default(),
            false,
            &Ctl::default(),
        )
        .unwrap_err();
        assert!(matches!(e, DataError::CorruptImage { .. }), "{e:?}");
        names(&e, bad.file_name().unwrap().to_str().unwrap());
    }
    // skip_corrupt: a warning list with a count, the good image kept.
    let out = decode_items(
        &items(&[junk.clone(), a.clone(), cut.clone(), mangled.clone()]),
        &ImageOps::default(),
        true,
        &Ctl::default(),
    )
    .unwrap();
    assert_eq!(out.set.n, 1);
    assert_eq!(out.skipped.len(), 3);
    assert_eq!(out.skipped[0].0, junk);
    // Through the folder reader too.
    let p = DatasetParams {
        skip_corrupt: true,
        ..params("folder")
    };
    let out = load_dataset(&p, Some(d.path()), &Ctl::default()).unwrap();
    assert_eq!((out.set.n, out.skipped.len()), (1, 3));
    let p = params("folder");
    let e = load_dataset(&p, Some(d.path()), &Ctl::default()).unwrap_err();
    assert!(matches!(e, DataError::CorruptImage { .. }), "{e:?}");
    names(&e, "cut.jpg"); // first bad file in sorted order
}

fn params(format: &str) -> DatasetParams {
    let raw: toml::Table = toml::from_str(&format!("format = \"{format}\"")).unwrap();
    mrbm_stage::parse_params::<DatasetParams>(&raw).unwrap().0
}

#[test]
fn empty_class_folder() {
    let d = tempfile::tempdir().unwrap();
    jpeg(d.path(), "cats/1.jpg", 8, 8);
    std::fs::create_dir_all(d.path().join("dogs")).unwrap();
    write(d.path(), "dogs/readme.txt", b"no images here");
    let e = load_dataset(&params("folder"), Some(d.path()), &Ctl::default()).unwrap_err();
    assert!(matches!(e, DataError::EmptyClass { .. }), "{e:?}");
    names(&e, "dogs");
}

#[test]
fn folder_labels_follow_sorted_names_and_sizes_must_agree() {
    let d = tempfile::tempdir().unwrap();
    jpeg(d.path(), "b/1.jpg", 12, 10);
    jpeg(d.path(), "a/1.jpg", 12, 10);
    jpeg(d.path(), "a/2.png", 12, 10);
    let out = load_dataset(&params("folder"), Some(d.path()), &Ctl::default()).unwrap();
    assert_eq!(out.set.shape(), [3, 3, 10, 12]);
    assert_eq!(out.set.labels, vec![0, 0, 1]);
    let odd = jpeg(d.path(), "b/2.jpg", 14, 10);
    let e = load_dataset(&params("folder"), Some(d.path()), &Ctl::default()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::SizeMismatch {
                found_w: 14,
                expected_w: 12,
                ..
            }
        ),
        "{e:?}"
    );
    names(&e, odd.file_name().unwrap().to_str().unwrap());
    // With a resize the sizes may differ.
    let p = DatasetParams {
        resize: Some(Size { w: 6, h: 5 }),
        ..params("folder")
    };
    assert_eq!(
        load_dataset(&p, Some(d.path()), &Ctl::default())
            .unwrap()
            .set
            .shape(),
        [4, 3, 5, 6]
    );
    // A crop that does not fit names the image.
    let ops = ImageOps {
        crop: Some(Crop::Centre { w: 13, h: 13 }),
        ..Default::default()
    };
    let e = decode_items(
        &items(std::slice::from_ref(&odd)),
        &ops,
        false,
        &Ctl::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::CropOutOfBounds { .. }), "{e:?}");
    names(&e, "2.jpg");
}

#[test]
fn missing_data_set_names_folder_files_and_source() {
    let d = tempfile::tempdir().unwrap();
    let gone = d.path().join("mnist");
    let e = load_dataset(&params("idx"), Some(&gone), &Ctl::default()).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains(&gone.display().to_string())
            && m.contains("train-images-idx3-ubyte")
            && m.contains("yann.lecun.com"),
        "{m}"
    );
    // Folder exists but a file is missing: that file is named.
    std::fs::create_dir_all(&gone).unwrap();
    let e = load_dataset(&params("idx"), Some(&gone), &Ctl::default()).unwrap_err();
    names(&e, "train-images-idx3-ubyte.gz");
    for (f, url) in [
        ("cifar10", "cs.toronto.edu"),
        ("celeba", "CelebA"),
        ("caltech101", "caltech.edu"),
    ] {
        let e =
            load_dataset(&params(f), Some(&d.path().join("nothing")), &Ctl::default()).unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
        assert!(
            e.to_string().contains("nothing") && e.to_string().contains(url),
            "{e}"
        );
    }
}

#[test]
fn celeba_partition_file() {
    let d = tempfile::tempdir().unwrap();
    for i in 1..=4 {
        jpeg(d.path(), &format!("img_align_celeba/{i:06}.jpg"), 18, 22);
    }
    let mut p = params("celeba");
    assert_eq!(
        load_dataset(&p, Some(d.path()), &Ctl::default())
            .unwrap()
            .set
            .shape(),
        [4, 3, 22, 18]
    );
    p.split = Some(Split::Train);
    let e = load_dataset(&p, Some(d.path()), &Ctl::default()).unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    names(&e, "list_eval_partition.txt");
    write(
        d.path(),
        "list_eval_partition.txt",
        b"000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n",
    );
    let out = load_dataset(&p, Some(d.path()), &Ctl::default()).unwrap();
    assert_eq!(out.set.n, 2);
    assert_eq!(out.set.labels, vec![-1, -1]);
    write(
        d.path(),
        "list_eval_partition.txt",
        b"000001.jpg 0\n000002.jpg 7\n",
    );
    let e = load_dataset(&p, Some(d.path()), &Ctl::default()).unwrap_err();
    assert!(matches!(e, DataError::BadListFile { line: 2, .. }), "{e:?}");
    names(&e, "list_eval_partition.txt");
}

#[test]
fn caltech101_split_is_seeded_and_excludes_background() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("101_ObjectCategories");
    for (c, n) in [("BACKGROUND_Google", 3), ("airplanes", 5), ("Faces", 4)] {
        for i in 0..n {
            jpeg(&root, &format!("{c}/image_{i:04}.jpg"), 10 + i, 9);
        }
    }
    let mut p = params("caltech101");
    p.per_class = Some(2);
    p.resize = Some(Size { w: 8, h: 8 });
    p.filter = Some(mrbm_data::Filter::Bilinear);
    let train = load_dataset(&p, Some(d.path()), &Ctl::default())
        .unwrap()
        .set;
    assert_eq!(train.labels, vec![0, 0, 1, 1]); // "Faces" < "airplanes" in byte order
    p.split = Some(Split::Test);
    let test = load_dataset(&p, Some(d.path()), &Ctl::default())
        .unwrap()
        .set;
    assert_eq!(test.labels, vec![0, 0, 1, 1, 1]);
    // Same seed, same split; the parts are disjoint and cover each class.
    let (tr_items, _) = folder::caltech101_items(d.path(), Split::Train, 2, None, 0).unwrap();
    let (te_items, _) = folder::caltech101_items(d.path(), Split::Test, 2, None, 0).unwrap();
    assert_eq!(
        tr_items,
        folder::caltech101_items(d.path(), Split::Train, 2, None, 0)
            .unwrap()
            .0
    );
    assert!(tr_items.iter().all(|t| !te_items.contains(t)));
    assert!(tr_items
        .iter()
        .chain(&te_items)
        .all(|t| !t.path.to_string_lossy().contains("BACKGROUND")));
    // per_class leaving nothing for test is an error naming the class folder.
    let e = folder::caltech101_items(d.path(), Split::Train, 4, None, 0).unwrap_err();
    names(&e, "Faces");
}

#[test]
fn params_front_end_rejects_bad_keys() {
    use mrbm_stage::Stage;
    let stages = mrbm_data::stages();
    let dataset = stages.iter().find(|s| s.kind() == "dataset").unwrap();
    let transform = stages.iter().find(|s| s.kind() == "transform").unwrap();
    let bad = |s: &dyn Stage, t: &str| s.params(&toml::from_str(t).unwrap()).unwrap_err();
    let e = bad(dataset.as_ref(), "format = \"mnist\"");
    assert_eq!(e.suggestion, None, "{e:?}"); // no close variant name; message lists them
    assert!(e.message.contains("idx"), "{}", e.message);
    let e = bad(dataset.as_ref(), "format = \"cifar\"");
    assert_eq!(e.suggestion.as_deref(), Some("cifar10"));
    let e = bad(dataset.as_ref(), "format = \"idx\"\nper_class = 3");
    assert_eq!(e.key.as_deref(), Some("per_class"));
    let e = bad(dataset.as_ref(), "format = \"synthetic\"\nclasses = 9");
    assert_eq!(e.key.as_deref(), Some("classes"));
    let e = bad(
        dataset.as_ref(),
        "format = \"synthetic\"\nsplit = \"train\"",
    );
    assert_eq!(e.key.as_deref(), Some("split"));
    let e = bad(dataset.as_ref(), "format = \"celeba\"\ncrop = -3");
    assert!(e.message.contains("crop"), "{e:?}");
    let e = bad(transform.as_ref(), "resise = 64");
    assert_eq!(e.suggestion.as_deref(), Some("resize"));
    let e = bad(transform.as_ref(), "filter = \"lanczos3\"");
    assert_eq!(e.key.as_deref(), Some("filter"));
    let e = bad(transform.as_ref(), "resize = [0, 4]");
    assert_eq!(e.key.as_deref(), Some("resize"));
    let e = bad(transform.as_ref(), "split = { }");
    assert_eq!(e.key.as_deref(), Some("split"));
    let e = bad(transform.as_ref(), "split = { train = 5, tset = 2 }");
    assert!(e.message.contains("tset"), "{e:?}");
    let e = bad(transform.as_ref(), "crop = { x = 1, w = 2, h = 2 }");
    assert!(e.message.contains("x and y"), "{e:?}");
}

/// A read cancelled between images stops with the stage contract's one
/// `Cancelled` (no error of its own), which the runner reports as
/// "cancelled", not as a failure.
#[test]
fn cancelled_folder_read_is_the_stages_cancelled() {
    let d = tempfile::tempdir().unwrap();
    jpeg(d.path(), "a/1.jpg", 8, 8);
    jpeg(d.path(), "b/1.jpg", 8, 8);
    let flag = std::sync::atomic::AtomicBool::new(true);
    let ctl = Ctl {
        cancel: Some(&flag),
        ..Ctl::default()
    };
    let e = load_dataset(&params("folder"), Some(d.path()), &ctl).unwrap_err();
    assert!(
        matches!(e, DataError::Stage(mrbm_stage::StageError::Cancelled)),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "interrupted");
    assert!(matches!(
        mrbm_stage::StageError::from(e),
        mrbm_stage::StageError::Cancelled
    ));
    // Not cancelled: the same read succeeds.
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(load_dataset(&params("folder"), Some(d.path()), &ctl).is_ok());
}

#[test]
fn idx_gzip_bomb_stops_soon_after_the_declared_size() {
    let d = tempfile::tempdir().unwrap();
    let (im, lb) = good_pair();
    // A valid header for 3 images of 2x2 (28 bytes in all), then 16 MiB of
    // zeros that compress to almost nothing.
    let mut bomb = im.clone();
    bomb.extend(std::iter::repeat_n(0u8, 16 << 20));
    let l = write(d.path(), "l", &lb);
    let e = idx::read_idx(&write(d.path(), "bomb.gz", &gz(&bomb)), &l).unwrap_err();
    match &e {
        DataError::Gzip {
            offset, message, ..
        } => {
            assert!(*offset <= 28 + idx::DECLARED_MARGIN, "{e}");
            assert!(message.contains("header declares"), "{e}");
        }
        other => panic!("expected a gzip error, got {other:?}"),
    }
    names(&e, "bomb.gz");
    // A few bytes too many are still reported as trailing bytes.
    let mut long = im;
    long.extend_from_slice(&[0; 7]);
    let e = idx::read_idx(&write(d.path(), "long.gz", &gz(&long)), &l).unwrap_err();
    assert!(
        matches!(e, DataError::TrailingBytes { extra: 7, .. }),
        "{e:?}"
    );
}
