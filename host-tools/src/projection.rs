//! `host-tools projection`: how often DeCap's cheaper top-k projection (only the k most similar
//! memory entries contribute) changes the caption, against the full softmax projection.

use std::path::{Path, PathBuf};

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

/// The image files of `inputs`: files as given, directories' files in name order (not recursive).
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| anyhow::anyhow!("{}: cannot list: {e}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !is_hidden(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}
