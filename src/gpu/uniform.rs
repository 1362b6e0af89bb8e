//! Typed uniform blocks. Every kernel reads its launch parameters from one `Params` struct at
//! `@group(0) @binding(0)`; on the host that struct is a `#[repr(C)]` [`bytemuck::Pod`] type
//! declared with [`uniform!`](crate::uniform), which also records the shader it mirrors and
//! each field's name, byte offset and scalar type. A GPU-free test (`tests/uniforms.rs`) checks
//! every such type against its WGSL struct through naga's reflection, so the two cannot drift
//! apart, and [`Gpu::dispatch`](crate::Gpu::dispatch) refuses a parameter block declared for
//! another shader than the kernel's.

use super::shaders::Shader;

/// A field's scalar type; WGSL uniform blocks here hold only 32-bit scalars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    U32,
    F32,
}

/// One field of a uniform block: its name, byte offset and scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniformField {
    pub name: &'static str,
    pub offset: usize,
    pub kind: FieldKind,
}

/// A host-side mirror of a shader's `Params` uniform block.
pub trait Uniform: bytemuck::Pod {
    /// The shader whose binding-0 uniform block this type mirrors.
    const SHADER: &'static Shader;
    /// The fields in declaration order.
    const FIELDS: &'static [UniformField];

    /// The block's bytes, zero-padded to the 16-byte multiple that uniform buffers are sized
    /// in.
    fn padded_bytes(&self) -> Vec<u8> {
        let mut bytes = bytemuck::bytes_of(self).to_vec();
        bytes.resize(bytes.len().next_multiple_of(16).max(16), 0);
        bytes
    }
}

/// Declares a uniform block: a `#[repr(C)]`, `Pod` struct of `u32` and `f32` fields, in the
/// order and with the names of the WGSL `Params` struct of the named shader.
///
/// ```ignore
/// uniform! {
///     /// The parameters of every kernel in sgd.wgsl.
///     pub struct SgdParams for shaders::SGD { len: u32, lr: f32 }
/// }
/// ```
#[macro_export]
macro_rules! uniform {
    (
        $(#[$doc:meta])*
        $vis:vis struct $name:ident for $shader:path {
            $($(#[$field_doc:meta])* $field:ident: $ty:ident),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$field_doc])* pub $field: $ty),*
        }

        impl $crate::gpu::uniform::Uniform for $name {
            const SHADER: &'static $crate::gpu::shaders::Shader = &$shader;
            const FIELDS: &'static [$crate::gpu::uniform::UniformField] = &[$(
                $crate::gpu::uniform::UniformField {
                    name: stringify!($field),
                    offset: ::core::mem::offset_of!($name, $field),
                    kind: $crate::uniform!(@kind $ty),
                }
            ),*];
        }
    };
    (@kind u32) => { $crate::gpu::uniform::FieldKind::U32 };
    (@kind f32) => { $crate::gpu::uniform::FieldKind::F32 };
}
