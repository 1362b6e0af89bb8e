// The adapter's ceiling, for the step profiler's roofline (`bench_ops --peak`, src/peak.rs):
// how fast a WGSL kernel can move memory and how fast it can multiply-add, written the way
// the op kernels are (storage buffers of f32, workgroups of 256, a grid-stride loop).

struct Params {
    len: u32,      // copy_vec4: vec4s to copy; fma_chains: invocations that write a result
    rounds: u32,   // fma_chains: loop trips, each 8 independent vec4 fmas (64 FLOPs)
    scale: f32,    // fma_chains: the multiplier, from the host so the compiler cannot fold the loop
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

// dst = src, a vec4 at a time: one read and one write of every byte.
@compute @workgroup_size(256)
fn copy_vec4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * groups.y * 256u;
    for (var i = flat_id(gid, groups, 256u); i < p.len; i += stride) {
        dst[i] = src[i];
    }
}

// fma_chains: eight independent chains of vec4 fmas per invocation (enough to hide an fma's
// latency on a
// CPU's vector units and a GPU's ALUs), summed and written once so that none is dead code.
@compute @workgroup_size(256)
fn fma_chains(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    let seed = f32(i & 255u) * 1e-3;
    var a0 = vec4<f32>(seed, seed + 0.1, seed + 0.2, seed + 0.3);
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    var a4 = a0 + 4.0;
    var a5 = a0 + 5.0;
    var a6 = a0 + 6.0;
    var a7 = a0 + 7.0;
    let m = vec4<f32>(p.scale);
    let c = vec4<f32>(1e-3);
    for (var r = 0u; r < p.rounds; r++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    if (i < p.len) {
        dst[i] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    }
}
