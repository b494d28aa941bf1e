//! Sample photographs for calibration, validation and benchmarks: every decodable image in a
//! directory, in file-name order. A file that does not decode is reported and skipped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::image_load::load_rgb;
use image::RgbImage;

/// A decoded sample and where it came from.
pub struct Sample {
    pub path: PathBuf,
    pub image: RgbImage,
}

/// Loads the images of `dir` (not recursive); fails only when none loads.
pub fn load_dir(dir: &Path) -> Result<Vec<Sample>> {
    if !dir.is_dir() {
        bail!("{}: not an image directory", dir.display());
    }
    let paths = image_paths(&[dir.to_path_buf()])?;
    let mut samples = Vec::new();
    for path in paths {
        match load_rgb(&path) {
            Ok(image) => samples.push(Sample { path, image }),
            Err(e) => log::warn!("skipping {}: {e}", path.display()),
        }
    }
    if samples.is_empty() {
        bail!("{}: no readable images", dir.display());
    }
    Ok(samples)
}

/// The file name of a sample, as references name images.
pub fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The image files of `inputs`: files as given, directories' files in name order (not recursive).
pub fn image_paths(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot read image directory", input.display()))?
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
