//! Tests on the real data in shared/data, found through MRBM_SHARED_DATA
//! (they print a note and pass when it is unset; when set they must pass).
//!
//! Reference values come from independent tools:
//! - MNIST: tools/data_mnist_reference.py (numpy only);
//! - CelebA: tools/data_pillow_fixtures.py (Pillow 13.0.0, see
//!   tools/data_requirements.txt) wrote tests/fixtures/celeba_*.png.

use std::path::{Path, PathBuf};

use mrbm_data::folder::{self, decode_items, Item};
use mrbm_data::ops::{transform_set, Crop, Filter, Gray, ImageOps, Size};
use mrbm_data::{idx, Ctl, ImageSet};

fn shared() -> Option<PathBuf> {
    match std::env::var_os("MRBM_SHARED_DATA") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("note: MRBM_SHARED_DATA is unset; skipping the real-data test");
            None
        }
    }
}

#[test]
fn mnist_t10k_matches_numpy_reference() {
    let Some(root) = shared() else { return };
    let dir = root.join("mnist");
    let (images, labels) = idx::idx_files(&dir, false);
    let set = idx::read_idx(&images, &labels).expect("MNIST t10k reads");
    assert_eq!(set.shape(), [10_000, 1, 28, 28]);
    // Values printed by tools/data_mnist_reference.py.
    assert_eq!(&set.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let mut counts = [0usize; 10];
    for &l in &set.labels {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let total: u64 = set.pixels().iter().map(|&p| p as u64).sum();
    assert_eq!(total, 264_923_200);
    let mut per_class = [0u64; 10];
    for i in 0..set.n {
        per_class[set.labels[i] as usize] += set.image(i).iter().map(|&p| p as u64).sum::<u64>();
    }
    assert_eq!(per_class, [33759319, 17412445, 30985788, 28936088, 24082260, 23548995, 27498169, 23614233, 29817245, 25268658]);
    for (i, want) in [(0usize, 18454u64), (1, 28850), (2, 9871), (4999, 50057), (9999, 41833)] {
        assert_eq!(set.image(i).iter().map(|&p| p as u64).sum::<u64>(), want, "pixel sum of image {i}");
    }
    assert_eq!(&set.image(0)[14 * 28 + 7..14 * 28 + 21], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 59, 249, 254, 62, 0]);
}

/// Pillow's results, one sheet per case: image i at rows i*size..(i+1)*size.
fn fixture(name: &str) -> (Vec<u8>, u32, u32) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).into_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w, h)
}

/// Max |ours - Pillow| over all pixels and channels, and how many differ.
fn compare(ours: &ImageSet, sheet: &[u8], size: usize) -> (u8, usize) {
    let (mut max, mut differ) = (0u8, 0usize);
    let plane = size * size;
    for i in 0..ours.n {
        let img = ours.image(i);
        for y in 0..size {
            for x in 0..size {
                for c in 0..3 {
                    let theirs = sheet[((i * size + y) * size + x) * 3 + c];
                    let d = img[c * plane + y * size + x].abs_diff(theirs);
                    max = max.max(d);
                    differ += (d > 0) as usize;
                }
            }
        }
    }
    (max, differ)
}

#[test]
fn celeba_crop_resize_matches_pillow() {
    let Some(root) = shared() else { return };
    let dir = root.join("celeba-sample");
    let items: Vec<Item> = folder::image_files(&dir).unwrap().into_iter().map(|path| Item { path, label: -1 }).collect();
    assert_eq!(items.len(), 16);
    // Full-size decode once, for the planar (transform stage) path.
    let full = decode_items(&items, &ImageOps::default(), false, &Ctl::default()).unwrap().set;
    assert_eq!(full.shape(), [16, 3, 218, 178]);
    for (crop, size, filter, fname) in [
        (140, 64, Filter::Bilinear, "bilinear"),
        (140, 64, Filter::Lanczos3, "lanczos3"),
        (178, 128, Filter::Bilinear, "bilinear"),
        (178, 128, Filter::Lanczos3, "lanczos3"),
    ] {
        let (sheet, w, h) = fixture(&format!("celeba_c{crop}_{size}_{fname}.png"));
        assert_eq!((w, h), (size, size * 16));
        let ops = ImageOps { crop: Some(Crop::Centre { w: crop, h: crop }), resize: Some(Size { w: size, h: size }), filter, gray: Gray::Off };
        // Decode pipeline (interleaved resize), as the dataset stage runs it.
        let ours = decode_items(&items, &ops, false, &Ctl::default()).unwrap().set;
        assert_eq!(ours.shape(), [16, 3, size as usize, size as usize]);
        let (max, differ) = compare(&ours, &sheet, size as usize);
        eprintln!("crop {crop} -> {size} {fname}: decode path max diff {max}, {differ} values differ");
        assert!(max <= 1, "crop {crop} -> {size} {fname}: max difference {max} grey levels from Pillow");
        // Planar pipeline, as the transform stage runs it.
        let ours = transform_set(&full, &ops, &Ctl::default()).unwrap();
        let (max, differ) = compare(&ours, &sheet, size as usize);
        eprintln!("crop {crop} -> {size} {fname}: planar path max diff {max}, {differ} values differ");
        assert!(max <= 1, "crop {crop} -> {size} {fname} (planar): max difference {max} grey levels from Pillow");
    }
}
