// The classifier: y (out, N) = W (out, in) · x (in, N) + b, and its three gradients.
// Activations are channel-major with 1x1 spatial, so a feature's N samples are contiguous and
// every kernel lets consecutive invocations walk that contiguous sample axis.
//
// Bindings (offN is the element offset of the tensor bound at binding N):
//   linear_forward:          1 = x,  2 = [w, b],  3 = unused,  4 = y
//   linear_backward_input:   1 = dy, 2 = w,  3 = dx
//   linear_backward_weight:  1 = dy, 2 = x,  3 = dw
//   linear_backward_bias:    1 = dy, 2 = db

struct Params {
    n: u32,
    in_features: u32,
    out_features: u32,
    accumulate: u32,
    off1: u32,
    off2: u32,
    off3: u32,
    off4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> t1: array<f32>;
@group(0) @binding(2) var<storage, read_write> t2: array<f32>;
@group(0) @binding(3) var<storage, read_write> t3: array<f32>;
@group(0) @binding(4) var<storage, read_write> t4: array<f32>;

// A branch rather than `old * flag`: an overwritten output may hold NaN.
fn store3(i: u32, g: f32) {
    if (p.accumulate != 0u) {
        t3[p.off3 + i] = t3[p.off3 + i] + g;
    } else {
        t3[p.off3 + i] = g;
    }
}

// One invocation per y[o, s].
@compute @workgroup_size(256)
fn linear_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.out_features * p.n) { return; }
    let o = i / p.n;
    let s = i % p.n;
    let w_row = p.off2 + o * p.in_features;
    var acc = 0.0;
    for (var k = 0u; k < p.in_features; k++) {
        acc += t2[w_row + k] * t1[p.off1 + k * p.n + s];
    }
    // The bias follows the weights in the same binding (one parameter group).
    t4[p.off4 + i] = acc + t2[p.off2 + p.out_features * p.in_features + o];
}

// dx[k, s] = Σ_o w[o, k] · dy[o, s]; one invocation per dx element.
@compute @workgroup_size(256)
fn linear_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.in_features * p.n) { return; }
    let k = i / p.n;
    let s = i % p.n;
    var acc = 0.0;
    for (var o = 0u; o < p.out_features; o++) {
        acc += t2[p.off2 + o * p.in_features + k] * t1[p.off1 + o * p.n + s];
    }
    store3(i, acc);
}

// dw[o, k] = Σ_s dy[o, s] · x[k, s]; one invocation per weight.
@compute @workgroup_size(256)
fn linear_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.out_features * p.in_features) { return; }
    let o = i / p.in_features;
    let k = i % p.in_features;
    let dy_row = p.off1 + o * p.n;
    let x_row = p.off2 + k * p.n;
    var acc = 0.0;
    for (var s = 0u; s < p.n; s++) {
        acc += t1[dy_row + s] * t2[x_row + s];
    }
    store3(i, acc);
}

// db[o] = Σ_s dy[o, s]. The gradient sits at binding 2 here, so no store3.
@compute @workgroup_size(256)
fn linear_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let o = flat_id(gid, groups, 256u);
    if (o >= p.out_features) { return; }
    var acc = 0.0;
    for (var s = 0u; s < p.n; s++) {
        acc += t1[p.off1 + o * p.n + s];
    }
    if (p.accumulate != 0u) {
        t2[p.off2 + o] = t2[p.off2 + o] + acc;
    } else {
        t2[p.off2 + o] = acc;
    }
}
