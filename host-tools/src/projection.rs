//! `host-tools projection`: how often DeCap's cheaper top-k projection (only the k most similar
//! memory entries contribute) changes the caption, against the full softmax projection.

use std::path::PathBuf;

use anyhow::{bail, Result};
use edgecap_engine::image_load::load_rgb;
use edgecap_engine::model::CaptionModel;

#[derive(Debug, Clone, PartialEq)]
pub struct TopKAgreement {
    pub k: usize,
    /// Images captioned with both projections.
    pub images: usize,
    /// Of those, how many got a different caption.
    pub changed: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionReport {
    pub rows: usize,
    pub per_k: Vec<TopKAgreement>,
    /// Images that could not be used, with the reason (one line each).
    pub failed: Vec<(PathBuf, String)>,
}

pub fn compare_top_k(model: &CaptionModel, images: &[PathBuf], ks: &[usize]) -> Result<ProjectionReport> {
    let Some(memory) = &model.memory else { bail!("not a DeCap bundle: there is no projection to compare") };
    let mut per_k: Vec<TopKAgreement> = ks.iter().map(|&k| TopKAgreement { k, images: 0, changed: 0 }).collect();
    let mut failed = Vec::new();
    for path in images {
        let rgb = match load_rgb(path) {
            Ok(rgb) => rgb,
            Err(e) => {
                failed.push((path.clone(), e.to_string()));
                continue;
            }
        };
        let mut opts = model.default_options();
        opts.projection_top_k = Some(0);
        let full = model.caption(&rgb, &opts)?.tokens;
        for row in per_k.iter_mut() {
            opts.projection_top_k = Some(row.k);
            let tokens = model.caption(&rgb, &opts)?.tokens;
            row.images += 1;
            row.changed += usize::from(tokens != full);
        }
    }
    Ok(ProjectionReport { rows: memory.rows, per_k, failed })
}
