//! The WGSL sources, one file per op family with forward and backward side by side. Each is
//! compiled with `common.wgsl` in front of it, which holds the helpers every kernel shares.

#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    body: &'static str,
}

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

impl Shader {
    /// The complete module source: the shared prelude followed by the op family's kernels.
    pub fn source(&self) -> String {
        format!("{COMMON}\n{}", self.body)
    }
}

macro_rules! shaders {
    ($($id:ident => $file:literal),* $(,)?) => {
        $(pub static $id: Shader = Shader { name: $file, body: include_str!(concat!("../../shaders/", $file)) };)*
        /// Every shader, for validation tests and pipeline warm-up.
        pub static ALL: &[&Shader] = &[$(&$id),*];
    };
}

shaders! {
    BATCHNORM => "batchnorm.wgsl",
    CONV => "conv.wgsl",
    ELEMENTWISE => "elementwise.wgsl",
    LINEAR => "linear.wgsl",
    LOSS => "loss.wgsl",
    POOL => "pool.wgsl",
    SGD => "sgd.wgsl",
}
