//! The CLIP text encoder as an ONNX graph: transformers' `CLIPModel.get_text_features` (the
//! causal text transformer, final LayerNorm, the hidden state at the end-of-text token,
//! `text_projection`; not normalised). DeCap's support memory is made of these embeddings.
//!
//! Graph I/O (N captions padded to S tokens; both symbolic):
//! - `input_ids` i64 [N, S]: CLIP token ids (start token first, end token, then padding);
//! - `position_ids` i64 [S]: 0..S-1;
//! - `attention_bias` f32 [S, S]: the causal mask, 0 on and below the diagonal, -inf above;
//! - `pooled_index` i64 [N]: n·S + (position of caption n's end token), the row pooled;
//! - output `text_embeds` f32 [N, projection_dim].
//!
//! The host computes the small index tensors, as the engine does for the decoder, which keeps
//! the graph free of shape arithmetic. Weights are named as in a `CLIPModel` safetensors file
//! (`text_model.*`, `text_projection.weight`).

use anyhow::Result;
use tract_onnx::pb;

use super::builder::{attr_int, Dim, Elem, GraphBuilder};
use super::clip_vision::encoder_layer;
use crate::models::clip_text::ClipTextConfig;
use crate::tensor::TensorMap;

/// Builds the text encoder graph from `w` (checked against `cfg`, tensor by tensor).
pub fn build(cfg: &ClipTextConfig, w: &TensorMap) -> Result<pb::ModelProto> {
    cfg.validate()?;
    let d = cfg.hidden_size;
    let (n, s) = (Dim::sym("batch"), Dim::sym("seq"));
    let mut g = GraphBuilder::new("clip_text");
    let ids = g.input("input_ids", Elem::I64, &[n.clone(), s.clone()])?;
    let positions = g.input("position_ids", Elem::I64, std::slice::from_ref(&s))?;
    let bias = g.input("attention_bias", Elem::F32, &[s.clone(), s.clone()])?;
    let pooled_index = g.input("pooled_index", Elem::I64, std::slice::from_ref(&n))?;

    let tokens = w.get_shaped("text_model.embeddings.token_embedding.weight", &[cfg.vocab_size, d])?;
    let table = w.get_shaped("text_model.embeddings.position_embedding.weight", &[cfg.max_position_embeddings, d])?;
    let tokens = g.initializer("text_model.embeddings.token_embedding.weight", tokens);
    let table = g.initializer("text_model.embeddings.position_embedding.weight", table);
    let tok = g.node("Gather", "text_model.embeddings.tokens", &[&tokens, &ids], vec![attr_int("axis", 0)]);
    let pos = g.node("Gather", "text_model.embeddings.positions", &[&table, &positions], vec![attr_int("axis", 0)]);
    let mut x = g.add(&tok, &pos, "text_model.embeddings");
    for i in 0..cfg.num_hidden_layers {
        let p = format!("text_model.encoder.layers.{i}");
        x = encoder_layer(&mut g, cfg.encoder_shape(), w, &x, &p, Some(&bias))?;
    }
    let x = g.layer_norm(&x, w, "text_model.final_layer_norm", d, cfg.layer_norm_eps)?;
    let rows = g.reshape(&x, "text_model.rows", &[-1, d as i64]);
    let pooled = g.node("Gather", "text_model.pooled", &[&rows, &pooled_index], vec![attr_int("axis", 0)]);
    let embeds = g.linear(&pooled, w, "text_projection", (d, cfg.projection_dim), false)?;
    g.output(&embeds, "text_embeds", Elem::F32, &[n, cfg.projection_dim.into()])?;
    Ok(g.finish())
}
