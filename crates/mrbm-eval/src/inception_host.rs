//! Inception's forward on host slices for the CPU (flex) device: every
//! convolution as one image's im2col + sgemm (1x1 convs straight on the
//! activation) from mrbm-kernels with the folded batch norm's bias and the
//! ReLU fused, pools and concatenations as loops over NCHW planes (a
//! branch's conv writes straight into its channels of the block's output).
//! Images run in parallel on the caller's rayon pool (one image per task,
//! each product on its thread), or, with fewer images than threads, one
//! after another with each product split over the pool.
//!
//! `stop` is asked before each chunk of each convolution (at most
//! `mrbm_kernels::conv::CHUNK_FLOPS` of work, ~1 ms on one core), so a
//! cancel lands within one chunk, not one whole convolution.
//!
//! Same function as the burn path in `inception.rs` (the tests compare the
//! two and both against pytorch-fid).

use std::collections::HashMap;

use mrbm_kernels::conv::{Conv, Weights};
use mrbm_kernels::{PackedA, Par};

/// The pass was stopped.
#[derive(Debug)]
pub(crate) struct Stopped;

/// One BasicConv2d, batch norm folded: weight [O, C*KH*KW] (packed once
/// for sgemm), bias [O].
pub(crate) struct HostConv {
    pub cin: usize,
    pub cout: usize,
    pub k: [usize; 2],
    pub stride: usize,
    pub pad: [usize; 2],
    pub w: PackedA,
    pub b: Vec<f32>,
}

/// An activation [C, H, W].
pub(crate) struct Act {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub d: Vec<f32>,
}

impl Act {
    fn zeros(c: usize, h: usize, w: usize) -> Self {
        Act {
            c,
            h,
            w,
            d: vec![0.0; c * h * w],
        }
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
}

pub(crate) struct HostNet {
    pub convs: HashMap<String, HostConv>,
}

type Stop<'a> = &'a mut dyn FnMut() -> bool;

impl HostNet {
    fn get(&self, name: &str) -> &HostConv {
        self.convs
            .get(name)
            .unwrap_or_else(|| panic!("internal: no conv {name}"))
    }

    fn geometry(&self, name: &str, x: &Act) -> (&HostConv, Conv) {
        let hc = self.get(name);
        debug_assert_eq!(hc.cin, x.c, "{name}");
        let g = Conv {
            c: x.c,
            h: x.h,
            w: x.w,
            o: hc.cout,
            kh: hc.k[0],
            kw: hc.k[1],
            sh: hc.stride,
            sw: hc.stride,
            ph: hc.pad[0],
            pw: hc.pad[1],
        };
        (hc, g)
    }

    /// Conv + bias + ReLU of `x` into channels `off..` of `out` (whose
    /// planes must have the conv's output size); returns the next offset.
    fn conv_into(
        &self,
        name: &str,
        x: &Act,
        out: &mut Act,
        off: usize,
        par: Par,
        stop: Stop,
    ) -> Result<usize, Stopped> {
        let (hc, g) = self.geometry(name, x);
        debug_assert_eq!((g.oh(), g.ow()), (out.h, out.w), "{name}");
        let p = out.plane();
        let dst = &mut out.d[off * p..(off + hc.cout) * p];
        if !g.forward(&x.d, Weights::Packed(&hc.w), (&hc.b, true), dst, par, stop) {
            return Err(Stopped);
        }
        Ok(off + hc.cout)
    }

    fn conv(&self, name: &str, x: &Act, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let (hc, g) = self.geometry(name, x);
        let mut out = Act::zeros(hc.cout, g.oh(), g.ow());
        self.conv_into(name, x, &mut out, 0, par, stop)?;
        Ok(out)
    }

    /// `names` applied in turn, the last into `out` at `off`.
    fn chain_into(
        &self,
        names: &[String],
        x: &Act,
        out: &mut Act,
        off: usize,
        par: Par,
        stop: Stop,
    ) -> Result<usize, Stopped> {
        let (last, first) = names.split_last().expect("a chain has a conv");
        let mut t: Option<Act> = None;
        for n in first {
            t = Some(self.conv(n, t.as_ref().unwrap_or(x), par, &mut *stop)?);
        }
        self.conv_into(last, t.as_ref().unwrap_or(x), out, off, par, stop)
    }

    /// Each of `names` applied to the same `x`, side by side into `out`
    /// from `off`; returns the next offset.
    fn fan_into(
        &self,
        names: &[String],
        x: &Act,
        out: &mut Act,
        mut off: usize,
        par: Par,
        stop: Stop,
    ) -> Result<usize, Stopped> {
        for n in names {
            off = self.conv_into(n, x, out, off, par, &mut *stop)?;
        }
        Ok(off)
    }

    fn out_channels(&self, name: &str) -> usize {
        self.get(name).cout
    }

    /// pool3 features (2048) of one image already resized and scaled to
    /// [-1, 1], [3, 299, 299].
    pub fn forward(&self, x: Act, par: Par, stop: Stop) -> Result<Vec<f32>, Stopped> {
        let x = self.conv("Conv2d_1a_3x3", &x, par, &mut *stop)?;
        let x = self.conv("Conv2d_2a_3x3", &x, par, &mut *stop)?;
        let x = self.conv("Conv2d_2b_3x3", &x, par, &mut *stop)?;
        let x = max_pool(&x, 2, 0);
        let x = self.conv("Conv2d_3b_1x1", &x, par, &mut *stop)?;
        let x = self.conv("Conv2d_4a_3x3", &x, par, &mut *stop)?;
        let x = max_pool(&x, 2, 0);
        let mut x = x;
        for m in ["Mixed_5b", "Mixed_5c", "Mixed_5d"] {
            x = self.block_a(m, &x, par, &mut *stop)?;
        }
        x = self.block_b("Mixed_6a", &x, par, &mut *stop)?;
        for m in ["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"] {
            x = self.block_c(m, &x, par, &mut *stop)?;
        }
        x = self.block_d("Mixed_7a", &x, par, &mut *stop)?;
        x = self.block_e("Mixed_7b", &x, false, par, &mut *stop)?;
        x = self.block_e("Mixed_7c", &x, true, par, &mut *stop)?;
        let p = x.plane() as f32;
        Ok(x.d
            .chunks(x.plane())
            .map(|c| c.iter().sum::<f32>() / p)
            .collect())
    }

    fn names(m: &str, parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| format!("{m}.{p}")).collect()
    }

    fn block_a(&self, m: &str, x: &Act, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let pool = format!("{m}.branch_pool");
        let c = 64 + 64 + 96 + self.out_channels(&pool);
        let mut out = Act::zeros(c, x.h, x.w);
        let mut off = self.conv_into(&format!("{m}.branch1x1"), x, &mut out, 0, par, &mut *stop)?;
        let b5 = Self::names(m, &["branch5x5_1", "branch5x5_2"]);
        off = self.chain_into(&b5, x, &mut out, off, par, &mut *stop)?;
        let d = Self::names(m, &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]);
        off = self.chain_into(&d, x, &mut out, off, par, &mut *stop)?;
        self.conv_into(&pool, &avg3(x), &mut out, off, par, stop)?;
        Ok(out)
    }

    fn block_b(&self, m: &str, x: &Act, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let (oh, ow) = ((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1);
        let mut out = Act::zeros(384 + 96 + x.c, oh, ow);
        let mut off = self.conv_into(&format!("{m}.branch3x3"), x, &mut out, 0, par, &mut *stop)?;
        let d = Self::names(m, &["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]);
        off = self.chain_into(&d, x, &mut out, off, par, stop)?;
        let p = max_pool(x, 2, 0);
        out.d[off * oh * ow..].copy_from_slice(&p.d);
        Ok(out)
    }

    fn block_c(&self, m: &str, x: &Act, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let mut out = Act::zeros(768, x.h, x.w);
        let mut off = self.conv_into(&format!("{m}.branch1x1"), x, &mut out, 0, par, &mut *stop)?;
        let b7 = Self::names(m, &["branch7x7_1", "branch7x7_2", "branch7x7_3"]);
        off = self.chain_into(&b7, x, &mut out, off, par, &mut *stop)?;
        let d = Self::names(
            m,
            &[
                "branch7x7dbl_1",
                "branch7x7dbl_2",
                "branch7x7dbl_3",
                "branch7x7dbl_4",
                "branch7x7dbl_5",
            ],
        );
        off = self.chain_into(&d, x, &mut out, off, par, &mut *stop)?;
        self.conv_into(
            &format!("{m}.branch_pool"),
            &avg3(x),
            &mut out,
            off,
            par,
            stop,
        )?;
        Ok(out)
    }

    fn block_d(&self, m: &str, x: &Act, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let (oh, ow) = ((x.h - 3) / 2 + 1, (x.w - 3) / 2 + 1);
        let mut out = Act::zeros(320 + 192 + x.c, oh, ow);
        let b3 = Self::names(m, &["branch3x3_1", "branch3x3_2"]);
        let mut off = self.chain_into(&b3, x, &mut out, 0, par, &mut *stop)?;
        let b7 = Self::names(
            m,
            &[
                "branch7x7x3_1",
                "branch7x7x3_2",
                "branch7x7x3_3",
                "branch7x7x3_4",
            ],
        );
        off = self.chain_into(&b7, x, &mut out, off, par, stop)?;
        let p = max_pool(x, 2, 0);
        out.d[off * oh * ow..].copy_from_slice(&p.d);
        Ok(out)
    }

    /// InceptionE; `max_pool` selects FIDInceptionE_2's max-pool branch.
    fn block_e(&self, m: &str, x: &Act, maxp: bool, par: Par, stop: Stop) -> Result<Act, Stopped> {
        let mut out = Act::zeros(2048, x.h, x.w);
        let mut off = self.conv_into(&format!("{m}.branch1x1"), x, &mut out, 0, par, &mut *stop)?;
        let t = self.conv(&format!("{m}.branch3x3_1"), x, par, &mut *stop)?;
        let b3 = Self::names(m, &["branch3x3_2a", "branch3x3_2b"]);
        off = self.fan_into(&b3, &t, &mut out, off, par, &mut *stop)?;
        let d = self.conv(&format!("{m}.branch3x3dbl_1"), x, par, &mut *stop)?;
        let d = self.conv(&format!("{m}.branch3x3dbl_2"), &d, par, &mut *stop)?;
        let d3 = Self::names(m, &["branch3x3dbl_3a", "branch3x3dbl_3b"]);
        off = self.fan_into(&d3, &d, &mut out, off, par, &mut *stop)?;
        let pooled = if maxp { max_pool(x, 1, 1) } else { avg3(x) };
        self.conv_into(
            &format!("{m}.branch_pool"),
            &pooled,
            &mut out,
            off,
            par,
            stop,
        )?;
        Ok(out)
    }
}

/// 3x3 max pool, stride `s`, padding `p` (padding never wins, as -inf):
/// separable, the max over each row's windows first, then over 3 rows.
pub(crate) fn max_pool(x: &Act, s: usize, p: usize) -> Act {
    let oh = (x.h + 2 * p - 3) / s + 1;
    let ow = (x.w + 2 * p - 3) / s + 1;
    let mut out = Act::zeros(x.c, oh, ow);
    let win = |o: usize, len: usize| ((o * s).saturating_sub(p), (o * s + 3 - p).min(len));
    let mut rows = vec![0.0f32; x.h * ow];
    for (src, dst) in x.d.chunks(x.plane()).zip(out.d.chunks_mut(oh * ow)) {
        for (row, r) in src.chunks(x.w).zip(rows.chunks_mut(ow)) {
            for (ox, v) in r.iter_mut().enumerate() {
                let (x0, x1) = win(ox, x.w);
                *v = row[x0..x1].iter().fold(f32::NEG_INFINITY, |m, a| m.max(*a));
            }
        }
        for (oy, d) in dst.chunks_mut(ow).enumerate() {
            let (y0, y1) = win(oy, x.h);
            d.copy_from_slice(&rows[y0 * ow..(y0 + 1) * ow]);
            for y in y0 + 1..y1 {
                for (v, a) in d.iter_mut().zip(&rows[y * ow..(y + 1) * ow]) {
                    *v = v.max(*a);
                }
            }
        }
    }
    out
}

/// 3x3 stride-1 average pool, padding 1, averaging only the pixels inside
/// the image (count_include_pad=False, as TensorFlow): separable, 3-sums
/// along each row, then of 3 rows, over the count of pixels inside.
pub(crate) fn avg3(x: &Act) -> Act {
    let (h, w) = (x.h, x.w);
    let mut out = Act::zeros(x.c, h, w);
    let span = |o: usize, len: usize| ((o + 2).min(len) - o.saturating_sub(1)) as f32;
    let inv_w: Vec<f32> = (0..w).map(|ox| span(ox, w)).collect();
    let mut rows = vec![0.0f32; h * w];
    for (src, dst) in x.d.chunks(x.plane()).zip(out.d.chunks_mut(h * w)) {
        for (row, r) in src.chunks(w).zip(rows.chunks_mut(w)) {
            for (ox, v) in r.iter_mut().enumerate() {
                *v = row[ox.saturating_sub(1)..(ox + 2).min(w)].iter().sum();
            }
        }
        for (oy, d) in dst.chunks_mut(w).enumerate() {
            let (y0, y1) = (oy.saturating_sub(1), (oy + 2).min(h));
            d.copy_from_slice(&rows[y0 * w..(y0 + 1) * w]);
            for y in y0 + 1..y1 {
                for (v, a) in d.iter_mut().zip(&rows[y * w..(y + 1) * w]) {
                    *v += *a;
                }
            }
            let ch = span(oy, h);
            for (v, cw) in d.iter_mut().zip(&inv_w) {
                *v /= ch * cw;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_match_their_definitions() {
        let x = Act {
            c: 2,
            h: 4,
            w: 5,
            d: (0..40).map(|i| ((i * 7) % 11) as f32 - 5.0).collect(),
        };
        let at = |c: usize, y: isize, xx: isize| -> Option<f32> {
            (y >= 0 && xx >= 0 && (y as usize) < 4 && (xx as usize) < 5)
                .then(|| x.d[c * 20 + y as usize * 5 + xx as usize])
        };
        for (s, p) in [(2, 0), (1, 1)] {
            let m = max_pool(&x, s, p);
            for c in 0..2 {
                for oy in 0..m.h {
                    for ox in 0..m.w {
                        let mut want = f32::NEG_INFINITY;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let y = (oy * s + dy) as isize - p as isize;
                                let xx = (ox * s + dx) as isize - p as isize;
                                if let Some(v) = at(c, y, xx) {
                                    want = want.max(v);
                                }
                            }
                        }
                        assert_eq!(m.d[(c * m.h + oy) * m.w + ox], want);
                    }
                }
            }
        }
        let a = avg3(&x);
        for c in 0..2 {
            for oy in 0..4 {
                for ox in 0..5 {
                    let vals: Vec<f32> = (0..9)
                        .filter_map(|t| at(c, oy as isize + t / 3 - 1, ox as isize + t % 3 - 1))
                        .collect();
                    let want = vals.iter().sum::<f32>() / vals.len() as f32;
                    assert!((a.d[(c * 4 + oy) * 5 + ox] - want).abs() < 1e-6);
                }
            }
        }
    }
}
