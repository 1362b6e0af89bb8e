//! The WGSL of every conv kernel, generated from Rust with the register tiles as data.
//!
//! The kernels keep fully unrolled register tiles (the text's own header says why), which are
//! tedious and error-prone to write by hand, so [`ConvTiles::wgsl`] writes them: one loop per
//! unrolled dimension, with the tile sizes taken from a [`ConvTiles`]. The register family's
//! candidates are a list of them ([`REGISTER_TILES`]); the host code in [`super`] sizes each
//! launch grid from the candidate it launches, so a tile size is written down once. A
//! candidate's text is generated the first time one of its pipelines is created (see
//! [`crate::gpu::shaders::CONV_REGISTER`]), once per process, and is not stored in the binary.

use std::fmt::Write;

/// Writes one line of WGSL (a `format!` string and its arguments) to a `String`.
macro_rules! emit {
    ($out:expr, $($fmt:tt)*) => {
        writeln!($out, $($fmt)*).expect("writing to a String cannot fail")
    };
}

/// The register tiles of the generated kernels: what one invocation (or, for the weight
/// gradients, one workgroup) computes. Rows are destination channels, pixels are consecutive
/// output pixels of one line, lines are consecutive output lines of one image. Every pixel
/// count must be a multiple of 4, since accumulators are `vec4<f32>`.
///
/// Why tiles this large: see BENCHMARKS.md. llvmpipe pays per gathered load, not per FMA, so
/// a large tile that reuses every loaded value many times measured fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTiles {
    /// Names the candidate in tuning tables, caches and benchmark output.
    pub name: &'static str,
    /// `conv1x1_gemm*`: destination channels per invocation.
    pub gemm_rows: u32,
    /// `conv1x1_gemm*`: consecutive pixels (over N*H*W) per invocation.
    pub gemm_pixels: u32,
    /// `conv3x3_s1` and `conv3x3_s1_narrow`: destination channels per invocation.
    pub conv3_rows: u32,
    /// `conv3x3_s1`: pixels per output line segment.
    pub conv3_pixels: u32,
    /// `conv3x3_s1`: output lines per invocation.
    pub conv3_lines: u32,
    /// `conv3x3_s1_narrow`: pixels per segment. The host launches it for outputs at most this
    /// wide (DenseNet's 8x8 maps), so no accumulator idles.
    pub conv3_narrow_pixels: u32,
    /// `conv3x3_s1_narrow`: output lines per invocation.
    pub conv3_narrow_lines: u32,
    /// Invocations per workgroup of both 3x3 kernels.
    pub conv3_workgroup: u32,
    /// `conv1x1_weight_grad*`: output channels per workgroup.
    pub wgrad1_rows: u32,
    /// `conv1x1_weight_grad*`: input channels per workgroup.
    pub wgrad1_cols: u32,
    /// `conv3x3_s1_weight_grad`: output channels per workgroup.
    pub wgrad3_rows: u32,
    /// `conv3x3_s1_weight_grad`: input channels per workgroup. Each loaded output gradient
    /// feeds this many input channels' nine taps, so it divides the kernel's gradient loads.
    pub wgrad3_cols: u32,
    /// `conv3x3_s1_weight_grad`: pixels per output row segment one invocation takes at a time.
    pub wgrad3_pixels: u32,
    /// The products (`conv1x1_gemm*`, `conv3x3_s1*`) load their weights, and the fused
    /// BN-ReLU its statistics, once per subgroup: each of 8 subgroup invocations loads a
    /// different one and `subgroupBroadcast` hands it to all (see [`ConvTiles::wgsl`]). Needs
    /// subgroups of at least [`crate::gpu::MIN_SUBGROUP_SIZE`].
    pub subgroup_weights: bool,
}

/// The register family's candidates. The first keeps the family's name, `register`, in tuning
/// caches, and is its default where the device has no subgroups. `register` takes 16 channels
/// x 16 pixels in the 1x1 product, `register-wide` 8 channels x 32 pixels (longer pixel runs,
/// half the rows: more blocks for a 48-channel bottleneck) and one input channel per 3x3
/// weight-gradient workgroup (the earlier layout: four times the workgroups, which a GPU may
/// prefer; untimed on one so far, and it keeps the same-bits test comparing both layouts). `register-subgroup` loads the
/// products' weights once per subgroup ([`ConvTiles::subgroup_weights`]), which makes a taller
/// product tile pay: 24 channels x 16 pixels; it is the default where the device has
/// subgroups (see `kernels::register_default`; BENCHMARKS.md, "Weights once per subgroup").
/// Every kernel two candidates generate alike is timed once by the tuner
/// ([`ConvTiles::same_kernel`]), and a driver that caches compiled shaders by their text
/// (Mesa's) compiles it once. On CPU drivers the tuner natively races only the default (see
/// `tune::candidates`).
///
/// Why these sizes (BENCHMARKS.md, "Tiles and compile time"): on lavapipe the time LLVM takes
/// to compile a kernel grows faster than its accumulators, and a CPU driver compiles on the
/// first launch, on an empty Mesa shader cache for every new user. The earlier default's 3x3
/// kernels (12 channels x 16 pixels x 4 lines, and 8 x 8 on 8x8 maps: 768 accumulators) took
/// 52-69 s each to compile, for launches 10-25% faster than 12 x 16 x 2 (384 accumulators,
/// 12-18 s) at 32x32 and 16x16. On 8x8 maps 12 x 8 x 2 (192, 4-7 s) costs about 2 ms a launch
/// more than 384. Smaller tiles ran up to twice as long on 32x32 maps. The 3x3 weight
/// gradient takes all 12 growth channels per workgroup, reading each input segment once for
/// all of them: 15-35% faster than 4 at BC-100's 16x16 and 32x32 maps; and 4 input channels,
/// each loaded output gradient feeding all four: 1.5-1.9x faster than 1 at every BC-100 map
/// size, for about 6 s more LLVM compile on an empty Mesa cache (3 channels: 1.4-1.7x, 3 s;
/// 6: no faster than 4, 15 s; BENCHMARKS.md, "Four input channels per 3x3 weight gradient").
pub const REGISTER_TILES: [ConvTiles; 3] = [
    REGISTER,
    ConvTiles { name: "register-wide", gemm_rows: 8, gemm_pixels: 32, wgrad3_cols: 1, ..REGISTER },
    ConvTiles { name: "register-subgroup", gemm_rows: 24, subgroup_weights: true, ..REGISTER },
];

/// `register`, the first of [`REGISTER_TILES`], which the others vary.
const REGISTER: ConvTiles = ConvTiles {
    name: "register",
    gemm_rows: 16,
    gemm_pixels: 16,
    conv3_rows: 12,
    conv3_pixels: 16,
    conv3_lines: 2,
    conv3_narrow_pixels: 8,
    conv3_narrow_lines: 2,
    conv3_workgroup: 16,
    wgrad1_rows: 16,
    wgrad1_cols: 16,
    wgrad3_rows: 12,
    wgrad3_cols: 4,
    wgrad3_pixels: 8,
    subgroup_weights: false,
};

/// Invocations per workgroup of every kernel but the 3x3 ones. Not a tuning knob: the text
/// spells it out where the kernels are built around it (the 64-lane reductions through
/// `partial`, eight 8-lane SIMD groups walking their own spans).
pub const WORKGROUP: u32 = 64;

/// Destination channels per invocation of the general direct kernels (one `vec4` accumulator).
pub const GENERAL_ROWS: u32 = 4;

/// Values the weight-gradient reductions pass through workgroup memory per barrier pair
/// (`partial` holds `WORKGROUP` x this many).
const REDUCE_WIDTH: usize = 16;

impl ConvTiles {
    /// The complete conv shader body (without `common.wgsl`, which [`crate::gpu::shaders`]
    /// puts in front): every entry point the host functions in [`super`] launch.
    ///
    /// Panics if a tile is empty or a pixel count is not a multiple of 4.
    pub fn wgsl(&self) -> String {
        self.check();
        let mut out = String::with_capacity(600_000);
        emit!(
            out,
            "// Generated at pipeline creation by src/ops/conv/wgsl.rs from {self:?}: edit the generator, not this text."
        );
        emit!(out, "{PRELUDE}");
        self.gemm1x1(&mut out, "conv1x1_gemm", false);
        self.gemm1x1(&mut out, "conv1x1_gemm_bnrelu", true);
        let (rows, workgroup) = (self.conv3_rows, self.conv3_workgroup);
        let sg = self.subgroup_weights;
        conv3x3(&mut out, "conv3x3_s1", rows, self.conv3_pixels, self.conv3_lines, workgroup, sg);
        // Outputs at most conv3_narrow_pixels wide (DenseNet's 8x8 maps) get segments that
        // narrow, so no accumulator idles.
        conv3x3(&mut out, "conv3x3_s1_narrow", rows, self.conv3_narrow_pixels, self.conv3_narrow_lines, workgroup, sg);
        emit!(out, "var<workgroup> partial: array<f32, {}>;\n", WORKGROUP as usize * REDUCE_WIDTH);
        self.wgrad1x1(&mut out, "conv1x1_weight_grad", false);
        self.wgrad1x1(&mut out, "conv1x1_weight_grad_bnrelu", true);
        self.wgrad3x3(&mut out);
        emit!(out, "{GENERAL}");
        out
    }

    /// Whether `self` and `other` generate the same kernel for `entry` (an entry point of
    /// [`ConvTiles::wgsl`]): the tiles its text and launch grid are made from are equal. The
    /// tuner then times one for both, since they are one kernel (see `tune::race`). Names
    /// this module does not generate are never the same.
    pub fn same_kernel(&self, other: &ConvTiles, entry: &str) -> bool {
        let tiles = |t: &ConvTiles| -> Option<Vec<u32>> {
            Some(match entry {
                "conv1x1_gemm" | "conv1x1_gemm_bnrelu" => vec![t.gemm_rows, t.gemm_pixels, t.subgroup_weights as u32],
                "conv3x3_s1" => {
                    vec![t.conv3_rows, t.conv3_pixels, t.conv3_lines, t.conv3_workgroup, t.subgroup_weights as u32]
                }
                "conv3x3_s1_narrow" => vec![
                    t.conv3_rows,
                    t.conv3_narrow_pixels,
                    t.conv3_narrow_lines,
                    t.conv3_workgroup,
                    t.subgroup_weights as u32,
                ],
                "conv1x1_weight_grad" | "conv1x1_weight_grad_bnrelu" => vec![t.wgrad1_rows, t.wgrad1_cols],
                "conv3x3_s1_weight_grad" => vec![t.wgrad3_rows, t.wgrad3_cols, t.wgrad3_pixels],
                "conv_general_forward" | "conv_general_backward_input" | "conv_general_weight_grad" => vec![],
                _ => return None,
            })
        };
        tiles(self).is_some() && tiles(self) == tiles(other)
    }

    /// Whether an adapter with these limits can run the candidate: its workgroups (the 3x3
    /// kernels' and the others' [`WORKGROUP`]) and the weight gradients' `partial` array in
    /// workgroup memory within the limits. WebGPU's defaults (256 invocations, 16 KiB) hold
    /// every listed candidate; a candidate that does not fit is never compiled.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        let size = self.conv3_workgroup.max(WORKGROUP);
        let partial_bytes = (WORKGROUP as usize * REDUCE_WIDTH * 4) as u32;
        size <= limits.max_compute_invocations_per_workgroup
            && size <= limits.max_compute_workgroup_size_x
            && partial_bytes <= limits.max_compute_workgroup_storage_size
    }

    /// Panics unless every tile size is positive and every pixel count a multiple of 4 (the
    /// accumulators and loads are `vec4<f32>`).
    fn check(&self) {
        let pixels = [self.gemm_pixels, self.conv3_pixels, self.conv3_narrow_pixels, self.wgrad3_pixels];
        let others = [
            self.gemm_rows,
            self.conv3_rows,
            self.conv3_lines,
            self.conv3_narrow_lines,
            self.conv3_workgroup,
            self.wgrad1_rows,
            self.wgrad1_cols,
            self.wgrad3_rows,
            self.wgrad3_cols,
        ];
        assert!(
            pixels.iter().all(|&p| p > 0 && p % 4 == 0) && others.iter().all(|&n| n > 0),
            "conv tiles must be positive, with pixel counts multiples of 4: {self:?}"
        );
    }

    /// `conv1x1_gemm` (or its `_bnrelu` twin): a matrix product over the N*H*W pixels.
    fn gemm1x1(&self, out: &mut String, name: &str, bnrelu: bool) {
        let (mr, pr, sg) = (self.gemm_rows, self.gemm_pixels, self.subgroup_weights);
        let vecs = pr / 4;
        if bnrelu {
            emit!(
                out,
                "// As conv1x1_gemm, but src is the raw input of a training- or eval-mode BN-ReLU and each
// loaded value goes through max((x - mean) * invstd * gamma + beta, 0) + bn_poison first, written
// as bn_value in batchnorm.wgsl so the product equals BnApply followed by conv1x1_gemm bit for bit.
// The normalised tensor is then never stored: when the conv is its only reader, neither forward
// nor a recomputation in backward needs memory for it."
            );
        } else {
            emit!(
                out,
                "// 1x1, stride 1, no padding: a matrix product dst[m, q] = sum_k A(m, k) src[k, q] over the
// N*H*W pixels q. Each invocation owns {mr} rows x {pr} consecutive pixels; the grid's z picks the
// row block. Out-of-range rows and pixels load clamped (valid) addresses and are not stored."
            );
        }
        emit!(
            out,
            "@compute @workgroup_size(64)
fn {name}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                @builtin(workgroup_id) wg: vec3<u32>{sl}) {{
    let pixels = p.n * p.src_h * p.src_w;
    let first = flat_id(gid, groups, 64u) * {pr}u;
    {ret}
    let m0 = wg.z * {mr}u;
    let last = pixels - 1u;",
            sl = subgroup_lane(sg),
            ret = if sg { LIVE_NOT_RETURN } else { "if (first >= pixels) { return; }" },
        );
        for j in 0..pr {
            emit!(out, "    let q{j} = min(first + {j}u, last);");
        }
        if sg {
            // Subgroup invocation l loads the weight of rows l, l + 8, ... of the block.
            for g in 0..mr.div_ceil(SUBGROUP) {
                emit!(out, "    let wl{g} = p.wt_off + min(m0 + {}u + sl, p.m_rows - 1u) * p.a_m;", g * SUBGROUP);
            }
            if bnrelu {
                // Even invocations load mean and gamma, odd ones invstd and beta.
                emit!(out, "    let half = (sl & 1u) * p.k_rows;");
            }
        } else {
            for r in 0..mr {
                emit!(out, "    let wr{r} = p.wt_off + min(m0 + {r}u, p.m_rows - 1u) * p.a_m;");
            }
        }
        for r in 0..mr {
            for v in 0..vecs {
                emit!(out, "    var acc{r}_{v} = vec4<f32>();");
            }
        }
        emit!(out, "    var s = p.src_off;");
        emit!(out, "    var wk = 0u;");
        emit!(out, "    for (var k = 0u; k < p.k_rows; k++) {{");
        if bnrelu && sg {
            emit!(out, "        let st = bn_stats[p.stats_off + half + k];");
            emit!(out, "        let af = bn_affine[p.affine_off + half + k];");
            emit!(out, "        let mean = subgroupBroadcast(st, 0u);");
            emit!(out, "        let invstd = subgroupBroadcast(st, 1u);");
            emit!(out, "        let gamma = subgroupBroadcast(af, 0u);");
            emit!(out, "        let beta = subgroupBroadcast(af, 1u);");
        } else if bnrelu {
            emit!(out, "        let mean = bn_stats[p.stats_off + k];");
            emit!(out, "        let invstd = bn_stats[p.stats_off + p.k_rows + k];");
            emit!(out, "        let gamma = bn_affine[p.affine_off + k];");
            emit!(out, "        let beta = bn_affine[p.affine_off + p.k_rows + k];");
        }
        if bnrelu {
            emit!(out, "        let poison = bn_poison(mean, invstd, gamma, beta);");
        }
        if sg {
            for g in 0..mr.div_ceil(SUBGROUP) {
                emit!(out, "        let wg{g} = wt[wl{g} + wk];");
            }
        }
        for v in 0..vecs {
            let load = vec4((0..4).map(|t| format!("src[s + q{}]", 4 * v + t)));
            if bnrelu {
                emit!(out, "        let b{v} = max(({load} - mean) * invstd * gamma + beta, vec4<f32>()) + poison;");
            } else {
                emit!(out, "        let b{v} = {load};");
            }
        }
        for r in 0..mr {
            if sg {
                emit!(out, "        let a{r} = subgroupBroadcast(wg{}, {}u);", r / SUBGROUP, r % SUBGROUP);
            } else {
                emit!(out, "        let a{r} = wt[wr{r} + wk];");
            }
            for v in 0..vecs {
                emit!(out, "        acc{r}_{v} = fma(vec4<f32>(a{r}), b{v}, acc{r}_{v});");
            }
        }
        emit!(out, "        s += pixels;");
        emit!(out, "        wk += p.a_k;");
        emit!(out, "    }}");
        emit!(out, "    let full = first + {pr}u <= pixels;");
        let live = if sg { "live && " } else { "" };
        for r in 0..mr {
            emit!(out, "    if ({live}m0 + {r}u < p.m_rows) {{");
            emit!(out, "        let o = p.dst_off + (m0 + {r}u) * pixels + first;");
            for j in 0..pr {
                let (v, lane) = (j / 4, j % 4);
                emit!(out, "        if (full || first + {j}u < pixels) {{ put(o + {j}u, acc{r}_{v}[{lane}]); }}");
            }
            emit!(out, "    }}");
        }
        emit!(out, "}}\n");
    }

    /// `conv1x1_weight_grad` (or its `_bnrelu` twin): one workgroup per wgrad1_rows x
    /// wgrad1_cols block of weights, reducing over the pixels in workgroup memory.
    fn wgrad1x1(&self, out: &mut String, name: &str, bnrelu: bool) {
        let (mr, nr) = (self.wgrad1_rows, self.wgrad1_cols);
        if bnrelu {
            emit!(
                out,
                "// As conv1x1_weight_grad, but src is the raw input of a training-mode BN-ReLU and each loaded
// value goes through relu((x - mean) * invstd * gamma + beta) first, so backward never has to
// recompute and store the normalised tensor just for this gradient."
            );
        } else {
            emit!(
                out,
                "// Weight gradient of a 1x1, stride 1, unpadded conv: dw[m, k] = sum_q wt[m, q] src[k, q] over
// all N*H*W pixels q. One workgroup owns {mr} x {nr} weights; its 64 invocations split the pixels
// (each group of 8 a contiguous span, see below) and their partial sums meet in workgroup
// memory, 16 values per barrier pair. The fixed 64-way split keeps f32 sums short
// (pixels / 64 terms each) without a scratch buffer."
            );
        }
        emit!(
            out,
            "@compute @workgroup_size(64)
fn {name}(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let pixels = p.n * p.src_h * p.src_w;
    let m0 = wg.z * {mr}u;
    let k0 = wg.x * {nr}u;"
        );
        for r in 0..mr {
            emit!(out, "    let dr{r} = p.wt_off + min(m0 + {r}u, p.m_rows - 1u) * pixels;");
        }
        for c in 0..nr {
            emit!(out, "    let sr{c} = p.src_off + min(k0 + {c}u, p.k_rows - 1u) * pixels;");
        }
        if bnrelu {
            // Per channel: mean, invstd, gamma and beta, loaded once. They are applied in
            // batchnorm.wgsl's bn_value order, not folded into one scale, so the value equals the
            // stored BN-ReLU output of the other memory modes bit for bit.
            for c in 0..nr {
                emit!(out, "    let kc{c} = min(k0 + {c}u, p.k_rows - 1u);");
                emit!(out, "    let mu{c} = bn_stats[p.stats_off + kc{c}];");
                emit!(out, "    let is{c} = bn_stats[p.stats_off + p.k_rows + kc{c}];");
                emit!(out, "    let ga{c} = bn_affine[p.affine_off + kc{c}];");
                emit!(out, "    let be{c} = bn_affine[p.affine_off + p.k_rows + kc{c}];");
                emit!(out, "    let pz{c} = bn_poison(mu{c}, is{c}, ga{c}, be{c});");
            }
        }
        for r in 0..mr {
            for c in 0..nr {
                emit!(out, "    var acc{r}_{c} = 0.0;");
            }
        }
        // llvmpipe runs a workgroup as 8-lane SIMD groups, one after another, so each group of 8
        // invocations walks its own contiguous span of pixels, 16 at a time: two pixels per
        // invocation, a whole 64-byte cache line per row per step. Interleaving all 64
        // invocations instead made every group stream every line for 1/8 of its content.
        emit!(out, "    let group = lane / 8u;");
        emit!(out, "    let sub = lane % 8u;");
        emit!(out, "    let span = (pixels + 127u) / 128u * 16u;");
        emit!(out, "    let end = min(group * span + span, pixels);");
        emit!(out, "    for (var b = group * span; b < end; b += 16u) {{");
        for h in 0..2 {
            emit!(out, "        let q{h} = b + {}u + sub;", 8 * h);
            emit!(out, "        let ok{h} = q{h} < end;");
            emit!(out, "        let c{h} = min(q{h}, pixels - 1u);");
        }
        for h in 0..2 {
            for r in 0..mr {
                emit!(out, "        let g{r}_{h} = select(0.0, wt[dr{r} + c{h}], ok{h});");
            }
            for c in 0..nr {
                if bnrelu {
                    emit!(
                        out,
                        "        let x{c}_{h} = max((src[sr{c} + c{h}] - mu{c}) * is{c} * ga{c} + be{c}, 0.0) + pz{c};"
                    );
                } else {
                    emit!(out, "        let x{c}_{h} = src[sr{c} + c{h}];");
                }
            }
        }
        for r in 0..mr {
            for c in 0..nr {
                emit!(out, "        acc{r}_{c} = fma(g{r}_0, x{c}_0, fma(g{r}_1, x{c}_1, acc{r}_{c}));");
            }
        }
        emit!(out, "    }}");
        let names: Vec<String> = (0..mr).flat_map(|r| (0..nr).map(move |c| format!("acc{r}_{c}"))).collect();
        let store = format!(
            "            let m = m0 + v / {nr}u;
            let k = k0 + v % {nr}u;
            if (m < p.m_rows && k < p.k_rows) {{ put(p.dst_off + m * p.k_rows + k, sum); }}"
        );
        reduce(out, &names, &store);
        emit!(out, "}}\n");
    }

    /// `conv3x3_s1_weight_grad`: one workgroup per wgrad3_rows output channels x wgrad3_cols
    /// input channels x 9 taps, reducing over the output rows in workgroup memory.
    fn wgrad3x3(&self, out: &mut String) {
        let (mr, kc, pr) = (self.wgrad3_rows, self.wgrad3_cols, self.wgrad3_pixels);
        let (vecs, taps_wide, last) = (pr / 4, pr + 2, pr - 1);
        let per_row = 9 * kc;
        emit!(
            out,
            "// Weight gradient of a 3x3, stride 1 conv: dw[m, k, i, j] = sum over images and output pixels
// of dy[m, .] x[k, . shifted by (i, j)]. One workgroup owns {mr} output channels x {kc} input channels
// x 9 taps; its invocations split the output rows in segments of {pr} pixels, load each output
// gradient segment once for all {kc} input channels and each input row segment once for all three
// kernel columns, and reduce in workgroup memory. Every accumulator sums its terms in the same order
// whatever the number of input channels per workgroup.
@compute @workgroup_size(64)
fn conv3x3_s1_weight_grad(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {{
    let m0 = wg.z * {mr}u;
    let k0 = wg.x * {kc}u;
    let segs = (p.dst_w + {last}u) / {pr}u;
    let items = p.n * p.dst_h * segs;
    let src_plane = p.n * p.src_h * p.src_w;
    let dst_plane = p.n * p.dst_h * p.dst_w;"
        );
        for c in 0..kc {
            emit!(out, "    let src_base{c} = p.src_off + min(k0 + {c}u, p.k_rows - 1u) * src_plane;");
        }
        for r in 0..mr {
            emit!(out, "    let dr{r} = p.wt_off + min(m0 + {r}u, p.m_rows - 1u) * dst_plane;");
        }
        for r in 0..mr {
            for c in 0..kc {
                for t in 0..9 {
                    emit!(out, "    var acc{r}_{c}_{t} = 0.0;");
                }
            }
        }
        // As in the 1x1 weight gradient: each group of 8 invocations (one SIMD group on llvmpipe)
        // walks its own contiguous span of segments, so consecutive steps read neighbouring
        // cache lines.
        emit!(out, "    let span = (items + 63u) / 64u * 8u;");
        emit!(out, "    let end = min(lane / 8u * span + span, items);");
        emit!(out, "    for (var item = lane / 8u * span + lane % 8u; item < end; item += 8u) {{");
        emit!(out, "        let row = item / segs;");
        emit!(out, "        let ow0 = (item - row * segs) * {pr}u;");
        emit!(out, "        let img = row / p.dst_h;");
        emit!(out, "        let oh = row - img * p.dst_h;");
        for j in 0..pr {
            emit!(out, "        let dok{j} = ow0 + {j}u < p.dst_w;");
            emit!(out, "        let dc{j} = min(ow0 + {j}u, p.dst_w - 1u);");
        }
        emit!(out, "        let db = row * p.dst_w;");
        for r in 0..mr {
            for v in 0..vecs {
                let g = vec4((4 * v..4 * v + 4).map(|j| format!("select(0.0, wt[dr{r} + db + dc{j}], dok{j})")));
                emit!(out, "        let g{r}_{v} = {g};");
            }
        }
        for t in 0..taps_wide {
            emit!(out, "        let iw{t} = ow0 + {t}u - p.pad;");
            emit!(out, "        let wok{t} = iw{t} < p.src_w;");
            emit!(out, "        let c{t} = min(iw{t}, p.src_w - 1u);");
        }
        // One input row per input channel and kernel row i, loaded once and shifted for the three
        // columns j.
        for c in 0..kc {
            for i in 0..3 {
                emit!(out, "        {{");
                emit!(out, "            let ih = oh + {i}u - p.pad;");
                emit!(out, "            let rb = src_base{c} + (img * p.src_h + min(ih, p.src_h - 1u)) * p.src_w;");
                emit!(out, "            let rok = ih < p.src_h;");
                for t in 0..taps_wide {
                    emit!(out, "            let x{t} = select(0.0, src[rb + c{t}], rok && wok{t});");
                }
                for j in 0..3 {
                    for v in 0..vecs {
                        let xs = vec4((0..4).map(|t| format!("x{}", 4 * v + t + j)));
                        emit!(out, "            let xs{j}_{v} = {xs};");
                    }
                }
                for r in 0..mr {
                    for j in 0..3 {
                        let dots: Vec<String> = (0..vecs).map(|v| format!("dot(g{r}_{v}, xs{j}_{v})")).collect();
                        emit!(out, "            acc{r}_{c}_{} += {};", 3 * i + j, dots.join(" + "));
                    }
                }
                emit!(out, "        }}");
            }
        }
        emit!(out, "    }}");
        let names: Vec<String> =
            (0..mr).flat_map(|r| (0..kc).flat_map(move |c| (0..9).map(move |t| format!("acc{r}_{c}_{t}")))).collect();
        let store = format!(
            "            let m = m0 + v / {per_row}u;
            let k = k0 + v / 9u % {kc}u;
            if (m < p.m_rows && k < p.k_rows) {{ put(p.dst_off + (m * p.k_rows + k) * 9u + v % 9u, sum); }}"
        );
        reduce(out, &names, &store);
        emit!(out, "}}\n");
    }
}

/// `conv3x3_s1` (or `conv3x3_s1_narrow`, the same kernel with its own tile): 3x3, stride 1,
/// any padding, `rows` channels x `lines` output lines x `pixels` pixels per invocation.
fn conv3x3(out: &mut String, name: &str, rows: u32, pixels: u32, lines: u32, workgroup: u32, sg: bool) {
    let vecs = pixels / 4;
    // The input columns and lines under one invocation's outputs: two more of each for the taps.
    let (cols, in_lines) = (pixels + 2, lines + 2);
    let (taps, last_pixel, last_line) = (rows * 9, pixels - 1, lines - 1);
    emit!(
        out,
        "// 3x3, stride 1, any padding (backward input of such a conv is one too, with the weights
// transposed and flipped). Each invocation owns {rows} rows x {lines} output lines x {pixels} consecutive
// pixels; per input channel it loads the {in_lines} x {cols} input pixels under them once and uses each for
// every kernel tap that reaches it, with all {taps} weights (the same for the whole workgroup).
// Many rows and lines per invocation measured fastest on lavapipe: each gathered input pixel
// feeds up to {taps} FMAs. Padding is handled by masks computed once, outside the channel loop.
@compute @workgroup_size({workgroup})
fn {name}(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(workgroup_id) wg: vec3<u32>{sl}) {{
    let segs = (p.dst_w + {last_pixel}u) / {pixels}u;
    let bands = (p.dst_h + {last_line}u) / {lines}u;
    let items = p.n * bands * segs;
    {item}
    let band = item / segs;
    let ow0 = (item - band * segs) * {pixels}u;
    let img = band / bands;
    let oh0 = (band - img * bands) * {lines}u;
    let m0 = wg.z * {rows}u;
    let src_plane = p.n * p.src_h * p.src_w;
    let dst_plane = p.n * p.dst_h * p.dst_w;",
        sl = subgroup_lane(sg),
        // As in the 1x1 product, a subgroup kernel works on past its last item (see LIVE_NOT_RETURN).
        item = if sg {
            "let live = flat_id(gid, groups, WG_SIZE) < items;\n    let item = min(flat_id(gid, groups, WG_SIZE), items - 1u);"
                .replace("WG_SIZE", &format!("{workgroup}u"))
        } else {
            format!("let item = flat_id(gid, groups, {workgroup}u);\n    if (item >= items) {{ return; }}")
        },
    );
    for t in 0..cols {
        emit!(out, "    let iw{t} = ow0 + {t}u - p.pad;");
        emit!(out, "    let c{t} = min(iw{t}, p.src_w - 1u);");
    }
    for i in 0..in_lines {
        emit!(out, "    let ih{i} = oh0 + {i}u - p.pad;");
        emit!(out, "    let rok{i} = ih{i} < p.src_h;");
        emit!(out, "    let rb{i} = (img * p.src_h + min(ih{i}, p.src_h - 1u)) * p.src_w;");
        for t in 0..cols {
            emit!(out, "    let ok{i}_{t} = rok{i} && iw{t} < p.src_w;");
        }
    }
    for i in 0..3 {
        for j in 0..3 {
            emit!(out, "    let tap{i}{j} = {i}u * p.a_i + {j}u * p.a_j;");
        }
    }
    if sg {
        // Subgroup invocation l loads weights l, l + 8, ... of the block's rows x 9 taps, in
        // row-major (row, tap) order.
        for g in 0..taps.div_ceil(SUBGROUP) {
            emit!(out, "    let t{g} = min({}u + sl, {}u);", g * SUBGROUP, taps - 1);
            emit!(
                out,
                "    let wl{g} = p.wt_off + min(m0 + t{g} / 9u, p.m_rows - 1u) * p.a_m + t{g} % 9u / 3u * p.a_i + t{g} % 3u * p.a_j;"
            );
        }
    } else {
        for r in 0..rows {
            emit!(out, "    let wr{r} = p.wt_off + min(m0 + {r}u, p.m_rows - 1u) * p.a_m;");
        }
    }
    for o in 0..lines {
        for r in 0..rows {
            for v in 0..vecs {
                emit!(out, "    var acc{o}_{r}_{v} = vec4<f32>();");
            }
        }
    }
    emit!(out, "    var s = p.src_off;");
    emit!(out, "    var wk = 0u;");
    emit!(out, "    for (var k = 0u; k < p.k_rows; k++) {{");
    if sg {
        for g in 0..taps.div_ceil(SUBGROUP) {
            emit!(out, "        let wg{g} = wt[wl{g} + wk];");
        }
    }
    for i in 0..in_lines {
        for t in 0..cols {
            emit!(out, "        let x{i}_{t} = select(0.0, src[s + rb{i} + c{t}], ok{i}_{t});");
        }
    }
    // The four input pixels under output pixels 4v..4v+3 of output line `o`, seen through tap (i, j).
    let xs = |o: u32, i: u32, j: u32, v: u32| vec4((0..4).map(|t| format!("x{}_{}", o + i, 4 * v + t + j)));
    for r in 0..rows {
        for i in 0..3 {
            for j in 0..3 {
                if sg {
                    let t = r * 9 + i * 3 + j;
                    let (g, lane) = (t / SUBGROUP, t % SUBGROUP);
                    emit!(out, "        let a{r}_{i}{j} = vec4<f32>(subgroupBroadcast(wg{g}, {lane}u));");
                } else {
                    emit!(out, "        let a{r}_{i}{j} = vec4<f32>(wt[wr{r} + wk + tap{i}{j}]);");
                }
            }
        }
        // The nine taps of one input channel are summed on their own, then added to the
        // accumulator: a term passes through at most k_rows + 9 roundings instead of
        // 9 * k_rows, which measured twice as accurate at DenseNet's shapes (BENCHMARKS.md).
        for o in 0..lines {
            for v in 0..vecs {
                let mut sum = format!("a{r}_00 * {}", xs(o, 0, 0, v));
                for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).skip(1) {
                    sum = format!("fma(a{r}_{i}{j}, {}, {sum})", xs(o, i, j, v));
                }
                emit!(out, "        acc{o}_{r}_{v} += {sum};");
            }
        }
    }
    emit!(out, "        s += src_plane;");
    emit!(out, "        wk += p.a_k;");
    emit!(out, "    }}");
    emit!(out, "    let full = ow0 + {pixels}u <= p.dst_w;");
    let live = if sg { "live && " } else { "" };
    for o in 0..lines {
        emit!(out, "    if ({live}oh0 + {o}u < p.dst_h) {{");
        emit!(out, "        let o0 = p.dst_off + (img * p.dst_h + oh0 + {o}u) * p.dst_w + ow0;");
        for r in 0..rows {
            emit!(out, "        if (m0 + {r}u < p.m_rows) {{");
            emit!(out, "            let o = o0 + (m0 + {r}u) * dst_plane;");
            for j in 0..pixels {
                let (v, lane) = (j / 4, j % 4);
                emit!(
                    out,
                    "            if (full || ow0 + {j}u < p.dst_w) {{ put(o + {j}u, acc{o}_{r}_{v}[{lane}]); }}"
                );
            }
            emit!(out, "        }}");
        }
        emit!(out, "    }}");
    }
    emit!(out, "}}\n");
}

/// The end of a weight-gradient kernel: sums each accumulator in `names` over the workgroup's
/// `WORKGROUP` lanes through `partial`, `REDUCE_WIDTH` accumulators per pass, and lets lane
/// `v % REDUCE_WIDTH` of the pass run `store` (WGSL that writes `sum`, the total of
/// accumulator `v`).
fn reduce(out: &mut String, names: &[String], store: &str) {
    for (pass, chunk) in names.chunks(REDUCE_WIDTH).enumerate() {
        for (t, name) in chunk.iter().enumerate() {
            emit!(out, "    partial[lane * {REDUCE_WIDTH}u + {t}u] = {name};");
        }
        emit!(out, "    workgroupBarrier();");
        emit!(out, "    if (lane < {REDUCE_WIDTH}u) {{");
        emit!(out, "        var sum = 0.0;");
        emit!(out, "        for (var l = 0u; l < {WORKGROUP}u; l++) {{ sum += partial[l * {REDUCE_WIDTH}u + lane]; }}");
        emit!(out, "        let v = {}u + lane;", pass * REDUCE_WIDTH);
        emit!(out, "        if (v < {}u) {{", names.len());
        emit!(out, "{store}");
        emit!(out, "        }}");
        emit!(out, "    }}");
        emit!(out, "    workgroupBarrier();");
    }
}

/// Invocations of a subgroup that load a different weight each for the candidates with
/// [`ConvTiles::subgroup_weights`]: the smallest subgroup they run on
/// ([`crate::gpu::MIN_SUBGROUP_SIZE`] is this).
pub const SUBGROUP: u32 = 8;

/// The extra entry-point argument of a kernel that broadcasts within its subgroup.
fn subgroup_lane(subgroup: bool) -> &'static str {
    if subgroup {
        ", @builtin(subgroup_invocation_id) sl: u32"
    } else {
        ""
    }
}

/// What a subgroup kernel does instead of returning early past the last output: it keeps
/// going on clamped (valid) addresses and stores nothing, because `subgroupBroadcast` must be
/// reached by every invocation of the subgroup, and a returned one would leave its weights
/// undefined for the others.
const LIVE_NOT_RETURN: &str = "let live = first < pixels;";

/// `vec4<f32>(a, b, c, d)` of four WGSL expressions.
fn vec4(parts: impl Iterator<Item = String>) -> String {
    format!("vec4<f32>({})", parts.collect::<Vec<_>>().join(", "))
}

/// The shared declarations: what the kernels' operands mean, the parameter block (which
/// `super::Params` fills in this order), the bindings and the store helper.
pub(super) const PRELUDE: &str = r"// 2-D convolution without bias, forward and both backwards.
// Activations are (C, N, H, W), weights OIHW. Every kernel reads a `src` activation, a `wt`
// operand and writes `dst`; the host maps forward and backward onto them:
//   forward:         src = x,  wt = w,  dst = y,  rows m = output channels, k = input channels
//   backward input:  src = dy, wt = w,  dst = dx, rows m = input channels,  k = output channels
//   backward weight: src = x,  wt = dy, dst = dw
// The weight of (m, k, tap i, j) sits at wt_off + m*a_m + k*a_k + i*a_i + j*a_j; the strides
// wrap in u32, which lets backward input read the weights transposed and flipped in place.
//
// Why the kernels look the way they do (lavapipe, see BENCHMARKS.md): llvmpipe runs 8
// invocations as SIMD lanes and turns every storage load into a per-lane scalar loop, while an
// FMA costs one vector instruction. So each invocation keeps a large, fully unrolled register
// tile and reuses every loaded value many times; no loop inside the tile, no private arrays.

struct Params {
    n: u32,
    m_rows: u32,
    k_rows: u32,
    pad: u32,
    src_h: u32,
    src_w: u32,
    dst_h: u32,
    dst_w: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    accumulate: u32,
    src_off: u32,
    wt_off: u32,
    dst_off: u32,
    a_m: u32,
    a_k: u32,
    a_i: u32,
    a_j: u32,
    stats_off: u32,
    affine_off: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// Only the *_bnrelu kernels bind these: the batch-norm statistics [mean, invstd] and affine
// parameters [gamma, beta] of their k_rows source channels.
@group(0) @binding(4) var<storage, read_write> bn_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> bn_affine: array<f32>;

// 0.0, or NaN where a folded BN-ReLU channel's constants are not all finite; the *_bnrelu
// kernels add it to each value after `max`. Those loads keep `max` (see common.wgsl's relu: a
// NaN test in every load made SwiftShader's compile outlast Chromium's GPU watchdog), and this
// test runs once per channel instead. In training a NaN or infinite input value always reaches
// its channel's batch statistics, so the diverged channel comes out NaN, as PyTorch's ReLU
// leaves it; with running statistics (eval) a NaN input under finite statistics becomes 0.
// Adding +0.0 also makes a -0.0 from `max` +0.0, as `relu` gives it.
fn bn_poison(mean: f32, invstd: f32, gamma: f32, beta: f32) -> f32 {
    let finite = is_finite(mean) && is_finite(invstd) && is_finite(gamma) && is_finite(beta);
    return bitcast<f32>(select(0x7fc00000u, 0u, finite));
}

// relu(batchnorm(v)) of source channel ch, in batchnorm.wgsl's bn_value order, so that the
// value equals the stored BN-ReLU output of the other memory modes bit for bit (the workgroup
// family's loads; the register family's load each channel's constants once per channel).
fn bn_relu_of(v: f32, ch: u32) -> f32 {
    let mean = bn_stats[p.stats_off + ch];
    let invstd = bn_stats[p.stats_off + p.k_rows + ch];
    let gamma = bn_affine[p.affine_off + ch];
    let beta = bn_affine[p.affine_off + p.k_rows + ch];
    return max((v - mean) * invstd * gamma + beta, 0.0) + bn_poison(mean, invstd, gamma, beta);
}

fn bn_relu4_of(v: vec4<f32>, ch: u32) -> vec4<f32> {
    let mean = bn_stats[p.stats_off + ch];
    let invstd = bn_stats[p.stats_off + p.k_rows + ch];
    let gamma = bn_affine[p.affine_off + ch];
    let beta = bn_affine[p.affine_off + p.k_rows + ch];
    return max((v - mean) * invstd * gamma + beta, vec4<f32>()) + bn_poison(mean, invstd, gamma, beta);
}

// Writes one finished output: overwrite, or add to what is there.
fn put(i: u32, v: f32) {
    if (p.accumulate != 0u) {
        dst[i] = dst[i] + v;
    } else {
        dst[i] = v;
    }
}
";

/// The general direct kernels for any kernel size, stride and padding (e.g. the ImageNet 7x7
/// stem). They have no register tile to unroll, so their text is fixed.
const GENERAL: &str = r"// Any kernel size, stride and padding; the slow but complete fallback for forward.
// Each invocation owns 4 output channels of one output pixel.
@compute @workgroup_size(64)
fn conv_general_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                        @builtin(workgroup_id) wg: vec3<u32>) {
    let dst_plane = p.n * p.dst_h * p.dst_w;
    let q = flat_id(gid, groups, 64u);
    if (q >= dst_plane) { return; }
    let ow = q % p.dst_w;
    let row = q / p.dst_w;
    let oh = row % p.dst_h;
    let img = row / p.dst_h;
    let m0 = wg.z * 4u;
    let wr0 = p.wt_off + min(m0, p.m_rows - 1u) * p.a_m;
    let wr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * p.a_m;
    let wr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * p.a_m;
    let wr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * p.a_m;
    let src_plane = p.n * p.src_h * p.src_w;
    var acc = vec4<f32>();
    for (var i = 0u; i < p.kh; i++) {
        let ih = oh * p.stride + i - p.pad;
        if (ih >= p.src_h) { continue; }
        for (var j = 0u; j < p.kw; j++) {
            let iw = ow * p.stride + j - p.pad;
            if (iw >= p.src_w) { continue; }
            let tap = i * p.a_i + j * p.a_j;
            var s = p.src_off + (img * p.src_h + ih) * p.src_w + iw;
            var wk = tap;
            for (var k = 0u; k < p.k_rows; k++) {
                let x = src[s];
                acc = fma(vec4<f32>(wt[wr0 + wk], wt[wr1 + wk], wt[wr2 + wk], wt[wr3 + wk]), vec4<f32>(x), acc);
                s += src_plane;
                wk += p.a_k;
            }
        }
    }
    let o = p.dst_off + m0 * dst_plane + q;
    for (var r = 0u; r < 4u; r++) {
        if (m0 + r < p.m_rows) { put(o + r * dst_plane, acc[r]); }
    }
}

// Any kernel size, stride and padding; the fallback for backward input. dst = dx (m = input
// channels, spatial dst_h x dst_w), src = dy (k = output channels, spatial src_h x src_w).
// Each invocation owns 4 input channels of one input pixel and visits only the taps whose
// output pixel exists.
@compute @workgroup_size(64)
fn conv_general_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                               @builtin(workgroup_id) wg: vec3<u32>) {
    let dst_plane = p.n * p.dst_h * p.dst_w;
    let q = flat_id(gid, groups, 64u);
    if (q >= dst_plane) { return; }
    let iw = q % p.dst_w;
    let row = q / p.dst_w;
    let ih = row % p.dst_h;
    let img = row / p.dst_h;
    let m0 = wg.z * 4u;
    let wr0 = p.wt_off + min(m0, p.m_rows - 1u) * p.a_m;
    let wr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * p.a_m;
    let wr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * p.a_m;
    let wr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * p.a_m;
    let src_plane = p.n * p.src_h * p.src_w;
    var acc = vec4<f32>();
    for (var i = 0u; i < p.kh; i++) {
        // The output row that reads input row ih through kernel row i, if any.
        let th = ih + p.pad - i;
        if (th >= 0x80000000u || th % p.stride != 0u || th / p.stride >= p.src_h) { continue; }
        for (var j = 0u; j < p.kw; j++) {
            let tw = iw + p.pad - j;
            if (tw >= 0x80000000u || tw % p.stride != 0u || tw / p.stride >= p.src_w) { continue; }
            let tap = i * p.a_i + j * p.a_j;
            var s = p.src_off + (img * p.src_h + th / p.stride) * p.src_w + tw / p.stride;
            var wk = tap;
            for (var k = 0u; k < p.k_rows; k++) {
                let g = src[s];
                acc = fma(vec4<f32>(wt[wr0 + wk], wt[wr1 + wk], wt[wr2 + wk], wt[wr3 + wk]), vec4<f32>(g), acc);
                s += src_plane;
                wk += p.a_k;
            }
        }
    }
    let o = p.dst_off + m0 * dst_plane + q;
    for (var r = 0u; r < 4u; r++) {
        if (m0 + r < p.m_rows) { put(o + r * dst_plane, acc[r]); }
    }
}

// Any kernel size, stride and padding; the fallback for the weight gradient. One workgroup
// owns one weight (m, k, i, j); its invocations split the output rows and reduce in
// workgroup memory.
@compute @workgroup_size(64)
fn conv_general_weight_grad(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>,
                            @builtin(num_workgroups) groups: vec3<u32>) {
    let weights = p.m_rows * p.k_rows * p.kh * p.kw;
    let e = wg.x + wg.y * groups.x;
    // Uniform across the workgroup, so returning early cannot strand a barrier.
    if (e >= weights) { return; }
    let j = e % p.kw;
    let i = (e / p.kw) % p.kh;
    let k = (e / (p.kw * p.kh)) % p.k_rows;
    let m = e / (p.kw * p.kh * p.k_rows);
    let rows = p.n * p.dst_h;
    var sum = 0.0;
    for (var row = lane; row < rows; row += 64u) {
        let img = row / p.dst_h;
        let oh = row - img * p.dst_h;
        let ih = oh * p.stride + i - p.pad;
        if (ih >= p.src_h) { continue; }
        let sb = p.src_off + (k * p.n * p.src_h + img * p.src_h + ih) * p.src_w;
        let gb = p.wt_off + (m * p.n * p.dst_h + row) * p.dst_w;
        for (var ow = 0u; ow < p.dst_w; ow++) {
            let iw = ow * p.stride + j - p.pad;
            if (iw < p.src_w) { sum = fma(wt[gb + ow], src[sb + iw], sum); }
        }
    }
    partial[lane] = sum;
    workgroupBarrier();
    if (lane == 0u) {
        var total = 0.0;
        for (var l = 0u; l < 64u; l++) { total += partial[l]; }
        put(p.dst_off + e, total);
    }
}";
