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

// ReLU as PyTorch's: max(v, 0) for numbers, NaN stays NaN. On the bits: v is kept when it is a
// positive number or a positive NaN (as i32, > 0) or a negative NaN (as u32, above -inf's
// 0xff800000). The convs' BN-ReLU loads (ops/conv) keep `max` per value: with this test in
// every load, SwiftShader's compile of the register family's kernels ran past Chromium's GPU
// watchdog. They test each channel's statistics once instead (the conv prelude's bn_poison).
fn relu(v: f32) -> f32 {
    return select(0.0, v, bitcast<i32>(v) > 0 || bitcast<u32>(v) > 0xff800000u);
}

fn relu4(v: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(), v, (bitcast<vec4<i32>>(v) > vec4<i32>()) | (bitcast<vec4<u32>>(v) > vec4(0xff800000u)));
}

// Whether ReLU passes the gradient at pre-activation (or output) v. PyTorch's backward zeroes
// the gradient where the value is <= 0, so a NaN value passes its gradient through.
fn relu_live(v: f32) -> bool {
    return !(v <= 0.0) || is_nan(v);
}
