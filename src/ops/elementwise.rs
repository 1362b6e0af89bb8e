//! ReLU on its own (where it does not follow a batch norm), and the strided copy that the
//! naive memory mode uses to materialise concatenations.

use super::{grid, shaders, Dispatch, Gpu, Kernel, View};

const RELU_FORWARD: Kernel = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_forward", buffers: 2 };
const RELU_BACKWARD: Kernel = Kernel { shader: &shaders::ELEMENTWISE, entry: "relu_backward", buffers: 2 };

/// y = max(x, 0) over `len` elements.
pub fn relu_forward(gpu: &Gpu, len: u32, x: View, y: View) -> Dispatch {
    gpu.dispatch(&RELU_FORWARD, &[len, x.offset, y.offset, 0], &[x.buffer, y.buffer], grid(len as u64, 256))
}

/// dx = dy where x > 0, else 0. `dy` and `dx` must live in the same buffer (they may be the
/// same range: the gradient is masked in place).
pub fn relu_backward(gpu: &Gpu, len: u32, x: View, dy: View, dx: View) -> Dispatch {
    assert!(std::ptr::eq(dy.buffer, dx.buffer), "relu_backward: dy and dx must share a buffer");
    gpu.dispatch(&RELU_BACKWARD, &[len, x.offset, dx.offset, dy.offset], &[x.buffer, dx.buffer], grid(len as u64, 256))
}
