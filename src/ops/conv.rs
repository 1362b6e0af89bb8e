//! 2-D convolution without bias (DenseNet convs have none), forward and both backwards.
//!
//! Activations are (C, N, H, W), weights OIHW. Each direction picks the fastest kernel that
//! fits the shape: a matrix-product kernel for 1x1 stride-1 unpadded convs (the bottleneck and
//! transition layers), a row-segment kernel for 3x3 stride-1 convs (the growth layers and the
//! CIFAR stem), and a general direct kernel for everything else (e.g. the ImageNet 7x7 stem).
//! None needs scratch memory: the weight gradient reduces inside each workgroup.

use super::{flag, grid, shaders, Dispatch, Gpu, Kernel, View, Window};

/// The geometry of one convolution. Padding is symmetric and zero-filled; the kernel, stride
/// and padding are the same along both axes except for the kernel's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub n: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
}

impl Conv2dShape {
    pub fn out_h(&self) -> u32 {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> u32 {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    pub fn input_elems(&self) -> u32 {
        self.c_in * self.n * self.h * self.w
    }
    pub fn output_elems(&self) -> u32 {
        self.c_out * self.n * self.out_h() * self.out_w()
    }
    pub fn weight_elems(&self) -> u32 {
        self.c_out * self.c_in * self.kh * self.kw
    }
    /// Multiply-adds of the forward pass, counting padded taps too (as FLOP counts usually do).
    pub fn macs(&self) -> u64 {
        self.output_elems() as u64 * (self.c_in * self.kh * self.kw) as u64
    }
    /// 2 x multiply-adds. Each backward does the same number of multiply-adds as the forward.
    pub fn flops_forward(&self) -> u64 {
        2 * self.macs()
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// The 3x3 kernels express backward input as a 3x3 conv with padding 2 - pad.
    fn is_3x3_stride_1(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad <= 2
    }
    fn check(&self) {
        assert!(
            self.stride >= 1 && self.h + 2 * self.pad >= self.kh && self.w + 2 * self.pad >= self.kw,
            "conv2d: invalid shape {self:?}"
        );
    }
}

const fn kernel(entry: &'static str) -> Kernel {
    Kernel { shader: &shaders::CONV, entry, buffers: 3 }
}
const GEMM_1X1: Kernel = kernel("conv1x1_gemm");
const GEMM_1X1_BN_RELU: Kernel = Kernel { shader: &shaders::CONV, entry: "conv1x1_gemm_bnrelu", buffers: 5 };
const CONV_3X3_S1: Kernel = kernel("conv3x3_s1");
const CONV_3X3_S1_NARROW: Kernel = kernel("conv3x3_s1_narrow");
const GENERAL_FORWARD: Kernel = kernel("conv_general_forward");
const GENERAL_BACKWARD_INPUT: Kernel = kernel("conv_general_backward_input");
const WEIGHT_GRAD_1X1: Kernel = kernel("conv1x1_weight_grad");
const WEIGHT_GRAD_1X1_BN_RELU: Kernel =
    Kernel { shader: &shaders::CONV, entry: "conv1x1_weight_grad_bnrelu", buffers: 5 };
const WEIGHT_GRAD_3X3_S1: Kernel = kernel("conv3x3_s1_weight_grad");
const GENERAL_WEIGHT_GRAD: Kernel = kernel("conv_general_weight_grad");

// Register tiles of the kernels in shaders/conv.wgsl: (rows, pixels) per invocation, or for the
// weight gradients (output channels, input channels) per workgroup. Keep in step with the shader.
const GEMM_ROWS: u32 = 16;
const GEMM_PIXELS: u32 = 16;
const CONV3_ROWS: u32 = 12;
const CONV3_PIXELS: u32 = 16;
const CONV3_LINES: u32 = 4;
const CONV3_NARROW_LINES: u32 = 8;
/// The narrow 3x3 kernel's segment width: it serves outputs at most this wide (the 8x8 maps).
const CONV3_NARROW_PIXELS: u32 = 8;
const CONV3_WORKGROUP: u32 = 16;
const WGRAD1_ROWS: u32 = 16;
const WGRAD1_COLS: u32 = 16;
const WGRAD3_ROWS: u32 = 4;
const GENERAL_ROWS: u32 = 4;
const WORKGROUP: u32 = 64;

/// The `Params` block of shaders/conv.wgsl, in field order.
struct Params {
    n: u32,
    m_rows: u32,
    k_rows: u32,
    pad: u32,
    src_hw: (u32, u32),
    dst_hw: (u32, u32),
    accumulate: bool,
    src_off: u32,
    wt_off: u32,
    dst_off: u32,
    /// Weight strides for (m, k, i, j); they wrap, so a negative stride is `0u32.wrapping_sub(s)`.
    strides: [u32; 4],
    /// (stats, affine) element offsets; only the fused BN-ReLU kernels read them.
    bn_offsets: (u32, u32),
}

impl Params {
    fn words(&self, s: &Conv2dShape) -> Vec<u32> {
        vec![
            self.n,
            self.m_rows,
            self.k_rows,
            self.pad,
            self.src_hw.0,
            self.src_hw.1,
            self.dst_hw.0,
            self.dst_hw.1,
            s.kh,
            s.kw,
            s.stride,
            flag(self.accumulate),
            self.src_off,
            self.wt_off,
            self.dst_off,
            self.strides[0],
            self.strides[1],
            self.strides[2],
            self.strides[3],
            self.bn_offsets.0,
            self.bn_offsets.1,
        ]
    }
}

/// The rounding depth of each direction's kernel for this shape: the most roundings any one
/// product passes through on its way into an output (its multiply, its adds into a register
/// accumulator, and the workgroup combine). A kernel whose depth is `d` computes every output
/// within Higham's bound `γ_d · Σ|terms|` of the exact sum ("Accuracy and Stability of
/// Numerical Algorithms", 2nd ed., §3.1), which is what the op tests and the self-test assert.
/// The figures follow the loops of shaders/conv.wgsl and must change with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundingDepth {
    pub forward: u64,
    pub backward_input: u64,
    pub backward_weight: u64,
}

impl Conv2dShape {
    /// See [`RoundingDepth`].
    pub fn rounding_depth(&self) -> RoundingDepth {
        let taps = (self.kh * self.kw) as u64;
        // Forward and input gradient: the 3x3 kernel sums each channel's nine taps on their own
        // and adds them to the accumulator (k_rows + 9); the GEMM and the general kernel keep
        // one serial chain of fmas over k_rows x taps.
        let chain = |k_rows: u32| {
            if self.is_3x3_stride_1() {
                k_rows as u64 + taps
            } else {
                k_rows as u64 * taps
            }
        };
        let (forward, backward_input) = (chain(self.c_in), chain(self.c_out));
        let lanes = WORKGROUP as u64;
        let pixels = (self.n * self.out_h() * self.out_w()) as u64;
        let backward_weight = if self.is_pointwise() {
            // Each lane of a group of 8 walks ceil(pixels / 128) steps of two nested fmas, then
            // the 64 lane partials are added in order.
            2 * pixels.div_ceil(128) + lanes
        } else if self.kh == 3 && self.kw == 3 && self.stride == 1 {
            // Each lane adds ceil(items / 64) row segments of 8 pixels (two 4-wide dot products
            // and their sum: at most 4 roundings inside a segment), then the 64-lane combine.
            let items = (self.n * self.out_h() * self.out_w().div_ceil(8)) as u64;
            items.div_ceil(lanes) + 4 + lanes
        } else {
            // One fma per output pixel of the lane's rows, then the 64-lane combine.
            (self.n * self.out_h()).div_ceil(WORKGROUP) as u64 * self.out_w() as u64 + lanes
        };
        RoundingDepth { forward, backward_input, backward_weight }
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

/// y = conv(x, w), overwriting y. x holds `s.c_in` channels (a channel prefix of a larger
/// tensor is fine), y holds `s.c_out` channels (it may be a channel slice of a larger tensor).
pub fn conv2d_forward(gpu: &Gpu, s: &Conv2dShape, x: View, w: View, y: View) -> Dispatch {
    s.check();
    launch(gpu, s, &forward_params(s, x, w, y), [x.buffer, w.buffer, y.buffer])
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
    s.check();
    assert!(s.is_pointwise(), "conv2d: the fused BN-ReLU forward serves only 1x1 convs, not {s:?}");
    let params = Params { bn_offsets: (stats.offset, affine.offset), ..forward_params(s, x, w, y) };
    let buffers = [x.buffer, w.buffer, y.buffer, stats.buffer, affine.buffer];
    gpu.dispatch(&GEMM_1X1_BN_RELU, &params.words(s), &buffers, pointwise_groups(&params))
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
    (first, count): (u32, u32),
    dy: View,
    w: View,
    dx: View,
    accumulate: bool,
) -> Dispatch {
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
    };
    let buffers = [dy.buffer, w.buffer, dx.buffer];
    if s.is_pointwise() {
        return launch(gpu, s, &params, buffers);
    }
    if s.is_3x3_stride_1() {
        // A 3x3 stride-1 conv of dy with the kernel flipped in both axes and padding 2 - pad;
        // the flip is a start at tap (2, 2) and negative tap strides.
        params.pad = 2 - s.pad;
        params.wt_off += 2 * row_stride + 2;
        params.strides[2] = 0u32.wrapping_sub(row_stride);
        params.strides[3] = u32::MAX;
        return conv3x3(gpu, &params, s, buffers);
    }
    let groups = grid_with_blocks((s.n * s.h * s.w) as u64, count.div_ceil(GENERAL_ROWS));
    gpu.dispatch(&GENERAL_BACKWARD_INPUT, &params.words(s), &buffers, groups)
}

/// dw (+)= the gradient with respect to the weights, summed over the batch.
pub fn conv2d_backward_weight(gpu: &Gpu, s: &Conv2dShape, x: View, dy: View, dw: View, accumulate: bool) -> Dispatch {
    s.check();
    let words = weight_grad_params(s, x, dy, dw, accumulate).words(s);
    let buffers = [x.buffer, dy.buffer, dw.buffer];
    if s.is_pointwise() {
        return gpu.dispatch(&WEIGHT_GRAD_1X1, &words, &buffers, pointwise_weight_grad_groups(s));
    }
    let in_range = |groups: u32| {
        assert!(groups <= 65_535, "conv2d: {groups} weight blocks exceed the workgroup grid");
        groups
    };
    if s.kh == 3 && s.kw == 3 && s.stride == 1 {
        let groups = [in_range(s.c_in), 1, in_range(s.c_out.div_ceil(WGRAD3_ROWS))];
        return gpu.dispatch(&WEIGHT_GRAD_3X3_S1, &words, &buffers, groups);
    }
    // One workgroup per weight; grid() folds the count into two dimensions.
    let groups = grid(s.weight_elems() as u64 * WORKGROUP as u64, WORKGROUP);
    gpu.dispatch(&GENERAL_WEIGHT_GRAD, &words, &buffers, groups)
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
    s.check();
    assert!(s.is_pointwise(), "conv2d: the fused BN-ReLU weight gradient serves only 1x1 convs, not {s:?}");
    let params = Params { bn_offsets: (stats.offset, affine.offset), ..weight_grad_params(s, x, dy, dw, accumulate) };
    let buffers = [x.buffer, dy.buffer, dw.buffer, stats.buffer, affine.buffer];
    gpu.dispatch(&WEIGHT_GRAD_1X1_BN_RELU, &params.words(s), &buffers, pointwise_weight_grad_groups(s))
}

/// The parameter words every weight-gradient kernel reads: x is the source, dy the "weights"
/// operand, dw the destination.
fn weight_grad_params(s: &Conv2dShape, x: View, dy: View, dw: View, accumulate: bool) -> Params {
    // The forward's geometry, with dy in the weights' place; these kernels use no weight strides.
    Params { accumulate, strides: [0; 4], ..forward_params(s, x, dy, dw) }
}

/// One workgroup per WGRAD1_COLS x WGRAD1_ROWS block of a 1x1 conv's weights.
fn pointwise_weight_grad_groups(s: &Conv2dShape) -> [u32; 3] {
    let (blocks_k, blocks_m) = (s.c_in.div_ceil(WGRAD1_COLS), s.c_out.div_ceil(WGRAD1_ROWS));
    assert!(blocks_k <= 65_535 && blocks_m <= 65_535, "conv2d: {s:?} has more weight blocks than the grid holds");
    [blocks_k, 1, blocks_m]
}

/// A 3x3 stride-1 conv described by `params` (rows = destination channels): one invocation per
/// block of lines x pixels of one image and CONV3_ROWS channels, with a narrower kernel for
/// outputs at most CONV3_NARROW_PIXELS wide, so the 8x8 maps waste no accumulators.
fn conv3x3(gpu: &Gpu, params: &Params, s: &Conv2dShape, buffers: [Window; 3]) -> Dispatch {
    let (dh, dw) = params.dst_hw;
    let (kernel, lines, pixels) = if dw <= CONV3_NARROW_PIXELS {
        (&CONV_3X3_S1_NARROW, CONV3_NARROW_LINES, CONV3_NARROW_PIXELS)
    } else {
        (&CONV_3X3_S1, CONV3_LINES, CONV3_PIXELS)
    };
    let threads = params.n as u64 * dh.div_ceil(lines) as u64 * dw.div_ceil(pixels) as u64;
    let [x, y, _] = grid(threads, CONV3_WORKGROUP);
    let blocks = params.m_rows.div_ceil(CONV3_ROWS);
    assert!(blocks <= 65_535, "conv2d: {blocks} channel blocks exceed the workgroup grid");
    gpu.dispatch(kernel, &params.words(s), &buffers, [x, y, blocks])
}

/// The 1x1 matrix-product kernels' grid: GEMM_PIXELS pixels per invocation, GEMM_ROWS
/// destination channels per block along z.
fn pointwise_groups(params: &Params) -> [u32; 3] {
    let (dh, dw) = params.dst_hw;
    let pixels = params.n as u64 * dh as u64 * dw as u64;
    grid_with_blocks(pixels.div_ceil(GEMM_PIXELS as u64), params.m_rows.div_ceil(GEMM_ROWS))
}

/// Forward, or backward input of a 1x1 conv: picks the kernel for `params` (whose rows are the
/// destination channels) by the shape.
fn launch(gpu: &Gpu, s: &Conv2dShape, params: &Params, buffers: [Window; 3]) -> Dispatch {
    let words = params.words(s);
    let (dh, dw) = params.dst_hw;
    if s.is_pointwise() {
        return gpu.dispatch(&GEMM_1X1, &words, &buffers, pointwise_groups(params));
    }
    if s.is_3x3_stride_1() {
        return conv3x3(gpu, params, s, buffers);
    }
    let groups = grid_with_blocks(s.n as u64 * dh as u64 * dw as u64, params.m_rows.div_ceil(GENERAL_ROWS));
    gpu.dispatch(&GENERAL_FORWARD, &words, &buffers, groups)
}
