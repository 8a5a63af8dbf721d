//! AVX-512 (both tiles) and AVX2 products are the same bits (issue 26:
//! results pinned in results/ must not depend on which family or tile a
//! machine runs). Every microkernel accumulates each element with one FMA
//! per k in the same order over the same kc blocks, so only the final store
//! could differ: the full-tile store fuses beta * C into an FMA, and an edge
//! tile (which ones are edges depends on MR x NR: 14 x 32, 16 x 16 and
//! 6 x 16) must round the same way. Shapes here leave edges in one family and not the other,
//! span several kc blocks, and use alpha and beta that round.

use mrbm_kernels::{sgemm_isa, Isa, Par, View, ViewMut};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(7);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 7919.0 - 1.3
        })
        .collect()
}

fn product(isa: Isa, m: usize, n: usize, k: usize, alpha: f32, beta: f32, par: Par) -> Vec<u32> {
    let a = values(m * k, 3 + m as u32);
    let b = values(k * n, 5 + n as u32);
    let mut c = values(m * n, 11 + k as u32);
    sgemm_isa(
        (isa, par),
        [m, n, k],
        alpha,
        View::row_major(&a, k),
        View::row_major(&b, n),
        beta,
        ViewMut::row_major(&mut c, n),
    );
    c.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn avx512_and_avx2_products_are_bit_identical() {
    if !(Isa::Avx512.available() && Isa::Avx2.available()) {
        eprintln!("skipped: this CPU lacks AVX-512 or AVX2 (nothing to compare)");
        return;
    }
    let wide = [Isa::Avx512, Isa::Avx512Narrow];
    let mut compared = 0;
    let mut beta_rounds = false;
    for &(m, n, k) in &[
        (14, 32, 7),
        (6, 16, 300),
        (20, 40, 257),
        (42, 96, 600),
        (13, 33, 513),
        (16, 16, 256),
        (33, 17, 520),
        (1, 1, 1),
    ] {
        for &(alpha, beta) in &[(1.0, 0.0), (1.0, 1.0), (0.7, 0.3), (-1.3, 0.9)] {
            for par in [Par::Seq, Par::Rayon] {
                let y = product(Isa::Avx2, m, n, k, alpha, beta, par);
                for isa in wide {
                    let x = product(isa, m, n, k, alpha, beta, par);
                    let differ = x.iter().zip(&y).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differ,
                        0,
                        "{} {m}x{n}x{k} alpha {alpha} beta {beta} {par:?}: {differ} elements differ",
                        isa.name()
                    );
                    compared += x.len();
                }
            }
        }
        // The test can fail: beta = 0.3 rounds differently fused and unfused
        // for some element of these inputs.
        let c = values(m * n, 11 + k as u32);
        beta_rounds |= c.iter().any(|&p| {
            let v = 0.25f32;
            p.mul_add(0.3, v) != v + 0.3 * p
        });
    }
    assert!(beta_rounds, "no input where fused and unfused beta differ");
    assert!(compared > 10_000);
}
