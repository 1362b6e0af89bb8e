//! Every host-side uniform block against the `Params` struct of its shader, through naga's
//! reflection and with no GPU: the same fields in the same order, at the same byte offsets,
//! with the same scalar types, and the same size. A field added to one side only fails here.

use densegpu::gpu::uniform::{FieldKind, Uniform};
use densegpu::ops::{batchnorm, conv, elementwise, linear, loss, pool, sgd};

fn check<P: Uniform>() {
    let shader = P::SHADER;
    let source = shader.source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{} does not parse:\n{}", shader.name, e.emit_to_string(&source)));
    let rust = std::any::type_name::<P>();
    let (_, global) = module
        .global_variables
        .iter()
        .find(|(_, g)| {
            g.space == naga::AddressSpace::Uniform && g.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0)
        })
        .unwrap_or_else(|| panic!("{} has no uniform block at @group(0) @binding(0)", shader.name));
    let naga::TypeInner::Struct { members, span } = &module.types[global.ty].inner else {
        panic!("{}'s uniform block is not a struct", shader.name);
    };
    let names = |f: &dyn Fn(usize) -> String, n: usize| (0..n).map(f).collect::<Vec<_>>().join(", ");
    assert_eq!(
        members.len(),
        P::FIELDS.len(),
        "{rust} has fields [{}], {}'s Params has [{}]",
        names(&|i| P::FIELDS[i].name.to_string(), P::FIELDS.len()),
        shader.name,
        names(&|i| members[i].name.clone().unwrap_or_default(), members.len())
    );
    for (m, f) in members.iter().zip(P::FIELDS) {
        let name = m.name.as_deref().unwrap_or("?");
        assert_eq!(name, f.name, "{rust}: field `{}` stands where {}'s Params has `{name}`", f.name, shader.name);
        assert_eq!(
            m.offset as usize, f.offset,
            "{rust}.{name}: byte offset {} on the host, {} in WGSL",
            f.offset, m.offset
        );
        let wgsl_kind = match module.types[m.ty].inner {
            naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Uint, width: 4 }) => FieldKind::U32,
            naga::TypeInner::Scalar(naga::Scalar { kind: naga::ScalarKind::Float, width: 4 }) => FieldKind::F32,
            ref other => panic!("{}'s Params.{name} is {other:?}, not a 32-bit scalar", shader.name),
        };
        assert_eq!(wgsl_kind, f.kind, "{rust}.{name}: {:?} on the host, {wgsl_kind:?} in WGSL", f.kind);
    }
    assert_eq!(*span as usize, std::mem::size_of::<P>(), "{rust}: size differs from {}'s Params", shader.name);
}

#[test]
fn every_uniform_block_matches_its_wgsl_struct() {
    check::<batchnorm::kernels::BatchNormParams>();
    check::<conv::kernels::ConvParams>();
    check::<elementwise::kernels::ElementwiseParams>();
    check::<linear::kernels::LinearParams>();
    check::<loss::kernels::LossParams>();
    check::<pool::kernels::PoolParams>();
    check::<sgd::kernels::SgdParams>();
    check::<densegpu::peak::PeakParams>();
}

#[test]
fn a_mismatched_block_is_caught() {
    // The checker itself must be able to fail: a block declared for the wrong shader.
    densegpu::uniform! {
        struct Wrong for densegpu::gpu::shaders::SGD { len: u32, param_off: u32 }
    }
    assert!(std::panic::catch_unwind(check::<Wrong>).is_err());
}
