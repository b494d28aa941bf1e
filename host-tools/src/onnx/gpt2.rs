//! The GPT-2 decoder as an ONNX graph with an explicit KV cache, for step-by-step generation.
//!
//! Graph I/O (B beams, S new positions, P past length, T = P + S, L layers, H heads, hd head dim;
//! B, S and P are symbolic, named `batch`, `seq` and `past`):
//! - `inputs_embeds` f32 [B, S, D]: token or prefix embeddings, without position embeddings
//!   (the engine looks tokens up in `wte` itself, so `wte` is not in the graph);
//! - `position_ids` i64 [S]: absolute positions P..P+S-1, gathered from `wpe` in the graph;
//! - `attention_bias` f32 [S, T]: 0 where a query may attend, -inf elsewhere;
//! - `past` f32 [L, 2, B, H, P, hd]: keys (index 0) and values (1) of earlier positions; P = 0
//!   on the first step;
//! - outputs `logits` f32 [B, V] for the last position only, and `present` f32
//!   [L, 2, B, H, T, hd], the cache to feed back as `past`.
//!
//! Weights are named like HF `GPT2LMHeadModel` without the `transformer.` prefix, with
//! `lm_head.weight` [V, D] (GPT-2 ties it to `wte`). The graph holds its own [D, V] copy: a
//! matrix shared with, or transposed from, another tensor is repacked by tract on every call.

use anyhow::{Context, Result};
use tract_onnx::pb;

use super::builder::{attr_int, Dim, Elem, GraphBuilder};
use crate::models::gpt2::Gpt2Config;
use crate::tensor::TensorMap;

/// Builds the decoder graph; every tensor's shape is checked against `cfg`.
pub fn build(cfg: &Gpt2Config, w: &TensorMap) -> Result<pb::ModelProto> {
    cfg.validate()?;
    let (d, l, h, hd) = (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.head_dim());
    let mut g = GraphBuilder::new("gpt2_decoder");
    let (b, s, p, t) = (Dim::sym("batch"), Dim::sym("seq"), Dim::sym("past"), Dim::sym("past+seq"));
    let embeds = g.input("inputs_embeds", Elem::F32, &[b.clone(), s.clone(), d.into()])?;
    let positions = g.input("position_ids", Elem::I64, std::slice::from_ref(&s))?;
    let bias = g.input("attention_bias", Elem::F32, &[s.clone(), t.clone()])?;
    let past_dims = [l.into(), 2.into(), b.clone(), h.into(), p, hd.into()];
    let past = g.input("past", Elem::F32, &past_dims)?;

    let wpe = w.get_shaped("wpe.weight", &[cfg.n_positions, d])?;
    let wpe = g.initializer("wpe.weight", wpe);
    let pos = g.node("Gather", "wpe", &[&wpe, &positions], vec![attr_int("axis", 0)]);
    let mut x = g.add(&embeds, &pos, "embeddings");

    let mut presents = Vec::with_capacity(l);
    for i in 0..l {
        let (y, present) = block(&mut g, cfg, w, &x, (&past, &bias), i).with_context(|| format!("GPT-2 layer {i}"))?;
        x = y;
        presents.push(present);
    }
    let present_refs: Vec<&str> = presents.iter().map(String::as_str).collect();
    let present = g.node("Concat", "present_all", &present_refs, vec![attr_int("axis", 0)]);

    // Only the last position's logits are needed to pick the next token: slice before the
    // final LayerNorm and the [D, V] head so both cost one row per beam.
    let (starts, ends, axes) = (g.const_i64(&[-1]), g.const_i64(&[i64::MAX]), g.const_i64(&[1]));
    let last = g.node("Slice", "last_position", &[&x, &starts, &ends, &axes], vec![]);
    let last = g.reshape(&last, "last_hidden", &[0, d as i64]);
    let last = g.layer_norm(&last, w, "ln_f", d, cfg.layer_norm_epsilon)?;
    let head = w.get_shaped("lm_head.weight", &[cfg.vocab_size, d])?.transposed()?;
    let logits = g.matmul_bias(&last, "lm_head", &head, None);

    g.output(&logits, "logits", Elem::F32, &[b.clone(), cfg.vocab_size.into()])?;
    g.output(&present, "present", Elem::F32, &[l.into(), 2.into(), b, h.into(), t, hd.into()])?;
    Ok(g.finish())
}

/// One GPT-2 block. Returns the new hidden state and this layer's [1, 2, B, H, T, hd] cache.
fn block(
    g: &mut GraphBuilder,
    cfg: &Gpt2Config,
    w: &TensorMap,
    x: &str,
    (past, bias): (&str, &str),
    i: usize,
) -> Result<(String, String)> {
    let (d, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
    let p = format!("h.{i}");
    let a = g.layer_norm(x, w, &format!("{p}.ln_1"), d, eps)?;
    let (a, present) = attention(g, cfg, w, &a, (past, bias), i)?;
    let x = g.add(x, &a, &format!("{p}.attn_residual"));

    let m = g.layer_norm(&x, w, &format!("{p}.ln_2"), d, eps)?;
    let m = conv1d(g, w, &m, &format!("{p}.mlp.c_fc"), (d, 4 * d))?;
    let m = g.gelu_tanh(&m, &format!("{p}.mlp.act"));
    let m = conv1d(g, w, &m, &format!("{p}.mlp.c_proj"), (4 * d, d))?;
    Ok((g.add(&x, &m, &format!("{p}.mlp_residual")), present))
}

/// Causal self-attention over the past and the new positions.
fn attention(
    g: &mut GraphBuilder,
    cfg: &Gpt2Config,
    w: &TensorMap,
    x: &str,
    (past, bias): (&str, &str),
    i: usize,
) -> Result<(String, String)> {
    let (d, h, hd) = (cfg.n_embd, cfg.n_head, cfg.head_dim());
    let p = format!("h.{i}.attn");
    let qkv = conv1d(g, w, x, &format!("{p}.c_attn"), (d, 3 * d))?;
    // c_attn's outputs are [q | k | v], each [H, hd]: → [B, S, 3, H, hd] → [3, B, H, S, hd].
    let qkv = g.reshape(&qkv, &format!("{p}.qkv_split"), &[0, 0, 3, h as i64, hd as i64]);
    let qkv = g.transpose(&qkv, &format!("{p}.qkv_heads"), &[2, 0, 3, 1, 4]);
    let q = g.pick(&qkv, &format!("{p}.q"), 0, 0);
    let (one, three, zero) = (g.const_i64(&[1]), g.const_i64(&[3]), g.const_i64(&[0]));
    let kv_new = g.node("Slice", &format!("{p}.kv_new"), &[&qkv, &one, &three, &zero], vec![]);

    // This layer's cache: [2, B, H, P, hd] ++ [2, B, H, S, hd] along the positions.
    let kv_past = g.pick(past, &format!("{p}.kv_past"), 0, i as i64);
    let kv = g.node("Concat", &format!("{p}.kv"), &[&kv_past, &kv_new], vec![attr_int("axis", 3)]);
    let k = g.pick(&kv, &format!("{p}.k"), 0, 0);
    let v = g.pick(&kv, &format!("{p}.v"), 0, 1);
    let axes = g.const_i64(&[0]);
    let present = g.node("Unsqueeze", &format!("{p}.present"), &[&kv, &axes], vec![]);

    let ctx = g.attention(&p, (&q, &k, &v), (hd as f32).powf(-0.5), Some(bias));
    let ctx = g.merge_heads(&ctx, &format!("{p}.merged"), d);
    Ok((conv1d(g, w, &ctx, &format!("{p}.c_proj"), (d, d))?, present))
}

/// GPT-2's `Conv1D`: a Linear whose weight is stored [in, out] already.
fn conv1d(g: &mut GraphBuilder, w: &TensorMap, x: &str, prefix: &str, (d_in, d_out): (usize, usize)) -> Result<String> {
    let weight = w.get_shaped(&format!("{prefix}.weight"), &[d_in, d_out])?;
    let bias = w.get_shaped(&format!("{prefix}.bias"), &[d_out])?;
    Ok(g.matmul_bias(x, prefix, weight, Some(bias)))
}
