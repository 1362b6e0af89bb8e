// Shared by every densegpu kernel; prepended to each op family's file.
// Binding 0 is each kernel's `Params` uniform; storage buffers follow as bindings 1, 2, ...
// Tensors are f32, activations in channel-major (C, N, H, W) order, weights as PyTorch (OIHW).

// The flat invocation index when `grid()` folded a large launch into two dimensions.
fn flat_id(gid: vec3<u32>, groups: vec3<u32>, workgroup_size: u32) -> u32 {
    return gid.x + gid.y * groups.x * workgroup_size;
}
