// Elementwise ops: ReLU, the copy that materialises concatenations in the naive memory mode,
// gradient accumulation, and dropout with a mask that is a pure function of (seed, index).

// One layout for every kernel of this file (12 words); each kernel reads the words it needs.
struct Params {
    len: u32,
    x_off: u32,        // the input (relu/dropout x, copy/add src, dropout_backward dy)
    y_off: u32,        // the output
    dy_off: u32,       // relu_backward's dy (in the output's buffer), relu_backward_into's dy
    seed0: u32,
    seed1: u32,
    threshold: u32,    // dropout drops an element when its hash is below this
    scale: f32,        // 1 / (1 - rate)
    accumulate: u32,
    // A launch over one batch shard of a (C, N, H, W) tensor (C, n, H, W): values per channel
    // in the shard and in the whole batch, and the shard's first value within a channel, so
    // that dropout hashes each element's index in the whole batch. plane_shard = 0: unsharded.
    plane_shard: u32,
    plane_batch: u32,
    plane_first: u32,
}

// Each invocation handles every stride-th element from its own index on: a few elements per
// invocation, so CPU drivers do not spend the launch on per-invocation overhead.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// Only relu_backward_into binds a third buffer (dy); the other kernels never touch it.
@group(0) @binding(3) var<storage, read_write> z: array<f32>;

// y = relu(x); NaN stays NaN (common.wgsl).
@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = relu(x[p.x_off + i]);
    }
}

// y (holding dy at dy_off) becomes dx at y_off: dx = dy where relu passes x (x > 0 or NaN).
@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = select(0.0, y[p.dy_off + i], relu_live(x[p.x_off + i]));
    }
}

// y (dx) = dy (z) where relu passes x, else 0; added to dx when accumulating.
@compute @workgroup_size(256)
fn relu_backward_into(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        let v = select(0.0, z[p.dy_off + i], relu_live(x[p.x_off + i]));
        if (p.accumulate != 0u) {
            y[p.y_off + i] += v;
        } else {
            y[p.y_off + i] = v;
        }
    }
}

// y = x
@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = x[p.x_off + i];
    }
}

// y += x
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] += x[p.x_off + i];
    }
}

// A bijective integer mixer (xorshift-multiply rounds); full avalanche in two multiplies.
fn mix32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// The dropout hash of element i. Both seed words are mixed into two keys and the index is
// mixed twice around the second key, so masks of different seeds are not index permutations
// of each other. `reference::elementwise::dropout_hash` is the same function.
fn dropout_hash(i: u32) -> u32 {
    let k0 = mix32(p.seed0 ^ 0x9e3779b9u);
    let k1 = mix32(p.seed1 ^ k0);
    return mix32(mix32(i ^ k0) + k1);
}

// The index in the whole batch's tensor of element i of the launch's shard.
fn batch_index(i: u32) -> u32 {
    if (p.plane_shard == 0u) { return i; }
    return (i / p.plane_shard) * p.plane_batch + p.plane_first + i % p.plane_shard;
}

fn dropout_value(i: u32, v: f32) -> f32 {
    return select(0.0, v * p.scale, dropout_hash(batch_index(i)) >= p.threshold);
}

// y = x·scale where kept, else 0.
@compute @workgroup_size(256)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = dropout_value(i, x[p.x_off + i]);
    }
}

// dx (y) = dy (x)·scale where kept, else 0; added to dx when accumulating.
@compute @workgroup_size(256)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        let v = dropout_value(i, x[p.x_off + i]);
        if (p.accumulate != 0u) {
            y[p.y_off + i] += v;
        } else {
            y[p.y_off + i] = v;
        }
    }
}

// dropout_backward with dx = dy (same range, not accumulating): WebGPU forbids binding the
// range twice when writable, so the gradient is read from and written to y.
@compute @workgroup_size(256)
fn dropout_backward_in_place(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = dropout_value(i, y[p.x_off + i]);
    }
}

// y = value (the `scale` word) over len elements: zeroes the part of a gradient that no
// consumer wrote before the first accumulating contribution arrives.
@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        y[p.y_off + i] = p.scale;
    }
}
