//! Dense f32 kernels on the host, one job: fast matrix products (and the
//! im2col that turns a convolution into one) for mrbm's CPU paths.
//!
//! [`sgemm`] computes C = alpha * A * B + beta * C for strided row/column
//! views (a transpose is a view with its strides swapped, [`View::t`]). It is
//! the classic Goto/BLIS scheme: B is packed into k x NR panels and A into
//! MR x k panels, blocked so that one B micro-panel stays in L1, the packed
//! A block in L2 and the packed B block in L3, and a register-tile
//! microkernel does the multiply-adds. The microkernel is chosen at run time:
//!
//! | [`Isa`] | tile (MR x NR) | registers |
//! |---|---|---|
//! | `Avx512` | 14 x 32 | 28 zmm accumulators + 2 B + 1 broadcast of the 32 |
//! | `Avx512Narrow` | 16 x 16 | 16 zmm accumulators + 1 B + 1 broadcast of the 16 |
//! | `Avx2` (+FMA) | 6 x 16 | 12 ymm accumulators + 2 B + 1 broadcast of the 16 |
//! | `Portable` | 4 x 16 | plain Rust arrays (LLVM vectorises for the target) |
//!
//! [`Isa::best`] picks the widest the CPU has, in the tile that CPU runs
//! fastest: 16 x 16 on AMD Zen 4 (whose 512-bit FMAs are double-pumped;
//! measured 2-7 % faster training steps there), 14 x 32 elsewhere (the
//! `MRBM_SGEMM_ISA` environment variable, `avx512` / `avx512-16x16` /
//! `avx2` / `portable`, overrides it, e.g. to measure or test a fallback);
//! [`sgemm_isa`] takes one explicitly. Every family except `Portable` gives
//! the same bits (tests/isa_bits.rs): each element is one FMA per k from
//! zero within a depth block, the depth blocks (256 deep) fixed, so the
//! tile shape, which is chosen per machine, never moves a result.
//! [`sgemm_sparse_a`] (module [`sparse`]) is the same product for a
//! mostly-zero A, walking its nonzeros, with the same bits.
//! [`sgemm_implicit`] takes a B that packs its own panels ([`ImplicitB`]),
//! e.g. [`conv::Patches`], a convolution's patch matrix read straight from
//! the images.
//! [`Par::Rayon`] splits the work over the caller's rayon pool; [`Par::Seq`]
//! keeps it on the calling thread (when the caller already runs one product
//! per thread, e.g. one per image).

use rayon::prelude::*;

pub mod conv;
pub mod draw;
pub mod math;
mod micro;
pub mod sparse;

pub use sparse::sgemm_sparse_a;

/// Which microkernel family runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F, 14 x 32 register tile.
    Avx512,
    /// AVX-512F, 16 x 16 register tile.
    Avx512Narrow,
    /// AVX2 with FMA, 6 x 16 register tile.
    Avx2,
    /// Plain Rust, any target.
    Portable,
}

impl Isa {
    /// Every family, widest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx512Narrow, Isa::Avx2, Isa::Portable];

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Narrow => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx512Narrow => "avx512-16x16",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// The widest available family, or the one `MRBM_SGEMM_ISA` names when
    /// it is available (an unknown or unavailable name is ignored). Read
    /// once per process.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let want = std::env::var("MRBM_SGEMM_ISA").ok();
            if let Some(isa) = Isa::ALL
                .into_iter()
                .find(|i| Some(i.name()) == want.as_deref())
            {
                if isa.available() {
                    return isa;
                }
            }
            let widest = Isa::ALL
                .into_iter()
                .find(|i| i.available())
                .unwrap_or(Isa::Portable);
            if widest == Isa::Avx512 && double_pumped_avx512() {
                Isa::Avx512Narrow
            } else {
                widest
            }
        })
    }

    fn blocking(self) -> Blocking {
        match self {
            Isa::Avx512 => Blocking {
                mr: 14,
                nr: 32,
                mc: 14 * 12,
                kc: 256,
                nc: 32 * 64,
                kernel: micro::AVX512,
                transpose16: true,
            },
            Isa::Avx512Narrow => Blocking {
                mr: 16,
                nr: 16,
                mc: 16 * 12,
                kc: 256,
                nc: 16 * 128,
                kernel: micro::AVX512_16X16,
                transpose16: true,
            },
            Isa::Avx2 => Blocking {
                mr: 6,
                nr: 16,
                mc: 6 * 24,
                kc: 256,
                nc: 16 * 128,
                kernel: micro::AVX2,
                transpose16: false,
            },
            Isa::Portable => Blocking {
                mr: micro::PORTABLE_MR,
                nr: micro::PORTABLE_NR,
                mc: 128,
                kc: 256,
                nc: 2048,
                kernel: micro::portable,
                transpose16: false,
            },
        }
    }
}

/// AMD Zen 4 (family 19h): AVX-512 on 256-bit units, where the 16 x 16
/// tile measured faster than 14 x 32 (README, "Issue 29, eighth step").
fn double_pumped_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let (vendor, sig) = (__cpuid(0), __cpuid(1));
        let amd = [vendor.ebx, vendor.edx, vendor.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        let base = (sig.eax >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((sig.eax >> 20) & 0xff)
        } else {
            base
        };
        amd && family == 0x19
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Where the work of one product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Par {
    /// On the calling thread only.
    Seq,
    /// Split over the current rayon pool.
    Rayon,
}

/// A read-only matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose (strides swapped, no copy).
    pub fn t(self) -> Self {
        View {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable matrix: element (i, j) is `data[i * rs + j * cs]`. Distinct
/// (i, j) must address distinct elements.
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> ViewMut<'a> {
    /// Row-major with `cols` columns.
    pub fn row_major(data: &'a mut [f32], cols: usize) -> Self {
        ViewMut {
            data,
            rs: cols,
            cs: 1,
        }
    }
}

/// C (m x n) = alpha * A (m x k) * B (k x n) + beta * C, with the best
/// microkernels this CPU has ([`Isa::best`]). With beta = 0, C's previous
/// contents are never read (NaNs there do not propagate).
///
/// Panics when a view is too short for its shape or C's strides make two
/// elements alias (caller bugs, not data errors).
pub fn sgemm([m, n, k]: [usize; 3], alpha: f32, a: View, b: View, beta: f32, c: ViewMut, par: Par) {
    sgemm_isa((Isa::best(), par), [m, n, k], alpha, a, b, beta, c)
}

/// [`sgemm`] with the microkernel family given (beside the parallelism);
/// panics when this CPU cannot run it (check [`Isa::available`]).
pub fn sgemm_isa(
    (isa, par): (Isa, Par),
    [m, n, k]: [usize; 3],
    alpha: f32,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
) {
    assert!(isa.available(), "sgemm: {} is not available", isa.name());
    check_views(m, n, k, Some(&a), Some(&b), &c);
    if m == 0 || n == 0 {
        return;
    }
    // Safety: the asserts above keep every access inside the slices and
    // C's elements distinct.
    unsafe {
        if c.cs != 1 && c.rs == 1 {
            // Column-major C: compute C^T = B^T A^T, whose rows are contiguous.
            driver(
                isa,
                Product {
                    m: n,
                    n: m,
                    k,
                    alpha,
                    a: Source::Strided(Mat::of(b.t())),
                    b: BSource::Strided(Mat::of(a.t())),
                    beta,
                    c: MatMut::of(c.data.as_mut_ptr(), c.cs, c.rs),
                },
                par,
            );
        } else {
            driver(
                isa,
                Product {
                    m,
                    n,
                    k,
                    alpha,
                    a: Source::Strided(Mat::of(a)),
                    b: BSource::Strided(Mat::of(b)),
                    beta,
                    c: MatMut::of(c.data.as_mut_ptr(), c.rs, c.cs),
                },
                par,
            );
        }
    }
}

/// A left operand packed once for many products (e.g. a layer's weights
/// against every image's patches): [`sgemm_packed`] then skips packing it.
/// Tied to the microkernel family it was packed for.
pub struct PackedA {
    isa: Isa,
    m: usize,
    k: usize,
    /// Rows padded to a whole number of register tiles.
    mpad: usize,
    /// The depth block the buffer is laid out in (and products run in).
    kc: usize,
    buf: Vec<f32>,
}

impl PackedA {
    /// Pack A (m x k) for `isa`'s microkernels; panics when this CPU
    /// cannot run them or the view is too short.
    pub fn new(isa: Isa, m: usize, k: usize, a: View) -> Self {
        // The same depth blocks as sgemm's (`Blocking::split_mk`).
        Self::with_depth_block(isa, m, k, a, isa.blocking().kc)
    }

    /// [`PackedA::new`] with the depth split into blocks of at most
    /// `max_kc` (evenly, as [`sgemm`] splits by its own maximum). Each
    /// entry of a product is a sequence of fused multiply-adds from zero
    /// within a block, the blocks' sums added in order, so the block size
    /// fixes the rounding: another library that sums the same way (gemm's
    /// f32 kernels) gives the same bits at the same block size.
    pub fn with_depth_block(isa: Isa, m: usize, k: usize, a: View, max_kc: usize) -> Self {
        assert!(isa.available(), "sgemm: {} is not available", isa.name());
        assert!(
            m == 0 || k == 0 || a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs,
            "sgemm: A too short"
        );
        let bl = isa.blocking();
        let kc = split_even(k, max_kc.max(1), 1);
        let mpad = m.div_ceil(bl.mr) * bl.mr;
        let mut buf = vec![0.0f32; mpad * k];
        let src = Mat::of(a);
        for pc in (0..k).step_by(kc.max(1)) {
            let kcur = kc.min(k - pc);
            let block = &mut buf[pc * mpad..pc * mpad + mpad * kcur];
            for (ip, dst) in block.chunks_mut(kcur * bl.mr).enumerate() {
                let i0 = ip * bl.mr;
                // Safety: the assert above bounds every read.
                unsafe { pack_a(src, i0, bl.mr.min(m - i0), (pc, kcur), &bl, dst) };
            }
        }
        PackedA {
            isa,
            m,
            k,
            mpad,
            kc,
            buf,
        }
    }
    pub fn rows(&self) -> usize {
        self.m
    }
    pub fn cols(&self) -> usize {
        self.k
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// The depth block its products run in ([`sparse::sparse_walk`] takes
    /// it to give their bits).
    pub fn depth_block(&self) -> usize {
        self.kc
    }
}

/// [`sgemm`] with A packed beforehand: C (m x n) = alpha * A * B + beta * C,
/// m and k from `a`.
pub fn sgemm_packed(n: usize, alpha: f32, a: &PackedA, b: View, beta: f32, c: ViewMut, par: Par) {
    let (m, k) = (a.m, a.k);
    check_views(m, n, k, None, Some(&b), &c);
    if m == 0 || n == 0 {
        return;
    }
    let pa = Mat {
        p: a.buf.as_ptr(),
        rs: a.mpad,
        cs: 0,
    };
    // Safety: as in sgemm_isa; the packed buffer holds mpad * k values.
    unsafe {
        driver(
            a.isa,
            Product {
                m,
                n,
                k,
                alpha,
                a: Source::Packed(pa, a.kc),
                b: BSource::Strided(Mat::of(b)),
                beta,
                c: MatMut::of(c.data.as_mut_ptr(), c.rs, c.cs),
            },
            par,
        )
    }
}

/// Panics unless the views (those given) fit an m x k by k x n product
/// into C and C's elements are distinct.
fn check_views(m: usize, n: usize, k: usize, a: Option<&View>, b: Option<&View>, c: &ViewMut) {
    let span = |rows: usize, cols: usize, rs: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    if let Some(a) = a {
        assert!(a.data.len() >= span(m, k, a.rs, a.cs), "sgemm: A too short");
    }
    if let Some(b) = b {
        assert!(b.data.len() >= span(k, n, b.rs, b.cs), "sgemm: B too short");
    }
    assert!(c.data.len() >= span(m, n, c.rs, c.cs), "sgemm: C too short");
    // No aliasing in C: one of the strides must step over the whole other
    // dimension (the layouts any caller means; checked, not assumed).
    assert!(
        m <= 1
            || n <= 1
            || (c.cs >= 1 && c.rs >= span(1, n, 0, c.cs))
            || (c.rs >= 1 && c.cs >= span(m, 1, c.rs, 0)),
        "sgemm: C's strides alias"
    );
}

/// Where the driver gets A's panels: packed per block as it goes, or
/// from a [`PackedA`] (rs = its padded row count; its depth block).
#[derive(Clone, Copy)]
enum Source {
    Strided(Mat),
    Packed(Mat, usize),
}

/// Microkernel: the C tile `out` names = alpha * Apanel * Bpanel + beta *
/// C tile, over `kc` steps of packed panels.
pub(crate) type Kernel = unsafe fn(kc: usize, a: *const f32, b: *const f32, out: &Tile);

/// Where a microkernel writes: the valid `mr x nr` corner (of its MR x NR
/// register tile) of C at `c` with strides `rs`, `cs`, as alpha * product
/// + beta * C.
pub(crate) struct Tile {
    c: *mut f32,
    rs: usize,
    cs: usize,
    alpha: f32,
    beta: f32,
    mr: usize,
    nr: usize,
}

struct Blocking {
    mr: usize,
    nr: usize,
    mc: usize,
    kc: usize,
    nc: usize,
    kernel: Kernel,
    /// Packing may transpose 16 x 16 blocks with AVX-512 shuffles.
    transpose16: bool,
}

impl Blocking {
    /// The row and depth block sizes for an m x k left operand (the same
    /// whether A is packed as it goes or beforehand).
    fn split_mk(&self, m: usize, k: usize) -> (usize, usize) {
        (split_even(m, self.mc, self.mr), split_even(k, self.kc, 1))
    }
}

#[derive(Clone, Copy)]
struct Mat {
    p: *const f32,
    rs: usize,
    cs: usize,
}
// Safety: read-only views shared between rayon tasks.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
impl Mat {
    fn of(v: View) -> Self {
        Mat {
            p: v.data.as_ptr(),
            rs: v.rs,
            cs: v.cs,
        }
    }
    /// The element `off` past the start.
    unsafe fn at(&self, off: usize) -> *const f32 {
        self.p.add(off)
    }
}

#[derive(Clone, Copy)]
struct MatMut {
    p: *mut f32,
    rs: usize,
    cs: usize,
}
// Safety: rayon tasks write disjoint tiles of C.
unsafe impl Send for MatMut {}
unsafe impl Sync for MatMut {}
impl MatMut {
    fn of(p: *mut f32, rs: usize, cs: usize) -> Self {
        MatMut { p, rs, cs }
    }
    /// Element (i, j) (a method, so closures capture the whole Sync view).
    unsafe fn at(&self, i: usize, j: usize) -> *mut f32 {
        self.p.add(i * self.rs + j * self.cs)
    }
}

thread_local! {
    static PACK_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACK_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Borrow this thread's buffer (taken out, so a nested call on the same
/// thread, e.g. through rayon's work stealing, simply gets a fresh one).
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buf = key.with(|c| c.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    key.with(|c| c.set(buf));
    r
}

fn split_even(total: usize, max_block: usize, multiple: usize) -> usize {
    let blocks = total.div_ceil(max_block).max(1);
    total.div_ceil(blocks).div_ceil(multiple) * multiple
}

/// Where the driver gets B's panels: packed from a strided view, or by an
/// [`ImplicitB`] (from its column `j0` on).
#[derive(Clone, Copy)]
enum BSource<'a> {
    Strided(Mat),
    Implicit(&'a dyn ImplicitB, usize),
}

impl BSource<'_> {
    /// The same operand from column `j` on.
    unsafe fn shifted_by(self, j: usize) -> Self {
        match self {
            BSource::Strided(b) => BSource::Strided(Mat {
                p: b.at(j * b.cs),
                ..b
            }),
            BSource::Implicit(src, j0) => BSource::Implicit(src, j0 + j),
        }
    }
}

/// A right operand B (k x n) that packs its own panels, instead of being
/// read through a strided view: e.g. a convolution's patch matrix gathered
/// straight from the images ([`conv::Patches`]), never written out whole.
/// Any values it gives are fine; the product's bits then are those of
/// [`sgemm`] on the matrix those values make.
pub trait ImplicitB: Sync {
    /// (k, n).
    fn shape(&self) -> (usize, usize);
    /// One panel: dst[p * nr + j] = B[p0 + p, j0 + j] for p < kc and
    /// j < cols (cols <= nr, dst's other entries are zero already).
    /// `wide` says the caller's microkernels are AVX-512's (so this CPU
    /// has AVX-512F).
    fn pack(
        &self,
        rows: (usize, usize),
        j0: usize,
        cols: usize,
        nr: usize,
        wide: bool,
        dst: &mut [f32],
    );
}

/// [`sgemm_isa`] with B given by an [`ImplicitB`]; C must not be
/// column-major (rs == 1 with cs != 1: sgemm turns that product round,
/// which an implicit B cannot be).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_implicit(
    (isa, par): (Isa, Par),
    m: usize,
    alpha: f32,
    a: View,
    b: &dyn ImplicitB,
    beta: f32,
    c: ViewMut,
) {
    assert!(isa.available(), "sgemm: {} is not available", isa.name());
    let (k, n) = b.shape();
    assert!(
        c.cs == 1 || c.rs != 1 || m <= 1,
        "sgemm_implicit: column-major C"
    );
    check_views(m, n, k, Some(&a), None, &c);
    if m == 0 || n == 0 {
        return;
    }
    // Safety: the asserts above keep every access inside A and C, C's
    // elements distinct; B's reads are the source's own.
    unsafe {
        driver(
            isa,
            Product {
                m,
                n,
                k,
                alpha,
                a: Source::Strided(Mat::of(a)),
                b: BSource::Implicit(b, 0),
                beta,
                c: MatMut::of(c.data.as_mut_ptr(), c.rs, c.cs),
            },
            par,
        )
    }
}

/// One product for [`driver`]: C (m x n) = alpha * A (m x k) * B (k x n)
/// + beta * C.
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Source,
    b: BSource<'a>,
    beta: f32,
    c: MatMut,
}

/// C = beta * C (0 where beta is 0, whatever C held): the whole product
/// when k = 0 or alpha = 0.
unsafe fn scale_c(m: usize, n: usize, beta: f32, c: MatMut) {
    for i in 0..m {
        for j in 0..n {
            let p = c.p.add(i * c.rs + j * c.cs);
            *p = if beta == 0.0 { 0.0 } else { beta * *p };
        }
    }
}

unsafe fn driver(isa: Isa, product: Product<'_>, par: Par) {
    let Product {
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c,
    } = product;
    if k == 0 || alpha == 0.0 {
        scale_c(m, n, beta, c);
        return;
    }
    let bl = isa.blocking();
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon => rayon::current_num_threads().max(1),
    };
    let nc = split_even(n, bl.nc, bl.nr);
    let (mc, kc) = bl.split_mk(m, k);
    let kc = match a {
        Source::Packed(_, packed_kc) => packed_kc,
        Source::Strided(_) => kc,
    };
    let mblocks = m.div_ceil(mc);
    let npanels = n.div_ceil(bl.nr);
    if threads > 1 && mblocks == 1 && npanels > 1 {
        split_by_column_panels(isa, product, threads, bl.nr, npanels);
        return;
    }
    for jc in (0..n).step_by(nc) {
        let ncur = nc.min(n - jc);
        let npan = ncur.div_ceil(bl.nr);
        for pc in (0..k).step_by(kc) {
            let kcur = kc.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { 1.0 };
            with_buffer(&PACK_B, npan * kcur * bl.nr, |bbuf| {
                pack_b_panels(b, (pc, kcur), (jc, ncur), &bl, threads > 1, bbuf);
                let bbuf = Mat {
                    p: bbuf.as_ptr(),
                    rs: 0,
                    cs: 0,
                };
                // Tasks: (block of rows, range of B panels), enough of them
                // to give every thread one.
                let nsplit = threads.div_ceil(mblocks).clamp(1, npan);
                let per = npan.div_ceil(nsplit);
                let nsplit = npan.div_ceil(per);
                let task = |t: usize| {
                    let (ib, js) = (t / nsplit, t % nsplit);
                    let ic = ib * mc;
                    let mcur = mc.min(m - ic);
                    let mpan = mcur.div_ceil(bl.mr);
                    let panels = |abuf: Mat| {
                        for jp in js * per..((js + 1) * per).min(npan) {
                            let bp = bbuf.at(jp * kcur * bl.nr);
                            let nr = bl.nr.min(ncur - jp * bl.nr);
                            for ip in 0..mpan {
                                let mr = bl.mr.min(mcur - ip * bl.mr);
                                let out = Tile {
                                    c: c.at(ic + ip * bl.mr, jc + jp * bl.nr),
                                    rs: c.rs,
                                    cs: c.cs,
                                    alpha,
                                    beta: beta_eff,
                                    mr,
                                    nr,
                                };
                                (bl.kernel)(kcur, abuf.at(ip * kcur * bl.mr), bp, &out);
                            }
                        }
                    };
                    match a {
                        // Block (pc, ic) of a PackedA: pc * mpad + ic * kcur.
                        Source::Packed(pa, _) => panels(Mat {
                            p: pa.at(pc * pa.rs + ic * kcur),
                            rs: 0,
                            cs: 0,
                        }),
                        Source::Strided(a) => with_buffer(&PACK_A, mpan * kcur * bl.mr, |abuf| {
                            for (ip, dst) in abuf.chunks_mut(kcur * bl.mr).enumerate() {
                                pack_a(
                                    a,
                                    ic + ip * bl.mr,
                                    bl.mr.min(mcur - ip * bl.mr),
                                    (pc, kcur),
                                    &bl,
                                    dst,
                                );
                            }
                            panels(Mat {
                                p: abuf.as_ptr(),
                                rs: 0,
                                cs: 0,
                            })
                        }),
                    }
                };
                let tasks = mblocks * nsplit;
                if threads > 1 && tasks > 1 {
                    (0..tasks).into_par_iter().for_each(task);
                } else {
                    (0..tasks).for_each(task);
                }
            });
        }
    }
}

/// A thin product (one block of rows, e.g. a dense layer's batch at batch
/// <= MC) on several threads: one parallel region in all, each task taking
/// a contiguous range of whole NR-wide column panels and running the
/// product on them alone (its own packing of B, every depth block), instead
/// of two regions (packing, tiles) per depth block, each too short at small
/// batches for the second thread to wake up in time. The depth and row
/// blocks depend only on m and k and the panels start at the same columns,
/// so every tile of C gets the same kernel calls on the same packed values
/// in the same order: the same bits as the serial product (tests/sgemm.rs).
/// Four parts a thread: one descheduled thread (a loaded machine) leaves
/// parts that the others can still take.
unsafe fn split_by_column_panels(
    isa: Isa,
    product: Product<'_>,
    threads: usize,
    nr: usize,
    npanels: usize,
) {
    let n = product.n;
    let per = npanels.div_ceil((4 * threads).min(npanels)) * nr;
    let parts = n.div_ceil(per);
    (0..parts).into_par_iter().for_each(|t| {
        let j0 = t * per;
        let sub = Product {
            n: per.min(n - j0),
            b: product.b.shifted_by(j0),
            c: MatMut {
                p: product.c.at(0, j0),
                ..product.c
            },
            ..product
        };
        driver(isa, sub, Par::Seq)
    });
}

/// B's columns `jc..jc + ncur`, depth rows `pc..pc + kcur`, packed into
/// NR-wide panels of `bbuf` (one panel per chunk, over the pool when
/// `parallel` and there is more than one).
unsafe fn pack_b_panels(
    b: BSource<'_>,
    (pc, kcur): (usize, usize),
    (jc, ncur): (usize, usize),
    bl: &Blocking,
    parallel: bool,
    bbuf: &mut [f32],
) {
    let nr = bl.nr;
    let panel = kcur * nr;
    // transpose16 is set for exactly the AVX-512 families.
    let wide = bl.transpose16;
    let pack = |(jp, dst): (usize, &mut [f32])| {
        let (j0, cols) = (jc + jp * nr, nr.min(ncur - jp * nr));
        match b {
            BSource::Strided(b) => pack_b(b, (pc, kcur), j0, cols, bl, dst),
            BSource::Implicit(src, at) => {
                if cols < nr {
                    dst.fill(0.0);
                }
                src.pack((pc, kcur), at + j0, cols, nr, wide, dst)
            }
        }
    };
    if parallel && ncur.div_ceil(nr) > 1 {
        bbuf.par_chunks_mut(panel).enumerate().for_each(pack);
    } else {
        bbuf.chunks_mut(panel).enumerate().for_each(pack);
    }
}

/// `kc` rows of N consecutive floats of row-major B (from row `p0`,
/// column `j0`) into an N-wide panel.
#[inline(always)]
unsafe fn copy_rows<const N: usize>(b: Mat, p0: usize, kc: usize, j0: usize, dst: &mut [f32]) {
    for (p, d) in dst.chunks_exact_mut(N).take(kc).enumerate() {
        let src = &*(b.p.add((p0 + p) * b.rs + j0) as *const [f32; N]);
        d.copy_from_slice(src);
    }
}

/// dst[p * ds + r] = src[r * ss + p] for 16 rows r and `kc` depth steps p:
/// 16 x 16 blocks by [`micro::transpose16`], the last `kc % 16` steps one
/// value at a time. Both packings that read across rows use it.
unsafe fn transpose_rows16(src: *const f32, ss: usize, kc: usize, dst: &mut [f32], ds: usize) {
    let whole = kc / 16 * 16;
    for p in (0..whole).step_by(16) {
        micro::transpose16(src.add(p), ss, dst.as_mut_ptr().add(p * ds), ds);
    }
    for r in 0..16 {
        for p in whole..kc {
            *dst.get_unchecked_mut(p * ds + r) = *src.add(r * ss + p);
        }
    }
}

/// One MR-row panel of A: dst[p * mr + r] = A[i0 + r, p0 + p], zero past
/// the `rows` valid rows.
unsafe fn pack_a(
    a: Mat,
    i0: usize,
    rows: usize,
    (p0, kc): (usize, usize),
    bl: &Blocking,
    dst: &mut [f32],
) {
    let mr = bl.mr;
    if rows < mr {
        dst.fill(0.0);
    }
    if a.cs == 1 && bl.transpose16 && mr == 16 && rows == 16 {
        // Row-major A: its 16 rows transposed in registers (a scalar loop
        // stores 16 floats apart, slowly).
        transpose_rows16(a.p.add(i0 * a.rs + p0), a.rs, kc, dst, 16);
    } else if a.cs == 1 {
        for r in 0..rows {
            let src = a.p.add((i0 + r) * a.rs + p0);
            for p in 0..kc {
                *dst.get_unchecked_mut(p * mr + r) = *src.add(p);
            }
        }
    } else {
        for p in 0..kc {
            let src = a.p.add(i0 * a.rs + (p0 + p) * a.cs);
            let d = &mut dst[p * mr..p * mr + rows];
            for (r, v) in d.iter_mut().enumerate() {
                *v = *src.add(r * a.rs);
            }
        }
    }
}

/// One NR-column panel of B: dst[p * nr + j] = B[p0 + p, j0 + j], zero past
/// the `cols` valid columns.
unsafe fn pack_b(
    b: Mat,
    (p0, kc): (usize, usize),
    j0: usize,
    cols: usize,
    bl: &Blocking,
    dst: &mut [f32],
) {
    let nr = bl.nr;
    if cols < nr {
        dst.fill(0.0);
    }
    if b.rs == 1 && bl.transpose16 && cols == nr && nr.is_multiple_of(16) {
        // A transposed B (each column contiguous): 16 columns at a time,
        // transposed in registers.
        for g in (0..nr).step_by(16) {
            transpose_rows16(b.p.add(p0 + (j0 + g) * b.cs), b.cs, kc, &mut dst[g..], nr);
        }
    } else if b.cs == 1 {
        match (cols, nr) {
            // A whole panel row of a width known here is a few vector moves;
            // `copy_from_slice` of a run-time length calls memmove per row.
            (16, 16) => copy_rows::<16>(b, p0, kc, j0, dst),
            (32, 32) => copy_rows::<32>(b, p0, kc, j0, dst),
            _ => {
                for p in 0..kc {
                    let src = std::slice::from_raw_parts(b.p.add((p0 + p) * b.rs + j0), cols);
                    dst[p * nr..p * nr + cols].copy_from_slice(src);
                }
            }
        }
    } else {
        for j in 0..cols {
            let src = b.p.add(p0 * b.rs + (j0 + j) * b.cs);
            for p in 0..kc {
                *dst.get_unchecked_mut(p * nr + j) = *src.add(p * b.rs);
            }
        }
    }
}
