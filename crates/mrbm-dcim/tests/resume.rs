//! `dcim` resumes after an interruption bit for bit: a run cancelled at an
//! epoch's end and resumed from its checkpoint writes the same
//! model.safetensors and loss.csv, byte for byte, as a run never
//! interrupted; a damaged checkpoint is refused (training starts over, with
//! a warning) rather than trained on.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mrbm_data::artifact::ImageSet;
use mrbm_stage::{JsonValue, Metrics, Stage, StageContext, StageError};
use rand::{Rng, SeedableRng};

fn dcim() -> Box<dyn Stage> {
    mrbm_dcim::stages()
        .into_iter()
        .find(|s| s.kind() == "dcim")
        .unwrap()
}

fn bars(n: usize, seed: u64, path: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % 3;
        for y in 0..8 {
            for x in 0..8 {
                let on = x > 2 * c && x < 3 + 2 * c && (1..7).contains(&y);
                px.push(if on { 230 } else { rng.random_range(0..40u8) });
            }
        }
        labels.push(c as i64);
    }
    ImageSet::new(px, n, 1, 8, 8, labels).write(path).unwrap();
}

/// The stage's log; it sets `cancel` once a line contains `trigger`, as
/// Ctrl-C would at that moment.
#[derive(Clone)]
struct Log {
    text: Arc<Mutex<String>>,
    cancel: Arc<AtomicBool>,
    trigger: Option<&'static str>,
}

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(b);
        if self.trigger.is_some_and(|t| s.contains(t)) {
            self.cancel.store(true, Ordering::Relaxed);
        }
        self.text.lock().unwrap().push_str(&s);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `dcim` as the runner would, with a resume folder; the log's text
/// comes back beside the result.
fn run(
    params: &JsonValue,
    inputs: &[(&str, &Path)],
    out: &Path,
    resume: Option<&Path>,
    trigger: Option<&'static str>,
) -> (Result<Metrics, StageError>, String) {
    let s = dcim();
    let inputs: BTreeMap<String, std::path::PathBuf> = inputs
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_path_buf()))
        .collect();
    std::fs::create_dir_all(out).unwrap();
    let log = Log {
        text: Arc::default(),
        cancel: Arc::new(AtomicBool::new(false)),
        trigger,
    };
    let sink: Mutex<Box<dyn std::io::Write + Send>> = Mutex::new(Box::new(log.clone()));
    let device = mrbm_device::Device::cpu();
    let upstream = BTreeMap::new();
    let ctx = StageContext {
        stage_id: "dcim",
        params,
        inputs: &inputs,
        out_dir: out,
        device: &device,
        threads: 2,
        progress: None,
        cancel: &log.cancel,
        log: &sink,
        resume_dir: resume,
        upstream: &upstream,
    };
    let r = s.run(&ctx);
    let text = log.text.lock().unwrap().clone();
    (r, text)
}

fn same_bytes(a: &Path, b: &Path) {
    for f in ["model.safetensors", "loss.csv"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between {a:?} and {b:?}");
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes_and_a_damaged_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (
        dir.path().join("train.safetensors"),
        dir.path().join("test.safetensors"),
    );
    bars(60, 1, &train);
    bars(15, 2, &test);
    let inputs = [("data", train.as_path()), ("test", test.as_path())];
    // A conv layer (4-d Adam moments) and objective 22 (draws per batch).
    let raw: toml::Table = toml::from_str(
        "layers = [[3, 1, 4], 12, 3]\nobjective = \"22\"\nepochs = 3\nbatch_size = 16\nlr = 0.01",
    )
    .unwrap();
    let params = dcim().params(&raw).unwrap();

    let reference = dir.path().join("reference");
    let (r, _) = run(&params, &inputs, &reference, None, None);
    let want = r.unwrap();

    // Interrupted as epoch 1 ends, then resumed.
    let resume = dir.path().join("resume");
    let (r, log) = run(
        &params,
        &inputs,
        &dir.path().join("cut"),
        Some(&resume),
        Some("epoch 1 of 3"),
    );
    assert!(matches!(r, Err(StageError::Cancelled)), "{r:?}\n{log}");
    let ck = resume.join(mrbm_dcim::resume::FILE);
    assert!(ck.exists() && mrbm_dcim::resume::manifest_path(&ck).exists());
    let resumed = dir.path().join("resumed");
    let (r, log) = run(&params, &inputs, &resumed, Some(&resume), None);
    let got = r.unwrap();
    assert!(
        log.contains("resumed at epoch 2, batch 1 (4 batches done)"),
        "{log}"
    );
    same_bytes(&reference, &resumed);
    assert_eq!(got["test_accuracy"], want["test_accuracy"]);
    assert_eq!(got["reverse_loss_test"], want["reverse_loss_test"]);

    // Interrupted again in the second epoch's end; one byte of the
    // checkpoint flipped: refused, trained from the start, same bytes.
    let resume2 = dir.path().join("resume2");
    let (r, _) = run(
        &params,
        &inputs,
        &dir.path().join("cut2"),
        Some(&resume2),
        Some("epoch 2 of 3"),
    );
    assert!(matches!(r, Err(StageError::Cancelled)));
    let ck2 = resume2.join(mrbm_dcim::resume::FILE);
    let mut bytes = std::fs::read(&ck2).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&ck2, bytes).unwrap();
    let again = dir.path().join("again");
    let (r, log) = run(&params, &inputs, &again, Some(&resume2), None);
    r.unwrap();
    assert!(
        log.contains("not resuming") && log.contains("damaged"),
        "{log}"
    );
    assert!(!log.contains("resumed at"), "{log}");
    same_bytes(&reference, &again);

    // A checkpoint of other parameters (another lr) is refused too.
    let raw2: toml::Table = toml::from_str(
        "layers = [[3, 1, 4], 12, 3]\nobjective = \"22\"\nepochs = 3\nbatch_size = 16\nlr = 0.02",
    )
    .unwrap();
    let params2 = dcim().params(&raw2).unwrap();
    let (r, log) = run(
        &params2,
        &inputs,
        &dir.path().join("other"),
        Some(&resume),
        None,
    );
    r.unwrap();
    assert!(log.contains("other parameters"), "{log}");
}
