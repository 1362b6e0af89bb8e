//! The workgroup family of conv kernels: tiles staged in workgroup memory, for GPUs.
//!
//! The register family ([`super::wgsl`]) suits llvmpipe, which runs 8 invocations as SIMD
//! lanes and pays per gathered load: one invocation keeps up to 256 accumulators. A GPU runs
//! thousands of invocations with a few dozen registers each, and reuses operands through
//! workgroup memory instead. So these kernels treat every conv as an implicit matrix product
//! and tile it the way GPU GEMMs do:
//!
//! - forward (and the input gradient of 1x1 and stride-1 convs, which is a stride-1 conv of dy
//!   with the weights transposed and flipped in place) computes `dst[m, q] = Σ_d A[m, d]·B[d, q]`
//!   over the `q` output pixels (N·H'·W'), where `d` runs over (input channel, tap row, tap
//!   column) and `B[d, q]` is the input pixel under output pixel `q` through that tap (zero in
//!   the padding);
//! - the weight gradient computes `dw[m, d] = Σ_q dy[m, q]·B[d, q]`, the same `B` with the
//!   reduction over pixels, which can be millions long while `dw` holds only a few thousand
//!   weights (a 3x3 growth conv: 12 x 432). So the pixels are split into `splits` chunks, one
//!   workgroup layer each, whose partial products go to a scratch buffer; a second pass adds
//!   them in split order, which keeps the result deterministic and the f32 sums short.
//!
//! Each workgroup owns a `rows` x `cols` block of the product, loads `depth`-long slices of
//! both operands into workgroup memory (every invocation one or more elements of each), and
//! each invocation accumulates a `tile_rows` x `tile_cols` sub-block from them, at most 64
//! accumulators. An invocation's rows and columns are strided across the block, so
//! neighbouring invocations read neighbouring workgroup-memory words and store neighbouring
//! pixels.
//!
//! The candidates are data ([`GEMM_TILES`], [`WEIGHT_GRAD_TILES`]); each compiles to its own
//! shader modules, generated on first use, so an adapter compiles only the candidates it runs,
//! and [`ConvTile::fits`] keeps a candidate its limits cannot run from being compiled at all.
//! A pointwise conv whose pixels allow it (see [`vector_loads`]) loads its input four pixels
//! at a time, from a second module of the candidate whose `src` is bound as `vec4`s.

use super::kernels::Params;
use super::wgsl::PRELUDE;
use super::Conv2dShape;
use crate::gpu::shaders::Shader;
use crate::gpu::{grid, Dispatch, Gpu, Kernel, View};
use std::fmt::Write;

/// Writes one line of WGSL (a `format!` string and its arguments) to a `String`.
macro_rules! emit {
    ($out:expr, $($fmt:tt)*) => {
        writeln!($out, $($fmt)*).expect("writing to a String cannot fail")
    };
}

/// One candidate configuration of a workgroup-family kernel: the block a workgroup computes
/// and the sub-block each invocation accumulates. For the matrix products of forward and the
/// input gradient, rows are destination channels and columns output pixels; for the weight
/// gradient, rows are output channels and columns (input channel, tap) pairs, and `depth`
/// counts pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTile {
    /// Names the candidate in tuning tables, caches and benchmark output.
    pub name: &'static str,
    /// Rows of the workgroup's block.
    pub rows: u32,
    /// Columns of the workgroup's block.
    pub cols: u32,
    /// Reduction steps staged in workgroup memory per barrier pair.
    pub depth: u32,
    /// Rows per invocation.
    pub tile_rows: u32,
    /// Columns per invocation.
    pub tile_cols: u32,
}

/// Accumulators per invocation, at most: more spill out of a GPU's registers.
pub const MAX_ACCUMULATORS: u32 = 64;

/// The candidates for forward and the input gradient. Narrow blocks serve DenseNet's growth
/// convs (12 output channels over tens of thousands of pixels); square ones the bottleneck and
/// transition products.
pub const GEMM_TILES: [ConvTile; 4] = [
    ConvTile { name: "gemm16x64", rows: 16, cols: 64, depth: 16, tile_rows: 2, tile_cols: 4 },
    ConvTile { name: "gemm32x128", rows: 32, cols: 128, depth: 8, tile_rows: 4, tile_cols: 8 },
    ConvTile { name: "gemm64x64", rows: 64, cols: 64, depth: 16, tile_rows: 4, tile_cols: 4 },
    ConvTile { name: "gemm64x64r8", rows: 64, cols: 64, depth: 16, tile_rows: 8, tile_cols: 8 },
];

/// The candidates for the weight gradient (rows: output channels, columns: input channel x
/// tap, depth: pixels per step).
///
/// A 64 x 64 block (256 invocations, 4 x 4 each) was a candidate too, and so was 32 x 32 with
/// 32 pixels a step. On lavapipe both summed only a fixed prefix of the pixels once one
/// workgroup's reduction passed about 16,000 pixels (65,536 at batch 64 gave the same wrong
/// sums as 262,144), while these two stayed exact up to 262,144. The cause is not found, so
/// they are not offered.
pub const WEIGHT_GRAD_TILES: [ConvTile; 2] = [
    ConvTile { name: "wgrad16x64", rows: 16, cols: 64, depth: 16, tile_rows: 2, tile_cols: 4 },
    ConvTile { name: "wgrad32x32", rows: 32, cols: 32, depth: 16, tile_rows: 2, tile_cols: 4 },
];

/// Workgroups a weight gradient aims to keep busy before it splits its pixels no further:
/// enough for a large GPU's cores, several each (an H100 has 132).
const TARGET_WORKGROUPS: u64 = 1024;
/// Splits of the pixel axis, at most.
pub const MAX_SPLITS: u32 = 64;

/// Bytes of split-reduction scratch a training step on a GPU plans (see
/// [`crate::schedule::ScheduleOptions::split_scratch_bytes`]): 64 splits of a 4,096-weight
/// gradient, or fewer splits of a larger one, whose workgroups fill a GPU anyway.
pub const SPLIT_SCRATCH_BYTES: u64 = 1 << 20;

impl ConvTile {
    /// Invocations per workgroup.
    pub fn workgroup(&self) -> u32 {
        (self.rows / self.tile_rows) * (self.cols / self.tile_cols)
    }

    /// Bytes of workgroup memory the two staged operand slices take.
    pub fn workgroup_bytes(&self) -> u32 {
        (self.rows + self.cols) * self.depth * 4
    }

    /// Whether an adapter with these limits can run the candidate: its workgroup size and
    /// workgroup memory within the limits. A candidate that does not fit is never compiled.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        let size = self.workgroup();
        size <= limits.max_compute_invocations_per_workgroup
            && size <= limits.max_compute_workgroup_size_x
            && self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
    }

    /// FLOP per byte of storage traffic, from the tile alone: each step a workgroup loads
    /// `(rows + cols)·depth` floats and does `2·rows·cols·depth` FLOP with them.
    pub fn arithmetic_intensity(&self) -> f64 {
        (2.0 * (self.rows * self.cols) as f64) / (4.0 * (self.rows + self.cols) as f64)
    }

    /// Panics unless the block divides into whole invocation tiles of at most
    /// [`MAX_ACCUMULATORS`], and its columns and depth into the vector loads' fours.
    fn check(&self) {
        assert!(
            self.rows.is_multiple_of(self.tile_rows)
                && self.cols.is_multiple_of(self.tile_cols)
                && self.tile_rows * self.tile_cols <= MAX_ACCUMULATORS
                && self.cols.is_multiple_of(4)
                && self.depth.is_multiple_of(4),
            "conv tile {self:?}: the block must divide into invocation tiles of at most {MAX_ACCUMULATORS} accumulators, with columns and depth multiples of 4"
        );
    }

    /// The candidate's shader body (without `common.wgsl`): the conv prelude and every entry
    /// point of [`Entry`] that loads scalars.
    pub fn wgsl(&self) -> String {
        let mut out = self.header(PRELUDE);
        self.product(&mut out, "conv_product", Form::General, false);
        self.product(&mut out, "conv_product_pointwise", Form::Pointwise, false);
        self.product(&mut out, "conv_product_bnrelu", Form::BnRelu, false);
        self.weight_grad(&mut out, "conv_weight_grad", Form::General, false);
        self.weight_grad(&mut out, "conv_weight_grad_pointwise", Form::Pointwise, false);
        self.weight_grad(&mut out, "conv_weight_grad_bnrelu", Form::BnRelu, false);
        emit!(out, "{COMBINE}");
        out
    }

    /// The candidate's vector-load module (without `common.wgsl`): the same prelude with `src`
    /// bound as `array<vec4<f32>>`, and the pointwise entry points of [`Entry`] that load four
    /// consecutive pixels at once. A WGSL binding has one element type, so these need a module
    /// of their own; the host launches them where the pixels allow it (see [`vector_loads`]).
    pub fn wgsl_vector(&self) -> String {
        let scalar = "var<storage, read_write> src: array<f32>;";
        assert!(PRELUDE.contains(scalar), "the conv prelude declares src as {scalar}");
        let mut out = self.header(&PRELUDE.replace(scalar, "var<storage, read_write> src: array<vec4<f32>>;"));
        self.product(&mut out, "conv_product_pointwise_vec4", Form::Pointwise, true);
        self.product(&mut out, "conv_product_bnrelu_vec4", Form::BnRelu, true);
        self.weight_grad(&mut out, "conv_weight_grad_pointwise_vec4", Form::Pointwise, true);
        self.weight_grad(&mut out, "conv_weight_grad_bnrelu_vec4", Form::BnRelu, true);
        out
    }

    /// A module's first lines: where it comes from, the prelude, the staged slices.
    fn header(&self, prelude: &str) -> String {
        self.check();
        let mut out = String::with_capacity(40_000);
        emit!(out, "// Generated by src/ops/conv/workgroup.rs from {self:?}: edit the generator, not this text.");
        emit!(out, "{prelude}");
        emit!(out, "var<workgroup> rows_tile: array<f32, {}>;", self.rows * self.depth);
        emit!(out, "var<workgroup> cols_tile: array<f32, {}>;\n", self.cols * self.depth);
        out
    }

    /// The lines every kernel starts its block with: which row and columns of the invocation
    /// tile this lane owns, and its accumulators.
    fn invocation_tile(&self, out: &mut String) {
        let lanes_across = self.cols / self.tile_cols;
        emit!(out, "    let tx = lane % {lanes_across}u;");
        emit!(out, "    let ty = lane / {lanes_across}u;");
        for r in 0..self.tile_rows {
            for c in 0..self.tile_cols {
                emit!(out, "        var acc{r}_{c} = 0.0;");
            }
        }
    }

    /// The inner product over one staged slice: every lane's tile from the two slices.
    fn multiply_slice(&self, out: &mut String) {
        let (row_step, col_step) = (self.rows / self.tile_rows, self.cols / self.tile_cols);
        emit!(out, "        workgroupBarrier();");
        emit!(out, "        for (var s = 0u; s < {}u; s++) {{", self.depth);
        for r in 0..self.tile_rows {
            emit!(out, "            let a{r} = rows_tile[s * {}u + ty + {}u];", self.rows, r * row_step);
        }
        for c in 0..self.tile_cols {
            emit!(out, "            let b{c} = cols_tile[s * {}u + tx + {}u];", self.cols, c * col_step);
        }
        for r in 0..self.tile_rows {
            for c in 0..self.tile_cols {
                emit!(out, "            acc{r}_{c} = fma(a{r}, b{c}, acc{r}_{c});");
            }
        }
        emit!(out, "        }}");
        emit!(out, "        workgroupBarrier();");
    }

    /// Per staged element `e` of this lane in a `width` x `steps` slice: its index, slice row
    /// (`{prefix}s{e}`: the reduction step) and column (`{prefix}c{e}`), laid out so
    /// consecutive lanes take consecutive columns (`column_major` false) or steps (true). A
    /// vector load counts its four values as one element: a quarter of the columns or steps.
    fn loads(&self, out: &mut String, prefix: &str, (width, steps): (u32, u32), column_major: bool) -> u32 {
        let (size, total) = (self.workgroup(), width * steps);
        let count = total.div_ceil(size);
        for e in 0..count {
            emit!(out, "    let {prefix}at{e} = lane + {}u;", e * size);
            emit!(out, "    let {prefix}in{e} = {prefix}at{e} < {total}u;");
            if column_major {
                emit!(out, "    let {prefix}s{e} = {prefix}at{e} % {steps}u;");
                emit!(out, "    let {prefix}c{e} = min({prefix}at{e} / {steps}u, {}u);", width - 1);
            } else {
                emit!(out, "    let {prefix}c{e} = {prefix}at{e} % {width}u;");
                emit!(out, "    let {prefix}s{e} = min({prefix}at{e} / {width}u, {}u);", steps - 1);
            }
        }
        count
    }

    /// Forward and the input gradient: `dst[m, q] = Σ_d wt(m, d) · src(d, q)`. With `vector`
    /// (a pointwise form in a module whose `src` is `array<vec4<f32>>`), each lane loads four
    /// consecutive pixels at once; the staged values, and so every sum, are the same.
    fn product(&self, out: &mut String, name: &str, form: Form, vector: bool) {
        let (rows, cols, depth, size) = (self.rows, self.cols, self.depth, self.workgroup());
        emit!(out, "// {} One workgroup per {rows} destination channels x {cols} output pixels.", form.product_doc());
        emit!(
            out,
            "@compute @workgroup_size({size})
fn {name}(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {{
    let taps = p.kh * p.kw;
    let reduction = p.k_rows * taps;
    let src_plane = p.n * p.src_h * p.src_w;
    let pixels = p.n * p.dst_h * p.dst_w;
    let q0 = (wg.x + wg.y * groups.x) * {cols}u;
    // Uniform across the workgroup, so no barrier is stranded.
    if (q0 >= pixels) {{ return; }}
    let m0 = wg.z * {rows}u;"
        );
        // Weight loads: consecutive lanes take consecutive reduction steps, which are
        // consecutive in OIHW memory for forward.
        let weight_loads = self.loads(out, "w", (rows, depth), true);
        for e in 0..weight_loads {
            emit!(out, "    let wm{e} = m0 + wc{e};");
            emit!(out, "    let wok{e} = win{e} && wm{e} < p.m_rows;");
            emit!(out, "    let wrow{e} = p.wt_off + min(wm{e}, p.m_rows - 1u) * p.a_m;");
        }
        // Input loads: consecutive lanes take consecutive pixels; each lane's pixels stay the
        // same for the whole reduction, so their coordinates are computed once.
        let lanes = if vector { 4 } else { 1 };
        let input_loads = self.loads(out, "x", (cols / lanes, depth), false);
        for e in 0..input_loads {
            emit!(out, "    let xq{e} = q0 + {lanes}u * xc{e};");
            emit!(out, "    let xok{e} = xin{e} && xq{e} < pixels;");
            if form == Form::General {
                emit!(out, "    let xqc{e} = min(xq{e}, pixels - 1u);");
                emit!(out, "    let xline{e} = xqc{e} / p.dst_w;");
                emit!(out, "    let xih{e} = (xline{e} % p.dst_h) * p.stride - p.pad;");
                emit!(out, "    let xiw{e} = (xqc{e} % p.dst_w) * p.stride - p.pad;");
                emit!(out, "    let ximg{e} = p.src_off + (xline{e} / p.dst_h) * p.src_h * p.src_w;");
            }
        }
        self.invocation_tile(out);
        emit!(out, "    for (var d0 = 0u; d0 < reduction; d0 += {depth}u) {{");
        for e in 0..weight_loads {
            let load = match form {
                Form::General => vec![
                    "let k = d / taps;".to_string(),
                    "let t = d - k * taps;".to_string(),
                    "let i = t / p.kw;".to_string(),
                    format!("v = wt[wrow{e} + k * p.a_k + i * p.a_i + (t - i * p.kw) * p.a_j];"),
                ],
                Form::Pointwise | Form::BnRelu => vec![format!("v = wt[wrow{e} + d * p.a_k];")],
            };
            stage(out, ("rows_tile", rows), ("w", e), ("d", "d0", "reduction"), &load);
        }
        for e in 0..input_loads {
            if vector {
                let load = format!("src[(p.src_off + d * src_plane + xq{e}) / 4u]");
                let load = if form == Form::BnRelu { bn_relu(&load, "d", true) } else { load };
                let at = |j: u32| format!("xs{e} * {cols}u + 4u * xc{e} + {j}u");
                stage_vector(out, "cols_tile", ("x", e), ("d", &format!("d0 + xs{e}"), "reduction"), &load, at);
                continue;
            }
            let plain = format!("src[p.src_off + d * src_plane + xq{e}]");
            let load = match form {
                Form::General => vec![
                    "let k = d / taps;".to_string(),
                    "let t = d - k * taps;".to_string(),
                    "let i = t / p.kw;".to_string(),
                    format!("let ih = xih{e} + i;"),
                    format!("let iw = xiw{e} + t - i * p.kw;"),
                    format!(
                        "if (ih < p.src_h && iw < p.src_w) {{ v = src[ximg{e} + k * src_plane + ih * p.src_w + iw]; }}"
                    ),
                ],
                Form::Pointwise => vec![format!("v = {plain};")],
                Form::BnRelu => vec![format!("v = {};", bn_relu(&plain, "d", false))],
            };
            stage(out, ("cols_tile", cols), ("x", e), ("d", "d0", "reduction"), &load);
        }
        self.multiply_slice(out);
        emit!(out, "    }}");
        let (row_step, col_step) = (rows / self.tile_rows, cols / self.tile_cols);
        for r in 0..self.tile_rows {
            emit!(out, "    {{");
            emit!(out, "        let m = m0 + ty + {}u;", r * row_step);
            for c in 0..self.tile_cols {
                emit!(out, "        let col{c} = q0 + tx + {}u;", c * col_step);
                emit!(out, "        if (m < p.m_rows && col{c} < pixels) {{ put(p.dst_off + m * pixels + col{c}, acc{r}_{c}); }}");
            }
            emit!(out, "    }}");
        }
        emit!(out, "}}\n");
    }

    /// The weight gradient's first pass: `dw[m, d] = Σ_q dy(m, q) · src(d, q)` over this
    /// workgroup's split of the pixels, into `dst` (the final weights when there is one split,
    /// the scratch otherwise). With `vector` (as for [`ConvTile::product`]), each lane loads four
    /// consecutive pixels of its input column at once.
    fn weight_grad(&self, out: &mut String, name: &str, form: Form, vector: bool) {
        let (rows, cols, depth, size) = (self.rows, self.cols, self.depth, self.workgroup());
        emit!(
            out,
            "// {} One workgroup per {rows} output channels x {cols} (input channel, tap) pairs x one of
// p.splits chunks of the pixels; with more than one split the partial sums go to the scratch
// (dst) as (split, m, d), for conv_weight_grad_combine.",
            form.weight_grad_doc()
        );
        emit!(
            out,
            "@compute @workgroup_size({size})
fn {name}(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let taps = p.kh * p.kw;
    let reduction = p.k_rows * taps;
    let src_plane = p.n * p.src_h * p.src_w;
    let pixels = p.n * p.dst_h * p.dst_w;
    let d0 = wg.x * {cols}u;
    let m0 = wg.y * {rows}u;
    let chunk = ((pixels + p.splits - 1u) / p.splits + {last}u) / {depth}u * {depth}u;
    let q_begin = min(wg.z * chunk, pixels);
    let q_end = min(q_begin + chunk, pixels);",
            last = depth - 1
        );
        // dy loads: consecutive lanes take consecutive pixels of one channel.
        let grad_loads = self.loads(out, "g", (rows, depth), true);
        for e in 0..grad_loads {
            emit!(out, "    let gm{e} = m0 + gc{e};");
            emit!(out, "    let gok{e} = gin{e} && gm{e} < p.m_rows;");
            emit!(out, "    let grow{e} = p.wt_off + min(gm{e}, p.m_rows - 1u) * pixels;");
        }
        // Input loads: consecutive lanes take consecutive pixels; each lane's (channel, tap)
        // column stays the same for the whole reduction.
        let lanes = if vector { 4 } else { 1 };
        let input_loads = self.loads(out, "x", (cols, depth / lanes), true);
        for e in 0..input_loads {
            emit!(out, "    let xd{e} = d0 + xc{e};");
            emit!(out, "    let xok{e} = xin{e} && xd{e} < reduction;");
            emit!(out, "    let xdc{e} = min(xd{e}, reduction - 1u);");
            match form {
                Form::General => {
                    emit!(out, "    let xk{e} = xdc{e} / taps;");
                    emit!(out, "    let xt{e} = xdc{e} - xk{e} * taps;");
                    emit!(out, "    let xi{e} = xt{e} / p.kw;");
                    emit!(out, "    let xj{e} = xt{e} - xi{e} * p.kw;");
                    emit!(out, "    let xrow{e} = p.src_off + xk{e} * src_plane;");
                }
                Form::Pointwise | Form::BnRelu => emit!(out, "    let xrow{e} = p.src_off + xdc{e} * src_plane;"),
            }
        }
        self.invocation_tile(out);
        emit!(out, "    for (var q0 = q_begin; q0 < q_end; q0 += {depth}u) {{");
        for e in 0..grad_loads {
            stage(out, ("rows_tile", rows), ("g", e), ("q", "q0", "q_end"), &[format!("v = wt[grow{e} + q];")]);
        }
        for e in 0..input_loads {
            if vector {
                let load = format!("src[(xrow{e} + q) / 4u]");
                let load = if form == Form::BnRelu { bn_relu(&load, &format!("xdc{e}"), true) } else { load };
                let at = |j: u32| format!("(4u * xs{e} + {j}u) * {cols}u + xc{e}");
                stage_vector(out, "cols_tile", ("x", e), ("q", &format!("q0 + 4u * xs{e}"), "q_end"), &load, at);
                continue;
            }
            let plain = format!("src[xrow{e} + q]");
            let load = match form {
                Form::General => vec![
                    "let line = q / p.dst_w;".to_string(),
                    format!("let ih = (line % p.dst_h) * p.stride + xi{e} - p.pad;"),
                    format!("let iw = (q % p.dst_w) * p.stride + xj{e} - p.pad;"),
                    format!(
                        "if (ih < p.src_h && iw < p.src_w) {{ v = src[xrow{e} + ((line / p.dst_h) * p.src_h + ih) * p.src_w + iw]; }}"
                    ),
                ],
                Form::Pointwise => vec![format!("v = {plain};")],
                Form::BnRelu => vec![format!("v = {};", bn_relu(&plain, &format!("xdc{e}"), false))],
            };
            stage(out, ("cols_tile", cols), ("x", e), ("q", "q0", "q_end"), &load);
        }
        self.multiply_slice(out);
        emit!(out, "    }}");
        let (row_step, col_step) = (rows / self.tile_rows, cols / self.tile_cols);
        emit!(out, "    let weights = p.m_rows * reduction;");
        for r in 0..self.tile_rows {
            emit!(out, "    {{");
            emit!(out, "        let m = m0 + ty + {}u;", r * row_step);
            for c in 0..self.tile_cols {
                emit!(out, "        let col{c} = d0 + tx + {}u;", c * col_step);
                emit!(out, "        if (m < p.m_rows && col{c} < reduction) {{");
                emit!(out, "            let e = m * reduction + col{c};");
                emit!(out, "            if (p.splits == 1u) {{ put(p.dst_off + e, acc{r}_{c}); }}");
                emit!(out, "            else {{ dst[p.dst_off + wg.z * weights + e] = acc{r}_{c}; }}");
                emit!(out, "        }}");
            }
            emit!(out, "    }}");
        }
        emit!(out, "}}\n");
    }
}

/// Stages element `e` of a lane's loads (named with `prefix`, see [`ConvTile::loads`]) into
/// workgroup array `array` of `width` columns: the reduction index `var` = `base` + the
/// element's step, and where the element and `var` (below `limit`) are in range, the `load`
/// lines set `v`; elsewhere the staged value is zero.
fn stage(
    out: &mut String,
    (array, width): (&str, u32),
    (prefix, e): (&str, u32),
    (var, base, limit): (&str, &str, &str),
    load: &[String],
) {
    emit!(out, "        {{");
    emit!(out, "            let {var} = {base} + {prefix}s{e};");
    emit!(out, "            var v = 0.0;");
    emit!(out, "            if ({prefix}ok{e} && {var} < {limit}) {{");
    for line in load {
        emit!(out, "                {line}");
    }
    emit!(out, "            }}");
    emit!(out, "            if ({prefix}in{e}) {{ {array}[{prefix}s{e} * {width}u + {prefix}c{e}] = v; }}");
    emit!(out, "        }}");
}

/// As [`stage`] for a vector load: `var` = `value`, and where element `e` and `var` (below
/// `limit`) are in range, `load` (a `vec4<f32>`) is read; its four components go to the
/// workgroup array at the indices `at(0..4)`, zeros elsewhere. The host takes this path only
/// when the four values are in range together (see [`vector_loads`]).
fn stage_vector(
    out: &mut String,
    array: &str,
    (prefix, e): (&str, u32),
    (var, value, limit): (&str, &str, &str),
    load: &str,
    at: impl Fn(u32) -> String,
) {
    emit!(out, "        {{");
    emit!(out, "            let {var} = {value};");
    emit!(out, "            var v = vec4<f32>();");
    emit!(out, "            if ({prefix}ok{e} && {var} < {limit}) {{ v = {load}; }}");
    emit!(out, "            if ({prefix}in{e}) {{");
    for j in 0..4 {
        emit!(out, "                {array}[{}] = v[{j}];", at(j));
    }
    emit!(out, "            }}");
    emit!(out, "        }}");
}

/// `relu(batchnorm(x))` of channel `channel` through the prelude's `bn_relu_of` (`bn_relu4_of`
/// for a `vector` load of four pixels of the channel), which equals the stored BN-ReLU output of
/// the other memory modes bit for bit and is NaN where the channel's statistics are.
fn bn_relu(load: &str, channel: &str, vector: bool) -> String {
    let f = if vector { "bn_relu4_of" } else { "bn_relu_of" };
    format!("{f}({load}, {channel})")
}

/// How a kernel reads its input operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Any kernel size, stride and padding.
    General,
    /// 1x1, stride 1, no padding: the input is a plain (channels, pixels) matrix.
    Pointwise,
    /// As pointwise, of `relu(batchnorm(x))` computed on load.
    BnRelu,
}

impl Form {
    fn product_doc(self) -> &'static str {
        match self {
            Form::General => {
                "Forward of any conv, or the input gradient of a stride-1 conv, as a product over the taps."
            }
            Form::Pointwise => "A 1x1, stride-1, unpadded conv's product (forward or input gradient).",
            Form::BnRelu => "As conv_product_pointwise, of relu(batchnorm(src)) computed on load (forward only).",
        }
    }
    fn weight_grad_doc(self) -> &'static str {
        match self {
            Form::General => "Weight gradient of any conv.",
            Form::Pointwise => "Weight gradient of a 1x1, stride-1, unpadded conv.",
            Form::BnRelu => "As conv_weight_grad_pointwise, of relu(batchnorm(src)) computed on load.",
        }
    }
}

/// The weight gradient's second pass.
const COMBINE: &str = r"// The weight gradient's second pass: adds the p.splits partial sums of each weight in split
// order (src = the scratch, (split, weight)) and writes the total to dst.
@compute @workgroup_size(64)
fn conv_weight_grad_combine(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let weights = p.m_rows * p.k_rows * p.kh * p.kw;
    let e = flat_id(gid, groups, 64u);
    if (e >= weights) { return; }
    var sum = 0.0;
    for (var s = 0u; s < p.splits; s++) { sum += src[p.src_off + s * weights + e]; }
    put(p.dst_off + e, sum);
}
";

/// The entry points of a candidate's modules: the scalar module's, then the vector module's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Product,
    ProductPointwise,
    ProductBnRelu,
    WeightGrad,
    WeightGradPointwise,
    WeightGradBnRelu,
    Combine,
    ProductPointwiseVec4,
    ProductBnReluVec4,
    WeightGradPointwiseVec4,
    WeightGradBnReluVec4,
}

/// The scalar module's entry points ([`ConvTile::wgsl`]).
const SCALAR_ENTRIES: [Entry; 7] = [
    Entry::Product,
    Entry::ProductPointwise,
    Entry::ProductBnRelu,
    Entry::WeightGrad,
    Entry::WeightGradPointwise,
    Entry::WeightGradBnRelu,
    Entry::Combine,
];

/// The vector module's entry points ([`ConvTile::wgsl_vector`]).
const VECTOR_ENTRIES: [Entry; 4] = [
    Entry::ProductPointwiseVec4,
    Entry::ProductBnReluVec4,
    Entry::WeightGradPointwiseVec4,
    Entry::WeightGradBnReluVec4,
];

impl Entry {
    fn kernel(self, shader: &'static Shader) -> Kernel {
        let (entry, buffers) = match self {
            Entry::Product => ("conv_product", 3),
            Entry::ProductPointwise => ("conv_product_pointwise", 3),
            Entry::ProductBnRelu => ("conv_product_bnrelu", 5),
            Entry::WeightGrad => ("conv_weight_grad", 3),
            Entry::WeightGradPointwise => ("conv_weight_grad_pointwise", 3),
            Entry::WeightGradBnRelu => ("conv_weight_grad_bnrelu", 5),
            Entry::Combine => ("conv_weight_grad_combine", 3),
            Entry::ProductPointwiseVec4 => ("conv_product_pointwise_vec4", 3),
            Entry::ProductBnReluVec4 => ("conv_product_bnrelu_vec4", 5),
            Entry::WeightGradPointwiseVec4 => ("conv_weight_grad_pointwise_vec4", 3),
            Entry::WeightGradBnReluVec4 => ("conv_weight_grad_bnrelu_vec4", 5),
        };
        Kernel { shader, entry, buffers }
    }
}

/// Every entry point of every candidate's two modules with its bindings, for the GPU-free
/// shader tests.
pub fn kernels() -> Vec<Kernel> {
    let tiles = GEMM_TILES.iter().chain(&WEIGHT_GRAD_TILES);
    tiles
        .flat_map(|t| {
            let (scalar, vector) = modules(t);
            SCALAR_ENTRIES.map(|e| e.kernel(scalar)).into_iter().chain(VECTOR_ENTRIES.map(|e| e.kernel(vector)))
        })
        .collect()
}

/// A candidate of [`GEMM_TILES`] or [`WEIGHT_GRAD_TILES`] by its name.
pub fn candidate(name: &str) -> Option<ConvTile> {
    GEMM_TILES.iter().chain(&WEIGHT_GRAD_TILES).find(|t| t.name == name).copied()
}

/// A listed candidate's two shader modules: (scalar loads, vector loads). Panics for a tile
/// that is not listed.
pub fn modules(tile: &ConvTile) -> (&'static Shader, &'static Shader) {
    use crate::gpu::shaders::{CONV_GEMM, CONV_GEMM_VECTOR, CONV_WEIGHT_GRAD, CONV_WEIGHT_GRAD_VECTOR};
    if let Some(i) = GEMM_TILES.iter().position(|t| t == tile) {
        return (&CONV_GEMM[i], &CONV_GEMM_VECTOR[i]);
    }
    let i = WEIGHT_GRAD_TILES.iter().position(|t| t == tile);
    let i = i.unwrap_or_else(|| panic!("conv tile {} is not a listed candidate", tile.name));
    (&CONV_WEIGHT_GRAD[i], &CONV_WEIGHT_GRAD_VECTOR[i])
}

/// Whether a pointwise conv `s` whose source operand starts `src_offset` elements into its
/// binding takes the vector-load entry points: every source row (a channel's N·H·W pixels)
/// then starts on a 16-byte boundary and holds whole fours, so four consecutive pixels are
/// one aligned `vec4` and a tile's bounds never split one. Bindings start on 256-byte
/// boundaries, so the offset's alignment is the address's. DenseNet's maps (N·H·W a multiple
/// of 4 at any batch from 32x32 down to 8x8) and its channel-slice offsets (multiples of
/// N·H·W) always qualify.
pub fn vector_loads(s: &Conv2dShape, src_offset: u32) -> bool {
    s.is_pointwise() && src_offset.is_multiple_of(4) && (s.n * s.h * s.w).is_multiple_of(4)
}

/// The entry point and module of a launch with `buffers` bindings: the fused BN-ReLU form
/// (five), else the pointwise or the general form (`forms`, in that order: general, pointwise,
/// BN-ReLU), the pointwise ones with vector loads where [`vector_loads`] allows
/// (`vector_forms`: pointwise, BN-ReLU).
fn entry_for(
    tile: &ConvTile,
    s: &Conv2dShape,
    params: &Params,
    buffers: usize,
    [general, pointwise, bnrelu]: [Entry; 3],
    [pointwise_vec4, bnrelu_vec4]: [Entry; 2],
) -> (Entry, &'static Shader) {
    let (scalar, vector) = modules(tile);
    match (buffers == 5, s.is_pointwise(), vector_loads(s, params.src_off)) {
        (true, _, true) => (bnrelu_vec4, vector),
        (true, _, false) => (bnrelu, scalar),
        (false, true, true) => (pointwise_vec4, vector),
        (false, true, false) => (pointwise, scalar),
        (false, false, _) => (general, scalar),
    }
}

/// A product launch: `params` describes it with rows = destination channels.
pub(super) fn product(
    gpu: &Gpu,
    tile: ConvTile,
    s: &Conv2dShape,
    params: &Params,
    buffers: &[crate::gpu::Window],
) -> Dispatch {
    let forms = [Entry::Product, Entry::ProductPointwise, Entry::ProductBnRelu];
    let vector_forms = [Entry::ProductPointwiseVec4, Entry::ProductBnReluVec4];
    let (entry, shader) = entry_for(&tile, s, params, buffers.len(), forms, vector_forms);
    let (dh, dw) = params.dst_hw;
    let blocks = (params.n as u64 * dh as u64 * dw as u64).div_ceil(tile.cols as u64);
    let [x, y, _] = grid(blocks, 1);
    let z = params.m_rows.div_ceil(tile.rows);
    assert!(z <= 65_535, "conv2d: {z} channel blocks exceed the workgroup grid");
    gpu.dispatch(&entry.kernel(shader), &params.words(s), buffers, [x, y, z])
}

/// How many splits a weight gradient of `s` takes with `tile` when `scratch_elems` floats of
/// scratch are at hand: enough workgroups for [`TARGET_WORKGROUPS`], chunks of at least four
/// staged steps, and partial sums that fit the scratch. One without scratch.
pub fn weight_grad_splits(tile: &ConvTile, s: &Conv2dShape, scratch_elems: u64) -> u32 {
    let weights = s.weight_elems() as u64;
    let reduction = s.c_in as u64 * s.kh as u64 * s.kw as u64;
    let blocks = (s.c_out as u64).div_ceil(tile.rows as u64) * reduction.div_ceil(tile.cols as u64);
    let pixels = s.n as u64 * s.out_h() as u64 * s.out_w() as u64;
    let wanted = TARGET_WORKGROUPS.div_ceil(blocks);
    let by_length = pixels / (4 * tile.depth as u64);
    let by_scratch = scratch_elems / weights;
    wanted.min(by_length).min(by_scratch).clamp(1, MAX_SPLITS as u64) as u32
}

/// A weight-gradient launch (one or two dispatches): `params` as for the register family's
/// weight gradient, `buffers` = [x, dy, dw] or [x, dy, dw, stats, affine], and a scratch view
/// for the partial sums when there is one.
pub(super) fn weight_grad(
    gpu: &Gpu,
    tile: ConvTile,
    s: &Conv2dShape,
    params: &Params,
    buffers: &[crate::gpu::Window],
    scratch: Option<View>,
) -> Vec<Dispatch> {
    let forms = [Entry::WeightGrad, Entry::WeightGradPointwise, Entry::WeightGradBnRelu];
    let vector_forms = [Entry::WeightGradPointwiseVec4, Entry::WeightGradBnReluVec4];
    let (entry, shader) = entry_for(&tile, s, params, buffers.len(), forms, vector_forms);
    let scalar = modules(&tile).0;
    let scratch_elems = scratch.map_or(0, |v| v.buffer.size / 4 - v.offset as u64);
    let splits = weight_grad_splits(&tile, s, scratch_elems);
    let reduction = s.c_in * s.kh * s.kw;
    let groups = [reduction.div_ceil(tile.cols), s.c_out.div_ceil(tile.rows), splits];
    assert!(groups[0] <= 65_535 && groups[1] <= 65_535, "conv2d: {s:?} has more weight blocks than the grid holds");
    if splits == 1 {
        return vec![gpu.dispatch(&entry.kernel(shader), &params.words(s), buffers, groups)];
    }
    let scratch = scratch.expect("splits need scratch");
    let partial = Params { splits, dst_off: scratch.offset, accumulate: false, ..*params };
    let mut partial_buffers = buffers.to_vec();
    partial_buffers[2] = scratch.buffer;
    let first = gpu.dispatch(&entry.kernel(shader), &partial.words(s), &partial_buffers, groups);
    let combine = Params { splits, src_off: scratch.offset, ..*params };
    let combine_buffers = [scratch.buffer, gpu.unused_binding(0), buffers[2]];
    let second = gpu.dispatch(
        &Entry::Combine.kernel(scalar),
        &combine.words(s),
        &combine_buffers,
        grid(s.weight_elems() as u64, 64),
    );
    vec![first, second]
}
