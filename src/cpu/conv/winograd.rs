//! Winograd F(2x2, 3x3) for the 3x3 layers without up-sampling (about two thirds of the generator's work).
//!
//! Each 2x2 block of output pixels (a tile) reads a 4x4 input patch d. With the weight transformed once per
//! network, `U = G g G^T`, and the patch transformed on the fly, `V = B^T d B`, the tile is `A^T (sum_i U_i (.)
//! V_i) A`: per tile position xi (16 of them) one GEMM `M_xi[o, tile] = sum_i U_xi[o, i] V_xi[i, tile]` on the
//! packed microkernel, 16 multiply-adds per tile and channel pair instead of 36. The transforms only add,
//! subtract and halve, so the result stays within a few ulps of the direct convolution.
//!
//! The style scales the input channels before the input transform (it is linear, so this is `V(s x)`), and the
//! output transform feeds the layer's epilogue, as in the im2col path.

use super::{Geometry, ModConvLayer, PackedA, SyncPtr, KC};
use crate::cpu::microkernel::{gemm_packed, MR, NR};
use rayon::prelude::*;
use std::ops::Range;

/// Positions in a transformed 4x4 tile; position `xi = 4 a + b` is row a, column b.
pub(super) const POSITIONS: usize = 16;
/// Tiles per work item: four microkernel panels.
const TILES_PER_ITEM: usize = 4 * NR;
/// Floats in the 16 accumulator planes of one output-channel chunk: 66 rows (a 64-channel layer in one chunk)
/// x 64 tiles x 16 positions, about 270 KB, which with the item's transformed tiles stays in L2.
const ACC_FLOATS: usize = 66 * TILES_PER_ITEM * POSITIONS;

/// `G`, the 4x3 weight transform (the rows give `g0`, `(g0 + g1 + g2) / 2`, `(g0 - g1 + g2) / 2`, `g2`).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// The transformed weight: for each position, `U_xi[o, i] = (G gW[o, i] G^T)[xi]`, packed as a GEMM `A`
/// operand `[O, I]`.
pub(super) fn transform_weight(weight: &[f32], o: usize, i: usize, gain: f32) -> Vec<PackedA> {
    let mut u = vec![0.0f32; POSITIONS * o * i]; // [xi][o][i]
    for (oi, g) in weight.chunks_exact(9).enumerate() {
        let mut gg = [[0.0f32; 3]; 4]; // G g
        for (a, row) in gg.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|r| G[a][r] * g[r * 3 + c] * gain).sum();
            }
        }
        for (a, row) in gg.iter().enumerate() {
            for (b, grow) in G.iter().enumerate() {
                u[(a * 4 + b) * o * i + oi] = (0..3).map(|c| row[c] * grow[c]).sum();
            }
        }
    }
    u.chunks_exact(o * i)
        .map(|ux| PackedA::new(o, i, |oc, ic| ux[oc * i + ic]))
        .collect()
}

/// The layer on `x` through the transformed weight `u`. Work items are (block of tiles of the batch-flattened
/// tile grid, group of output-channel chunks); an item transforms its input tiles once for all input channels
/// and reuses them for every chunk of its group.
pub(super) fn forward(
    layer: &ModConvLayer,
    g: &Geometry,
    u: &[PackedA],
    x: &[f32],
    styles: &[f32],
    dcoefs: &[f32],
    out: &mut [f32],
) {
    let grid = TileGrid {
        rows: g.h.div_ceil(2),
        cols: g.w.div_ceil(2),
    };
    let tile_count = g.n * grid.rows * grid.cols;
    let block = TILES_PER_ITEM.min(tile_count.next_multiple_of(NR));
    let tile_blocks = tile_count.div_ceil(block);
    let row_blocks = u[0].blocks;
    // The 16 accumulator planes of a chunk (and the item's transformed tiles) stay in L2.
    let max_blocks = (ACC_FLOATS / (POSITIONS * MR * block)).max(1);
    let chunks = row_blocks.div_ceil(max_blocks);
    let chunk_blocks = row_blocks.div_ceil(chunks);
    // Output-channel groups only when the tile blocks alone cannot keep the pool busy (small images).
    let groups = (2 * rayon::current_num_threads())
        .div_ceil(tile_blocks)
        .clamp(1, chunks);
    let chunks_per_group = chunks.div_ceil(groups);
    let groups = chunks.div_ceil(chunks_per_group);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..tile_blocks * groups)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, item| {
            let (t, grp) = (item / groups, item % groups);
            let (q0, q1) = (t * block, ((t + 1) * block).min(tile_count));
            let panels = (q1 - q0).div_ceil(NR);
            let ldc = panels * NR;
            let tiles = ItemTiles {
                g,
                grid: &grid,
                q0,
                q1,
                ldc,
            };
            transform_input(&tiles, x, styles, scratch);
            let c_end = ((grp + 1) * chunks_per_group).min(chunks);
            for c in grp * chunks_per_group..c_end {
                let (rb0, rb1) = (c * chunk_blocks, ((c + 1) * chunk_blocks).min(row_blocks));
                let rows = (rb1 - rb0) * MR;
                let acc = &mut scratch.acc;
                acc.clear();
                acc.resize(POSITIONS * rows * ldc, 0.0);
                for (xi, ux) in u.iter().enumerate() {
                    let v = &scratch.v[xi * g.i * ldc..][..g.i * ldc];
                    let m = &mut acc[xi * rows * ldc..][..rows * ldc];
                    for c0 in (0..g.i).step_by(KC) {
                        let kc = KC.min(g.i - c0);
                        gemm_packed(
                            kc,
                            ux.at(rb0, c0),
                            ux.block_stride(),
                            rb1 - rb0,
                            &v[c0 * ldc..][..kc * ldc],
                            panels,
                            m,
                            ldc,
                        );
                    }
                }
                let (o0, o1) = (rb0 * MR, (rb1 * MR).min(g.o));
                transform_output(&tiles, layer, o0..o1, dcoefs, scratch, out_ptr);
            }
        });
}

/// Tiles per image: `rows x cols` tiles of 2x2 output pixels (the last row and column may stick out).
struct TileGrid {
    rows: usize,
    cols: usize,
}

impl TileGrid {
    /// The runs of the flattened tile range `[q0, q1)` that stay within one tile row (an iterator rather than a
    /// callback, so that the transforms' loops are compiled inside their AVX2 functions).
    fn row_runs(&self, q0: usize, q1: usize) -> impl Iterator<Item = RowRun> + '_ {
        let per_image = self.rows * self.cols;
        let mut q = q0;
        std::iter::from_fn(move || {
            (q < q1).then(|| {
                let (b, t) = (q / per_image, q % per_image);
                let (ty, tx0) = (t / self.cols, t % self.cols);
                let n = (self.cols - tx0).min(q1 - q);
                let run = RowRun {
                    b,
                    ty,
                    tx0,
                    j0: q - q0,
                    n,
                };
                q += n;
                run
            })
        })
    }
}

/// Tiles `tx0 .. tx0 + n` of tile row `ty` of sample `b`, at offset `j0` in the work item.
struct RowRun {
    b: usize,
    ty: usize,
    tx0: usize,
    j0: usize,
    n: usize,
}

#[derive(Default)]
struct Scratch {
    /// Transformed input tiles `V`, per position: input channels in `KC` chunks, each chunk as microkernel B
    /// panels of `NR` tiles (depth = the chunk's channels).
    v: Vec<f32>,
    /// The GEMM results `M`, per position `[rows][ldc]`.
    acc: Vec<f32>,
    /// One input row, scaled by the style, split into the columns left of and at each tile's first column.
    odd: Vec<f32>,
    even: Vec<f32>,
    /// Transforms along x of the 4 input rows of a run of tiles: `[row][column position][tile]`.
    rows: Vec<f32>,
    /// `A^T M` for a run of tiles: `[tile row][column position][tile]`.
    half: Vec<f32>,
    /// The two output rows of a run of tiles, before the epilogue.
    out_rows: Vec<f32>,
}

/// The tiles of one work item.
struct ItemTiles<'a> {
    g: &'a Geometry,
    grid: &'a TileGrid,
    /// Flattened tile range.
    q0: usize,
    q1: usize,
    /// Lanes per position row: the tile count rounded up to whole panels.
    ldc: usize,
}

avx2_twin! {
/// `V = B^T (s d) B` for the item's tiles and every input channel, into `scratch.v` (lanes past the last tile
/// zeroed).
fn transform_input(tiles: &ItemTiles, x: &[f32], styles: &[f32], scratch: &mut Scratch) {
    let ItemTiles {
        g,
        grid,
        q0,
        q1,
        ldc,
    } = *tiles;
    let Scratch {
        v, odd, even, rows, ..
    } = scratch;
    v.clear();
    v.resize(POSITIONS * g.i * ldc, 0.0);
    for RowRun { b, ty, tx0, j0, n } in grid.row_runs(q0, q1) {
        odd.resize(n + 1, 0.0);
        even.resize(n + 1, 0.0);
        rows.resize(16 * n, 0.0);
        for ic in 0..g.i {
            let s = styles[b * g.i + ic];
            let plane = &x[(b * g.i + ic) * g.h * g.w..][..g.h * g.w];
            for (r, e) in rows.chunks_exact_mut(4 * n).enumerate() {
                let y = (2 * ty + r).wrapping_sub(1);
                if y >= g.h {
                    e.fill(0.0);
                    continue;
                }
                split_columns(&plane[y * g.w..][..g.w], tx0, s, odd, even);
                // B^T d along x: (d0 - d2, d1 + d2, d2 - d1, d1 - d3) with d0..d3 = odd[t], even[t], odd[t + 1],
                // even[t + 1].
                let (e0, rest) = e.split_at_mut(n);
                let (e1, rest) = rest.split_at_mut(n);
                let (e2, e3) = rest.split_at_mut(n);
                let cols = odd.iter().zip(&odd[1..]).zip(even.iter().zip(&even[1..]));
                for ((((e0, e1), e2), e3), ((&d0, &d2), (&d1, &d3))) in e0
                    .iter_mut()
                    .zip(e1.iter_mut())
                    .zip(e2.iter_mut())
                    .zip(e3.iter_mut())
                    .zip(cols)
                {
                    *e0 = d0 - d2;
                    *e1 = d1 + d2;
                    *e2 = d2 - d1;
                    *e3 = d1 - d3;
                }
            }
            // B^T along y, one position at a time: V[a][c] = e[p][c] + sign e[q][c].
            let (c0, d) = ((ic / KC) * KC, ic % KC);
            let kc = KC.min(g.i - c0);
            for (a, (p, q, sign)) in [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)]
                .into_iter()
                .enumerate()
            {
                for c in 0..4 {
                    let ep = &rows[(p * 4 + c) * n..][..n];
                    let eq = &rows[(q * 4 + c) * n..][..n];
                    let chunk = &mut v[((a * 4 + c) * g.i + c0) * ldc..][..kc * ldc];
                    let mut t = 0;
                    while t < n {
                        // The tiles of one panel are contiguous lanes.
                        let j = j0 + t;
                        let len = (NR - j % NR).min(n - t);
                        let dst = &mut chunk[((j / NR) * kc + d) * NR + j % NR..][..len];
                        for ((o, &vp), &vq) in dst.iter_mut().zip(&ep[t..]).zip(&eq[t..]) {
                            *o = vp + sign * vq;
                        }
                        t += len;
                    }
                }
            }
        }
    }
}
}

/// `odd[t] = s row[2 (tx0 + t) - 1]`, `even[t] = s row[2 (tx0 + t)]` for `t` in `0..odd.len()`, zero outside
/// the row: the columns each tile's 4x4 patch starts with, left of and at its first output column.
#[inline(always)]
fn split_columns(row: &[f32], tx0: usize, s: f32, odd: &mut [f32], even: &mut [f32]) {
    let at = |col: usize| row.get(col).map_or(0.0, |v| v * s);
    // Tiles whose two columns are both inside the row, as whole pairs; the (at most two) others one by one.
    let t_lo = usize::from(tx0 == 0).min(odd.len());
    let t_hi = (row.len().div_ceil(2).saturating_sub(tx0)).clamp(t_lo, odd.len());
    let pairs = row[2 * (tx0 + t_lo) - 1..2 * (tx0 + t_hi) - 1].chunks_exact(2);
    for ((o, e), pair) in odd[t_lo..t_hi]
        .iter_mut()
        .zip(&mut even[t_lo..t_hi])
        .zip(pairs)
    {
        *o = pair[0] * s;
        *e = pair[1] * s;
    }
    for t in (0..t_lo).chain(t_hi..odd.len()) {
        let col = 2 * (tx0 + t);
        odd[t] = col.checked_sub(1).map_or(0.0, at);
        even[t] = at(col);
    }
}

avx2_twin! {
/// `Y = A^T M A` for the item's tiles and output channels `channels`, then the epilogue, into `out`.
fn transform_output(
    tiles: &ItemTiles,
    layer: &ModConvLayer,
    channels: Range<usize>,
    dcoefs: &[f32],
    scratch: &mut Scratch,
    out: SyncPtr,
) {
    let ItemTiles {
        g,
        grid,
        q0,
        q1,
        ldc,
    } = *tiles;
    let o0 = channels.start;
    let Scratch {
        acc,
        half,
        out_rows,
        ..
    } = scratch;
    let rows = acc.len() / (POSITIONS * ldc);
    let hw = g.h * g.w;
    for RowRun { b, ty, tx0, j0, n } in grid.row_runs(q0, q1) {
        half.resize(8 * n, 0.0);
        out_rows.resize(4 * n, 0.0);
        for oc in channels.clone() {
            let m = |xi: usize| &acc[(xi * rows + oc - o0) * ldc + j0..][..n];
            // A^T along y: (m0 + m1 + m2, m1 - m2 - m3) per column position c.
            let (h0, h1) = half.split_at_mut(4 * n);
            for (c, (h0, h1)) in h0
                .chunks_exact_mut(n)
                .zip(h1.chunks_exact_mut(n))
                .enumerate()
            {
                let rows = m(c)
                    .iter()
                    .zip(m(4 + c))
                    .zip(m(8 + c).iter().zip(m(12 + c)));
                for ((h0, h1), ((&m0, &m1), (&m2, &m3))) in
                    h0.iter_mut().zip(h1.iter_mut()).zip(rows)
                {
                    *h0 = m0 + m1 + m2;
                    *h1 = m1 - m2 - m3;
                }
            }
            // Then along x, interleaving each tile's two output columns.
            for (hd, row) in half
                .chunks_exact(4 * n)
                .zip(out_rows.chunks_exact_mut(2 * n))
            {
                let cols = hd[..n]
                    .iter()
                    .zip(&hd[n..2 * n])
                    .zip(hd[2 * n..3 * n].iter().zip(&hd[3 * n..]));
                for (pair, ((&c0, &c1), (&c2, &c3))) in row.chunks_exact_mut(2).zip(cols) {
                    pair[0] = c0 + c1 + c2;
                    pair[1] = c1 - c2 - c3;
                }
            }
            let (x0, len) = (2 * tx0, (2 * n).min(g.w - 2 * tx0));
            for (dy, row) in out_rows.chunks_exact_mut(2 * n).enumerate() {
                let y = 2 * ty + dy;
                if y >= g.h {
                    break;
                }
                let p0 = y * g.w + x0;
                let run = &mut row[..len];
                layer.epilogue(run, b, oc, dcoefs[b * g.o + oc], p0);
                // SAFETY: item (tile block, group) alone writes the pixels of its tiles in its channels, so
                // these runs are disjoint across items; `out` outlives the parallel loop.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out.get().add((b * g.o + oc) * hw + p0), len)
                };
                dst.copy_from_slice(run);
            }
        }
    }
}
}
