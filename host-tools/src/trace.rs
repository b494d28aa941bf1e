//! `host-tools trace`: the intermediate tensors of one caption as `.npy`, to compare with PyTorch.

use std::path::Path;

use anyhow::{Context, Result};
use edgecap_engine::fsutil::write_atomic;
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::image_load::load_rgb;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy;

/// Captions `image` with `model` and writes `pixel_values.npy`, `image_embeds.npy`,
/// (DeCap) `projected.npy`, `prefix.npy`, `logits_step0.npy` and `caption.json` into `out`.
pub fn trace(model: &CaptionModel, image: &Path, opts: &GenerationOptions, out: &Path) -> Result<()> {
    let rgb = load_rgb(image)?;
    let t = model.trace(&rgb, opts)?;
    let d = model.dims();
    let s = model.manifest.preprocess.image_size as usize;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    npy::write(&out.join("pixel_values.npy"), &[1, 3, s, s], &t.pixel_values)?;
    npy::write(&out.join("image_embeds.npy"), &[1, d.embed_dim], &t.image_embeds)?;
    if let Some(projected) = &t.projected {
        npy::write(&out.join("projected.npy"), &[1, d.embed_dim], projected)?;
    }
    npy::write(&out.join("prefix.npy"), &[1, d.prefix_length, d.hidden_size], &t.prefix)?;
    npy::write(&out.join("logits_step0.npy"), &[1, t.logits_step0.len()], &t.logits_step0)?;
    let summary = serde_json::json!({
        "image": image.display().to_string(),
        "caption": t.caption.text,
        "tokens": t.caption.tokens,
    });
    let path = out.join("caption.json");
    write_atomic(&path, format!("{summary:#}\n").as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
