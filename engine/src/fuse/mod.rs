//! The rewrite rules the loader runs on a decluttered graph, apart from the operators they put
//! in (as tract keeps `rewrite_rules/` apart from `ops/`): attention into one operator, GPT-2's
//! tanh GELU into tract's, the decoder's cache plumbing into per-layer cached attention. The
//! int8 products' passes are `int8::passes`. [`splice`] is the one move they all make.

pub mod attention;
pub mod gelu;
pub mod kv_cache;

use tract_onnx::prelude::*;

/// Puts `op`, reading `inputs`, in place of what produced `replaced`: its readers read the new
/// node instead, and the nodes left unread go at the next `compact`. The fusions' one move.
pub(crate) fn splice(
    model: &mut TypedModel,
    name: String,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    replaced: OutletId,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let taps = inputs.iter().map(|&i| patch.tap_model(model, i)).collect::<TractResult<Vec<_>>>()?;
    let wire = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, replaced, wire[0])?;
    patch.apply(model)
}
