//! Measuring a bundle on a scene split: caption every picture with the engine's own pipeline
//! (the bundle's default decoding options), then score the captions attribute by attribute and by
//! CIDEr-D against each scene's caption.

use std::path::Path;

use anyhow::{Context, Result};
use edgecap_engine::image_load::load_rgb;
use edgecap_engine::model::CaptionModel;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{read_split, Accuracy, AttributeScores};
use crate::metrics::{cider::cider_d, tokenize::normalize};

/// How well a bundle captions a split.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub scenes_dir: String,
    #[serde(flatten)]
    pub attributes: AttributeScores,
    /// CIDEr-D (×10 scale) of the captions against each scene's one true caption.
    pub cider_d: f64,
}

/// Captions every scene of `dir` with `model` and scores the captions.
pub fn evaluate(model: &CaptionModel, dir: &Path, progress: bool) -> Result<Evaluation> {
    let scenes = read_split(dir)?;
    let options = model.default_options();
    let bar = if progress { ProgressBar::new(scenes.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("captioning [{bar:20}] {pos}/{len} ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut attributes = AttributeScores::default();
    let (mut candidates, mut references) = (Vec::new(), Vec::new());
    for (path, truth) in &scenes {
        let image = load_rgb(path)?;
        let caption = model.caption(&image, &options).with_context(|| format!("{}: cannot caption", path.display()))?;
        attributes.add(truth, &caption.text);
        candidates.push(normalize(&caption.text));
        references.push(vec![normalize(&truth.caption())]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let cider_d = cider_d(&candidates, &references);
    Ok(Evaluation { scenes_dir: dir.display().to_string(), attributes, cider_d })
}

/// The evaluation as a table.
pub fn render_table(e: &Evaluation) -> String {
    let a = &e.attributes;
    let mut out =
        format!("{}: {} scenes ({} group, {} relation)\n", e.scenes_dir, a.scenes, a.group_scenes, a.relation_scenes);
    let rows: [(&str, &Accuracy); 9] = [
        ("colour", &a.colour),
        ("shape", &a.shape),
        ("count (group scenes)", &a.count),
        ("size (group scenes)", &a.size),
        ("position / relation", &a.position),
        ("correct caption", &a.correct),
        ("  group scenes", &a.correct_group),
        ("  relation scenes", &a.correct_relation),
        ("exact match", &a.exact),
    ];
    for (name, acc) in rows {
        out.push_str(&format!("{name:<22} {:>6.1}%  ({}/{})\n", 100.0 * acc.rate(), acc.correct, acc.total));
    }
    out.push_str(&format!("{:<22} {:>7}\n", "unparseable captions", a.unparseable));
    out.push_str(&format!("{:<22} {:>7.3}\n", "CIDEr-D", e.cider_d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_every_attribute_with_its_denominator() {
        let mut attributes = AttributeScores::default();
        let truth = super::super::generate(1, 0).description;
        attributes.add(&truth, &truth.caption());
        let table = render_table(&Evaluation { scenes_dir: "s".into(), attributes, cider_d: 0.5 });
        assert!(table.contains("exact match") && table.contains("100.0%  (1/1)"), "{table}");
        assert!(table.contains("CIDEr-D") && table.contains("0.500"), "{table}");
    }
}
