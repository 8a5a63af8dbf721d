//! Loss and gradient parity with the PyTorch reference
//! (bench/reference/dcim.py, which wrote fixtures/dcim_parity.json) on a
//! tiny dense net and a tiny conv net (a strided conv whose transpose
//! needs an output padding), objectives 16, 21 and 22 (22 from the
//! fixture's x^(d-1) state), to 1e-5.

use burn::tensor::Device;
use mrbm_dcim::model::{
    host, one_hot, tensor, Act, Dcim, LayerDef, Objective, Shape, Spec, Trainer, Weight,
};

/// The committed fixture, or the one `MRBM_DCIM_FIXTURE` names (a fresh
/// `bench/reference/dcim.py fixture` output, as bench/dcim_bench.sh runs).
fn fixture() -> serde_json::Value {
    let p = std::env::var_os("MRBM_DCIM_FIXTURE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcim_parity.json")
        });
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn close(what: &str, ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (a, b) in ours.iter().zip(theirs) {
        let d = (a - b).abs();
        worst = worst.max(d);
        assert!(d <= 1e-5 + 1e-5 * b.abs(), "{what}: {a} vs pytorch {b}");
    }
    worst
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let fx = fixture();
    let dev = Device::flex();
    let mut cases = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input: [usize; 3] = serde_json::from_value(case["input"].clone()).unwrap();
        let layers: Vec<LayerDef> = serde_json::from_value(case["layers"].clone()).unwrap();
        let spec = Spec { input, layers };
        let mut m = Dcim::init(spec, 0, &dev).unwrap();
        for (k, w) in case["weights"].as_array().unwrap().iter().enumerate() {
            m.weights[k] = match &m.weights[k] {
                Weight::Conv(t) => Weight::Conv(tensor(floats(w), t.dims(), &dev)),
                Weight::Dense(t) => Weight::Dense(tensor(floats(w), t.dims(), &dev)),
            };
        }
        for (k, c) in case["biases"].as_array().unwrap().iter().enumerate() {
            m.biases[k] = tensor(floats(c), m.biases[k].dims(), &dev);
        }
        let labels: Vec<usize> = serde_json::from_value(case["labels"].clone()).unwrap();
        let b = labels.len();
        let x0 = tensor(floats(&case["x0"]), [b, input[0], input[1], input[2]], &dev);
        let y = one_hot(&labels, m.spec.classes(), &dev);
        let d = m.depth();
        let top_vals = floats(&case["top_state"]);
        let top = match m.shapes[d - 1] {
            Shape::Map([c, h, w]) => Act::Map(tensor(top_vals, [b, c, h, w], &dev)),
            Shape::Flat(n) => Act::Flat(tensor(top_vals, [b, n], &dev)),
        };
        for (obj, key) in [
            (Objective::Discriminative, "16"),
            (Objective::Generative, "21"),
            (Objective::Sampled, "22"),
        ] {
            let want = &case["objectives"][key];
            let t = Trainer::new(m.clone(), obj, 1e-3, 1.0);
            let (l, gw, gb) = t.gradients(x0.clone(), y.clone(), &mut |_| top.clone());
            let ours_loss = l.class
                + if l.reverse_per_pixel.is_finite() {
                    l.reverse_per_pixel
                } else {
                    0.0
                };
            close(
                &format!("{name} ({key}) loss"),
                &[ours_loss as f32],
                &[want["loss"].as_f64().unwrap() as f32],
            );
            let mut worst = 0f32;
            for (k, g) in gw.iter().enumerate() {
                let ours = match g {
                    Weight::Conv(t) => host(t),
                    Weight::Dense(t) => host(t),
                };
                worst = worst.max(close(
                    &format!("{name} ({key}) dW^{}", k + 1),
                    &ours,
                    &floats(&want["grad_weights"][k]),
                ));
            }
            for (k, g) in gb.iter().enumerate() {
                worst = worst.max(close(
                    &format!("{name} ({key}) dc^{k}"),
                    &host(g),
                    &floats(&want["grad_biases"][k]),
                ));
            }
            eprintln!("{name} objective {key}: loss {ours_loss:.6} (pytorch {}), largest gradient difference {worst:.2e}", want["loss"]);
            cases += 1;
        }
    }
    assert_eq!(cases, 6);
}
