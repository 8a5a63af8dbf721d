//! The two products of a dense top layer's Gibbs chain on the host: W packed
//! once for mrbm-kernels' sgemm and the chains' states kept as host vectors,
//! with the bits of burn's CPU products.
//!
//! The `sample` stage computed x = v W + b and y = h W^T + a with burn's
//! matmul (the gemm crate) at every step, turning tensors into host vectors
//! and back around each draw. gemm's f32 kernels sum every entry as a chain
//! of fused multiply-adds from zero within a depth block and add the
//! blocks' sums in order, as mrbm-kernels' FMA kernels do
//! ([`PackedA::with_depth_block`]); only the block size, which gemm picks
//! from the CPU's cache sizes, can differ. So the first product of each
//! kind runs both ways, and the host product is kept only at a block size
//! that gives burn's product bit for bit; otherwise burn's stays. The chains,
//! grids and metrics are therefore those of burn's products, only sooner.

use burn::tensor::Tensor;
use mrbm_kernels::sparse::{sparse_walk, MAX_DENSITY};
use mrbm_kernels::{sgemm_packed, Isa, PackedA, Par, View, ViewMut};

use crate::layer::{host_f32, LayerKind, Rbm};

/// How one product is computed: not yet decided (the next call compares),
/// on the host at gemm's depth block, or by burn.
enum Route {
    Pending,
    Host(PackedA),
    Burn,
}

/// A dense layer's two products for a batch of chains.
pub(crate) struct DenseChainProducts {
    d: usize,
    h: usize,
    /// W row-major [D, H].
    w: Vec<f32>,
    /// W^T row-major [H, D] (the sparse walk's right operand down).
    wt: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    /// x = v W + b: W^T [H, D] on the left, depth D.
    up: Route,
    /// y = h W^T + a: W [D, H] on the left, depth H.
    down: Route,
}

/// Block counts tried when matching gemm's depth block: gemm splits the
/// depth evenly into blocks of at most max(512, an L1-derived size).
const MAX_BLOCKS: usize = 16;

impl DenseChainProducts {
    /// None unless `layer` is dense and its products would run on burn's
    /// CPU backend in f32 without a learned sigma (`v`: the chains' states).
    pub(crate) fn new(layer: &Rbm, v: &Tensor<4>) -> Option<Self> {
        let LayerKind::Dense { visible, hidden } = layer.spec.kind else {
            return None;
        };
        if !layer.on_plain_host(v) {
            return None;
        }
        let w = host_f32(&layer.w);
        let mut wt = vec![0.0f32; w.len()];
        for (i, row) in w.chunks(hidden).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                wt[j * visible + i] = x;
            }
        }
        Some(DenseChainProducts {
            d: visible,
            h: hidden,
            w,
            wt,
            a: host_f32(&layer.a),
            b: host_f32(&layer.b),
            up: Route::Pending,
            down: Route::Pending,
        })
    }

    /// x = v W + b for `rows` rows of visible values; `burn` computes it
    /// with burn (the reference while deciding, the fallback after).
    pub(crate) fn pre_hidden(
        &mut self,
        v: &[f32],
        rows: usize,
        burn: impl FnOnce() -> Vec<f32>,
    ) -> Vec<f32> {
        self.apply(true, (v, rows), burn)
    }

    /// y = h W^T + a for `rows` rows of hidden values.
    pub(crate) fn pre_visible(
        &mut self,
        h: &[f32],
        rows: usize,
        burn: impl FnOnce() -> Vec<f32>,
    ) -> Vec<f32> {
        self.apply(false, (h, rows), burn)
    }

    /// One of the two products by its route, deciding the route on the
    /// first call: `up` is x (W^T on the left, bias b), else y (W, bias a).
    fn apply(
        &mut self,
        up: bool,
        input: (&[f32], usize),
        burn: impl FnOnce() -> Vec<f32>,
    ) -> Vec<f32> {
        let (route, bias, right) = if up {
            (&mut self.up, &self.b, &self.w)
        } else {
            (&mut self.down, &self.a, &self.wt)
        };
        match route {
            Route::Host(packed) => product(packed, input, bias, right),
            Route::Burn => burn(),
            Route::Pending => {
                let want = burn();
                let left = Left {
                    w: &self.w,
                    cols: self.h,
                    transposed: up,
                };
                *route = decide(left, input, (bias, right), &want);
                want
            }
        }
    }

    /// Whether both products run on the host (tests).
    #[cfg(test)]
    pub(crate) fn on_host(&self) -> bool {
        matches!((&self.up, &self.down), (Route::Host(_), Route::Host(_)))
    }

    /// (visible, hidden) sizes.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.d, self.h)
    }
}

/// The product's left operand: W (row-major, `cols` columns) or W^T.
#[derive(Clone, Copy)]
struct Left<'a> {
    w: &'a [f32],
    cols: usize,
    transposed: bool,
}

impl Left<'_> {
    /// (rows, depth) of the left operand.
    fn shape(&self) -> (usize, usize) {
        let rows = self.w.len() / self.cols.max(1);
        if self.transposed {
            (self.cols, rows)
        } else {
            (rows, self.cols)
        }
    }

    fn pack(&self, max_kc: usize) -> PackedA {
        let (m, k) = self.shape();
        let w = View::row_major(self.w, self.cols);
        let view = if self.transposed { w.t() } else { w };
        PackedA::with_depth_block(Isa::best(), m, k, view, max_kc)
    }
}

/// The host product at the first depth block that reproduces `want`
/// (burn's product of the same input) bit for bit, else burn.
fn decide(
    left: Left,
    input: (&[f32], usize),
    (bias, right): (&[f32], &[f32]),
    want: &[f32],
) -> Route {
    let (m, k) = left.shape();
    let rows = input.1;
    // gemm runs small or thin products through other kernels (horizontal
    // sums, gemv), and FMA kernels only sum as described on x86 here.
    let gemm_blocked = rows > 1 && m > 1 && k > 2 && (rows > 64 || m > 64) && rows * m > 256;
    if !gemm_blocked || Isa::best() == Isa::Portable {
        return Route::Burn;
    }
    // gemm's usual choice first (blocks of at most 512), then the others.
    let first = k.div_ceil(512);
    let mut tried = Vec::new();
    for blocks in std::iter::once(first).chain(1..=MAX_BLOCKS) {
        let kc = k.div_ceil(blocks);
        if tried.contains(&kc) {
            continue;
        }
        tried.push(kc);
        let packed = left.pack(kc);
        let got = product(&packed, input, bias, right);
        if got
            .iter()
            .map(|x| x.to_bits())
            .eq(want.iter().map(|x| x.to_bits()))
        {
            return Route::Host(packed);
        }
    }
    Route::Burn
}

/// out[r, j] = sum_p input[r, p] A[j, p] + bias[j], row-major [rows, m];
/// `right` is A^T row-major [k, m]. Sparse states (digits' visible states
/// are about five-sixths zeros) take the walk over their nonzeros at the
/// packed A's depth block: the same bits.
fn product(
    packed: &PackedA,
    (input, rows): (&[f32], usize),
    bias: &[f32],
    right: &[f32],
) -> Vec<f32> {
    let (m, k) = (packed.rows(), packed.cols());
    let mut out = vec![0.0f32; rows * m];
    let walked = sparse_walk(
        (packed.isa(), Par::Rayon, MAX_DENSITY, packed.depth_block()),
        [rows, m, k],
        1.0,
        View::row_major(input, k),
        View::row_major(right, m),
        0.0,
        &mut ViewMut::row_major(&mut out, m),
    );
    if walked {
        add_bias(&mut out, bias);
        return out;
    }
    // out^T [m, rows] = A [m, k] input^T [k, rows], stored transposed.
    let c = ViewMut {
        data: &mut out,
        rs: 1,
        cs: m,
    };
    sgemm_packed(
        rows,
        1.0,
        packed,
        View::row_major(input, k).t(),
        0.0,
        c,
        Par::Rayon,
    );
    add_bias(&mut out, bias);
    out
}

fn add_bias(out: &mut [f32], bias: &[f32]) {
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use crate::checks::random_layer;
    use crate::layer::{tensor_f32, tensor_from, to_f64, LayerSpec};
    use crate::sample::{gibbs_from, Anneal, Sampler, UnitSampler};
    use crate::stack::Dbn;
    use crate::unit::UnitType;

    fn dense(d: usize, h: usize, units: (UnitType, UnitType), seed: u64) -> Rbm {
        let spec = LayerSpec {
            kind: LayerKind::Dense {
                visible: d,
                hidden: h,
            },
            visible_unit: units.0,
            hidden_unit: units.1,
        };
        random_layer(spec, seed, &Device::flex(), DType::F32)
    }

    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f32>()).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// After deciding on one real-valued input, the host products give
    /// burn's bits on other (binary) inputs too, sparse ones (the walk over
    /// their nonzeros) and denser ones (the packed product), and on a CPU with FMA
    /// kernels they did take over: at the sampler's sizes (MNIST 784-500,
    /// 100 chains; depth 784 spans gemm's depth blocks) and at small ones.
    #[test]
    fn host_products_take_over_with_the_bits_of_burn() {
        let dev = Device::flex();
        for &(d, h, chains) in &[(784, 500, 100), (300, 130, 70)] {
            let layer = dense(d, h, (UnitType::BINARY, UnitType::BINARY), 3);
            let burn_x = |v: &[f32]| {
                let t = layer.pre_hidden(tensor_f32(v.to_vec(), [chains, d, 1, 1], &dev));
                t.to_data().try_into_vec::<f32>().unwrap()
            };
            let burn_y = |h_: &[f32]| {
                let t = layer.pre_visible(tensor_f32(h_.to_vec(), [chains, h, 1, 1], &dev));
                t.to_data().try_into_vec::<f32>().unwrap()
            };
            let v0 = uniform(chains * d, 1);
            let t0 = tensor_f32(v0.clone(), [chains, d, 1, 1], &dev);
            let mut p = DenseChainProducts::new(&layer, &t0).expect("a dense f32 layer on the CPU");
            p.pre_hidden(&v0, chains, || burn_x(&v0));
            let h0 = uniform(chains * h, 2);
            p.pre_visible(&h0, chains, || burn_y(&h0));
            if Isa::best() != Isa::Portable {
                assert!(
                    p.on_host(),
                    "{d}-{h}: the host products did not match burn's"
                );
            }
            // Shares of ones: below and above the walk's limit, both ways.
            for (seed, up, down) in [(10, 0.3, 0.15), (11, 0.6, 0.5), (12, 0.15, 0.3)] {
                let v: Vec<f32> = uniform(chains * d, seed)
                    .iter()
                    .map(|&u| (u < up) as u8 as f32)
                    .collect();
                let hb: Vec<f32> = uniform(chains * h, seed + 5)
                    .iter()
                    .map(|&u| (u < down) as u8 as f32)
                    .collect();
                assert_eq!(
                    bits(&p.pre_hidden(&v, chains, || burn_x(&v))),
                    bits(&burn_x(&v)),
                    "x, {d}-{h}"
                );
                assert_eq!(
                    bits(&p.pre_visible(&hb, chains, || burn_y(&hb))),
                    bits(&burn_y(&hb)),
                    "y, {d}-{h}"
                );
            }
        }
    }

    /// The chain as `gibbs_from` ran it before the host products: burn's
    /// products and tensors every step (no learned sigma).
    fn burn_chain(
        dbn: &Dbn,
        start: &[u8],
        chains: usize,
        steps: usize,
        anneal: &Anneal,
        rng: &mut ChaCha8Rng,
    ) -> Vec<f64> {
        let dev = dbn.device();
        let layer = &dbn.layers[0];
        let (d, h) = match layer.spec.kind {
            LayerKind::Dense { visible, hidden } => (visible, hidden),
            LayerKind::Conv { .. } => unreachable!(),
        };
        let hs = UnitSampler::new(layer.spec.hidden_unit, Sampler::Exact);
        let vs = UnitSampler::new(layer.spec.visible_unit, Sampler::Exact);
        let mut v = dbn
            .pixels_to_visible(start, chains, &dev, DType::F32)
            .reshape([chains, d, 1, 1]);
        let mut hid = layer.up(v.clone());
        for s in 0..steps {
            let x = to_f64(&layer.pre_hidden(v));
            let mut hv = vec![0.0f64; x.len()];
            hs.draw_tempered_batch(&x, anneal.beta(s), rng, &mut hv);
            hid = tensor_from(hv, [chains, h, 1, 1], &dev, DType::F32);
            let y = to_f64(&layer.pre_visible(hid.clone()));
            let mix = anneal.mix(s);
            let (inputs, at): (Vec<f64>, f64) = match &anneal.base {
                Some(base) if mix < 1.0 => (
                    y.iter()
                        .enumerate()
                        .map(|(i, &yi)| (1.0 - mix) * base[i % d] + mix * yi)
                        .collect(),
                    anneal.end.unwrap_or(1.0),
                ),
                _ => (y, anneal.beta(s)),
            };
            let mut vv = vec![0.0f64; inputs.len()];
            vs.draw_tempered_batch(&inputs, at, rng, &mut vv);
            v = tensor_from(vv, [chains, d, 1, 1], &dev, DType::F32);
        }
        to_f64(&layer.down(hid))
    }

    /// `gibbs_from` on a dense top layer gives the same images and leaves the
    /// stream where the burn chain leaves it: binary and multinary units,
    /// plain and annealed from a base, and with no steps at all.
    #[test]
    fn dense_chains_are_the_burn_chains_bit_for_bit() {
        let (d, h, chains) = (196, 120, 70);
        let cases = [
            ((UnitType::BINARY, UnitType::BINARY), 12, None),
            ((UnitType::new(3, 1.0), UnitType::new(4, 1.0)), 8, None),
            ((UnitType::BINARY, UnitType::BINARY), 10, Some(6)),
            ((UnitType::levels(5), UnitType::BINARY), 0, None),
        ];
        for (i, (units, steps, annealed)) in cases.into_iter().enumerate() {
            let dbn = Dbn::of_dense_layer(dense(d, h, units, 7 + i as u64), 1.0 / 255.0);
            let start: Vec<u8> = uniform(chains * d, 40 + i as u64)
                .iter()
                .map(|&u| (u * 255.0) as u8)
                .collect();
            let anneal = match annealed {
                Some(s) => Anneal {
                    steps: s,
                    from: 0.2,
                    base: Some((0..d).map(|j| (j % 7) as f64 * 0.3 - 1.0).collect()),
                    end: None,
                },
                None => Anneal::default(),
            };
            let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
            let got = gibbs_from(
                &dbn,
                &start,
                (chains, steps),
                Sampler::Exact,
                anneal.clone(),
                &mut r1,
                |_| true,
            );
            let want = burn_chain(&dbn, &start, chains, steps, &anneal, &mut r2);
            let got = to_f64(&got);
            assert_eq!(got.len(), want.len());
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "case {i}: the images differ"
            );
            assert_eq!(
                r1.get_word_pos(),
                r2.get_word_pos(),
                "case {i}: the streams differ"
            );
        }
    }
}
