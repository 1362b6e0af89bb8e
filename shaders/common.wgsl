// Shared by every densegpu kernel; prepended to each op family's file.
// Binding 0 is each kernel's `Params` uniform; storage buffers follow as bindings 1, 2, ...
// Tensors are f32, activations in channel-major (C, N, H, W) order, weights as PyTorch (OIHW).

// The flat invocation index when `grid()` folded a large launch into two dimensions.
fn flat_id(gid: vec3<u32>, groups: vec3<u32>, workgroup_size: u32) -> u32 {
    return gid.x + gid.y * groups.x * workgroup_size;
}

// NaN and infinity tests on the bits. WGSL lets an implementation assume that no value is NaN
// or infinite (so `v != v` may fold to false) and lets `max(NaN, 0.0)` return either operand
// (lavapipe returns 0.0), so a ReLU written with `max` would turn a diverged activation into a
// zero and hide it. These read the IEEE 754 exponent and mantissa instead.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// ReLU as PyTorch's: max(v, 0) for numbers, NaN stays NaN.
fn relu(v: f32) -> f32 {
    return select(0.0, v, v > 0.0 || is_nan(v));
}

fn relu4(v: vec4<f32>) -> vec4<f32> {
    return vec4(relu(v.x), relu(v.y), relu(v.z), relu(v.w));
}

// Whether ReLU passes the gradient at pre-activation (or output) v. PyTorch's backward zeroes
// the gradient where the value is <= 0, so a NaN value passes its gradient through.
fn relu_live(v: f32) -> bool {
    return !(v <= 0.0) || is_nan(v);
}
