//! The `dataset` and `transform` stages end to end through the stage
//! contract, and the synthetic data set.

use std::path::Path;

use mrbm_data::{synthetic, ImageSet};
use mrbm_stage::{Metrics, Stage, StageError};

fn stage(kind: &str) -> Box<dyn Stage> {
    mrbm_data::stages()
        .into_iter()
        .find(|s| s.kind() == kind)
        .unwrap()
}

fn canon(kind: &str, toml_text: &str) -> serde_json::Value {
    stage(kind)
        .params(&toml::from_str(toml_text).unwrap())
        .unwrap_or_else(|e| panic!("{toml_text}: {e:?}"))
}

/// Run a stage kind as the runner would.
fn run(
    kind: &str,
    toml_text: &str,
    inputs: &[(&str, &Path)],
    out: &Path,
) -> Result<Metrics, StageError> {
    let params = canon(kind, toml_text);
    mrbm_stage::run_detached(&*stage(kind), &params, inputs, out, &Default::default())
}

#[test]
fn toml_examples_canonicalise_with_defaults() {
    // Defaults written out or left out give the same canonical form.
    let a = canon("dataset", "format = \"synthetic\"");
    let b = canon(
        "dataset",
        "format = \"synthetic\"\nn = 4000\nsize = 16\nclasses = 4\nseed = 0\ngrayscale = false",
    );
    assert_eq!(a, b);
    assert_eq!(
        a,
        serde_json::json!({"format": "synthetic", "n": 4000, "size": 16, "classes": 4, "seed": 0, "grayscale": false})
    );
    assert_ne!(a, canon("dataset", "format = \"synthetic\"\nseed = 1"));
    // Spellings of the same crop and resize agree.
    let c1 = canon("transform", "crop = 140\nresize = 64");
    let c2 = canon(
        "transform",
        "crop = [140, 140]\nresize = [64, 64]\nfilter = \"bilinear\"",
    );
    let c3 = canon("transform", "crop = { w = 140, h = 140 }\nresize = 64");
    assert_eq!(c1, c2);
    assert_eq!(c1, c3);
    assert_eq!(c1["crop"], serde_json::json!([140, 140]));
    assert_eq!(
        canon("transform", "crop = { x = 0, y = 20, w = 178, h = 178 }")["crop"],
        serde_json::json!({"x": 0, "y": 20, "w": 178, "h": 178})
    );
    assert_eq!(canon("transform", "crop = \"square\"")["crop"], "square");
    let m = canon("dataset", "format = \"idx\"\nsplit = \"test\"");
    assert_eq!(
        m,
        serde_json::json!({"format": "idx", "split": "test", "seed": 0, "grayscale": false})
    );
    assert_eq!(
        canon("dataset", "format = \"caltech101\"\nresize = 64")["per_class"],
        30
    );
    assert_eq!(canon("dataset", "format = \"celeba\"")["split"], "all");
    // The canonical form is itself valid input and a fixed point.
    for c in [a, c1, m] {
        let t: toml::Table = serde_json::from_value(c.clone()).unwrap();
        let kind = if c.get("format").is_some() {
            "dataset"
        } else {
            "transform"
        };
        assert_eq!(stage(kind).params(&t).unwrap(), c);
    }
}

#[test]
fn missing_input_hint_names_folder_files_and_source() {
    let s = stage("dataset");
    let p = canon("dataset", "format = \"idx\"\nsplit = \"test\"");
    let h = s
        .missing_input_hint(&p, "dir", Path::new("/data/mnist"))
        .unwrap();
    assert!(
        h.contains("/data/mnist")
            && h.contains("t10k-images-idx3-ubyte.gz")
            && h.contains("t10k-labels-idx1-ubyte.gz")
            && h.contains("https://"),
        "{h}"
    );
    let p = canon("dataset", "format = \"celeba\"\ncrop = 140\nresize = 64");
    let h = s
        .missing_input_hint(&p, "dir", Path::new("/data/celeba"))
        .unwrap();
    assert!(h.contains("img_align_celeba") && h.contains("mmlab"), "{h}");
}

#[test]
fn synthetic_to_transform_split_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("ds");
    let m = run(
        "dataset",
        "format = \"synthetic\"\nn = 500\nsize = 16\nclasses = 5\nseed = 3",
        &[],
        &ds,
    )
    .unwrap();
    assert_eq!(
        (m["images"], m["classes"], m["height"], m["channels"]),
        (500.0, 5.0, 16.0, 3.0)
    );
    let set = ImageSet::read(&ds.join("data.safetensors")).unwrap();
    assert_eq!(set.shape(), [500, 3, 16, 16]);
    let tr = d.path().join("tr");
    let m = run("transform", "resize = 8\nfilter = \"lanczos3\"\ngrayscale = true\nsubset = 300\nsplit = { train = 200, test = 100 }\nseed = 1", &[("data", &ds)], &tr).unwrap();
    assert_eq!(
        (m["images"], m["train_images"], m["test_images"]),
        (300.0, 200.0, 100.0)
    );
    let all = ImageSet::read(&tr.join("data.safetensors")).unwrap();
    let train = ImageSet::read(&tr.join("train.safetensors")).unwrap();
    let test = ImageSet::read(&tr.join("test.safetensors")).unwrap();
    assert_eq!(all.shape(), [300, 1, 8, 8]);
    assert_eq!(train.shape(), [200, 1, 8, 8]);
    assert_eq!(test.shape(), [100, 1, 8, 8]);
    // The parts are disjoint images of the transformed set.
    let key = |s: &ImageSet, i: usize| s.image(i).to_vec();
    let mut seen: Vec<Vec<u8>> = (0..train.n)
        .map(|i| key(&train, i))
        .chain((0..test.n).map(|i| key(&test, i)))
        .collect();
    for v in &seen {
        assert!((0..all.n).any(|i| all.image(i) == &v[..]));
    }
    seen.sort();
    seen.dedup();
    assert!(
        seen.len() > 290,
        "train and test overlap: {} distinct of 300",
        seen.len()
    );
    // keep_channels gives three equal planes.
    let k3 = d.path().join("k3");
    run(
        "transform",
        "grayscale = true\nkeep_channels = true",
        &[("data", &ds)],
        &k3,
    )
    .unwrap();
    let g = ImageSet::read(&k3.join("data.safetensors")).unwrap();
    assert_eq!(g.c, 3);
    let img = g.image(7);
    assert_eq!(&img[..256], &img[256..512]);
    assert_eq!(&img[..256], &img[512..]);
    // Too large a split is a user error.
    let e = run(
        "transform",
        "split = { train = 400, test = 200 }",
        &[("data", &ds)],
        &d.path().join("bad"),
    )
    .unwrap_err();
    assert!(e.is_user_error(), "{e:?}");
}

#[test]
fn dataset_without_dir_is_a_user_error() {
    let d = tempfile::tempdir().unwrap();
    let e = run("dataset", "format = \"cifar10\"", &[], d.path()).unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("dir"), "{e:?}");
}

#[test]
fn synthetic_is_deterministic_balanced_and_fast() {
    let t = std::time::Instant::now();
    let a = synthetic::synthetic(4000, 16, 4, 7).unwrap();
    eprintln!("synthetic 4000 x 16x16: {:.3} s", t.elapsed().as_secs_f64());
    let b = synthetic::synthetic(4000, 16, 4, 7).unwrap();
    let c = synthetic::synthetic(4000, 16, 4, 8).unwrap();
    assert_eq!(a.pixels(), b.pixels());
    assert_ne!(a.pixels(), c.pixels());
    for k in 0..4 {
        assert_eq!(a.labels.iter().filter(|&&l| l == k).count(), 1000);
    }
    // Every image shows a shape: not a flat colour.
    for i in 0..a.n {
        let img = a.image(i);
        assert!(img.iter().any(|&p| p != img[0]), "image {i} is flat");
    }
    // Shapes differ on average: the mean foreground masks of two classes
    // (pixels away from the background colour, the corner pixel) differ.
    let mask_mean = |cls: i64| -> Vec<f64> {
        let mut m = vec![0.0; 256];
        let mut n = 0.0;
        for i in (0..a.n).filter(|&i| a.labels[i] == cls) {
            let img = a.image(i);
            let bg = [img[0], img[256], img[512]];
            for p in 0..256 {
                let d: i32 = (0..3)
                    .map(|c| (img[c * 256 + p] as i32 - bg[c] as i32).abs())
                    .sum();
                m[p] += (d > 60) as u8 as f64;
            }
            n += 1.0;
        }
        m.iter().map(|v| v / n).collect()
    };
    let (m0, m1) = (mask_mean(0), mask_mean(1));
    let diff: f64 = m0.iter().zip(&m1).map(|(a, b)| (a - b).abs()).sum();
    assert!(diff > 5.0, "circle and square masks barely differ: {diff}");
    assert!(synthetic::synthetic(10, 16, 8, 0).is_err());
}

/// The quickstart relies on the shapes being learnable: even a nearest
/// class-mean classifier on grey pixels (far weaker than RBM features + a
/// linear SVM) must beat chance (75% error for 4 classes) by a wide margin.
#[test]
fn synthetic_shapes_are_learnable() {
    let set = synthetic::synthetic(4000, 16, 4, 11).unwrap();
    let grey = |i: usize| -> Vec<f64> {
        let img = set.image(i);
        (0..256)
            .map(|p| (img[p] as f64 + img[256 + p] as f64 + img[512 + p] as f64) / 765.0)
            .collect()
    };
    let mut means = vec![vec![0.0; 256]; 4];
    for i in 0..3000 {
        for (m, v) in means[set.labels[i] as usize].iter_mut().zip(grey(i)) {
            *m += v / 750.0;
        }
    }
    let errors = (3000..4000)
        .filter(|&i| {
            let g = grey(i);
            let d = |m: &Vec<f64>| {
                m.iter()
                    .zip(&g)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
            };
            let best = (0..4)
                .min_by(|&a, &b| d(&means[a]).total_cmp(&d(&means[b])))
                .unwrap();
            best as i64 != set.labels[i]
        })
        .count();
    eprintln!(
        "nearest class mean on grey pixels: {:.1}% test error",
        errors as f64 / 10.0
    );
    assert!(errors < 350, "{errors} errors of 1000");
}

/// Decoding only a crop of a JPEG gives exactly the pixels of a full decode,
/// for crops at every alignment against the 8/16-pixel iMCU grid.
#[test]
fn jpeg_region_decode_equals_full_decode() {
    let mut files: Vec<Vec<u8>> = Vec::new();
    let img = image::RgbImage::from_fn(53, 41, |x, y| {
        image::Rgb([
            (x * 37 + y * 11) as u8,
            (x * x + 3 * y) as u8,
            (y * y * 5 + x) as u8,
        ])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    files.push(buf.into_inner());
    if let Some(root) = std::env::var_os("MRBM_SHARED_DATA") {
        files.push(std::fs::read(Path::new(&root).join("celeba-sample/000003.jpg")).unwrap());
    }
    for bytes in &files {
        let (full, w, h) = mrbm_data::folder::decode_rgb_bytes(bytes).unwrap();
        for (x, y, rw, rh) in [
            (0, 0, w, h),
            (1, 1, 5, 7),
            (7, 9, 17, 3),
            (15, 16, 20, 20),
            (w - 3, h - 2, 3, 2),
            (16, 0, w - 16, h),
            (0, 17, 9, h - 17),
        ] {
            let reg =
                mrbm_data::jpeg::decode_region(bytes, |_, _| Ok::<_, String>(Some((x, y, rw, rh))))
                    .unwrap()
                    .unwrap();
            for r in 0..rh as usize {
                let want = &full[((y as usize + r) * w as usize + x as usize) * 3
                    ..((y as usize + r) * w as usize + (x + rw) as usize) * 3];
                assert_eq!(
                    &reg.rgb[r * rw as usize * 3..(r + 1) * rw as usize * 3],
                    want,
                    "rect ({x}, {y}, {rw}, {rh}) row {r}"
                );
            }
        }
    }
}
