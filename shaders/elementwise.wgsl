// Elementwise ops: ReLU forward and backward, and a strided copy used to materialise
// concatenations in the naive memory mode.

struct Params {
    len: u32,
    x_off: u32,
    y_off: u32,
    dy_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// y = max(x, 0)
@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.len) { return; }
    y[p.y_off + i] = max(x[p.x_off + i], 0.0);
}

// y (holding dy at dy_off) becomes dx at y_off: dx = dy where x > 0.
@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.len) { return; }
    y[p.y_off + i] = select(0.0, y[p.dy_off + i], x[p.x_off + i] > 0.0);
}
