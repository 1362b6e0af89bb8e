// Batch norm over channel-major (C, N, H, W) activations: each channel's M = N*H*W values are
// contiguous, so a channel is one range and one workgroup can own it.
//
// Small per-BN tensors hold 2C floats each: stats = [mean, invstd], affine = [gamma, beta],
// grad_affine = [dgamma, dbeta], running = [running_mean, running_var]. Their second half starts
// c_stride after the first, so a launch can cover a slice of a batch norm's channels.
//
// Every kernel of this file uses the same binding roles, so a role never moves between
// kernels; a kernel that does not use a role gets some other buffer bound there by the host.

struct Params {
    c: u32,
    m: u32,
    x_off: u32,
    dy_off: u32,
    out_off: u32,        // y for apply, dx for backward
    stats_off: u32,
    affine_off: u32,
    grad_off: u32,
    running_off: u32,
    momentum: f32,
    eps: f32,
    relu: u32,
    accumulate_affine: u32,
    accumulate_out: u32,
    // The channel count of the 2C tensors; more than c when a launch covers a slice of the
    // channels (the host then adds the slice's first channel to their offsets).
    c_stride: u32,
    // backward_input reads dy from `out` and overwrites it, for a gradient computed in place.
    in_place: u32,
    // Values per channel in the whole batch: m when a launch covers the whole batch, more when
    // it covers one batch shard (the statistics and the input gradient are the whole batch's).
    m_total: u32,
    // Partial results over parts of each channel's values: batch shards (shard_stats, one
    // launch per shard) or pixel splits (split_stats and split_affine, one workgroup layer per
    // split). `parts` is their number; `part` the launch's shard.
    parts: u32,
    part: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> affine: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read_write> running: array<f32>;

const WG: u32 = 256u;
// The reduction is two levels of 16 so that it costs two barriers: on lavapipe a barrier
// switches every SIMD group of the workgroup, so a deep tree is slower than a wide one.
const FAN: u32 = 16u;

var<workgroup> red_a: array<f32, WG>;
var<workgroup> red_b: array<f32, WG>;

// Sums (a, b) over the workgroup; every invocation receives both totals. Must be reached in
// uniform control flow. The first barrier lets a kernel call it twice: no invocation overwrites
// the scratch before every invocation has read the previous totals.
fn reduce_pair(lid: u32, a: f32, b: f32) -> vec2<f32> {
    workgroupBarrier();
    red_a[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    if (lid < FAN) {
        var sa = 0.0;
        var sb = 0.0;
        for (var k = 0u; k < FAN; k++) {
            sa += red_a[lid * FAN + k];
            sb += red_b[lid * FAN + k];
        }
        red_a[lid * FAN] = sa;
        red_b[lid * FAN] = sb;
    }
    workgroupBarrier();
    var ta = 0.0;
    var tb = 0.0;
    for (var k = 0u; k < FAN; k++) {
        ta += red_a[k * FAN];
        tb += red_b[k * FAN];
    }
    return vec2(ta, tb);
}

// The normalised, affine value before the optional ReLU. Forward and backward both call this
// so that the ReLU mask recomputed in backward agrees bit for bit with the forward output.
fn bn_value(v: f32, mean: f32, invstd: f32, gamma: f32, beta: f32) -> f32 {
    return (v - mean) * invstd * gamma + beta;
}

// One workgroup per channel. The sums are shifted by the mean of 256 of the channel's values,
// one per invocation, evenly spaced over all its images, which lies within about a sixteenth
// of a deviation of the channel's mean: the variance then never subtracts two large, nearly equal numbers, and the
// mean is corrected by Σ(x - shift) / M, a sum of values the size of the spread, not of the
// mean. (Shifting by one sample left the variance exposed to a sample far from the rest; a
// second pass over the channel cost 2.4x the kernel's time.)
// The mean and biased variance of values [lo, hi) of channel ch (see train_stats), valid in
// invocation 0. Must be reached in uniform control flow.
fn range_moments(ch: u32, lo: u32, hi: u32, lid: u32) -> vec2<f32> {
    let base = p.x_off + ch * p.m + lo;
    let len = hi - lo;
    let sampled = min(len, WG);
    let sample = select(0.0, x[base + min(lid * (len / sampled), len - 1u)], lid < sampled);
    let shift = reduce_pair(lid, sample, 0.0).x / f32(sampled);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var i = lid; i < len; i += WG) {
        let d = x[base + i] - shift;
        s1 += d;
        s2 += d * d;
    }
    let s = reduce_pair(lid, s1, s2);
    let mf = f32(len);
    let dm = s.x / mf;
    // relu, not max: a NaN variance must stay NaN (common.wgsl).
    return vec2(shift + dm, relu(s.y / mf - dm * dm));
}

fn channel_moments(ch: u32, lid: u32) -> vec2<f32> {
    return range_moments(ch, 0u, p.m, lid);
}

// Split k of `parts` over a channel's m values: balanced, and never empty while parts <= m.
fn split_range(k: u32) -> vec2<u32> {
    return vec2(k * p.m / p.parts, (k + 1u) * p.m / p.parts);
}

// Writes a channel's batch statistics and updates its running ones (PyTorch's unbiased
// running variance over the whole batch's m_total values).
fn store_batch_stats(ch: u32, mean: f32, var_b: f32) {
    let mf = f32(p.m_total);
    stats[p.stats_off + ch] = mean;
    stats[p.stats_off + p.c_stride + ch] = 1.0 / sqrt(var_b + p.eps);
    let mo = p.momentum;
    let rm = p.running_off + ch;
    let rv = p.running_off + p.c_stride + ch;
    running[rm] = (1.0 - mo) * running[rm] + mo * mean;
    running[rv] = (1.0 - mo) * running[rv] + mo * var_b * (mf / (mf - 1.0));
}

@compute @workgroup_size(256)
fn train_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let moments = channel_moments(wg.x, lid);
    if (lid == 0u) {
        store_batch_stats(wg.x, moments.x, moments.y);
    }
}

// One batch shard's part of train_stats: its mean, its sum of squared deviations and its
// value count, per channel, into the scratch bound as `out` (3·c_stride floats per shard).
@compute @workgroup_size(256)
fn shard_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = wg.x;
    let moments = channel_moments(ch, lid);
    if (lid == 0u) {
        store_part_moments(p.part, ch, moments, p.m);
    }
}

// A part's mean, sum of squared deviations and count, into the scratch bound as `out`.
fn store_part_moments(part: u32, ch: u32, moments: vec2<f32>, count: u32) {
    let o = p.out_off + part * 3u * p.c_stride + ch;
    out[o] = moments.x;
    out[o + p.c_stride] = moments.y * f32(count);
    out[o + 2u * p.c_stride] = f32(count);
}

// The workgroup family's train_stats, first pass: grid (channel, split), each workgroup the
// moments of one split of one channel's values, as shard_stats writes a shard's. combine_stats
// then combines the splits in order. A GPU gets `parts` times the workgroups of train_stats.
@compute @workgroup_size(256)
fn split_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = split_range(wg.y);
    let moments = range_moments(wg.x, r.x, r.y, lid);
    if (lid == 0u) {
        store_part_moments(wg.y, wg.x, moments, r.y - r.x);
    }
}

// The whole batch's statistics from every part's (Chan, Golub and LeVeque's pairwise update,
// "Algorithms for computing the sample variance", 1983), part after part in batch order, so
// the result never depends on timing. One invocation per channel.
@compute @workgroup_size(64)
fn combine_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var k = 0u; k < p.parts; k++) {
        let o = p.out_off + k * 3u * p.c_stride + ch;
        let nk = out[o + 2u * p.c_stride];
        let n = count + nk;
        let delta = out[o] - mean;
        mean += delta * (nk / n);
        m2 += out[o + p.c_stride] + delta * delta * (count * (nk / n));
        count = n;
    }
    store_batch_stats(ch, mean, relu(m2 / f32(p.m_total)));
}

@compute @workgroup_size(64)
fn eval_stats(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    stats[p.stats_off + ch] = running[p.running_off + ch];
    stats[p.stats_off + p.c_stride + ch] = 1.0 / sqrt(running[p.running_off + p.c_stride + ch] + p.eps);
}

// Grid: x strides over the channel's values, y is the channel.
@compute @workgroup_size(256)
fn apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let ch = gid.y;
    let mean = stats[p.stats_off + ch];
    let invstd = stats[p.stats_off + p.c_stride + ch];
    let gamma = affine[p.affine_off + ch];
    let beta = affine[p.affine_off + p.c_stride + ch];
    let relu_on = p.relu != 0u;
    let src = p.x_off + ch * p.m;
    let dst = p.out_off + ch * p.m;
    let stride = groups.x * WG;
    for (var i = gid.x; i < p.m; i += stride) {
        var v = bn_value(x[src + i], mean, invstd, gamma, beta);
        if (relu_on) { v = relu(v); }
        out[dst + i] = v;
    }
}

// One channel's constants, loaded once per invocation.
struct Channel {
    mean: f32,
    invstd: f32,
    gamma: f32,
    beta: f32,
    x_base: u32,
    dy_base: u32,
    out_base: u32,
}

fn channel(ch: u32) -> Channel {
    return Channel(
        stats[p.stats_off + ch],
        stats[p.stats_off + p.c_stride + ch],
        affine[p.affine_off + ch],
        affine[p.affine_off + p.c_stride + ch],
        p.x_off + ch * p.m,
        p.dy_off + ch * p.m,
        p.out_off + ch * p.m,
    );
}

// xhat and the gradient reaching the normalisation (dy, zeroed where the fused ReLU was
// inactive) of value i. The mask uses bn_value so it agrees with the forward output.
fn xhat_and_grad(k: Channel, i: u32, relu: bool) -> vec2<f32> {
    let v = x[k.x_base + i];
    var g: f32;
    if (p.in_place != 0u) { g = out[k.out_base + i]; } else { g = dy[k.dy_base + i]; }
    let live = !relu || relu_live(bn_value(v, k.mean, k.invstd, k.gamma, k.beta));
    return vec2((v - k.mean) * k.invstd, select(0.0, g, live));
}

struct ChannelSums {
    dgamma: f32,
    dbeta: f32,
}

// Sums over values [lo, hi) of the channel. Must be reached in uniform control flow.
fn range_sums(k: Channel, lo: u32, hi: u32, lid: u32) -> ChannelSums {
    let relu = p.relu != 0u;
    var sb = 0.0;
    var sg = 0.0;
    for (var i = lo + lid; i < hi; i += WG) {
        let hg = xhat_and_grad(k, i, relu);
        sb += hg.y;
        sg += hg.y * hg.x;
    }
    let s = reduce_pair(lid, sg, sb);
    return ChannelSums(s.x, s.y);
}

fn channel_sums(k: Channel, lid: u32) -> ChannelSums {
    return range_sums(k, 0u, p.m, lid);
}

fn store_affine_grad(ch: u32, s: ChannelSums) {
    let gi = p.grad_off + ch;
    let bi = p.grad_off + p.c_stride + ch;
    if (p.accumulate_affine != 0u) {
        grad[gi] += s.dgamma;
        grad[bi] += s.dbeta;
    } else {
        grad[gi] = s.dgamma;
        grad[bi] = s.dbeta;
    }
}

// dx over values first, first + step, ... of one channel, given that channel's own sums.
fn input_grad(k: Channel, s: ChannelSums, first: u32, step: u32) {
    let relu = p.relu != 0u;
    let acc = p.accumulate_out != 0u;
    let m = p.m;
    let scale = k.gamma * k.invstd;
    let inv_m = 1.0 / f32(p.m_total);
    for (var i = first; i < m; i += step) {
        let hg = xhat_and_grad(k, i, relu);
        var v = scale * (hg.y - (s.dbeta + hg.x * s.dgamma) * inv_m);
        if (acc) { v += out[k.out_base + i]; }
        out[k.out_base + i] = v;
    }
}

// One workgroup per channel.
@compute @workgroup_size(256)
fn backward_affine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = channel_sums(channel(wg.x), lid);
    if (lid == 0u) { store_affine_grad(wg.x, s); }
}

// The workgroup family's backward_affine, first pass: grid (channel, split), each workgroup
// one split's dgamma and dbeta into the scratch bound as `out` (2·c_stride floats per split).
@compute @workgroup_size(256)
fn split_affine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = split_range(wg.y);
    let s = range_sums(channel(wg.x), r.x, r.y, lid);
    if (lid == 0u) {
        let o = p.out_off + wg.y * 2u * p.c_stride + wg.x;
        out[o] = s.dgamma;
        out[o + p.c_stride] = s.dbeta;
    }
}

// Second pass: the splits' sums added in split order, written or accumulated as
// backward_affine's. One invocation per channel.
@compute @workgroup_size(64)
fn combine_affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.c) { return; }
    var s = ChannelSums(0.0, 0.0);
    for (var k = 0u; k < p.parts; k++) {
        let o = p.out_off + k * 2u * p.c_stride + ch;
        s.dgamma += out[o];
        s.dbeta += out[o + p.c_stride];
    }
    store_affine_grad(ch, s);
}

// Grid as in `apply`. Reads the channel sums from grad_affine, so those must be this batch's
// own sums (backward_affine run without accumulation).
@compute @workgroup_size(256)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let ch = gid.y;
    let s = ChannelSums(grad[p.grad_off + ch], grad[p.grad_off + p.c_stride + ch]);
    input_grad(channel(ch), s, gid.x, groups.x * WG);
}

// One workgroup per channel: the sums, then dx from the sums held in registers, so either
// output may accumulate independently of the other.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = channel(wg.x);
    let s = channel_sums(k, lid);
    if (lid == 0u) { store_affine_grad(wg.x, s); }
    input_grad(k, s, lid, WG);
}
