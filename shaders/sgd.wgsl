// torch.optim.SGD (dampening 0) over a flat range of parameters, one invocation per element,
// in PyTorch's order of operations so f32 results agree to rounding:
//   g ← g + wd·p;  buf ← momentum·buf + g;  g ← g + momentum·buf (Nesterov) or buf;
//   p ← p − lr·g.
// The gradient is read, never written. lr, momentum and wd sit in the uniform so a schedule
// only rewrites parameter words.
//
// Bindings (each offset is in elements): 1 = params, 2 = grads, 3 = momentum buffer,
// 4 = divergence flags (words).
//
// Divergence flags: the step that makes a value non-finite must stop the run, naming the
// tensor, without another pass over the parameters. So the update itself checks what it reads
// and writes: flags[flag_off] receives the lowest element index whose gradient is not finite,
// flags[flag_off + 1] the lowest whose updated weight is not (with a finite gradient, that is an
// overflow of the update). The host fills the words with 0xffffffff before the step and reads
// them back with the loss.

struct Params {
    len: u32,
    param_off: u32,
    grad_off: u32,
    buf_off: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: u32,
    flag_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> momentum_buf: array<f32>;
@group(0) @binding(4) var<storage, read_write> flags: array<atomic<u32>>;

@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.len) { return; }
    let w = param[p.param_off + i];
    var g = grad[p.grad_off + i];
    if (!is_finite(g)) {
        atomicMin(&flags[p.flag_off], i);
    }
    // PyTorch skips these terms when their coefficient is 0; so do we, so that a non-finite
    // value cannot leak in through a multiplication by zero.
    if (p.weight_decay != 0.0) {
        g = g + p.weight_decay * w;
    }
    if (p.momentum != 0.0) {
        // A zero-initialised buffer makes the first step buf = g exactly, as PyTorch's clone.
        let b = p.momentum * momentum_buf[p.buf_off + i] + g;
        momentum_buf[p.buf_off + i] = b;
        if (p.nesterov != 0u) {
            g = g + p.momentum * b;
        } else {
            g = b;
        }
    }
    let updated = w - p.lr * g;
    if (!is_finite(updated)) {
        atomicMin(&flags[p.flag_off + 1u], i);
    }
    param[p.param_off + i] = updated;
}

// flags[flag_off] receives the lowest index of params[param_off .. param_off + len) that is not
// finite. Run on the batch-norm running statistics after the forward pass, which update them
// outside the optimizer; bindings 2 and 3 are not read.
@compute @workgroup_size(256)
fn check_finite(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_id(gid, groups, 256u);
    if (i >= p.len) { return; }
    if (!is_finite(param[p.param_off + i])) {
        atomicMin(&flags[p.flag_off], i);
    }
}
