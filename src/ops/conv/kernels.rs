//! The GPU side of [`super`]: the kernels' launches and parameter block.

use super::wgsl::{ConvTiles, GENERAL_ROWS, REGISTER_TILES, WORKGROUP};
use super::workgroup::{self, ConvTile};
use super::ConvLaunch;
use super::{Conv2dShape, RoundingDepth};
use crate::executor::Recorder;
use crate::gpu::shaders::{self, Shader};
use crate::gpu::Family;
use crate::gpu::{grid, Dispatch, Gpu, Kernel, View, Window};
use crate::ops::flag;

/// An entry point of every register candidate's module, with the storage buffers it binds.
#[derive(Clone, Copy)]
struct Entry(&'static str, u32);

const GEMM_1X1: Entry = Entry("conv1x1_gemm", 3);
const GEMM_1X1_BN_RELU: Entry = Entry("conv1x1_gemm_bnrelu", 5);
const CONV_3X3_S1: Entry = Entry("conv3x3_s1", 3);
const CONV_3X3_S1_NARROW: Entry = Entry("conv3x3_s1_narrow", 3);
const GENERAL_FORWARD: Entry = Entry("conv_general_forward", 3);
const GENERAL_BACKWARD_INPUT: Entry = Entry("conv_general_backward_input", 3);
const WEIGHT_GRAD_1X1: Entry = Entry("conv1x1_weight_grad", 3);
const WEIGHT_GRAD_1X1_BN_RELU: Entry = Entry("conv1x1_weight_grad_bnrelu", 5);
const WEIGHT_GRAD_3X3_S1: Entry = Entry("conv3x3_s1_weight_grad", 3);
const GENERAL_WEIGHT_GRAD: Entry = Entry("conv_general_weight_grad", 3);

const ENTRIES: [Entry; 10] = [
    GEMM_1X1,
    GEMM_1X1_BN_RELU,
    CONV_3X3_S1,
    CONV_3X3_S1_NARROW,
    GENERAL_FORWARD,
    GENERAL_BACKWARD_INPUT,
    WEIGHT_GRAD_1X1,
    WEIGHT_GRAD_1X1_BN_RELU,
    WEIGHT_GRAD_3X3_S1,
    GENERAL_WEIGHT_GRAD,
];

/// Every kernel the register launchers can launch, of every candidate's module
/// ([`shaders::CONV_REGISTER`]), so a GPU-free test can check each entry point and its
/// bindings against the generated shader.
pub fn kernels() -> Vec<Kernel> {
    shaders::CONV_REGISTER
        .iter()
        .flat_map(|shader| ENTRIES.map(|Entry(entry, buffers)| Kernel { shader, entry, buffers }))
        .collect()
}

/// A register candidate with its module: what a register-family launch is sized and built from.
#[derive(Clone, Copy)]
struct Register {
    tiles: ConvTiles,
    shader: &'static Shader,
}

impl Register {
    fn of(tiles: ConvTiles) -> Register {
        let index = REGISTER_TILES.iter().position(|t| *t == tiles);
        let index = index.unwrap_or_else(|| panic!("conv tiles {} are not a listed register candidate", tiles.name));
        Register { tiles, shader: shaders::CONV_REGISTER[index] }
    }

    fn kernel(&self, Entry(entry, buffers): Entry) -> Kernel {
        Kernel { shader: self.shader, entry, buffers }
    }
}

/// The `Params` block of the conv shaders ([`super::wgsl`], [`super::workgroup`]), in field
/// order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) m_rows: u32,
    pub(super) k_rows: u32,
    pub(super) pad: u32,
    pub(super) src_hw: (u32, u32),
    pub(super) dst_hw: (u32, u32),
    pub(super) accumulate: bool,
    pub(super) src_off: u32,
    pub(super) wt_off: u32,
    pub(super) dst_off: u32,
    /// Weight strides for (m, k, i, j); they wrap, so a negative stride is `0u32.wrapping_sub(s)`.
    pub(super) strides: [u32; 4],
    /// (stats, affine) element offsets; only the fused BN-ReLU kernels read them.
    pub(super) bn_offsets: (u32, u32),
    /// Pixel splits of a workgroup-family weight gradient (1 elsewhere).
    pub(super) splits: u32,
}

impl Params {
    pub(super) fn words(&self, s: &Conv2dShape) -> ConvParams {
        let [a_m, a_k, a_i, a_j] = self.strides;
        ConvParams {
            n: self.n,
            m_rows: self.m_rows,
            k_rows: self.k_rows,
            pad: self.pad,
            src_h: self.src_hw.0,
            src_w: self.src_hw.1,
            dst_h: self.dst_hw.0,
            dst_w: self.dst_hw.1,
            kh: s.kh,
            kw: s.kw,
            stride: s.stride,
            accumulate: flag(self.accumulate),
            src_off: self.src_off,
            wt_off: self.wt_off,
            dst_off: self.dst_off,
            a_m,
            a_k,
            a_i,
            a_j,
            stats_off: self.bn_offsets.0,
            affine_off: self.bn_offsets.1,
            splits: self.splits,
        }
    }
}

crate::uniform! {
    /// The parameter block of every conv kernel (the generated shader's `Params`): geometry,
    /// element offsets, and the weight strides for (m, k, tap row, tap column), which wrap in
    /// u32 so that the input gradient reads the weights transposed and flipped in place.
    pub struct ConvParams for shaders::CONV {
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
}

/// A 1-D grid of `threads` invocations (folded past 65,535 groups) times `blocks` along z.
fn grid_with_blocks(threads: u64, blocks: u32) -> [u32; 3] {
    let [x, y, _] = grid(threads, WORKGROUP);
    assert!(blocks <= 65_535, "conv2d: {blocks} channel blocks exceed the workgroup grid");
    [x, y, blocks]
}

fn weight_strides_oihw(s: &Conv2dShape) -> [u32; 4] {
    [s.c_in * s.kh * s.kw, s.kh * s.kw, s.kw, 1]
}

/// y = conv(x, w), overwriting y, with the register family's default candidate. x holds
/// `s.c_in` channels (a channel prefix of a larger tensor is fine), y holds `s.c_out` channels
/// (it may be a channel slice of a larger tensor).
pub fn conv2d_forward(gpu: &Gpu, s: &Conv2dShape, x: View, w: View, y: View) -> Dispatch {
    forward_with(gpu, ConvKernel::REGISTER, s, x, w, y)
}

/// y = conv(relu(batchnorm(x)), w) for a 1x1, stride-1, unpadded conv, with the batch norm's
/// statistics ([mean, invstd] per channel) and affine parameters ([gamma, beta]), overwriting
/// y. Equal bit for bit to [`super::batchnorm::batchnorm_apply`] with ReLU followed by
/// [`conv2d_forward`], but the normalised tensor never exists in memory.
pub fn conv2d_forward_bnrelu(
    gpu: &Gpu,
    s: &Conv2dShape,
    x: View,
    stats: View,
    affine: View,
    w: View,
    y: View,
) -> Dispatch {
    forward_bnrelu_with(gpu, ConvKernel::REGISTER, s, x, stats, affine, w, y)
}

fn forward_params(s: &Conv2dShape, x: View, w: View, y: View) -> Params {
    Params {
        n: s.n,
        m_rows: s.c_out,
        k_rows: s.c_in,
        pad: s.pad,
        src_hw: (s.h, s.w),
        dst_hw: (s.out_h(), s.out_w()),
        accumulate: false,
        src_off: x.offset,
        wt_off: w.offset,
        dst_off: y.offset,
        strides: weight_strides_oihw(s),
        bn_offsets: (0, 0),
        splits: 1,
    }
}

/// dx (+)= conv_transpose(dy, w): the gradient with respect to the input.
pub fn conv2d_backward_input(gpu: &Gpu, s: &Conv2dShape, dy: View, w: View, dx: View, accumulate: bool) -> Dispatch {
    conv2d_backward_input_channels(gpu, s, (0, s.c_in), dy, w, dx, accumulate)
}

/// The input gradient of input channels `[first, first + count)` only, into a `dx` that holds
/// just those channels: a consumer that works channel by channel (a batch norm's backward)
/// can then take the gradient in slices and never hold all of it.
pub fn conv2d_backward_input_channels(
    gpu: &Gpu,
    s: &Conv2dShape,
    channels: (u32, u32),
    dy: View,
    w: View,
    dx: View,
    accumulate: bool,
) -> Dispatch {
    backward_input_with(gpu, ConvKernel::REGISTER, s, channels, dy, w, dx, accumulate)
}

/// The parameters of an input-gradient launch: rows are the input channels `[first, first +
/// count)`, the reduction runs over output channels. With `flip` (a square stride-1 conv)
/// they describe a stride-1 conv of dy with the kernel flipped in both axes and padding
/// `kh - 1 - pad`: the flip is a start at the last tap and negative tap strides.
fn backward_input_params(
    s: &Conv2dShape,
    (first, count): (u32, u32),
    dy: View,
    w: View,
    dx: View,
    accumulate: bool,
    flip: bool,
) -> Params {
    s.check();
    assert!(count > 0 && first + count <= s.c_in, "conv2d: input channels {first}+{count} of {}", s.c_in);
    let [o_stride, i_stride, row_stride, _] = weight_strides_oihw(s);
    let mut params = Params {
        n: s.n,
        m_rows: count,
        k_rows: s.c_out,
        pad: s.pad,
        src_hw: (s.out_h(), s.out_w()),
        dst_hw: (s.h, s.w),
        accumulate,
        src_off: dy.offset,
        wt_off: w.offset + first * i_stride,
        dst_off: dx.offset,
        // The rows are now input channels and the reduction runs over output channels.
        strides: [i_stride, o_stride, row_stride, 1],
        bn_offsets: (0, 0),
        splits: 1,
    };
    if flip {
        // Wraps below zero (padding wider than the kernel), which the shaders' u32 arithmetic
        // undoes.
        params.pad = (s.kh - 1).wrapping_sub(s.pad);
        params.wt_off += (s.kh - 1) * row_stride + (s.kw - 1);
        params.strides[2] = 0u32.wrapping_sub(row_stride);
        params.strides[3] = u32::MAX;
    }
    params
}

/// dw (+)= the gradient with respect to the weights, summed over the batch.
pub fn conv2d_backward_weight(gpu: &Gpu, s: &Conv2dShape, x: View, dy: View, dw: View, accumulate: bool) -> Dispatch {
    let mut d = backward_weight_with(gpu, ConvKernel::REGISTER, s, x, None, dy, dw, None, accumulate);
    d.pop().expect("the register family's weight gradient is one launch")
}

/// dw (+)= the weight gradient of a 1x1, stride-1, unpadded conv whose input is
/// relu(batchnorm(x)) with the given training statistics ([mean, invstd] per channel) and
/// affine parameters ([gamma, beta]). The normalised input is computed on load and never
/// stored, which spares backward a recomputation of it when nothing else reads it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight_bnrelu(
    gpu: &Gpu,
    s: &Conv2dShape,
    x: View,
    stats: View,
    affine: View,
    dy: View,
    dw: View,
    accumulate: bool,
) -> Dispatch {
    let mut d = backward_weight_with(gpu, ConvKernel::REGISTER, s, x, Some((stats, affine)), dy, dw, None, accumulate);
    d.pop().expect("the register family's weight gradient is one launch")
}

/// The parameter words every weight-gradient kernel reads: x is the source, dy the "weights"
/// operand, dw the destination.
fn weight_grad_params(s: &Conv2dShape, x: View, dy: View, dw: View, accumulate: bool) -> Params {
    // The forward's geometry, with dy in the weights' place; these kernels use no weight strides.
    Params { accumulate, strides: [0; 4], ..forward_params(s, x, dy, dw) }
}

/// A register-family weight gradient; `buffers` = [x, dy, dw], or [x, dy, dw, stats, affine]
/// for the fused BN-ReLU form of a 1x1 conv.
fn register_weight_grad(gpu: &Gpu, r: Register, s: &Conv2dShape, params: &Params, buffers: &[Window]) -> Dispatch {
    let words = params.words(s);
    let in_range = |groups: u32| {
        assert!(groups <= 65_535, "conv2d: {groups} weight blocks exceed the workgroup grid");
        groups
    };
    if s.is_pointwise() {
        // One workgroup per `wgrad1_cols` x `wgrad1_rows` block of the weights.
        let groups =
            [in_range(s.c_in.div_ceil(r.tiles.wgrad1_cols)), 1, in_range(s.c_out.div_ceil(r.tiles.wgrad1_rows))];
        let entry = if buffers.len() == 5 { WEIGHT_GRAD_1X1_BN_RELU } else { WEIGHT_GRAD_1X1 };
        return gpu.dispatch(&r.kernel(entry), &words, buffers, groups);
    }
    if s.kh == 3 && s.kw == 3 && s.stride == 1 {
        let groups =
            [in_range(s.c_in.div_ceil(r.tiles.wgrad3_cols)), 1, in_range(s.c_out.div_ceil(r.tiles.wgrad3_rows))];
        return gpu.dispatch(&r.kernel(WEIGHT_GRAD_3X3_S1), &words, buffers, groups);
    }
    // One workgroup per weight; grid() folds the count into two dimensions.
    let groups = grid(s.weight_elems() as u64 * WORKGROUP as u64, WORKGROUP);
    gpu.dispatch(&r.kernel(GENERAL_WEIGHT_GRAD), &words, buffers, groups)
}

/// A 3x3 stride-1 conv described by `params` (rows = destination channels): one invocation per
/// block of lines x pixels of one image and `conv3_rows` channels, with a narrower kernel for
/// outputs at most `conv3_narrow_pixels` wide, so the 8x8 maps waste no accumulators.
fn conv3x3(gpu: &Gpu, r: Register, params: &Params, s: &Conv2dShape, buffers: &[Window]) -> Dispatch {
    let (dh, dw) = params.dst_hw;
    let t = &r.tiles;
    let (entry, lines, pixels) = if dw <= t.conv3_narrow_pixels {
        (CONV_3X3_S1_NARROW, t.conv3_narrow_lines, t.conv3_narrow_pixels)
    } else {
        (CONV_3X3_S1, t.conv3_lines, t.conv3_pixels)
    };
    let threads = params.n as u64 * dh.div_ceil(lines) as u64 * dw.div_ceil(pixels) as u64;
    let [x, y, _] = grid(threads, t.conv3_workgroup);
    let blocks = params.m_rows.div_ceil(t.conv3_rows);
    assert!(blocks <= 65_535, "conv2d: {blocks} channel blocks exceed the workgroup grid");
    gpu.dispatch(&r.kernel(entry), &params.words(s), buffers, [x, y, blocks])
}

/// A register-family product (forward, or the input gradient of a 1x1 or square stride-1
/// conv) described by `params`, whose rows are the destination channels, or any other conv
/// through `general_entry`; `buffers` as the entry point binds them (five for the fused
/// BN-ReLU form).
fn register_product(
    gpu: &Gpu,
    r: Register,
    s: &Conv2dShape,
    params: &Params,
    buffers: &[Window],
    general_entry: Entry,
) -> Dispatch {
    if s.is_pointwise() {
        // `gemm_pixels` pixels per invocation, `gemm_rows` destination channels per block along z.
        let (dh, dw) = params.dst_hw;
        let pixels = params.n as u64 * dh as u64 * dw as u64;
        let groups =
            grid_with_blocks(pixels.div_ceil(r.tiles.gemm_pixels as u64), params.m_rows.div_ceil(r.tiles.gemm_rows));
        let entry = if buffers.len() == 5 { GEMM_1X1_BN_RELU } else { GEMM_1X1 };
        return gpu.dispatch(&r.kernel(entry), &params.words(s), buffers, groups);
    }
    if s.is_3x3_stride_1() {
        return conv3x3(gpu, r, params, s, buffers);
    }
    general(gpu, r, general_entry, s, params, buffers)
}

/// The register family's general direct kernels (a strided conv, or a kernel that is not 3x3
/// or 1x1): one invocation per destination pixel and [`GENERAL_ROWS`] channels.
fn general(gpu: &Gpu, r: Register, entry: Entry, s: &Conv2dShape, params: &Params, buffers: &[Window]) -> Dispatch {
    let (dh, dw) = params.dst_hw;
    let groups = grid_with_blocks(s.n as u64 * dh as u64 * dw as u64, params.m_rows.div_ceil(GENERAL_ROWS));
    gpu.dispatch(&r.kernel(entry), &params.words(s), buffers, groups)
}

/// Which kernel family, and which candidate of it, serves a conv launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// A register-tiled candidate of [`super::wgsl`] (for CPU drivers such as lavapipe).
    Register(ConvTiles),
    /// A workgroup-tiled candidate of [`super::workgroup`] (for GPUs).
    Workgroup(ConvTile),
}

impl ConvKernel {
    /// The register family's default candidate ([`REGISTER_TILES`]`[0]`).
    pub const REGISTER: ConvKernel = ConvKernel::Register(REGISTER_TILES[0]);

    /// The name tuning tables and caches use: the candidate's (`register` for the register
    /// family's default).
    pub fn name(&self) -> &'static str {
        match self {
            ConvKernel::Register(t) => t.name,
            ConvKernel::Workgroup(t) => t.name,
        }
    }

    /// The family the candidate belongs to.
    pub fn family(&self) -> Family {
        match self {
            ConvKernel::Register(_) => Family::Register,
            ConvKernel::Workgroup(_) => Family::Workgroup,
        }
    }

    /// The candidate of `direction` named `name` (see [`ConvKernel::name`]), if one is listed.
    pub fn by_name(direction: ConvDirection, name: &str) -> Option<ConvKernel> {
        direction.kernels().into_iter().find(|k| k.name() == name)
    }

    /// How many roundings at most each output of `s` passes through with this candidate (see
    /// [`RoundingDepth`]), a workgroup candidate's weight gradient taking `splits` splits of
    /// the pixels (see [`workgroup::weight_grad_splits`]; the register family ignores it).
    pub fn rounding_depth(&self, s: &Conv2dShape, splits: u32) -> RoundingDepth {
        match self {
            ConvKernel::Register(t) => s.register_rounding_depth(t),
            ConvKernel::Workgroup(t) => s.workgroup_rounding_depth(splits, t.depth),
        }
    }

    /// Whether this adapter's limits can run the candidate (see [`ConvTiles::fits`] and
    /// [`ConvTile::fits`]), and, for a candidate with subgroup weights, whether the device
    /// has subgroups ([`Gpu::has_subgroups`]).
    pub fn fits(&self, gpu: &Gpu) -> bool {
        match self {
            ConvKernel::Register(t) => t.fits(&gpu.limits) && (!t.subgroup_weights || gpu.has_subgroups()),
            ConvKernel::Workgroup(t) => t.fits(&gpu.limits),
        }
    }
}

/// The three directions of a conv, each tuned on its own. The fused BN-ReLU forms share their
/// direction's choice, so that a fused and an unfused launch of one conv sum in the same
/// order and the memory modes stay bit-identical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvDirection {
    Forward,
    BackwardInput,
    BackwardWeight,
}

impl ConvDirection {
    /// The workgroup candidates of this direction.
    pub fn workgroup_tiles(self) -> &'static [ConvTile] {
        match self {
            ConvDirection::Forward | ConvDirection::BackwardInput => &workgroup::GEMM_TILES,
            ConvDirection::BackwardWeight => &workgroup::WEIGHT_GRAD_TILES,
        }
    }

    /// Every candidate of this direction: the register family's ([`REGISTER_TILES`]), then
    /// the workgroup family's ([`ConvDirection::workgroup_tiles`]).
    pub fn kernels(self) -> Vec<ConvKernel> {
        let register = REGISTER_TILES.iter().map(|t| ConvKernel::Register(*t));
        register.chain(self.workgroup_tiles().iter().map(|t| ConvKernel::Workgroup(*t))).collect()
    }

    /// Whether the workgroup family serves this direction of `s`: everything but the input
    /// gradient of a strided or non-square conv wider than 1x1 (not a stride-1 conv with one
    /// padding), which stays on the register family's general direct kernel.
    pub fn workgroup_serves(self, s: &Conv2dShape) -> bool {
        self != ConvDirection::BackwardInput || s.is_pointwise() || (s.stride == 1 && s.kh == s.kw)
    }

    /// The kernel `family` launches for this direction untuned: the register family's
    /// default for this adapter ([`register_default`]), or the first workgroup candidate this adapter's limits allow (every listed one
    /// fits WebGPU's defaults, but a device may offer less), else the register default.
    pub fn default_kernel(self, gpu: &Gpu, family: Family) -> ConvKernel {
        let fitting = match family {
            Family::Register => None,
            Family::Workgroup => self.workgroup_tiles().iter().find(|t| t.fits(&gpu.limits)),
        };
        fitting.map_or(register_default(gpu), |t| ConvKernel::Workgroup(*t))
    }

    /// The key of `s` in a tuning table: the direction, the kernel geometry, the output
    /// channels and the map exactly, the input channels and the images rounded up to a power
    /// of two. DenseNet's bottlenecks have a new input width at every layer, and a shard's
    /// images move with the batch, while the best tile hardly moves with either; rounding them
    /// keeps tuning a DenseNet-BC-100 to a few dozen shapes.
    pub fn tuning_key(self, s: &Conv2dShape) -> String {
        let dir = match self {
            ConvDirection::Forward => "forward",
            ConvDirection::BackwardInput => "backward_input",
            ConvDirection::BackwardWeight => "backward_weight",
        };
        let (kh, kw, stride, pad) = (s.kh, s.kw, s.stride, s.pad);
        let (c_in, c_out, n, h, w) = (s.c_in.next_power_of_two(), s.c_out, s.n.next_power_of_two(), s.h, s.w);
        format!("conv {dir} {kh}x{kw}/{stride}p{pad} in<={c_in} out {c_out} images<={n} {h}x{w}")
    }
}

/// The register family's default candidate on `gpu`: `register-subgroup` where the device
/// has subgroups ([`Gpu::has_subgroups`]), else `register` ([`ConvKernel::REGISTER`]). Both
/// compute the same bits (the subgroup one loads the same weights, fewer times); on lavapipe
/// the subgroup one measured 1.7-1.9x faster on DenseNet's products (BENCHMARKS.md,
/// "Weights once per subgroup").
pub fn register_default(gpu: &Gpu) -> ConvKernel {
    let subgroup = REGISTER_TILES.iter().find(|t| t.subgroup_weights).map(|t| ConvKernel::Register(*t));
    subgroup.filter(|k| k.fits(gpu)).unwrap_or(ConvKernel::REGISTER)
}

/// The kernel densegpu launches for `direction` of `s` on `gpu`: the family the GPU is forced
/// to (see [`Gpu::force_family`]) with its default candidate, else the tuned choice for this
/// shape (see [`crate::tune`]), else the device type's default family. A direction the
/// workgroup family does not serve (see [`ConvDirection::workgroup_serves`]) is not tuned and
/// takes the register family's default.
pub fn choose(gpu: &Gpu, direction: ConvDirection, s: &Conv2dShape) -> ConvKernel {
    if !direction.workgroup_serves(s) {
        return register_default(gpu);
    }
    if let Some(family) = gpu.forced_family() {
        return direction.default_kernel(gpu, family);
    }
    let tuned = gpu.kernel_choice(&direction.tuning_key(s)).and_then(|name| ConvKernel::by_name(direction, &name));
    match tuned.filter(|k| k.fits(gpu)) {
        Some(k) => k,
        None => direction.default_kernel(gpu, gpu.default_family()),
    }
}

/// y = conv(x, w) with a chosen kernel; as [`conv2d_forward`].
pub fn forward_with(gpu: &Gpu, kernel: ConvKernel, s: &Conv2dShape, x: View, w: View, y: View) -> Dispatch {
    s.check();
    let (params, buffers) = (forward_params(s, x, w, y), [x.buffer, w.buffer, y.buffer]);
    match kernel {
        ConvKernel::Register(t) => register_product(gpu, Register::of(t), s, &params, &buffers, GENERAL_FORWARD),
        ConvKernel::Workgroup(t) => workgroup::product(gpu, t, s, &params, &buffers),
    }
}

/// y = conv(relu(batchnorm(x)), w) with a chosen kernel; as [`conv2d_forward_bnrelu`].
#[allow(clippy::too_many_arguments)]
pub fn forward_bnrelu_with(
    gpu: &Gpu,
    kernel: ConvKernel,
    s: &Conv2dShape,
    x: View,
    stats: View,
    affine: View,
    w: View,
    y: View,
) -> Dispatch {
    s.check();
    assert!(s.is_pointwise(), "conv2d: the fused BN-ReLU forward serves only 1x1 convs, not {s:?}");
    let params = Params { bn_offsets: (stats.offset, affine.offset), ..forward_params(s, x, w, y) };
    let buffers = [x.buffer, w.buffer, y.buffer, stats.buffer, affine.buffer];
    match kernel {
        ConvKernel::Register(t) => register_product(gpu, Register::of(t), s, &params, &buffers, GENERAL_FORWARD),
        ConvKernel::Workgroup(t) => workgroup::product(gpu, t, s, &params, &buffers),
    }
}

/// The input gradient of input channels `[first, first + count)` with a chosen kernel; as
/// [`conv2d_backward_input_channels`]. The workgroup family does not serve the input gradient
/// of a strided or non-square conv wider than 1x1 (see [`ConvDirection::workgroup_serves`]);
/// such a launch takes the register family's general kernel whatever `kernel` says.
#[allow(clippy::too_many_arguments)]
pub fn backward_input_with(
    gpu: &Gpu,
    kernel: ConvKernel,
    s: &Conv2dShape,
    channels: (u32, u32),
    dy: View,
    w: View,
    dx: View,
    accumulate: bool,
) -> Dispatch {
    let buffers = [dy.buffer, w.buffer, dx.buffer];
    let register = match kernel {
        ConvKernel::Workgroup(t) if ConvDirection::BackwardInput.workgroup_serves(s) => {
            let params = backward_input_params(s, channels, dy, w, dx, accumulate, !s.is_pointwise());
            return workgroup::product(gpu, t, s, &params, &buffers);
        }
        ConvKernel::Workgroup(_) => Register::of(REGISTER_TILES[0]),
        ConvKernel::Register(t) => Register::of(t),
    };
    let params = backward_input_params(s, channels, dy, w, dx, accumulate, s.is_3x3_stride_1());
    register_product(gpu, register, s, &params, &buffers, GENERAL_BACKWARD_INPUT)
}

/// dw (+)= the weight gradient with a chosen kernel, optionally of relu(batchnorm(x)) (`bn`:
/// the statistics and affine parameters); as [`conv2d_backward_weight`] and
/// [`conv2d_backward_weight_bnrelu`]. A workgroup candidate splits the pixels when `scratch`
/// has room for the partial sums (see [`workgroup::weight_grad_splits`]), and then returns
/// two dispatches: the partial products and their fixed-order sum.
#[allow(clippy::too_many_arguments)]
pub fn backward_weight_with(
    gpu: &Gpu,
    kernel: ConvKernel,
    s: &Conv2dShape,
    x: View,
    bn: Option<(View, View)>,
    dy: View,
    dw: View,
    scratch: Option<View>,
    accumulate: bool,
) -> Vec<Dispatch> {
    s.check();
    let mut params = weight_grad_params(s, x, dy, dw, accumulate);
    let mut buffers = vec![x.buffer, dy.buffer, dw.buffer];
    if let Some((stats, affine)) = bn {
        assert!(s.is_pointwise(), "conv2d: the fused BN-ReLU weight gradient serves only 1x1 convs, not {s:?}");
        params.bn_offsets = (stats.offset, affine.offset);
        buffers.extend([stats.buffer, affine.buffer]);
    }
    match kernel {
        ConvKernel::Register(t) => vec![register_weight_grad(gpu, Register::of(t), s, &params, &buffers)],
        ConvKernel::Workgroup(t) => workgroup::weight_grad(gpu, t, s, &params, &buffers, scratch),
    }
}

/// Records one conv launch of a schedule.
pub(crate) fn record(launch: &ConvLaunch, r: &mut Recorder) {
    // Once per batch shard, over its images; a weight gradient sums over the batch, so every
    // shard after the first adds to it.
    r.each_shard(|r, shard| record_shard(&launch.with_batch(shard.images, shard.index > 0), r));
}

fn record_shard(launch: &ConvLaunch, r: &mut Recorder) {
    let gpu = r.gpu;
    let d = match *launch {
        ConvLaunch::Forward { shape, x, w, y } => {
            let kernel = choose(gpu, ConvDirection::Forward, &shape);
            forward_with(gpu, kernel, &shape, r.view(x), r.view(w), r.view(y))
        }
        ConvLaunch::ForwardBnRelu { shape, x, stats, affine, w, y } => {
            let kernel = choose(gpu, ConvDirection::Forward, &shape);
            let (x, stats, affine) = (r.view(x), r.view(stats), r.view(affine));
            forward_bnrelu_with(gpu, kernel, &shape, x, stats, affine, r.view(w), r.view(y))
        }
        ConvLaunch::BackwardInput { shape, channels, dy, w, dx, accumulate } => {
            let kernel = choose(gpu, ConvDirection::BackwardInput, &shape);
            backward_input_with(gpu, kernel, &shape, channels, r.view(dy), r.view(w), r.view(dx), accumulate)
        }
        ConvLaunch::BackwardWeight { shape, x, dy, dw, accumulate } => {
            let kernel = choose(gpu, ConvDirection::BackwardWeight, &shape);
            let (x, dy, dw, scratch) = (r.view(x), r.view(dy), r.view(dw), r.split_scratch());
            for d in backward_weight_with(gpu, kernel, &shape, x, None, dy, dw, scratch, accumulate) {
                r.push(d);
            }
            return;
        }
        ConvLaunch::BackwardWeightBnRelu { shape, x, stats, affine, dy, dw, accumulate } => {
            let kernel = choose(gpu, ConvDirection::BackwardWeight, &shape);
            let bn = Some((r.view(stats), r.view(affine)));
            let (x, dy, dw, scratch) = (r.view(x), r.view(dy), r.view(dw), r.split_scratch());
            for d in backward_weight_with(gpu, kernel, &shape, x, bn, dy, dw, scratch, accumulate) {
                r.push(d);
            }
            return;
        }
    };
    r.push(d);
}
