//! Parity with pytorch-fid 0.3.0 (fixture written by tools/fid_parity.py):
//! the Inception pool3 features with the same seeded random weights (the
//! real weights cannot be downloaded here; both sides generate the random
//! ones from the same definition, see `inception::random_weights`), and the
//! Frechet distance against pytorch_fid.calculate_frechet_distance.

mod common;

use std::collections::HashMap;

use mrbm_eval::frechet::{frechet_distance, GaussianStats};
use mrbm_eval::inception::{random_weights, FidInception};

struct Fixture {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    f64s: HashMap<String, Vec<f64>>,
    i64s: HashMap<String, Vec<i64>>,
    meta: HashMap<String, String>,
}

fn load() -> Fixture {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fid_parity.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = md.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut fx = Fixture {
        f32s: HashMap::new(),
        f64s: HashMap::new(),
        i64s: HashMap::new(),
        meta,
    };
    for (name, t) in st.tensors() {
        let d = t.data();
        match t.dtype() {
            safetensors::Dtype::F32 => {
                fx.f32s.insert(
                    name,
                    (
                        t.shape().to_vec(),
                        d.chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                            .collect(),
                    ),
                );
            }
            safetensors::Dtype::F64 => {
                fx.f64s.insert(
                    name,
                    d.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                );
            }
            safetensors::Dtype::I64 => {
                fx.i64s.insert(
                    name,
                    d.chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    fx
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// fid_common.random_images: top byte of splitmix64 outputs 1.., NCHW.
fn random_images(seed: u64, len: usize) -> Vec<u8> {
    (1..=len as u64)
        .map(|k| (mix64(seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 56) as u8)
        .collect()
}

/// Per image: max |mrbm - pytorch| <= 1e-4 * max |pytorch| (relative to the
/// image's feature scale; elementwise ratios of near-zero ReLU outputs are noise).
fn assert_features_close(what: &str, got: &[f32], want: &[f32], dim: usize) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
        let scale = w.iter().fold(0f32, |a, b| a.max(b.abs()));
        let err = g.iter().zip(w).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        eprintln!(
            "{what} image {i}: max abs diff {err:.3e}, feature scale {scale:.3}, relative {:.3e}",
            err / scale
        );
        assert!(scale > 0.0);
        assert!(
            err <= 1e-4 * scale,
            "{what} image {i}: max abs diff {err} vs scale {scale}"
        );
    }
}

#[test]
fn inception_features_match_pytorch_fid_on_random_images() {
    let fx = load();
    let wseed: u64 = fx.meta["weights_seed"].parse().unwrap();
    let iseed: u64 = fx.meta["images_seed"].parse().unwrap();
    let net =
        FidInception::from_weights(random_weights(wseed), &burn::tensor::Device::flex()).unwrap();
    let (n, c, h, w) = (4, 3, 64, 48);
    let px = random_images(iseed, n * c * h * w);
    let got = net.features_u8(&px, n, c, h, w).unwrap();
    assert_features_close("random", &got, &fx.f32s["features_random"].1, 2048);
}

/// The host path (mrbm-kernels' sgemm, the CPU default) and burn's conv2d
/// path compute the same features, within the pytorch-fid tolerance.
#[test]
fn host_and_burn_paths_agree() {
    let net = FidInception::from_weights(random_weights(5), &burn::tensor::Device::flex()).unwrap();
    assert!(net.host_path());
    let (n, c, h, w) = (2, 3, 40, 30);
    let px = random_images(11, n * c * h * w);
    let host = net.features_u8(&px, n, c, h, w).unwrap();
    let net = net.with_host_path(false);
    let burn = net.features_u8(&px, n, c, h, w).unwrap();
    assert_features_close("host vs burn", &host, &burn, 2048);
}

#[test]
fn inception_features_match_pytorch_fid_on_celeba() {
    let Some(root) = common::shared_data("inception_features_match_pytorch_fid_on_celeba") else {
        return;
    };
    let fx = load();
    let wseed: u64 = fx.meta["weights_seed"].parse().unwrap();
    let mut pixels = Vec::new();
    let (mut h, mut w) = (0, 0);
    for i in 1..=4 {
        let (rgb, ww, hh) =
            mrbm_data::folder::decode_rgb(&root.join(format!("celeba-sample/{i:06}.jpg"))).unwrap();
        (w, h) = (ww as usize, hh as usize);
        let mut chw = vec![0u8; rgb.len()];
        for p in 0..w * h {
            for ch in 0..3 {
                chw[ch * w * h + p] = rgb[p * 3 + ch];
            }
        }
        let sum: i64 = chw
            .iter()
            .enumerate()
            .map(|(k, v)| *v as i64 * (k as i64 % 251 + 1))
            .sum();
        assert_eq!(
            sum,
            fx.i64s["celeba_checksum"][i - 1],
            "image {i}: decoded pixels differ from Pillow's"
        );
        pixels.extend(chw);
    }
    let net =
        FidInception::from_weights(random_weights(wseed), &burn::tensor::Device::flex()).unwrap();
    let got = net.features_u8(&pixels, 4, 3, h, w).unwrap();
    assert_features_close("celeba", &got, &fx.f32s["features_celeba"].1, 2048);
}

#[test]
fn statistics_and_distance_match_pytorch_fid() {
    let fx = load();
    let mut stats = Vec::new();
    for k in ["a", "b"] {
        let (shape, x) = &fx.f32s[&format!("feats_{k}")];
        let s = GaussianStats::from_features(x, shape[0], shape[1]).unwrap();
        for (g, w) in s.mu.iter().zip(&fx.f64s[&format!("mu_{k}")]) {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0));
        }
        for (g, w) in s.sigma.iter().zip(&fx.f64s[&format!("sigma_{k}")]) {
            assert!((g - w).abs() <= 1e-12, "{g} {w}");
        }
        stats.push(s);
    }
    let want = fx.f64s["fid_ab"][0];
    // On pytorch-fid's own (numpy) statistics ...
    let got = frechet_distance(
        &fx.f64s["mu_a"],
        &fx.f64s["sigma_a"],
        &fx.f64s["mu_b"],
        &fx.f64s["sigma_b"],
    )
    .unwrap()
    .distance;
    eprintln!(
        "fid {got} vs pytorch-fid {want}: relative {:.2e}",
        (got - want).abs() / want
    );
    assert!((got - want).abs() <= 1e-6 * want);
    // ... and on ours.
    let got = frechet_distance(&stats[0].mu, &stats[0].sigma, &stats[1].mu, &stats[1].sigma)
        .unwrap()
        .distance;
    assert!((got - want).abs() <= 1e-6 * want);
}

/// The converter's `--random 7` file must equal `random_weights(7)` bit for
/// bit and load through the file path. Needs the 90 MB file, so it runs only
/// when MRBM_TEST_RANDOM_WEIGHTS points at one:
///     python tools/fid_weights.py --random 7 --out /tmp/rw7.safetensors
///     MRBM_TEST_RANDOM_WEIGHTS=/tmp/rw7.safetensors cargo test -p mrbm-eval --test fid_parity
#[test]
fn converter_random_weights_equal_rust_ones() {
    let Some(path) = std::env::var_os("MRBM_TEST_RANDOM_WEIGHTS") else {
        eprintln!("note: converter_random_weights_equal_rust_ones skipped: MRBM_TEST_RANDOM_WEIGHTS is not set");
        return;
    };
    let file = mrbm_eval::inception::read_weights(std::path::Path::new(&path)).unwrap();
    let mine = random_weights(7);
    assert_eq!(file.len(), mine.len());
    for (name, (shape, vals)) in &mine {
        let (fs, fv) = &file[name];
        assert_eq!(fs, shape, "{name}");
        assert!(
            fv.iter().zip(vals).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: values differ"
        );
    }
    FidInception::from_file(std::path::Path::new(&path), &burn::tensor::Device::flex()).unwrap();
}
