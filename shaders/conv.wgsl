// 2-D convolution without bias, forward and both backwards.
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> wt: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// Writes one finished output: overwrite, or add to what is there.
fn put(i: u32, v: f32) {
    if (p.accumulate != 0u) {
        dst[i] = dst[i] + v;
    } else {
        dst[i] = v;
    }
}

// 1x1, stride 1, no padding: a matrix product dst[m, q] = sum_k A(m, k) src[k, q] over the
// N*H*W pixels q. Each invocation owns 16 rows x 16 consecutive pixels; the grid's z picks the
// row block. Out-of-range rows and pixels load clamped (valid) addresses and are not stored.
@compute @workgroup_size(64)
fn conv1x1_gemm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
                @builtin(workgroup_id) wg: vec3<u32>) {
    let pixels = p.n * p.src_h * p.src_w;
    let first = flat_id(gid, groups, 64u) * 16u;
    if (first >= pixels) { return; }
    let m0 = wg.z * 16u;
    let last = pixels - 1u;
    let q0 = min(first + 0u, last);
    let q1 = min(first + 1u, last);
    let q2 = min(first + 2u, last);
    let q3 = min(first + 3u, last);
    let q4 = min(first + 4u, last);
    let q5 = min(first + 5u, last);
    let q6 = min(first + 6u, last);
    let q7 = min(first + 7u, last);
    let q8 = min(first + 8u, last);
    let q9 = min(first + 9u, last);
    let q10 = min(first + 10u, last);
    let q11 = min(first + 11u, last);
    let q12 = min(first + 12u, last);
    let q13 = min(first + 13u, last);
    let q14 = min(first + 14u, last);
    let q15 = min(first + 15u, last);
    let wr0 = p.wt_off + min(m0 + 0u, p.m_rows - 1u) * p.a_m;
    let wr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * p.a_m;
    let wr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * p.a_m;
    let wr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * p.a_m;
    let wr4 = p.wt_off + min(m0 + 4u, p.m_rows - 1u) * p.a_m;
    let wr5 = p.wt_off + min(m0 + 5u, p.m_rows - 1u) * p.a_m;
    let wr6 = p.wt_off + min(m0 + 6u, p.m_rows - 1u) * p.a_m;
    let wr7 = p.wt_off + min(m0 + 7u, p.m_rows - 1u) * p.a_m;
    let wr8 = p.wt_off + min(m0 + 8u, p.m_rows - 1u) * p.a_m;
    let wr9 = p.wt_off + min(m0 + 9u, p.m_rows - 1u) * p.a_m;
    let wr10 = p.wt_off + min(m0 + 10u, p.m_rows - 1u) * p.a_m;
    let wr11 = p.wt_off + min(m0 + 11u, p.m_rows - 1u) * p.a_m;
    let wr12 = p.wt_off + min(m0 + 12u, p.m_rows - 1u) * p.a_m;
    let wr13 = p.wt_off + min(m0 + 13u, p.m_rows - 1u) * p.a_m;
    let wr14 = p.wt_off + min(m0 + 14u, p.m_rows - 1u) * p.a_m;
    let wr15 = p.wt_off + min(m0 + 15u, p.m_rows - 1u) * p.a_m;
    var acc0_0 = vec4<f32>();
    var acc0_1 = vec4<f32>();
    var acc0_2 = vec4<f32>();
    var acc0_3 = vec4<f32>();
    var acc1_0 = vec4<f32>();
    var acc1_1 = vec4<f32>();
    var acc1_2 = vec4<f32>();
    var acc1_3 = vec4<f32>();
    var acc2_0 = vec4<f32>();
    var acc2_1 = vec4<f32>();
    var acc2_2 = vec4<f32>();
    var acc2_3 = vec4<f32>();
    var acc3_0 = vec4<f32>();
    var acc3_1 = vec4<f32>();
    var acc3_2 = vec4<f32>();
    var acc3_3 = vec4<f32>();
    var acc4_0 = vec4<f32>();
    var acc4_1 = vec4<f32>();
    var acc4_2 = vec4<f32>();
    var acc4_3 = vec4<f32>();
    var acc5_0 = vec4<f32>();
    var acc5_1 = vec4<f32>();
    var acc5_2 = vec4<f32>();
    var acc5_3 = vec4<f32>();
    var acc6_0 = vec4<f32>();
    var acc6_1 = vec4<f32>();
    var acc6_2 = vec4<f32>();
    var acc6_3 = vec4<f32>();
    var acc7_0 = vec4<f32>();
    var acc7_1 = vec4<f32>();
    var acc7_2 = vec4<f32>();
    var acc7_3 = vec4<f32>();
    var acc8_0 = vec4<f32>();
    var acc8_1 = vec4<f32>();
    var acc8_2 = vec4<f32>();
    var acc8_3 = vec4<f32>();
    var acc9_0 = vec4<f32>();
    var acc9_1 = vec4<f32>();
    var acc9_2 = vec4<f32>();
    var acc9_3 = vec4<f32>();
    var acc10_0 = vec4<f32>();
    var acc10_1 = vec4<f32>();
    var acc10_2 = vec4<f32>();
    var acc10_3 = vec4<f32>();
    var acc11_0 = vec4<f32>();
    var acc11_1 = vec4<f32>();
    var acc11_2 = vec4<f32>();
    var acc11_3 = vec4<f32>();
    var acc12_0 = vec4<f32>();
    var acc12_1 = vec4<f32>();
    var acc12_2 = vec4<f32>();
    var acc12_3 = vec4<f32>();
    var acc13_0 = vec4<f32>();
    var acc13_1 = vec4<f32>();
    var acc13_2 = vec4<f32>();
    var acc13_3 = vec4<f32>();
    var acc14_0 = vec4<f32>();
    var acc14_1 = vec4<f32>();
    var acc14_2 = vec4<f32>();
    var acc14_3 = vec4<f32>();
    var acc15_0 = vec4<f32>();
    var acc15_1 = vec4<f32>();
    var acc15_2 = vec4<f32>();
    var acc15_3 = vec4<f32>();
    var s = p.src_off;
    var wk = 0u;
    for (var k = 0u; k < p.k_rows; k++) {
        let b0 = vec4<f32>(src[s + q0], src[s + q1], src[s + q2], src[s + q3]);
        let b1 = vec4<f32>(src[s + q4], src[s + q5], src[s + q6], src[s + q7]);
        let b2 = vec4<f32>(src[s + q8], src[s + q9], src[s + q10], src[s + q11]);
        let b3 = vec4<f32>(src[s + q12], src[s + q13], src[s + q14], src[s + q15]);
        let a0 = wt[wr0 + wk];
        acc0_0 = fma(vec4<f32>(a0), b0, acc0_0);
        acc0_1 = fma(vec4<f32>(a0), b1, acc0_1);
        acc0_2 = fma(vec4<f32>(a0), b2, acc0_2);
        acc0_3 = fma(vec4<f32>(a0), b3, acc0_3);
        let a1 = wt[wr1 + wk];
        acc1_0 = fma(vec4<f32>(a1), b0, acc1_0);
        acc1_1 = fma(vec4<f32>(a1), b1, acc1_1);
        acc1_2 = fma(vec4<f32>(a1), b2, acc1_2);
        acc1_3 = fma(vec4<f32>(a1), b3, acc1_3);
        let a2 = wt[wr2 + wk];
        acc2_0 = fma(vec4<f32>(a2), b0, acc2_0);
        acc2_1 = fma(vec4<f32>(a2), b1, acc2_1);
        acc2_2 = fma(vec4<f32>(a2), b2, acc2_2);
        acc2_3 = fma(vec4<f32>(a2), b3, acc2_3);
        let a3 = wt[wr3 + wk];
        acc3_0 = fma(vec4<f32>(a3), b0, acc3_0);
        acc3_1 = fma(vec4<f32>(a3), b1, acc3_1);
        acc3_2 = fma(vec4<f32>(a3), b2, acc3_2);
        acc3_3 = fma(vec4<f32>(a3), b3, acc3_3);
        let a4 = wt[wr4 + wk];
        acc4_0 = fma(vec4<f32>(a4), b0, acc4_0);
        acc4_1 = fma(vec4<f32>(a4), b1, acc4_1);
        acc4_2 = fma(vec4<f32>(a4), b2, acc4_2);
        acc4_3 = fma(vec4<f32>(a4), b3, acc4_3);
        let a5 = wt[wr5 + wk];
        acc5_0 = fma(vec4<f32>(a5), b0, acc5_0);
        acc5_1 = fma(vec4<f32>(a5), b1, acc5_1);
        acc5_2 = fma(vec4<f32>(a5), b2, acc5_2);
        acc5_3 = fma(vec4<f32>(a5), b3, acc5_3);
        let a6 = wt[wr6 + wk];
        acc6_0 = fma(vec4<f32>(a6), b0, acc6_0);
        acc6_1 = fma(vec4<f32>(a6), b1, acc6_1);
        acc6_2 = fma(vec4<f32>(a6), b2, acc6_2);
        acc6_3 = fma(vec4<f32>(a6), b3, acc6_3);
        let a7 = wt[wr7 + wk];
        acc7_0 = fma(vec4<f32>(a7), b0, acc7_0);
        acc7_1 = fma(vec4<f32>(a7), b1, acc7_1);
        acc7_2 = fma(vec4<f32>(a7), b2, acc7_2);
        acc7_3 = fma(vec4<f32>(a7), b3, acc7_3);
        let a8 = wt[wr8 + wk];
        acc8_0 = fma(vec4<f32>(a8), b0, acc8_0);
        acc8_1 = fma(vec4<f32>(a8), b1, acc8_1);
        acc8_2 = fma(vec4<f32>(a8), b2, acc8_2);
        acc8_3 = fma(vec4<f32>(a8), b3, acc8_3);
        let a9 = wt[wr9 + wk];
        acc9_0 = fma(vec4<f32>(a9), b0, acc9_0);
        acc9_1 = fma(vec4<f32>(a9), b1, acc9_1);
        acc9_2 = fma(vec4<f32>(a9), b2, acc9_2);
        acc9_3 = fma(vec4<f32>(a9), b3, acc9_3);
        let a10 = wt[wr10 + wk];
        acc10_0 = fma(vec4<f32>(a10), b0, acc10_0);
        acc10_1 = fma(vec4<f32>(a10), b1, acc10_1);
        acc10_2 = fma(vec4<f32>(a10), b2, acc10_2);
        acc10_3 = fma(vec4<f32>(a10), b3, acc10_3);
        let a11 = wt[wr11 + wk];
        acc11_0 = fma(vec4<f32>(a11), b0, acc11_0);
        acc11_1 = fma(vec4<f32>(a11), b1, acc11_1);
        acc11_2 = fma(vec4<f32>(a11), b2, acc11_2);
        acc11_3 = fma(vec4<f32>(a11), b3, acc11_3);
        let a12 = wt[wr12 + wk];
        acc12_0 = fma(vec4<f32>(a12), b0, acc12_0);
        acc12_1 = fma(vec4<f32>(a12), b1, acc12_1);
        acc12_2 = fma(vec4<f32>(a12), b2, acc12_2);
        acc12_3 = fma(vec4<f32>(a12), b3, acc12_3);
        let a13 = wt[wr13 + wk];
        acc13_0 = fma(vec4<f32>(a13), b0, acc13_0);
        acc13_1 = fma(vec4<f32>(a13), b1, acc13_1);
        acc13_2 = fma(vec4<f32>(a13), b2, acc13_2);
        acc13_3 = fma(vec4<f32>(a13), b3, acc13_3);
        let a14 = wt[wr14 + wk];
        acc14_0 = fma(vec4<f32>(a14), b0, acc14_0);
        acc14_1 = fma(vec4<f32>(a14), b1, acc14_1);
        acc14_2 = fma(vec4<f32>(a14), b2, acc14_2);
        acc14_3 = fma(vec4<f32>(a14), b3, acc14_3);
        let a15 = wt[wr15 + wk];
        acc15_0 = fma(vec4<f32>(a15), b0, acc15_0);
        acc15_1 = fma(vec4<f32>(a15), b1, acc15_1);
        acc15_2 = fma(vec4<f32>(a15), b2, acc15_2);
        acc15_3 = fma(vec4<f32>(a15), b3, acc15_3);
        s += pixels;
        wk += p.a_k;
    }
    let full = first + 16u <= pixels;
    if (m0 + 0u < p.m_rows) {
        let o = p.dst_off + (m0 + 0u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc0_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc0_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc0_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc0_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc0_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc0_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc0_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc0_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc0_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc0_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc0_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc0_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc0_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc0_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc0_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc0_3[3]); }
    }
    if (m0 + 1u < p.m_rows) {
        let o = p.dst_off + (m0 + 1u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc1_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc1_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc1_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc1_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc1_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc1_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc1_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc1_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc1_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc1_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc1_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc1_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc1_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc1_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc1_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc1_3[3]); }
    }
    if (m0 + 2u < p.m_rows) {
        let o = p.dst_off + (m0 + 2u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc2_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc2_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc2_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc2_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc2_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc2_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc2_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc2_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc2_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc2_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc2_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc2_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc2_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc2_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc2_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc2_3[3]); }
    }
    if (m0 + 3u < p.m_rows) {
        let o = p.dst_off + (m0 + 3u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc3_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc3_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc3_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc3_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc3_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc3_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc3_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc3_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc3_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc3_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc3_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc3_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc3_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc3_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc3_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc3_3[3]); }
    }
    if (m0 + 4u < p.m_rows) {
        let o = p.dst_off + (m0 + 4u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc4_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc4_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc4_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc4_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc4_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc4_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc4_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc4_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc4_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc4_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc4_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc4_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc4_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc4_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc4_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc4_3[3]); }
    }
    if (m0 + 5u < p.m_rows) {
        let o = p.dst_off + (m0 + 5u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc5_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc5_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc5_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc5_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc5_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc5_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc5_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc5_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc5_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc5_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc5_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc5_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc5_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc5_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc5_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc5_3[3]); }
    }
    if (m0 + 6u < p.m_rows) {
        let o = p.dst_off + (m0 + 6u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc6_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc6_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc6_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc6_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc6_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc6_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc6_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc6_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc6_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc6_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc6_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc6_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc6_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc6_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc6_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc6_3[3]); }
    }
    if (m0 + 7u < p.m_rows) {
        let o = p.dst_off + (m0 + 7u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc7_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc7_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc7_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc7_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc7_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc7_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc7_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc7_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc7_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc7_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc7_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc7_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc7_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc7_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc7_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc7_3[3]); }
    }
    if (m0 + 8u < p.m_rows) {
        let o = p.dst_off + (m0 + 8u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc8_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc8_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc8_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc8_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc8_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc8_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc8_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc8_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc8_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc8_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc8_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc8_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc8_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc8_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc8_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc8_3[3]); }
    }
    if (m0 + 9u < p.m_rows) {
        let o = p.dst_off + (m0 + 9u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc9_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc9_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc9_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc9_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc9_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc9_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc9_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc9_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc9_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc9_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc9_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc9_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc9_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc9_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc9_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc9_3[3]); }
    }
    if (m0 + 10u < p.m_rows) {
        let o = p.dst_off + (m0 + 10u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc10_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc10_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc10_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc10_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc10_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc10_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc10_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc10_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc10_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc10_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc10_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc10_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc10_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc10_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc10_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc10_3[3]); }
    }
    if (m0 + 11u < p.m_rows) {
        let o = p.dst_off + (m0 + 11u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc11_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc11_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc11_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc11_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc11_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc11_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc11_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc11_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc11_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc11_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc11_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc11_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc11_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc11_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc11_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc11_3[3]); }
    }
    if (m0 + 12u < p.m_rows) {
        let o = p.dst_off + (m0 + 12u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc12_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc12_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc12_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc12_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc12_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc12_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc12_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc12_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc12_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc12_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc12_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc12_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc12_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc12_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc12_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc12_3[3]); }
    }
    if (m0 + 13u < p.m_rows) {
        let o = p.dst_off + (m0 + 13u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc13_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc13_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc13_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc13_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc13_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc13_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc13_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc13_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc13_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc13_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc13_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc13_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc13_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc13_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc13_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc13_3[3]); }
    }
    if (m0 + 14u < p.m_rows) {
        let o = p.dst_off + (m0 + 14u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc14_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc14_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc14_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc14_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc14_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc14_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc14_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc14_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc14_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc14_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc14_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc14_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc14_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc14_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc14_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc14_3[3]); }
    }
    if (m0 + 15u < p.m_rows) {
        let o = p.dst_off + (m0 + 15u) * pixels + first;
        if (full || first + 0u < pixels) { put(o + 0u, acc15_0[0]); }
        if (full || first + 1u < pixels) { put(o + 1u, acc15_0[1]); }
        if (full || first + 2u < pixels) { put(o + 2u, acc15_0[2]); }
        if (full || first + 3u < pixels) { put(o + 3u, acc15_0[3]); }
        if (full || first + 4u < pixels) { put(o + 4u, acc15_1[0]); }
        if (full || first + 5u < pixels) { put(o + 5u, acc15_1[1]); }
        if (full || first + 6u < pixels) { put(o + 6u, acc15_1[2]); }
        if (full || first + 7u < pixels) { put(o + 7u, acc15_1[3]); }
        if (full || first + 8u < pixels) { put(o + 8u, acc15_2[0]); }
        if (full || first + 9u < pixels) { put(o + 9u, acc15_2[1]); }
        if (full || first + 10u < pixels) { put(o + 10u, acc15_2[2]); }
        if (full || first + 11u < pixels) { put(o + 11u, acc15_2[3]); }
        if (full || first + 12u < pixels) { put(o + 12u, acc15_3[0]); }
        if (full || first + 13u < pixels) { put(o + 13u, acc15_3[1]); }
        if (full || first + 14u < pixels) { put(o + 14u, acc15_3[2]); }
        if (full || first + 15u < pixels) { put(o + 15u, acc15_3[3]); }
    }
}

// 3x3, stride 1, any padding (backward input of such a conv is one too, with the weights
// transposed and flipped). Each invocation owns 4 rows x 8 consecutive pixels of one image row;
// it loads 10 input pixels per input row once and uses each for all three kernel columns.
// Padding is handled by masks computed once, outside the channel loop.
@compute @workgroup_size(64)
fn conv3x3_s1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
              @builtin(workgroup_id) wg: vec3<u32>) {
    let segs = (p.dst_w + 7u) / 8u;
    let item = flat_id(gid, groups, 64u);
    if (item >= p.n * p.dst_h * segs) { return; }
    let row = item / segs;
    let ow0 = (item - row * segs) * 8u;
    let img = row / p.dst_h;
    let oh = row - img * p.dst_h;
    let m0 = wg.z * 4u;
    let src_plane = p.n * p.src_h * p.src_w;
    let dst_plane = p.n * p.dst_h * p.dst_w;
    let iw0 = ow0 + 0u - p.pad;
    let c0 = min(iw0, p.src_w - 1u);
    let iw1 = ow0 + 1u - p.pad;
    let c1 = min(iw1, p.src_w - 1u);
    let iw2 = ow0 + 2u - p.pad;
    let c2 = min(iw2, p.src_w - 1u);
    let iw3 = ow0 + 3u - p.pad;
    let c3 = min(iw3, p.src_w - 1u);
    let iw4 = ow0 + 4u - p.pad;
    let c4 = min(iw4, p.src_w - 1u);
    let iw5 = ow0 + 5u - p.pad;
    let c5 = min(iw5, p.src_w - 1u);
    let iw6 = ow0 + 6u - p.pad;
    let c6 = min(iw6, p.src_w - 1u);
    let iw7 = ow0 + 7u - p.pad;
    let c7 = min(iw7, p.src_w - 1u);
    let iw8 = ow0 + 8u - p.pad;
    let c8 = min(iw8, p.src_w - 1u);
    let iw9 = ow0 + 9u - p.pad;
    let c9 = min(iw9, p.src_w - 1u);
    let ih0 = oh + 0u - p.pad;
    let rok0 = ih0 < p.src_h;
    let rb0 = (img * p.src_h + min(ih0, p.src_h - 1u)) * p.src_w;
    let ok0_0 = rok0 && iw0 < p.src_w;
    let ok0_1 = rok0 && iw1 < p.src_w;
    let ok0_2 = rok0 && iw2 < p.src_w;
    let ok0_3 = rok0 && iw3 < p.src_w;
    let ok0_4 = rok0 && iw4 < p.src_w;
    let ok0_5 = rok0 && iw5 < p.src_w;
    let ok0_6 = rok0 && iw6 < p.src_w;
    let ok0_7 = rok0 && iw7 < p.src_w;
    let ok0_8 = rok0 && iw8 < p.src_w;
    let ok0_9 = rok0 && iw9 < p.src_w;
    let ih1 = oh + 1u - p.pad;
    let rok1 = ih1 < p.src_h;
    let rb1 = (img * p.src_h + min(ih1, p.src_h - 1u)) * p.src_w;
    let ok1_0 = rok1 && iw0 < p.src_w;
    let ok1_1 = rok1 && iw1 < p.src_w;
    let ok1_2 = rok1 && iw2 < p.src_w;
    let ok1_3 = rok1 && iw3 < p.src_w;
    let ok1_4 = rok1 && iw4 < p.src_w;
    let ok1_5 = rok1 && iw5 < p.src_w;
    let ok1_6 = rok1 && iw6 < p.src_w;
    let ok1_7 = rok1 && iw7 < p.src_w;
    let ok1_8 = rok1 && iw8 < p.src_w;
    let ok1_9 = rok1 && iw9 < p.src_w;
    let ih2 = oh + 2u - p.pad;
    let rok2 = ih2 < p.src_h;
    let rb2 = (img * p.src_h + min(ih2, p.src_h - 1u)) * p.src_w;
    let ok2_0 = rok2 && iw0 < p.src_w;
    let ok2_1 = rok2 && iw1 < p.src_w;
    let ok2_2 = rok2 && iw2 < p.src_w;
    let ok2_3 = rok2 && iw3 < p.src_w;
    let ok2_4 = rok2 && iw4 < p.src_w;
    let ok2_5 = rok2 && iw5 < p.src_w;
    let ok2_6 = rok2 && iw6 < p.src_w;
    let ok2_7 = rok2 && iw7 < p.src_w;
    let ok2_8 = rok2 && iw8 < p.src_w;
    let ok2_9 = rok2 && iw9 < p.src_w;
    let tap00 = 0u * p.a_i + 0u * p.a_j;
    let tap01 = 0u * p.a_i + 1u * p.a_j;
    let tap02 = 0u * p.a_i + 2u * p.a_j;
    let tap10 = 1u * p.a_i + 0u * p.a_j;
    let tap11 = 1u * p.a_i + 1u * p.a_j;
    let tap12 = 1u * p.a_i + 2u * p.a_j;
    let tap20 = 2u * p.a_i + 0u * p.a_j;
    let tap21 = 2u * p.a_i + 1u * p.a_j;
    let tap22 = 2u * p.a_i + 2u * p.a_j;
    let wr0 = p.wt_off + min(m0 + 0u, p.m_rows - 1u) * p.a_m;
    let wr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * p.a_m;
    let wr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * p.a_m;
    let wr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * p.a_m;
    var acc0_0 = vec4<f32>();
    var acc0_1 = vec4<f32>();
    var acc1_0 = vec4<f32>();
    var acc1_1 = vec4<f32>();
    var acc2_0 = vec4<f32>();
    var acc2_1 = vec4<f32>();
    var acc3_0 = vec4<f32>();
    var acc3_1 = vec4<f32>();
    var s = p.src_off;
    var wk = 0u;
    for (var k = 0u; k < p.k_rows; k++) {
        {
            let x0 = select(0.0, src[s + rb0 + c0], ok0_0);
            let x1 = select(0.0, src[s + rb0 + c1], ok0_1);
            let x2 = select(0.0, src[s + rb0 + c2], ok0_2);
            let x3 = select(0.0, src[s + rb0 + c3], ok0_3);
            let x4 = select(0.0, src[s + rb0 + c4], ok0_4);
            let x5 = select(0.0, src[s + rb0 + c5], ok0_5);
            let x6 = select(0.0, src[s + rb0 + c6], ok0_6);
            let x7 = select(0.0, src[s + rb0 + c7], ok0_7);
            let x8 = select(0.0, src[s + rb0 + c8], ok0_8);
            let x9 = select(0.0, src[s + rb0 + c9], ok0_9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            let a0_0 = wt[wr0 + wk + tap00];
            let a0_1 = wt[wr0 + wk + tap01];
            let a0_2 = wt[wr0 + wk + tap02];
            acc0_0 = fma(vec4<f32>(a0_0), xs0_0, fma(vec4<f32>(a0_1), xs1_0, fma(vec4<f32>(a0_2), xs2_0, acc0_0)));
            acc0_1 = fma(vec4<f32>(a0_0), xs0_1, fma(vec4<f32>(a0_1), xs1_1, fma(vec4<f32>(a0_2), xs2_1, acc0_1)));
            let a1_0 = wt[wr1 + wk + tap00];
            let a1_1 = wt[wr1 + wk + tap01];
            let a1_2 = wt[wr1 + wk + tap02];
            acc1_0 = fma(vec4<f32>(a1_0), xs0_0, fma(vec4<f32>(a1_1), xs1_0, fma(vec4<f32>(a1_2), xs2_0, acc1_0)));
            acc1_1 = fma(vec4<f32>(a1_0), xs0_1, fma(vec4<f32>(a1_1), xs1_1, fma(vec4<f32>(a1_2), xs2_1, acc1_1)));
            let a2_0 = wt[wr2 + wk + tap00];
            let a2_1 = wt[wr2 + wk + tap01];
            let a2_2 = wt[wr2 + wk + tap02];
            acc2_0 = fma(vec4<f32>(a2_0), xs0_0, fma(vec4<f32>(a2_1), xs1_0, fma(vec4<f32>(a2_2), xs2_0, acc2_0)));
            acc2_1 = fma(vec4<f32>(a2_0), xs0_1, fma(vec4<f32>(a2_1), xs1_1, fma(vec4<f32>(a2_2), xs2_1, acc2_1)));
            let a3_0 = wt[wr3 + wk + tap00];
            let a3_1 = wt[wr3 + wk + tap01];
            let a3_2 = wt[wr3 + wk + tap02];
            acc3_0 = fma(vec4<f32>(a3_0), xs0_0, fma(vec4<f32>(a3_1), xs1_0, fma(vec4<f32>(a3_2), xs2_0, acc3_0)));
            acc3_1 = fma(vec4<f32>(a3_0), xs0_1, fma(vec4<f32>(a3_1), xs1_1, fma(vec4<f32>(a3_2), xs2_1, acc3_1)));
        }
        {
            let x0 = select(0.0, src[s + rb1 + c0], ok1_0);
            let x1 = select(0.0, src[s + rb1 + c1], ok1_1);
            let x2 = select(0.0, src[s + rb1 + c2], ok1_2);
            let x3 = select(0.0, src[s + rb1 + c3], ok1_3);
            let x4 = select(0.0, src[s + rb1 + c4], ok1_4);
            let x5 = select(0.0, src[s + rb1 + c5], ok1_5);
            let x6 = select(0.0, src[s + rb1 + c6], ok1_6);
            let x7 = select(0.0, src[s + rb1 + c7], ok1_7);
            let x8 = select(0.0, src[s + rb1 + c8], ok1_8);
            let x9 = select(0.0, src[s + rb1 + c9], ok1_9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            let a0_0 = wt[wr0 + wk + tap10];
            let a0_1 = wt[wr0 + wk + tap11];
            let a0_2 = wt[wr0 + wk + tap12];
            acc0_0 = fma(vec4<f32>(a0_0), xs0_0, fma(vec4<f32>(a0_1), xs1_0, fma(vec4<f32>(a0_2), xs2_0, acc0_0)));
            acc0_1 = fma(vec4<f32>(a0_0), xs0_1, fma(vec4<f32>(a0_1), xs1_1, fma(vec4<f32>(a0_2), xs2_1, acc0_1)));
            let a1_0 = wt[wr1 + wk + tap10];
            let a1_1 = wt[wr1 + wk + tap11];
            let a1_2 = wt[wr1 + wk + tap12];
            acc1_0 = fma(vec4<f32>(a1_0), xs0_0, fma(vec4<f32>(a1_1), xs1_0, fma(vec4<f32>(a1_2), xs2_0, acc1_0)));
            acc1_1 = fma(vec4<f32>(a1_0), xs0_1, fma(vec4<f32>(a1_1), xs1_1, fma(vec4<f32>(a1_2), xs2_1, acc1_1)));
            let a2_0 = wt[wr2 + wk + tap10];
            let a2_1 = wt[wr2 + wk + tap11];
            let a2_2 = wt[wr2 + wk + tap12];
            acc2_0 = fma(vec4<f32>(a2_0), xs0_0, fma(vec4<f32>(a2_1), xs1_0, fma(vec4<f32>(a2_2), xs2_0, acc2_0)));
            acc2_1 = fma(vec4<f32>(a2_0), xs0_1, fma(vec4<f32>(a2_1), xs1_1, fma(vec4<f32>(a2_2), xs2_1, acc2_1)));
            let a3_0 = wt[wr3 + wk + tap10];
            let a3_1 = wt[wr3 + wk + tap11];
            let a3_2 = wt[wr3 + wk + tap12];
            acc3_0 = fma(vec4<f32>(a3_0), xs0_0, fma(vec4<f32>(a3_1), xs1_0, fma(vec4<f32>(a3_2), xs2_0, acc3_0)));
            acc3_1 = fma(vec4<f32>(a3_0), xs0_1, fma(vec4<f32>(a3_1), xs1_1, fma(vec4<f32>(a3_2), xs2_1, acc3_1)));
        }
        {
            let x0 = select(0.0, src[s + rb2 + c0], ok2_0);
            let x1 = select(0.0, src[s + rb2 + c1], ok2_1);
            let x2 = select(0.0, src[s + rb2 + c2], ok2_2);
            let x3 = select(0.0, src[s + rb2 + c3], ok2_3);
            let x4 = select(0.0, src[s + rb2 + c4], ok2_4);
            let x5 = select(0.0, src[s + rb2 + c5], ok2_5);
            let x6 = select(0.0, src[s + rb2 + c6], ok2_6);
            let x7 = select(0.0, src[s + rb2 + c7], ok2_7);
            let x8 = select(0.0, src[s + rb2 + c8], ok2_8);
            let x9 = select(0.0, src[s + rb2 + c9], ok2_9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            let a0_0 = wt[wr0 + wk + tap20];
            let a0_1 = wt[wr0 + wk + tap21];
            let a0_2 = wt[wr0 + wk + tap22];
            acc0_0 = fma(vec4<f32>(a0_0), xs0_0, fma(vec4<f32>(a0_1), xs1_0, fma(vec4<f32>(a0_2), xs2_0, acc0_0)));
            acc0_1 = fma(vec4<f32>(a0_0), xs0_1, fma(vec4<f32>(a0_1), xs1_1, fma(vec4<f32>(a0_2), xs2_1, acc0_1)));
            let a1_0 = wt[wr1 + wk + tap20];
            let a1_1 = wt[wr1 + wk + tap21];
            let a1_2 = wt[wr1 + wk + tap22];
            acc1_0 = fma(vec4<f32>(a1_0), xs0_0, fma(vec4<f32>(a1_1), xs1_0, fma(vec4<f32>(a1_2), xs2_0, acc1_0)));
            acc1_1 = fma(vec4<f32>(a1_0), xs0_1, fma(vec4<f32>(a1_1), xs1_1, fma(vec4<f32>(a1_2), xs2_1, acc1_1)));
            let a2_0 = wt[wr2 + wk + tap20];
            let a2_1 = wt[wr2 + wk + tap21];
            let a2_2 = wt[wr2 + wk + tap22];
            acc2_0 = fma(vec4<f32>(a2_0), xs0_0, fma(vec4<f32>(a2_1), xs1_0, fma(vec4<f32>(a2_2), xs2_0, acc2_0)));
            acc2_1 = fma(vec4<f32>(a2_0), xs0_1, fma(vec4<f32>(a2_1), xs1_1, fma(vec4<f32>(a2_2), xs2_1, acc2_1)));
            let a3_0 = wt[wr3 + wk + tap20];
            let a3_1 = wt[wr3 + wk + tap21];
            let a3_2 = wt[wr3 + wk + tap22];
            acc3_0 = fma(vec4<f32>(a3_0), xs0_0, fma(vec4<f32>(a3_1), xs1_0, fma(vec4<f32>(a3_2), xs2_0, acc3_0)));
            acc3_1 = fma(vec4<f32>(a3_0), xs0_1, fma(vec4<f32>(a3_1), xs1_1, fma(vec4<f32>(a3_2), xs2_1, acc3_1)));
        }
        s += src_plane;
        wk += p.a_k;
    }
    let full = ow0 + 8u <= p.dst_w;
    let o0 = p.dst_off + row * p.dst_w + ow0;
    if (m0 + 0u < p.m_rows) {
        let o = o0 + (m0 + 0u) * dst_plane;
        if (full || ow0 + 0u < p.dst_w) { put(o + 0u, acc0_0[0]); }
        if (full || ow0 + 1u < p.dst_w) { put(o + 1u, acc0_0[1]); }
        if (full || ow0 + 2u < p.dst_w) { put(o + 2u, acc0_0[2]); }
        if (full || ow0 + 3u < p.dst_w) { put(o + 3u, acc0_0[3]); }
        if (full || ow0 + 4u < p.dst_w) { put(o + 4u, acc0_1[0]); }
        if (full || ow0 + 5u < p.dst_w) { put(o + 5u, acc0_1[1]); }
        if (full || ow0 + 6u < p.dst_w) { put(o + 6u, acc0_1[2]); }
        if (full || ow0 + 7u < p.dst_w) { put(o + 7u, acc0_1[3]); }
    }
    if (m0 + 1u < p.m_rows) {
        let o = o0 + (m0 + 1u) * dst_plane;
        if (full || ow0 + 0u < p.dst_w) { put(o + 0u, acc1_0[0]); }
        if (full || ow0 + 1u < p.dst_w) { put(o + 1u, acc1_0[1]); }
        if (full || ow0 + 2u < p.dst_w) { put(o + 2u, acc1_0[2]); }
        if (full || ow0 + 3u < p.dst_w) { put(o + 3u, acc1_0[3]); }
        if (full || ow0 + 4u < p.dst_w) { put(o + 4u, acc1_1[0]); }
        if (full || ow0 + 5u < p.dst_w) { put(o + 5u, acc1_1[1]); }
        if (full || ow0 + 6u < p.dst_w) { put(o + 6u, acc1_1[2]); }
        if (full || ow0 + 7u < p.dst_w) { put(o + 7u, acc1_1[3]); }
    }
    if (m0 + 2u < p.m_rows) {
        let o = o0 + (m0 + 2u) * dst_plane;
        if (full || ow0 + 0u < p.dst_w) { put(o + 0u, acc2_0[0]); }
        if (full || ow0 + 1u < p.dst_w) { put(o + 1u, acc2_0[1]); }
        if (full || ow0 + 2u < p.dst_w) { put(o + 2u, acc2_0[2]); }
        if (full || ow0 + 3u < p.dst_w) { put(o + 3u, acc2_0[3]); }
        if (full || ow0 + 4u < p.dst_w) { put(o + 4u, acc2_1[0]); }
        if (full || ow0 + 5u < p.dst_w) { put(o + 5u, acc2_1[1]); }
        if (full || ow0 + 6u < p.dst_w) { put(o + 6u, acc2_1[2]); }
        if (full || ow0 + 7u < p.dst_w) { put(o + 7u, acc2_1[3]); }
    }
    if (m0 + 3u < p.m_rows) {
        let o = o0 + (m0 + 3u) * dst_plane;
        if (full || ow0 + 0u < p.dst_w) { put(o + 0u, acc3_0[0]); }
        if (full || ow0 + 1u < p.dst_w) { put(o + 1u, acc3_0[1]); }
        if (full || ow0 + 2u < p.dst_w) { put(o + 2u, acc3_0[2]); }
        if (full || ow0 + 3u < p.dst_w) { put(o + 3u, acc3_0[3]); }
        if (full || ow0 + 4u < p.dst_w) { put(o + 4u, acc3_1[0]); }
        if (full || ow0 + 5u < p.dst_w) { put(o + 5u, acc3_1[1]); }
        if (full || ow0 + 6u < p.dst_w) { put(o + 6u, acc3_1[2]); }
        if (full || ow0 + 7u < p.dst_w) { put(o + 7u, acc3_1[3]); }
    }
}

var<workgroup> partial: array<f32, 1024>;

// Weight gradient of a 1x1, stride 1, unpadded conv: dw[m, k] = sum_q wt[m, q] src[k, q] over
// all N*H*W pixels q. One workgroup owns 8 x 8 weights; its 64 invocations split the pixels
// and their partial sums meet in workgroup memory, 16 values per barrier pair. The fixed
// 64-way split keeps f32 sums short (pixels / 64 terms each) without a scratch buffer.
@compute @workgroup_size(64)
fn conv1x1_weight_grad(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let pixels = p.n * p.src_h * p.src_w;
    let m0 = wg.z * 8u;
    let k0 = wg.x * 8u;
    let dr0 = p.wt_off + min(m0 + 0u, p.m_rows - 1u) * pixels;
    let dr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * pixels;
    let dr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * pixels;
    let dr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * pixels;
    let dr4 = p.wt_off + min(m0 + 4u, p.m_rows - 1u) * pixels;
    let dr5 = p.wt_off + min(m0 + 5u, p.m_rows - 1u) * pixels;
    let dr6 = p.wt_off + min(m0 + 6u, p.m_rows - 1u) * pixels;
    let dr7 = p.wt_off + min(m0 + 7u, p.m_rows - 1u) * pixels;
    let sr0 = p.src_off + min(k0 + 0u, p.k_rows - 1u) * pixels;
    let sr1 = p.src_off + min(k0 + 1u, p.k_rows - 1u) * pixels;
    let sr2 = p.src_off + min(k0 + 2u, p.k_rows - 1u) * pixels;
    let sr3 = p.src_off + min(k0 + 3u, p.k_rows - 1u) * pixels;
    let sr4 = p.src_off + min(k0 + 4u, p.k_rows - 1u) * pixels;
    let sr5 = p.src_off + min(k0 + 5u, p.k_rows - 1u) * pixels;
    let sr6 = p.src_off + min(k0 + 6u, p.k_rows - 1u) * pixels;
    let sr7 = p.src_off + min(k0 + 7u, p.k_rows - 1u) * pixels;
    var acc0_0 = 0.0;
    var acc0_1 = 0.0;
    var acc0_2 = 0.0;
    var acc0_3 = 0.0;
    var acc0_4 = 0.0;
    var acc0_5 = 0.0;
    var acc0_6 = 0.0;
    var acc0_7 = 0.0;
    var acc1_0 = 0.0;
    var acc1_1 = 0.0;
    var acc1_2 = 0.0;
    var acc1_3 = 0.0;
    var acc1_4 = 0.0;
    var acc1_5 = 0.0;
    var acc1_6 = 0.0;
    var acc1_7 = 0.0;
    var acc2_0 = 0.0;
    var acc2_1 = 0.0;
    var acc2_2 = 0.0;
    var acc2_3 = 0.0;
    var acc2_4 = 0.0;
    var acc2_5 = 0.0;
    var acc2_6 = 0.0;
    var acc2_7 = 0.0;
    var acc3_0 = 0.0;
    var acc3_1 = 0.0;
    var acc3_2 = 0.0;
    var acc3_3 = 0.0;
    var acc3_4 = 0.0;
    var acc3_5 = 0.0;
    var acc3_6 = 0.0;
    var acc3_7 = 0.0;
    var acc4_0 = 0.0;
    var acc4_1 = 0.0;
    var acc4_2 = 0.0;
    var acc4_3 = 0.0;
    var acc4_4 = 0.0;
    var acc4_5 = 0.0;
    var acc4_6 = 0.0;
    var acc4_7 = 0.0;
    var acc5_0 = 0.0;
    var acc5_1 = 0.0;
    var acc5_2 = 0.0;
    var acc5_3 = 0.0;
    var acc5_4 = 0.0;
    var acc5_5 = 0.0;
    var acc5_6 = 0.0;
    var acc5_7 = 0.0;
    var acc6_0 = 0.0;
    var acc6_1 = 0.0;
    var acc6_2 = 0.0;
    var acc6_3 = 0.0;
    var acc6_4 = 0.0;
    var acc6_5 = 0.0;
    var acc6_6 = 0.0;
    var acc6_7 = 0.0;
    var acc7_0 = 0.0;
    var acc7_1 = 0.0;
    var acc7_2 = 0.0;
    var acc7_3 = 0.0;
    var acc7_4 = 0.0;
    var acc7_5 = 0.0;
    var acc7_6 = 0.0;
    var acc7_7 = 0.0;
    for (var q = lane; q < pixels; q += 64u) {
        let g0 = wt[dr0 + q];
        let g1 = wt[dr1 + q];
        let g2 = wt[dr2 + q];
        let g3 = wt[dr3 + q];
        let g4 = wt[dr4 + q];
        let g5 = wt[dr5 + q];
        let g6 = wt[dr6 + q];
        let g7 = wt[dr7 + q];
        let x0 = src[sr0 + q];
        let x1 = src[sr1 + q];
        let x2 = src[sr2 + q];
        let x3 = src[sr3 + q];
        let x4 = src[sr4 + q];
        let x5 = src[sr5 + q];
        let x6 = src[sr6 + q];
        let x7 = src[sr7 + q];
        acc0_0 = fma(g0, x0, acc0_0);
        acc0_1 = fma(g0, x1, acc0_1);
        acc0_2 = fma(g0, x2, acc0_2);
        acc0_3 = fma(g0, x3, acc0_3);
        acc0_4 = fma(g0, x4, acc0_4);
        acc0_5 = fma(g0, x5, acc0_5);
        acc0_6 = fma(g0, x6, acc0_6);
        acc0_7 = fma(g0, x7, acc0_7);
        acc1_0 = fma(g1, x0, acc1_0);
        acc1_1 = fma(g1, x1, acc1_1);
        acc1_2 = fma(g1, x2, acc1_2);
        acc1_3 = fma(g1, x3, acc1_3);
        acc1_4 = fma(g1, x4, acc1_4);
        acc1_5 = fma(g1, x5, acc1_5);
        acc1_6 = fma(g1, x6, acc1_6);
        acc1_7 = fma(g1, x7, acc1_7);
        acc2_0 = fma(g2, x0, acc2_0);
        acc2_1 = fma(g2, x1, acc2_1);
        acc2_2 = fma(g2, x2, acc2_2);
        acc2_3 = fma(g2, x3, acc2_3);
        acc2_4 = fma(g2, x4, acc2_4);
        acc2_5 = fma(g2, x5, acc2_5);
        acc2_6 = fma(g2, x6, acc2_6);
        acc2_7 = fma(g2, x7, acc2_7);
        acc3_0 = fma(g3, x0, acc3_0);
        acc3_1 = fma(g3, x1, acc3_1);
        acc3_2 = fma(g3, x2, acc3_2);
        acc3_3 = fma(g3, x3, acc3_3);
        acc3_4 = fma(g3, x4, acc3_4);
        acc3_5 = fma(g3, x5, acc3_5);
        acc3_6 = fma(g3, x6, acc3_6);
        acc3_7 = fma(g3, x7, acc3_7);
        acc4_0 = fma(g4, x0, acc4_0);
        acc4_1 = fma(g4, x1, acc4_1);
        acc4_2 = fma(g4, x2, acc4_2);
        acc4_3 = fma(g4, x3, acc4_3);
        acc4_4 = fma(g4, x4, acc4_4);
        acc4_5 = fma(g4, x5, acc4_5);
        acc4_6 = fma(g4, x6, acc4_6);
        acc4_7 = fma(g4, x7, acc4_7);
        acc5_0 = fma(g5, x0, acc5_0);
        acc5_1 = fma(g5, x1, acc5_1);
        acc5_2 = fma(g5, x2, acc5_2);
        acc5_3 = fma(g5, x3, acc5_3);
        acc5_4 = fma(g5, x4, acc5_4);
        acc5_5 = fma(g5, x5, acc5_5);
        acc5_6 = fma(g5, x6, acc5_6);
        acc5_7 = fma(g5, x7, acc5_7);
        acc6_0 = fma(g6, x0, acc6_0);
        acc6_1 = fma(g6, x1, acc6_1);
        acc6_2 = fma(g6, x2, acc6_2);
        acc6_3 = fma(g6, x3, acc6_3);
        acc6_4 = fma(g6, x4, acc6_4);
        acc6_5 = fma(g6, x5, acc6_5);
        acc6_6 = fma(g6, x6, acc6_6);
        acc6_7 = fma(g6, x7, acc6_7);
        acc7_0 = fma(g7, x0, acc7_0);
        acc7_1 = fma(g7, x1, acc7_1);
        acc7_2 = fma(g7, x2, acc7_2);
        acc7_3 = fma(g7, x3, acc7_3);
        acc7_4 = fma(g7, x4, acc7_4);
        acc7_5 = fma(g7, x5, acc7_5);
        acc7_6 = fma(g7, x6, acc7_6);
        acc7_7 = fma(g7, x7, acc7_7);
    }
    partial[lane * 16u + 0u] = acc0_0;
    partial[lane * 16u + 1u] = acc0_1;
    partial[lane * 16u + 2u] = acc0_2;
    partial[lane * 16u + 3u] = acc0_3;
    partial[lane * 16u + 4u] = acc0_4;
    partial[lane * 16u + 5u] = acc0_5;
    partial[lane * 16u + 6u] = acc0_6;
    partial[lane * 16u + 7u] = acc0_7;
    partial[lane * 16u + 8u] = acc1_0;
    partial[lane * 16u + 9u] = acc1_1;
    partial[lane * 16u + 10u] = acc1_2;
    partial[lane * 16u + 11u] = acc1_3;
    partial[lane * 16u + 12u] = acc1_4;
    partial[lane * 16u + 13u] = acc1_5;
    partial[lane * 16u + 14u] = acc1_6;
    partial[lane * 16u + 15u] = acc1_7;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 0u + lane;
        if (v < 64u) {
            let m = m0 + v / 8u;
            let k = k0 + v % 8u;
            if (m < p.m_rows && k < p.k_rows) { put(p.dst_off + m * p.k_rows + k, sum); }
        }
    }
    workgroupBarrier();
    partial[lane * 16u + 0u] = acc2_0;
    partial[lane * 16u + 1u] = acc2_1;
    partial[lane * 16u + 2u] = acc2_2;
    partial[lane * 16u + 3u] = acc2_3;
    partial[lane * 16u + 4u] = acc2_4;
    partial[lane * 16u + 5u] = acc2_5;
    partial[lane * 16u + 6u] = acc2_6;
    partial[lane * 16u + 7u] = acc2_7;
    partial[lane * 16u + 8u] = acc3_0;
    partial[lane * 16u + 9u] = acc3_1;
    partial[lane * 16u + 10u] = acc3_2;
    partial[lane * 16u + 11u] = acc3_3;
    partial[lane * 16u + 12u] = acc3_4;
    partial[lane * 16u + 13u] = acc3_5;
    partial[lane * 16u + 14u] = acc3_6;
    partial[lane * 16u + 15u] = acc3_7;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 16u + lane;
        if (v < 64u) {
            let m = m0 + v / 8u;
            let k = k0 + v % 8u;
            if (m < p.m_rows && k < p.k_rows) { put(p.dst_off + m * p.k_rows + k, sum); }
        }
    }
    workgroupBarrier();
    partial[lane * 16u + 0u] = acc4_0;
    partial[lane * 16u + 1u] = acc4_1;
    partial[lane * 16u + 2u] = acc4_2;
    partial[lane * 16u + 3u] = acc4_3;
    partial[lane * 16u + 4u] = acc4_4;
    partial[lane * 16u + 5u] = acc4_5;
    partial[lane * 16u + 6u] = acc4_6;
    partial[lane * 16u + 7u] = acc4_7;
    partial[lane * 16u + 8u] = acc5_0;
    partial[lane * 16u + 9u] = acc5_1;
    partial[lane * 16u + 10u] = acc5_2;
    partial[lane * 16u + 11u] = acc5_3;
    partial[lane * 16u + 12u] = acc5_4;
    partial[lane * 16u + 13u] = acc5_5;
    partial[lane * 16u + 14u] = acc5_6;
    partial[lane * 16u + 15u] = acc5_7;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 32u + lane;
        if (v < 64u) {
            let m = m0 + v / 8u;
            let k = k0 + v % 8u;
            if (m < p.m_rows && k < p.k_rows) { put(p.dst_off + m * p.k_rows + k, sum); }
        }
    }
    workgroupBarrier();
    partial[lane * 16u + 0u] = acc6_0;
    partial[lane * 16u + 1u] = acc6_1;
    partial[lane * 16u + 2u] = acc6_2;
    partial[lane * 16u + 3u] = acc6_3;
    partial[lane * 16u + 4u] = acc6_4;
    partial[lane * 16u + 5u] = acc6_5;
    partial[lane * 16u + 6u] = acc6_6;
    partial[lane * 16u + 7u] = acc6_7;
    partial[lane * 16u + 8u] = acc7_0;
    partial[lane * 16u + 9u] = acc7_1;
    partial[lane * 16u + 10u] = acc7_2;
    partial[lane * 16u + 11u] = acc7_3;
    partial[lane * 16u + 12u] = acc7_4;
    partial[lane * 16u + 13u] = acc7_5;
    partial[lane * 16u + 14u] = acc7_6;
    partial[lane * 16u + 15u] = acc7_7;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 48u + lane;
        if (v < 64u) {
            let m = m0 + v / 8u;
            let k = k0 + v % 8u;
            if (m < p.m_rows && k < p.k_rows) { put(p.dst_off + m * p.k_rows + k, sum); }
        }
    }
    workgroupBarrier();
}

// Weight gradient of a 3x3, stride 1 conv: dw[m, k, i, j] = sum over images and output pixels
// of dy[m, .] x[k, . shifted by (i, j)]. One workgroup owns 4 output channels x 1 input channel
// x 9 taps; its invocations split the output rows in segments of 8 pixels, load each input
// row segment once for all three kernel columns, and reduce in workgroup memory.
@compute @workgroup_size(64)
fn conv3x3_s1_weight_grad(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let m0 = wg.z * 4u;
    let k = wg.x;
    let segs = (p.dst_w + 7u) / 8u;
    let items = p.n * p.dst_h * segs;
    let src_base = p.src_off + k * p.n * p.src_h * p.src_w;
    let dst_plane = p.n * p.dst_h * p.dst_w;
    let dr0 = p.wt_off + min(m0 + 0u, p.m_rows - 1u) * dst_plane;
    let dr1 = p.wt_off + min(m0 + 1u, p.m_rows - 1u) * dst_plane;
    let dr2 = p.wt_off + min(m0 + 2u, p.m_rows - 1u) * dst_plane;
    let dr3 = p.wt_off + min(m0 + 3u, p.m_rows - 1u) * dst_plane;
    var acc0_0 = 0.0;
    var acc0_1 = 0.0;
    var acc0_2 = 0.0;
    var acc0_3 = 0.0;
    var acc0_4 = 0.0;
    var acc0_5 = 0.0;
    var acc0_6 = 0.0;
    var acc0_7 = 0.0;
    var acc0_8 = 0.0;
    var acc1_0 = 0.0;
    var acc1_1 = 0.0;
    var acc1_2 = 0.0;
    var acc1_3 = 0.0;
    var acc1_4 = 0.0;
    var acc1_5 = 0.0;
    var acc1_6 = 0.0;
    var acc1_7 = 0.0;
    var acc1_8 = 0.0;
    var acc2_0 = 0.0;
    var acc2_1 = 0.0;
    var acc2_2 = 0.0;
    var acc2_3 = 0.0;
    var acc2_4 = 0.0;
    var acc2_5 = 0.0;
    var acc2_6 = 0.0;
    var acc2_7 = 0.0;
    var acc2_8 = 0.0;
    var acc3_0 = 0.0;
    var acc3_1 = 0.0;
    var acc3_2 = 0.0;
    var acc3_3 = 0.0;
    var acc3_4 = 0.0;
    var acc3_5 = 0.0;
    var acc3_6 = 0.0;
    var acc3_7 = 0.0;
    var acc3_8 = 0.0;
    for (var item = lane; item < items; item += 64u) {
        let row = item / segs;
        let ow0 = (item - row * segs) * 8u;
        let img = row / p.dst_h;
        let oh = row - img * p.dst_h;
        let dok0 = ow0 + 0u < p.dst_w;
        let dc0 = min(ow0 + 0u, p.dst_w - 1u);
        let dok1 = ow0 + 1u < p.dst_w;
        let dc1 = min(ow0 + 1u, p.dst_w - 1u);
        let dok2 = ow0 + 2u < p.dst_w;
        let dc2 = min(ow0 + 2u, p.dst_w - 1u);
        let dok3 = ow0 + 3u < p.dst_w;
        let dc3 = min(ow0 + 3u, p.dst_w - 1u);
        let dok4 = ow0 + 4u < p.dst_w;
        let dc4 = min(ow0 + 4u, p.dst_w - 1u);
        let dok5 = ow0 + 5u < p.dst_w;
        let dc5 = min(ow0 + 5u, p.dst_w - 1u);
        let dok6 = ow0 + 6u < p.dst_w;
        let dc6 = min(ow0 + 6u, p.dst_w - 1u);
        let dok7 = ow0 + 7u < p.dst_w;
        let dc7 = min(ow0 + 7u, p.dst_w - 1u);
        let db = row * p.dst_w;
        let g0_0 = vec4<f32>(select(0.0, wt[dr0 + db + dc0], dok0), select(0.0, wt[dr0 + db + dc1], dok1), select(0.0, wt[dr0 + db + dc2], dok2), select(0.0, wt[dr0 + db + dc3], dok3));
        let g0_1 = vec4<f32>(select(0.0, wt[dr0 + db + dc4], dok4), select(0.0, wt[dr0 + db + dc5], dok5), select(0.0, wt[dr0 + db + dc6], dok6), select(0.0, wt[dr0 + db + dc7], dok7));
        let g1_0 = vec4<f32>(select(0.0, wt[dr1 + db + dc0], dok0), select(0.0, wt[dr1 + db + dc1], dok1), select(0.0, wt[dr1 + db + dc2], dok2), select(0.0, wt[dr1 + db + dc3], dok3));
        let g1_1 = vec4<f32>(select(0.0, wt[dr1 + db + dc4], dok4), select(0.0, wt[dr1 + db + dc5], dok5), select(0.0, wt[dr1 + db + dc6], dok6), select(0.0, wt[dr1 + db + dc7], dok7));
        let g2_0 = vec4<f32>(select(0.0, wt[dr2 + db + dc0], dok0), select(0.0, wt[dr2 + db + dc1], dok1), select(0.0, wt[dr2 + db + dc2], dok2), select(0.0, wt[dr2 + db + dc3], dok3));
        let g2_1 = vec4<f32>(select(0.0, wt[dr2 + db + dc4], dok4), select(0.0, wt[dr2 + db + dc5], dok5), select(0.0, wt[dr2 + db + dc6], dok6), select(0.0, wt[dr2 + db + dc7], dok7));
        let g3_0 = vec4<f32>(select(0.0, wt[dr3 + db + dc0], dok0), select(0.0, wt[dr3 + db + dc1], dok1), select(0.0, wt[dr3 + db + dc2], dok2), select(0.0, wt[dr3 + db + dc3], dok3));
        let g3_1 = vec4<f32>(select(0.0, wt[dr3 + db + dc4], dok4), select(0.0, wt[dr3 + db + dc5], dok5), select(0.0, wt[dr3 + db + dc6], dok6), select(0.0, wt[dr3 + db + dc7], dok7));
        let iw0 = ow0 + 0u - p.pad;
        let wok0 = iw0 < p.src_w;
        let c0 = min(iw0, p.src_w - 1u);
        let iw1 = ow0 + 1u - p.pad;
        let wok1 = iw1 < p.src_w;
        let c1 = min(iw1, p.src_w - 1u);
        let iw2 = ow0 + 2u - p.pad;
        let wok2 = iw2 < p.src_w;
        let c2 = min(iw2, p.src_w - 1u);
        let iw3 = ow0 + 3u - p.pad;
        let wok3 = iw3 < p.src_w;
        let c3 = min(iw3, p.src_w - 1u);
        let iw4 = ow0 + 4u - p.pad;
        let wok4 = iw4 < p.src_w;
        let c4 = min(iw4, p.src_w - 1u);
        let iw5 = ow0 + 5u - p.pad;
        let wok5 = iw5 < p.src_w;
        let c5 = min(iw5, p.src_w - 1u);
        let iw6 = ow0 + 6u - p.pad;
        let wok6 = iw6 < p.src_w;
        let c6 = min(iw6, p.src_w - 1u);
        let iw7 = ow0 + 7u - p.pad;
        let wok7 = iw7 < p.src_w;
        let c7 = min(iw7, p.src_w - 1u);
        let iw8 = ow0 + 8u - p.pad;
        let wok8 = iw8 < p.src_w;
        let c8 = min(iw8, p.src_w - 1u);
        let iw9 = ow0 + 9u - p.pad;
        let wok9 = iw9 < p.src_w;
        let c9 = min(iw9, p.src_w - 1u);
        {
            let ih = oh + 0u - p.pad;
            let rb = src_base + (img * p.src_h + min(ih, p.src_h - 1u)) * p.src_w;
            let rok = ih < p.src_h;
            let x0 = select(0.0, src[rb + c0], rok && wok0);
            let x1 = select(0.0, src[rb + c1], rok && wok1);
            let x2 = select(0.0, src[rb + c2], rok && wok2);
            let x3 = select(0.0, src[rb + c3], rok && wok3);
            let x4 = select(0.0, src[rb + c4], rok && wok4);
            let x5 = select(0.0, src[rb + c5], rok && wok5);
            let x6 = select(0.0, src[rb + c6], rok && wok6);
            let x7 = select(0.0, src[rb + c7], rok && wok7);
            let x8 = select(0.0, src[rb + c8], rok && wok8);
            let x9 = select(0.0, src[rb + c9], rok && wok9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            acc0_0 += dot(g0_0, xs0_0) + dot(g0_1, xs0_1);
            acc0_1 += dot(g0_0, xs1_0) + dot(g0_1, xs1_1);
            acc0_2 += dot(g0_0, xs2_0) + dot(g0_1, xs2_1);
            acc1_0 += dot(g1_0, xs0_0) + dot(g1_1, xs0_1);
            acc1_1 += dot(g1_0, xs1_0) + dot(g1_1, xs1_1);
            acc1_2 += dot(g1_0, xs2_0) + dot(g1_1, xs2_1);
            acc2_0 += dot(g2_0, xs0_0) + dot(g2_1, xs0_1);
            acc2_1 += dot(g2_0, xs1_0) + dot(g2_1, xs1_1);
            acc2_2 += dot(g2_0, xs2_0) + dot(g2_1, xs2_1);
            acc3_0 += dot(g3_0, xs0_0) + dot(g3_1, xs0_1);
            acc3_1 += dot(g3_0, xs1_0) + dot(g3_1, xs1_1);
            acc3_2 += dot(g3_0, xs2_0) + dot(g3_1, xs2_1);
        }
        {
            let ih = oh + 1u - p.pad;
            let rb = src_base + (img * p.src_h + min(ih, p.src_h - 1u)) * p.src_w;
            let rok = ih < p.src_h;
            let x0 = select(0.0, src[rb + c0], rok && wok0);
            let x1 = select(0.0, src[rb + c1], rok && wok1);
            let x2 = select(0.0, src[rb + c2], rok && wok2);
            let x3 = select(0.0, src[rb + c3], rok && wok3);
            let x4 = select(0.0, src[rb + c4], rok && wok4);
            let x5 = select(0.0, src[rb + c5], rok && wok5);
            let x6 = select(0.0, src[rb + c6], rok && wok6);
            let x7 = select(0.0, src[rb + c7], rok && wok7);
            let x8 = select(0.0, src[rb + c8], rok && wok8);
            let x9 = select(0.0, src[rb + c9], rok && wok9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            acc0_3 += dot(g0_0, xs0_0) + dot(g0_1, xs0_1);
            acc0_4 += dot(g0_0, xs1_0) + dot(g0_1, xs1_1);
            acc0_5 += dot(g0_0, xs2_0) + dot(g0_1, xs2_1);
            acc1_3 += dot(g1_0, xs0_0) + dot(g1_1, xs0_1);
            acc1_4 += dot(g1_0, xs1_0) + dot(g1_1, xs1_1);
            acc1_5 += dot(g1_0, xs2_0) + dot(g1_1, xs2_1);
            acc2_3 += dot(g2_0, xs0_0) + dot(g2_1, xs0_1);
            acc2_4 += dot(g2_0, xs1_0) + dot(g2_1, xs1_1);
            acc2_5 += dot(g2_0, xs2_0) + dot(g2_1, xs2_1);
            acc3_3 += dot(g3_0, xs0_0) + dot(g3_1, xs0_1);
            acc3_4 += dot(g3_0, xs1_0) + dot(g3_1, xs1_1);
            acc3_5 += dot(g3_0, xs2_0) + dot(g3_1, xs2_1);
        }
        {
            let ih = oh + 2u - p.pad;
            let rb = src_base + (img * p.src_h + min(ih, p.src_h - 1u)) * p.src_w;
            let rok = ih < p.src_h;
            let x0 = select(0.0, src[rb + c0], rok && wok0);
            let x1 = select(0.0, src[rb + c1], rok && wok1);
            let x2 = select(0.0, src[rb + c2], rok && wok2);
            let x3 = select(0.0, src[rb + c3], rok && wok3);
            let x4 = select(0.0, src[rb + c4], rok && wok4);
            let x5 = select(0.0, src[rb + c5], rok && wok5);
            let x6 = select(0.0, src[rb + c6], rok && wok6);
            let x7 = select(0.0, src[rb + c7], rok && wok7);
            let x8 = select(0.0, src[rb + c8], rok && wok8);
            let x9 = select(0.0, src[rb + c9], rok && wok9);
            let xs0_0 = vec4<f32>(x0, x1, x2, x3);
            let xs0_1 = vec4<f32>(x4, x5, x6, x7);
            let xs1_0 = vec4<f32>(x1, x2, x3, x4);
            let xs1_1 = vec4<f32>(x5, x6, x7, x8);
            let xs2_0 = vec4<f32>(x2, x3, x4, x5);
            let xs2_1 = vec4<f32>(x6, x7, x8, x9);
            acc0_6 += dot(g0_0, xs0_0) + dot(g0_1, xs0_1);
            acc0_7 += dot(g0_0, xs1_0) + dot(g0_1, xs1_1);
            acc0_8 += dot(g0_0, xs2_0) + dot(g0_1, xs2_1);
            acc1_6 += dot(g1_0, xs0_0) + dot(g1_1, xs0_1);
            acc1_7 += dot(g1_0, xs1_0) + dot(g1_1, xs1_1);
            acc1_8 += dot(g1_0, xs2_0) + dot(g1_1, xs2_1);
            acc2_6 += dot(g2_0, xs0_0) + dot(g2_1, xs0_1);
            acc2_7 += dot(g2_0, xs1_0) + dot(g2_1, xs1_1);
            acc2_8 += dot(g2_0, xs2_0) + dot(g2_1, xs2_1);
            acc3_6 += dot(g3_0, xs0_0) + dot(g3_1, xs0_1);
            acc3_7 += dot(g3_0, xs1_0) + dot(g3_1, xs1_1);
            acc3_8 += dot(g3_0, xs2_0) + dot(g3_1, xs2_1);
        }
    }
    partial[lane * 16u + 0u] = acc0_0;
    partial[lane * 16u + 1u] = acc0_1;
    partial[lane * 16u + 2u] = acc0_2;
    partial[lane * 16u + 3u] = acc0_3;
    partial[lane * 16u + 4u] = acc0_4;
    partial[lane * 16u + 5u] = acc0_5;
    partial[lane * 16u + 6u] = acc0_6;
    partial[lane * 16u + 7u] = acc0_7;
    partial[lane * 16u + 8u] = acc0_8;
    partial[lane * 16u + 9u] = acc1_0;
    partial[lane * 16u + 10u] = acc1_1;
    partial[lane * 16u + 11u] = acc1_2;
    partial[lane * 16u + 12u] = acc1_3;
    partial[lane * 16u + 13u] = acc1_4;
    partial[lane * 16u + 14u] = acc1_5;
    partial[lane * 16u + 15u] = acc1_6;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 0u + lane;
        if (v < 36u) {
            let m = m0 + v / 9u;
            if (m < p.m_rows) { put(p.dst_off + (m * p.k_rows + k) * 9u + v % 9u, sum); }
        }
    }
    workgroupBarrier();
    partial[lane * 16u + 0u] = acc1_7;
    partial[lane * 16u + 1u] = acc1_8;
    partial[lane * 16u + 2u] = acc2_0;
    partial[lane * 16u + 3u] = acc2_1;
    partial[lane * 16u + 4u] = acc2_2;
    partial[lane * 16u + 5u] = acc2_3;
    partial[lane * 16u + 6u] = acc2_4;
    partial[lane * 16u + 7u] = acc2_5;
    partial[lane * 16u + 8u] = acc2_6;
    partial[lane * 16u + 9u] = acc2_7;
    partial[lane * 16u + 10u] = acc2_8;
    partial[lane * 16u + 11u] = acc3_0;
    partial[lane * 16u + 12u] = acc3_1;
    partial[lane * 16u + 13u] = acc3_2;
    partial[lane * 16u + 14u] = acc3_3;
    partial[lane * 16u + 15u] = acc3_4;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 16u + lane;
        if (v < 36u) {
            let m = m0 + v / 9u;
            if (m < p.m_rows) { put(p.dst_off + (m * p.k_rows + k) * 9u + v % 9u, sum); }
        }
    }
    workgroupBarrier();
    partial[lane * 16u + 0u] = acc3_5;
    partial[lane * 16u + 1u] = acc3_6;
    partial[lane * 16u + 2u] = acc3_7;
    partial[lane * 16u + 3u] = acc3_8;
    workgroupBarrier();
    if (lane < 16u) {
        var sum = 0.0;
        for (var l = 0u; l < 64u; l++) { sum += partial[l * 16u + lane]; }
        let v = 32u + lane;
        if (v < 36u) {
            let m = m0 + v / 9u;
            if (m < p.m_rows) { put(p.dst_off + (m * p.k_rows + k) * 9u + v % 9u, sum); }
        }
    }
    workgroupBarrier();
}

// Any kernel size, stride and padding; the slow but complete fallback for forward.
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
}
