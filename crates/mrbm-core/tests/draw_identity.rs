//! Pinned outputs of the sampled paths (issue 29: speed-ups that keep every
//! result bit-identical). The constants below were produced by the code
//! BEFORE the batched draws and the packed AIS products (commit ddf59de,
//! unit-by-unit `rng.random::<f64>() < sigmoid_f64(z)` loops and unpacked
//! products), by running this file against it; the batched code must give
//! the same bits. A change that is meant to move results (a new random
//! stream) must update them, and bump the stage versions.

use burn::tensor::{DType, Device};
use mrbm_core::ais::{sm_betas, HostDense};
use mrbm_core::layer::{tensor_from, to_f64};
use mrbm_core::sample::draw_states;
use mrbm_core::unit::UnitType;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// FNV-1a over the bits of a sequence of f64 values.
fn fnv(values: impl IntoIterator<Item = f64>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn random_dense(d: usize, h: usize, vu: UnitType, hu: UnitType, seed: u64) -> HostDense {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut u = |s: f64| (rng.random::<f64>() * 2.0 - 1.0) * s;
    let w: Vec<f64> = (0..d * h).map(|_| u(0.3)).collect();
    let a: Vec<f64> = (0..d).map(|_| u(0.5)).collect();
    let b: Vec<f64> = (0..h).map(|_| u(0.5)).collect();
    HostDense::new(w, a, b, vu, hu)
}

/// Inputs spread over the sure cut (|z| = 40) and beyond, some exactly at it.
fn inputs(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| match i % 97 {
            0 => 40.0,
            1 => -40.0,
            2 => 0.0,
            _ => (rng.random::<f64>() * 2.0 - 1.0) * 12.0 * (1 + i % 5) as f64,
        })
        .collect()
}

#[test]
fn draw_states_are_pinned() {
    let mut got = Vec::new();
    for (unit, n) in [
        (UnitType::BINARY, 40_000),
        (UnitType::new(3, 1.0), 20_000),
        (UnitType::new(5, 0.5), 300),
    ] {
        let x = inputs(n, 11);
        let pre = tensor_from(x, [n / 100, 100, 1, 1], &Device::flex(), DType::F32);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let s = draw_states(unit, pre, &mut rng);
        got.push((fnv(to_f64(&s)), rng.next_u64()));
    }
    println!("draw_states: {got:x?}");
    assert_eq!(got, PINNED_STATES);
}

#[test]
fn ais_and_raise_are_pinned() {
    let mut got = Vec::new();
    // D = 300 > 256: the products' depth is split into blocks.
    for (vu, hu) in [
        (UnitType::BINARY, UnitType::BINARY),
        (UnitType::new(3, 1.0), UnitType::new(2, 1.0)),
    ] {
        let m = random_dense(300, 40, vu, hu, 3);
        let base = vec![0.1; m.d];
        let est = m
            .ais(&base, &sm_betas(120), 30, 9, &|_| {}, &|| false)
            .unwrap();
        let v = m.quantise(
            &inputs(2 * m.d, 4)
                .iter()
                .map(|x| x.abs() / 20.0)
                .collect::<Vec<_>>(),
        );
        let r = m
            .raise(&base, &sm_betas(60), (&v, 2), 3, 2, (&|_| {}, &|| false))
            .unwrap();
        got.push((est.log_z.to_bits(), est.log_z_std.to_bits(), fnv(r)));
    }
    println!("ais: {got:x?}");
    assert_eq!(got, PINNED_AIS);
}

/// (hash of the states, the stream's next u64) per unit type, from the
/// unit-by-unit code (commit ddf59de).
const PINNED_STATES: [(u64, u64); 3] = [
    (0x4b6d2ce951874ea5, 0x7223b63d8549b504),
    (0x0066e83047f7da1d, 0xfa7b2436c977153a),
    (0xbc3e927b333622f0, 0xc3aaadc6d079f5b5),
];
/// (log Z bits, its standard error's bits, hash of the RAISE bounds) per
/// model, from the unit-by-unit code with unpacked products (commit ddf59de).
/// The binary model's weights moved to a vectorised softplus (loglik stage
/// version 2): its log Z and RAISE bounds kept their bits, the standard
/// error moved in its last bits (0x3fdb8f6dbd4c3478 before).
const PINNED_AIS: [(u64, u64, u64); 2] = [
    (0x40715546d5cfc5b6, 0x3fdb8f6dbd4c344b, 0xa26026676fc7ffd0),
    (0x4092b728902c8256, 0x3fea326107da199b, 0xa06b668b94ba5900),
];
