// Softmax cross-entropy, mean over the batch (over the whole batch when a launch covers one
// batch shard, its mean and correct count then accumulating over the shards), from class-major logits (K, N) and labels
// stored as f32 class indices (N). One workgroup does the whole batch so the mean and the
// correct count come out of a fixed-order tree reduction: deterministic, no atomics. The
// batch is small next to everything else in a step, so one workgroup is not a bottleneck.
//
// Bindings (offN is the element offset of the tensor bound at binding N):
//   1 = logits (K, N), 2 = labels (N), 3 = dlogits (K, N), 4 = [loss, correct] (2)
//
// A label that is NaN or outside [0, K) reads no logit by it: its sample makes the loss NaN,
// its dlogits column NaN, and it never counts as correct. Fractional labels truncate.

struct Params {
    classes: u32,
    n: u32,
    // Images of the whole batch, when the launch covers one batch shard of `n` of them: the
    // loss and its gradient are means over the whole batch.
    n_total: u32,
    write_grad: u32,
    accumulate: u32,
    off1: u32,
    off2: u32,
    off3: u32,
    off4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;

var<workgroup> part_loss: array<f32, 256>;
var<workgroup> part_hits: array<u32, 256>;
var<workgroup> part_bad: array<u32, 256>;

// WGSL may assume arithmetic never makes NaN, so NaN is written as a bit pattern, not computed.
// The uniform keeps the expression out of constant evaluation, which rejects NaN.
fn quiet_nan() -> f32 {
    return bitcast<f32>(0x7fc00000u | (p.classes & 0u));
}

@compute @workgroup_size(256)
fn cross_entropy(@builtin(local_invocation_index) t: u32) {
    var loss_sum = 0.0;
    var hits = 0u;
    var bad = 0u;
    let k_count = p.classes;
    for (var s = t; s < p.n; s += 256u) {
        // The maximum serves twice: it makes exp() safe and, taken strictly, is argmax with
        // ties going to the lowest index like torch.argmax.
        var m = logits[p.off1 + s];
        var arg = 0u;
        for (var k = 1u; k < k_count; k++) {
            let v = logits[p.off1 + k * p.n + s];
            if (v > m) {
                m = v;
                arg = k;
            }
        }
        var z = 0.0;
        for (var k = 0u; k < k_count; k++) {
            z += exp(logits[p.off1 + k * p.n + s] - m);
        }
        let l = labels[p.off2 + s];
        // Written so that NaN fails it: comparisons with NaN are false.
        let valid = l >= 0.0 && l < f32(k_count);
        let label = select(0u, u32(l), valid);
        if (valid) {
            loss_sum += log(z) + m - logits[p.off1 + label * p.n + s];
            hits += select(0u, 1u, arg == label);
        } else {
            bad += 1u;
        }
        if (p.write_grad != 0u) {
            write_dlogits(s, 0u, 1u, m, z, label, valid);
        }
    }
    finish(t, loss_sum, hits, bad);
}

// dlogits of sample s for classes first, first + step, ...: (softmax − onehot) / n_total from
// the row's maximum m and exp-sum z, or NaN for an invalid label.
fn write_dlogits(s: u32, first: u32, step: u32, m: f32, z: f32, label: u32, valid: bool) {
    let inv_n = 1.0 / f32(p.n_total);
    for (var k = first; k < p.classes; k += step) {
        let j = p.off1 + k * p.n + s;
        let onehot = select(0.0, 1.0, k == label);
        var d = (exp(logits[j] - m) / z - onehot) * inv_n;
        if (!valid) {
            d = quiet_nan();
        }
        dlogits[p.off3 + k * p.n + s] = d;
    }
}

// The batch totals from each invocation's (loss_sum, hits, bad), by a fixed-order tree, into
// [loss, correct] (added to what they hold with `accumulate`). Must be reached in uniform
// control flow by all 256 invocations.
fn finish(t: u32, loss_sum: f32, hits: u32, bad: u32) {
    part_loss[t] = loss_sum;
    part_hits[t] = hits;
    part_bad[t] = bad;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            part_loss[t] += part_loss[t + stride];
            part_hits[t] += part_hits[t + stride];
            part_bad[t] += part_bad[t + stride];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        var mean = part_loss[0] / f32(p.n_total);
        var count = f32(part_hits[0]);
        if (p.accumulate != 0u) {
            mean += loss[p.off4];
            count += loss[p.off4 + 1u];
        }
        if (part_bad[0] != 0u) {
            mean = quiet_nan();
        }
        loss[p.off4] = mean;
        loss[p.off4 + 1u] = count;
    }
}

// The workgroup family's form, for GPUs, in two passes. First `cross_entropy_rows`: one
// workgroup per sample, its 64 invocations striding over the classes (a GPU then has a
// workgroup per image to spread, and a 1000-class row is not one invocation's serial loop).
// It writes dlogits and the sample's [loss, hit, bad] into the scratch bound as `loss`
// (3 floats per sample from off4). Then `combine_rows` sums those over the batch in a fixed
// order, as cross_entropy does, into the [loss, correct] pair bound as `loss` at off4, reading
// the scratch bound as `dlogits` at off3.
const ROW: u32 = 64u;
var<workgroup> row_max: array<f32, ROW>;
var<workgroup> row_arg: array<u32, ROW>;
var<workgroup> row_sum: array<f32, ROW>;

@compute @workgroup_size(64)
fn cross_entropy_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let s = wg.x;
    let k_count = p.classes;
    // The row's maximum and, among equal maxima, the lowest class index (torch.argmax).
    var m = logits[p.off1 + min(t, k_count - 1u) * p.n + s];
    var arg = min(t, k_count - 1u);
    for (var k = t + ROW; k < k_count; k += ROW) {
        let v = logits[p.off1 + k * p.n + s];
        if (v > m) {
            m = v;
            arg = k;
        }
    }
    row_max[t] = m;
    row_arg[t] = arg;
    workgroupBarrier();
    for (var stride = ROW / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            let v = row_max[t + stride];
            let a = row_arg[t + stride];
            if (v > row_max[t] || (v == row_max[t] && a < row_arg[t])) {
                row_max[t] = v;
                row_arg[t] = a;
            }
        }
        workgroupBarrier();
    }
    m = row_max[0];
    arg = row_arg[0];
    var z = 0.0;
    for (var k = t; k < k_count; k += ROW) {
        z += exp(logits[p.off1 + k * p.n + s] - m);
    }
    row_sum[t] = z;
    workgroupBarrier();
    for (var stride = ROW / 2u; stride > 0u; stride >>= 1u) {
        if (t < stride) {
            row_sum[t] += row_sum[t + stride];
        }
        workgroupBarrier();
    }
    z = row_sum[0];
    let l = labels[p.off2 + s];
    let valid = l >= 0.0 && l < f32(k_count);
    let label = select(0u, u32(l), valid);
    if (p.write_grad != 0u) {
        write_dlogits(s, t, ROW, m, z, label, valid);
    }
    if (t == 0u) {
        let o = p.off4 + 3u * s;
        loss[o] = select(0.0, log(z) + m - logits[p.off1 + label * p.n + s], valid);
        loss[o + 1u] = select(0.0, 1.0, valid && arg == label);
        loss[o + 2u] = select(1.0, 0.0, valid);
    }
}

@compute @workgroup_size(256)
fn combine_rows(@builtin(local_invocation_index) t: u32) {
    var loss_sum = 0.0;
    var hits = 0u;
    var bad = 0u;
    for (var s = t; s < p.n; s += 256u) {
        let o = p.off3 + 3u * s;
        loss_sum += dlogits[o];
        hits += u32(dlogits[o + 1u]);
        bad += u32(dlogits[o + 2u]);
    }
    finish(t, loss_sum, hits, bad);
}
