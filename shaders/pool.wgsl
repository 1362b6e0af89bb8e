// Pooling over the spatial dims of channel-major (C, N, H, W) activations. Every (c, n) pair
// is one independent H x W plane, so the kernels see only `planes` = C·N, never C or N apart.
//
// Bindings (offN is the element offset of the tensor bound at binding N):
//   *_forward:                     1 = x,  2 = y
//   avg / global_avg backward:     1 = dy, 2 = dx
//   max_pool_backward:             1 = x,  2 = dx, 3 = dy

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    accumulate: u32,
    off1: u32,
    off2: u32,
    off3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> t1: array<f32>;
@group(0) @binding(2) var<storage, read_write> t2: array<f32>;
@group(0) @binding(3) var<storage, read_write> t3: array<f32>;

// Gradient outputs live at binding 2. A branch rather than `old * flag`: an overwritten output
// may hold NaN, and NaN * 0 is still NaN.
fn store_grad(i: u32, g: f32) {
    if (p.accumulate != 0u) {
        t2[p.off2 + i] = t2[p.off2 + i] + g;
    } else {
        t2[p.off2 + i] = g;
    }
}

// 2x2 stride 2; an odd last row or column is dropped, as AvgPool2d(2, 2) does.
@compute @workgroup_size(256)
fn avg_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let per_plane = p.oh * p.ow;
    if (i >= p.planes * per_plane) { return; }
    let plane = i / per_plane;
    let r = i % per_plane;
    let oy = r / p.ow;
    let ox = r % p.ow;
    let a = p.off1 + plane * p.h * p.w + 2u * oy * p.w + 2u * ox;
    t2[p.off2 + i] = 0.25 * ((t1[a] + t1[a + 1u]) + (t1[a + p.w] + t1[a + p.w + 1u]));
}

// One invocation per input element: windows do not overlap, so each element has at most one
// output gradient to collect (none in a dropped odd row or column).
@compute @workgroup_size(256)
fn avg_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let per_plane = p.h * p.w;
    if (i >= p.planes * per_plane) { return; }
    let plane = i / per_plane;
    let r = i % per_plane;
    let oy = (r / p.w) / 2u;
    let ox = (r % p.w) / 2u;
    var g = 0.0;
    if (oy < p.oh && ox < p.ow) {
        g = 0.25 * t1[p.off1 + plane * p.oh * p.ow + oy * p.ow + ox];
    }
    store_grad(i, g);
}

// The in-plane index of the first maximum of output (oy, ox)'s 3x3 stride-2 pad-1 window over
// x at binding 1, scanning row-major as PyTorch does. Cells in the padding are never visited,
// so padding never wins even when every real value is negative.
fn window_argmax(plane_base: u32, oy: u32, ox: u32) -> u32 {
    let y0 = select(2u * oy - 1u, 0u, oy == 0u);
    let x0 = select(2u * ox - 1u, 0u, ox == 0u);
    let y1 = min(2u * oy + 1u, p.h - 1u);
    let x1 = min(2u * ox + 1u, p.w - 1u);
    var best = y0 * p.w + x0;
    var m = t1[plane_base + best];
    for (var y = y0; y <= y1; y++) {
        for (var x = x0; x <= x1; x++) {
            let j = y * p.w + x;
            let v = t1[plane_base + j];
            // Strictly greater: on ties the earlier cell keeps the gradient. A NaN always wins
            // (the last one in the window), as in PyTorch's kernel, so the NaN propagates.
            if (v > m || is_nan(v)) {
                m = v;
                best = j;
            }
        }
    }
    return best;
}

@compute @workgroup_size(256)
fn max_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let per_plane = p.oh * p.ow;
    if (i >= p.planes * per_plane) { return; }
    let plane = i / per_plane;
    let r = i % per_plane;
    let base = p.off1 + plane * p.h * p.w;
    t2[p.off2 + i] = t1[base + window_argmax(base, r / p.ow, r % p.ow)];
}

// Gather form: each input element recomputes the argmax of the (at most 2x2) windows that
// cover it and sums the gradients of those it wins. No stored indices, no atomics, and the
// routing is exactly the forward's.
@compute @workgroup_size(256)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let per_plane = p.h * p.w;
    if (i >= p.planes * per_plane) { return; }
    let plane = i / per_plane;
    let r = i % per_plane;
    let y = r / p.w;
    let x = r % p.w;
    let base = p.off1 + plane * per_plane;
    let dy_base = p.off3 + plane * p.oh * p.ow;
    // Window oy covers rows 2·oy−1 ..= 2·oy+1.
    let oy1 = min((y + 1u) / 2u, p.oh - 1u);
    let ox1 = min((x + 1u) / 2u, p.ow - 1u);
    var g = 0.0;
    for (var oy = y / 2u; oy <= oy1; oy++) {
        for (var ox = x / 2u; ox <= ox1; ox++) {
            if (window_argmax(base, oy, ox) == r) {
                g += t3[dy_base + oy * p.ow + ox];
            }
        }
    }
    store_grad(i, g);
}

// Output (C, N): one invocation sums one plane. Planes are small by the time a network pools
// globally (8x8 or 7x7), so a serial sum is both fast enough and accurate.
@compute @workgroup_size(256)
fn global_avg_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.planes) { return; }
    let per_plane = p.h * p.w;
    let base = p.off1 + i * per_plane;
    var s = 0.0;
    for (var j = 0u; j < per_plane; j++) {
        s += t1[base + j];
    }
    t2[p.off2 + i] = s / f32(per_plane);
}

@compute @workgroup_size(256)
fn global_avg_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let per_plane = p.h * p.w;
    if (i >= p.planes * per_plane) { return; }
    store_grad(i, t1[p.off1 + i / per_plane] / f32(per_plane));
}
