//! Resumable training: a run interrupted at a checkpoint and resumed from
//! it gives the model bytes (and loss history) of the run left alone, for
//! every optimiser and training rule that carries state between batches.

use burn::tensor::{DType, Device};
use mrbm_core::checkpoint;
use mrbm_core::layer::tensor_from;
use mrbm_core::resume;
use mrbm_core::stack::VisibleKind;
use mrbm_core::stack::{Dbn, StackParams, StackSpec};
use mrbm_core::train::{
    train_images_from, Algorithm, Cursor, History, Momentum, OptimParams, OptimizerKind,
    Reconstruction, Schedule, Trainer,
};
use mrbm_core::unit::UnitKind;
use mrbm_core::CoreError;
use mrbm_stage::StageError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn dev() -> Device {
    Device::flex()
}

/// 4x4 images: noisy stripes.
fn stripes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * 16)
        .map(|j| {
            let (i, p) = (j / 16, j % 16);
            let on = (p / 4 + i) % 2 == 0;
            if on != (rng.random::<f64>() < 0.1) {
                230
            } else {
                20
            }
        })
        .collect()
}

fn spec(dense: &[usize], n: u32) -> StackSpec {
    StackParams {
        conv_channels: vec![],
        dense: dense.to_vec(),
        n,
        ..StackParams::default()
    }
    .build_spec([1, 4, 4])
    .unwrap()
}

fn gaussian_spec(dense: &[usize]) -> StackSpec {
    let mut s = StackParams {
        conv_channels: vec![],
        dense: dense.to_vec(),
        visible: VisibleKind::Gaussian,
        ..StackParams::default()
    }
    .build_spec([1, 4, 4])
    .unwrap();
    s.visible_scale = 1.0 / 100.0;
    s.visible_offset = 1.2;
    s
}

fn model_bytes(t: &Trainer, dir: &std::path::Path, name: &str) -> Vec<u8> {
    let p = dir.join(name);
    checkpoint::save(&t.dbn, &p).unwrap();
    std::fs::read(p).unwrap()
}

/// Train straight through; then train again, stopping (as Ctrl-C or a kill
/// would) right after the checkpoint at `stop`, load the checkpoint into a
/// fresh process-like state and finish. Both must agree bit for bit.
fn straight_vs_resumed(tag: &str, sp: StackSpec, opt: OptimParams, stop: fn(&Cursor) -> bool) {
    let dir = std::env::temp_dir().join(format!("mrbm-resume-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 96;
    let px = stripes(n, 5);
    let fresh = || {
        let mut dbn = Dbn::init(sp.clone(), 0.05, 7, &dev(), DType::F32);
        if sp.layers[0].visible_unit.kind == UnitKind::Gaussian {
            // A learned sigma, with its own optimiser state.
            let c = sp.layers[0].visible_channels();
            dbn.layers[0].log_sigma = Some(tensor_from(vec![0.0; c], [c], &dev(), DType::F32));
        }
        Trainer::new(dbn, opt.clone())
    };

    let mut straight = fresh();
    let h_straight = train_images_from(
        &mut straight,
        &px,
        n,
        DType::F32,
        Default::default(),
        |_, _, _| Ok(()),
        |_, _, _| Ok(()),
    )
    .unwrap();

    let ckpt = dir.join(resume::FILE);
    let mut first = fresh();
    let mut saved_at = None;
    let r = train_images_from(
        &mut first,
        &px,
        n,
        DType::F32,
        Default::default(),
        |_, _, _| Ok(()),
        |t, c, h| {
            if stop(c) {
                resume::save(t, c, h, &ckpt)?;
                saved_at = Some(*c);
                return Err(StageError::Cancelled.into());
            }
            Ok(())
        },
    );
    assert!(
        matches!(r, Err(CoreError::Stage(StageError::Cancelled))),
        "{tag}: never stopped"
    );
    let at = saved_at.unwrap();
    drop(first);

    let (mut resumed, cursor, hist) = resume::load(&ckpt, &sp, &opt, &dev()).unwrap();
    assert_eq!(cursor, at, "{tag}");
    let h_resumed = train_images_from(
        &mut resumed,
        &px,
        n,
        DType::F32,
        (cursor, hist),
        |_, _, _| Ok(()),
        |_, _, _| Ok(()),
    )
    .unwrap();
    assert_eq!(h_straight.batches, h_resumed.batches, "{tag}: loss history");
    assert_eq!(
        model_bytes(&straight, &dir, "a.safetensors"),
        model_bytes(&resumed, &dir, "b.safetensors"),
        "{tag}: model bytes differ"
    );
    // A resume that did nothing (from the start) would also pass the
    // comparison above: make sure the checkpoint held trained weights.
    let untrained = fresh();
    assert_ne!(
        model_bytes(&untrained, &dir, "c.safetensors"),
        model_bytes(&resumed, &dir, "b.safetensors")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn base() -> OptimParams {
    OptimParams {
        lr: 0.02,
        batch_size: 16,
        epochs: 4,
        seed: 11,
        ..OptimParams::default()
    }
}

fn after_epoch_2(c: &Cursor) -> bool {
    c.epoch == 2 && c.batch == 0
}

fn mid_epoch_3(c: &Cursor) -> bool {
    c.epoch == 2 && c.batch == 3
}

#[test]
fn adam_four_epochs_equal_two_plus_two_resumed() {
    straight_vs_resumed("adam", spec(&[6, 5], 1), base(), after_epoch_2);
    // Mid-epoch (position in the batch order), N > 1 units.
    straight_vs_resumed("adam-mid", spec(&[6], 3), base(), mid_epoch_3);
}

#[test]
fn pcd_and_fpcd_resume_their_chains_fast_weights_and_rng() {
    for (tag, algorithm) in [("pcd", Algorithm::Pcd), ("fpcd", Algorithm::Fpcd)] {
        let opt = OptimParams {
            algorithm,
            cd_k: 2,
            ..base()
        };
        straight_vs_resumed(tag, spec(&[6], 1), opt.clone(), after_epoch_2);
        straight_vs_resumed(&format!("{tag}-mid"), spec(&[6], 1), opt, mid_epoch_3);
    }
}

#[test]
fn sgd_momentum_sampled_paper_and_greedy_resume() {
    let sgd = OptimParams {
        optimizer: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: Momentum::Switch {
            initial: 0.5,
            final_: 0.9,
            switch_after: 1,
        },
        weight_decay: 1e-4,
        algorithm: Algorithm::Cd,
        ..base()
    };
    straight_vs_resumed("sgd-cd", spec(&[6], 1), sgd, mid_epoch_3);
    let sampled = OptimParams {
        reconstruction: Reconstruction::Sample,
        ..base()
    };
    straight_vs_resumed("paper-sample", spec(&[6], 1), sampled, after_epoch_2);
    // Greedy: stop inside the second layer's phase.
    let greedy = OptimParams {
        schedule: Schedule::Greedy,
        algorithm: Algorithm::Pcd,
        ..base()
    };
    straight_vs_resumed("greedy", spec(&[6, 5], 1), greedy, |c| {
        c.phase == 1 && c.epoch == 1 && c.batch == 2
    });
}

#[test]
fn learned_sigma_resumes_with_its_optimiser_state() {
    for (tag, optimizer) in [
        ("sigma-adam", OptimizerKind::Adam),
        ("sigma-sgd", OptimizerKind::Sgd),
    ] {
        let opt = OptimParams {
            algorithm: Algorithm::Pcd,
            optimizer,
            momentum: Momentum::Constant(0.5),
            ..base()
        };
        straight_vs_resumed(tag, gaussian_spec(&[6]), opt, mid_epoch_3);
    }
}

#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let dir = std::env::temp_dir().join(format!("mrbm-resume-other-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sp = spec(&[6], 1);
    let opt = base();
    let t = Trainer::new(
        Dbn::init(sp.clone(), 0.05, 7, &dev(), DType::F32),
        opt.clone(),
    );
    let f = dir.join(resume::FILE);
    resume::save(&t, &Cursor::default(), &History::default(), &f).unwrap();
    assert!(resume::load(&f, &sp, &opt, &dev()).is_ok());
    let other = OptimParams { lr: 0.5, ..base() };
    let e = resume::load(&f, &sp, &other, &dev()).err().unwrap();
    assert!(e.to_string().contains("other training parameters"), "{e}");
    let e = resume::load(&f, &spec(&[7], 1), &opt, &dev())
        .err()
        .unwrap();
    assert!(e.to_string().contains("another stack"), "{e}");
    // A truncated file (a kill during a non-atomic write would leave one).
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert!(resume::load(&f, &sp, &opt, &dev()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_checkpoint_is_refused_by_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let sp = spec(&[6], 1);
    let opt = base();
    let t = Trainer::new(
        Dbn::init(sp.clone(), 0.05, 7, &dev(), DType::F32),
        opt.clone(),
    );
    let f = dir.path().join(resume::FILE);
    resume::save(&t, &Cursor::default(), &History::default(), &f).unwrap();
    assert!(resume::manifest_path(&f).exists());
    assert!(resume::load(&f, &sp, &opt, &dev()).is_ok());
    assert!(resume::verify_dir(dir.path()).is_empty());
    let good = std::fs::read(&f).unwrap();
    // 16 bytes flipped among the tensors (after the header): still a
    // well-formed safetensors file, which only the content hash tells apart.
    let mut bad = good.clone();
    let mid = bad.len() - 40;
    for b in &mut bad[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&f, &bad).unwrap();
    let e = resume::load(&f, &sp, &opt, &dev()).err().unwrap();
    assert!(e.to_string().contains("content hash"), "{e}");
    let v = resume::verify_dir(dir.path());
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].1.contains("content hash"), "{v:?}");
    // Without its manifest a checkpoint cannot be checked: refused too.
    std::fs::write(&f, &good).unwrap();
    std::fs::remove_file(resume::manifest_path(&f)).unwrap();
    let e = resume::load(&f, &sp, &opt, &dev()).err().unwrap();
    assert!(e.to_string().contains("no manifest"), "{e}");
}
