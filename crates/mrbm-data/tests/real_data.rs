//! Tests on the real data in shared/data, found through MRBM_SHARED_DATA
//! (they print a note and pass when it is unset; when set they must pass).
//!
//! Reference values come from independent tools:
//! - MNIST: tools/data_mnist_reference.py (numpy only);
//! - CelebA: tools/data_pillow_fixtures.py (Pillow 13.0.0, see
//!   tools/data_requirements.txt) wrote tests/fixtures/celeba_pillow.json:
//!   a checksum and pixel sum of Pillow's result per image and case (no
//!   image data is committed; the images come from MRBM_SHARED_DATA).

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
    assert_eq!(
        counts,
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let total: u64 = set.pixels().iter().map(|&p| p as u64).sum();
    assert_eq!(total, 264_923_200);
    let mut per_class = [0u64; 10];
    for i in 0..set.n {
        per_class[set.labels[i] as usize] += set.image(i).iter().map(|&p| p as u64).sum::<u64>();
    }
    assert_eq!(
        per_class,
        [
            33759319, 17412445, 30985788, 28936088, 24082260, 23548995, 27498169, 23614233,
            29817245, 25268658
        ]
    );
    for (i, want) in [
        (0usize, 18454u64),
        (1, 28850),
        (2, 9871),
        (4999, 50057),
        (9999, 41833),
    ] {
        assert_eq!(
            set.image(i).iter().map(|&p| p as u64).sum::<u64>(),
            want,
            "pixel sum of image {i}"
        );
    }
    assert_eq!(
        &set.image(0)[14 * 28 + 7..14 * 28 + 21],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 59, 249, 254, 62, 0]
    );
}

/// Pillow's result for one image: FNV-1a 64 of its RGB bytes and their sum.
struct PillowRef {
    fnv1a64: u64,
    sum: u64,
}

fn pillow_fixture(case: &str) -> Vec<PillowRef> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celeba_pillow.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["cases"][case]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no case {case}", p.display()))
        .iter()
        .map(|r| PillowRef {
            fnv1a64: u64::from_str_radix(r["fnv1a64"].as_str().unwrap(), 16).unwrap(),
            sum: r["sum"].as_u64().unwrap(),
        })
        .collect()
}

fn fnv1a64(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Image i of an NCHW set as Pillow lays it out: rows of interleaved RGB.
fn interleaved(set: &ImageSet, i: usize) -> Vec<u8> {
    let (img, plane) = (set.image(i), set.h * set.w);
    (0..plane)
        .flat_map(|p| (0..3).map(move |c| img[c * plane + p]))
        .collect()
}

/// Every image must give Pillow's exact bytes (checksum), which also
/// bounds the difference by 0 grey levels; the sum tells how far off a
/// mismatch is.
fn check(ours: &ImageSet, refs: &[PillowRef], what: &str) {
    assert_eq!(ours.n, refs.len());
    for (i, r) in refs.iter().enumerate() {
        let bytes = interleaved(ours, i);
        let sum: u64 = bytes.iter().map(|&b| b as u64).sum();
        assert_eq!(
            fnv1a64(bytes.into_iter()),
            r.fnv1a64,
            "{what}: image {i} differs from Pillow's (pixel sum {sum} vs {})",
            r.sum
        );
    }
}

#[test]
fn celeba_crop_resize_matches_pillow() {
    let Some(root) = shared() else { return };
    let dir = root.join("celeba-sample");
    let items: Vec<Item> = folder::image_files(&dir)
        .unwrap()
        .into_iter()
        .map(|path| Item { path, label: -1 })
        .collect();
    assert_eq!(items.len(), 16);
    // Full-size decode once, for the planar (transform stage) path.
    let full = decode_items(&items, &ImageOps::default(), false, &Ctl::default())
        .unwrap()
        .set;
    assert_eq!(full.shape(), [16, 3, 218, 178]);
    for (crop, size, filter, fname) in [
        (140, 64, Filter::Bilinear, "bilinear"),
        (140, 64, Filter::Lanczos3, "lanczos3"),
        (178, 128, Filter::Bilinear, "bilinear"),
        (178, 128, Filter::Lanczos3, "lanczos3"),
    ] {
        let refs = pillow_fixture(&format!("c{crop}_{size}_{fname}"));
        let ops = ImageOps {
            crop: Some(Crop::Centre { w: crop, h: crop }),
            resize: Some(Size { w: size, h: size }),
            filter,
            gray: Gray::Off,
        };
        // Decode pipeline (interleaved resize), as the dataset stage runs it.
        let ours = decode_items(&items, &ops, false, &Ctl::default())
            .unwrap()
            .set;
        assert_eq!(ours.shape(), [16, 3, size as usize, size as usize]);
        check(&ours, &refs, &format!("crop {crop} -> {size} {fname}"));
        // Planar pipeline, as the transform stage runs it.
        let ours = transform_set(&full, &ops, &Ctl::default()).unwrap();
        check(
            &ours,
            &refs,
            &format!("crop {crop} -> {size} {fname} (planar)"),
        );
    }
}
