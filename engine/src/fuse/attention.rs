//! Finds attention in a decluttered graph and puts one [`FusedAttention`] in its place: the
//! graph builders' attention (scores `EinSum`, optional additive bias, `Softmax` over the key
//! axis, context `EinSum`) always ends up this way, whatever transposes the graph had around it:
//! tract folds them into the products' axis mappings, which [`Layout`] reads back. Anything else
//! is left to tract. The operator is `crate::attention`.

use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_onnx::tract_hir::internal::*;

use crate::attention::{FusedAttention, Layout, Role};

/// Replaces each attention of a decluttered `model` by one [`FusedAttention`]; returns how many.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for softmax in model.eval_order()? {
        let Some(found) = Found::at(model, softmax)? else { continue };
        let name = format!("{}.fused", model.node(found.context).name);
        crate::fuse::splice(model, name, found.op, &found.inputs, OutletId::new(found.context, 0))?;
        fused += 1;
    }
    if fused > 0 {
        model.compact()?;
    }
    Ok(fused)
}

/// One attention found around a `Softmax` node.
struct Found {
    op: FusedAttention,
    /// q, k, v and the bias if any.
    inputs: Vec<OutletId>,
    /// The node whose output the fused operator replaces.
    context: usize,
}

impl Found {
    fn at(model: &TypedModel, softmax: usize) -> TractResult<Option<Found>> {
        let node = model.node(softmax);
        let Some(sm) = node.op_as::<Softmax>() else { return Ok(None) };
        let is_f32 = |o: OutletId| -> TractResult<bool> { Ok(model.outlet_fact(o)?.datum_type == f32::datum_type()) };
        if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || !is_f32(node.inputs[0])? {
            return Ok(None);
        }
        // Each intermediate must feed only the next step, so that the whole chain goes.
        let outputs = model.output_outlets()?;
        let only_into = |o: OutletId, next: usize| {
            let succ = model.outlet_successors(o);
            succ.len() == 1 && succ[0].node == next && !outputs.contains(&o)
        };
        let Some(context) = model.single_succ(softmax)?.map(|n| n.id) else { return Ok(None) };
        if !only_into(OutletId::new(softmax, 0), context) || model.node(context).inputs[0] != OutletId::new(softmax, 0)
        {
            return Ok(None);
        }
        // The scores, perhaps through an additive bias.
        let mut scores = node.inputs[0].node;
        if !only_into(OutletId::new(scores, 0), softmax) {
            return Ok(None);
        }
        let mut bias = None;
        if let Some(add) = model.node(scores).op_as::<TypedBinOp>() {
            let inputs = &model.node(scores).inputs;
            if add.0.name() != "Add" || add.1.is_some() || inputs.len() != 2 {
                return Ok(None);
            }
            let (s, b) = if model.node(inputs[0].node).op_is::<EinSum>() {
                (inputs[0], inputs[1])
            } else {
                (inputs[1], inputs[0])
            };
            if !only_into(s, scores) || !is_f32(b)? {
                return Ok(None);
            }
            bias = Some(b);
            scores = s.node;
        }
        let Some((op, key_axis)) = read_products(model, scores, context)? else { return Ok(None) };
        if sm.axes.as_slice() != [key_axis] {
            return Ok(None);
        }
        if let Some(b) = bias {
            if model.outlet_fact(b)?.rank() != op.groups + 2 {
                return Ok(None);
            }
        }
        let (s_node, c_node) = (model.node(scores), model.node(context));
        let mut inputs = vec![s_node.inputs[0], s_node.inputs[1], c_node.inputs[1]];
        for &i in &inputs {
            if !is_f32(i)? {
                return Ok(None);
            }
        }
        inputs.extend(bias);
        Ok(Some(Found { op, inputs, context }))
    }
}

/// Each operand's axes as letters, and which letters are of size 1 wherever they appear.
struct Letters {
    operands: Vec<Vec<char>>,
    unit: Vec<char>,
}

impl Letters {
    /// Inputs then output of the `EinSum` at `id`, with their facts.
    fn of(model: &TypedModel, id: usize, einsum: &EinSum) -> TractResult<Option<Letters>> {
        let (inputs, outputs) = einsum.axes.to_strs();
        if inputs.len() != 2 || outputs.len() != 1 {
            return Ok(None);
        }
        let node = model.node(id);
        let facts = [model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?, &node.outputs[0].fact];
        let operands: Vec<Vec<char>> = inputs.iter().chain(&outputs).map(|x| x.chars().collect()).collect();
        let mut unit: Vec<char> = operands.iter().flatten().copied().collect();
        for (letters, fact) in operands.iter().zip(facts) {
            if letters.len() != fact.rank() {
                return Ok(None);
            }
            for (ch, dim) in letters.iter().zip(fact.shape.iter()) {
                if dim.as_i64() != Some(1) {
                    unit.retain(|c| c != ch);
                }
            }
        }
        Ok(Some(Letters { operands, unit }))
    }
}

/// The operator the two products make, and the key axis of the scores (the softmax's), if
/// they are an attention: scores `[groups.., query, key]` from q and k, then the context
/// from the scores and v.
fn read_products(model: &TypedModel, scores: usize, context: usize) -> TractResult<Option<(FusedAttention, usize)>> {
    let einsum = |id: usize| {
        model.node(id).op_as::<EinSum>().filter(|e| e.q_params.is_none() && e.operating_dt == f32::datum_type())
    };
    let (Some(s), Some(c)) = (einsum(scores), einsum(context)) else { return Ok(None) };
    let (Some(s), Some(c)) = (Letters::of(model, scores, s)?, Letters::of(model, context, c)?) else {
        return Ok(None);
    };
    let [q, k, sc] = [&s.operands[0], &s.operands[1], &s.operands[2]];
    if sc.iter().any(|ch| s.unit.contains(ch)) {
        return Ok(None);
    }
    // Scores: letters in q, k and the scores are groups; in q and k only, the channels; in one
    // of them and the scores, that one's position.
    let groups: Vec<char> = sc.iter().copied().filter(|ch| q.contains(ch) && k.contains(ch)).collect();
    let role = |ch: char| -> Option<Role> {
        if s.unit.contains(&ch) {
            return Some(Role::Unit);
        }
        match (q.contains(&ch), k.contains(&ch), sc.contains(&ch)) {
            (true, true, true) => groups.iter().position(|&g| g == ch).map(Role::Group),
            (true, true, false) => Some(Role::Channel),
            (true, false, true) | (false, true, true) => Some(Role::Position),
            _ => None,
        }
    };
    let roles = |letters: &[char]| letters.iter().map(|&ch| role(ch)).collect::<Option<TVec<Role>>>();
    let n = groups.len();
    let (Some(q_roles), Some(k_roles), Some(sc_roles)) = (roles(q), roles(k), roles(sc)) else { return Ok(None) };
    // The bias and the softmax read the scores as [groups.., query, key].
    let expected: TVec<Role> = (0..n).map(Role::Group).chain([Role::Position, Role::Position]).collect();
    if n > 2 || sc_roles != expected || !q.contains(&sc[n]) || !k.contains(&sc[n + 1]) {
        return Ok(None);
    }
    // Context: the probabilities come in the scores' layout; the key letter is contracted
    // against v, the query letter goes to the output with v's channels.
    let [p, v, o] = [&c.operands[0], &c.operands[1], &c.operands[2]];
    if p.len() != sc.len() || p.iter().any(|ch| c.unit.contains(ch)) {
        return Ok(None);
    }
    let (query, key) = (p[n], p[n + 1]);
    let context_role = |ch: char| -> Option<Role> {
        if c.unit.contains(&ch) {
            return Some(Role::Unit);
        }
        match p.iter().position(|&x| x == ch) {
            Some(at) if at < n => (v.contains(&ch) && o.contains(&ch)).then_some(Role::Group(at)),
            Some(_) if ch == key => (v.contains(&ch) && !o.contains(&ch)).then_some(Role::Position),
            Some(_) => (!v.contains(&ch) && o.contains(&ch)).then_some(Role::Position),
            None => (v.contains(&ch) && o.contains(&ch)).then_some(Role::Channel),
        }
    };
    let context_roles = |letters: &[char]| letters.iter().map(|&ch| context_role(ch)).collect::<Option<TVec<Role>>>();
    let (Some(v_roles), Some(o_roles)) = (context_roles(v), context_roles(o)) else { return Ok(None) };
    if !o.contains(&query) {
        return Ok(None);
    }
    let layouts = [q_roles, k_roles, v_roles, o_roles].map(|r| Layout::new(r, n));
    let [Some(q), Some(k), Some(v), Some(out)] = layouts else { return Ok(None) };
    Ok(Some((FusedAttention { q, k, v, out, groups: n }, n + 1)))
}
