//! The one move every fusion pass makes on a loaded graph (attention, GELU, the KV cache, int8
//! scales and column blocks): a new node in place of the subgraph it computes. Apart from
//! `graph`, which runs the passes, so that the passes need not import the loader back.

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
