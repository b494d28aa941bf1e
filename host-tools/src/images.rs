//! Sample photographs for calibration, validation and benchmarks: every decodable image in a
//! directory, in file-name order. A file that does not decode is reported and skipped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::image_load::{decode_rgb, load_rgb};
use image::RgbImage;

/// A decoded sample and where it came from.
pub struct Sample {
    pub path: PathBuf,
    pub image: RgbImage,
}

/// The fixture photographs, built into host-tools: the default calibration and benchmark set,
/// so that `quantize` and `bench` work wherever host-tools is installed, not only in the source
/// tree (1 MB; a person, a cat, a coffee cup, a rocket, coins, a camera man, in the formats a
/// camera or a user may give).
const BUILTIN: [(&str, &[u8]); 10] = [
    ("astronaut.jpg", include_bytes!("../../tests/fixtures/images/astronaut.jpg")),
    ("astronaut_rgba.png", include_bytes!("../../tests/fixtures/images/astronaut_rgba.png")),
    ("camera_gray.png", include_bytes!("../../tests/fixtures/images/camera_gray.png")),
    ("chelsea.gif", include_bytes!("../../tests/fixtures/images/chelsea.gif")),
    ("chelsea.png", include_bytes!("../../tests/fixtures/images/chelsea.png")),
    ("coffee.webp", include_bytes!("../../tests/fixtures/images/coffee.webp")),
    ("coffee_small.jpg", include_bytes!("../../tests/fixtures/images/coffee_small.jpg")),
    ("coins16.png", include_bytes!("../../tests/fixtures/images/coins16.png")),
    ("rocket.bmp", include_bytes!("../../tests/fixtures/images/rocket.bmp")),
    ("rocket_exif6.jpg", include_bytes!("../../tests/fixtures/images/rocket_exif6.jpg")),
];

/// The images of `dir`, or the built-in photographs when there is none.
pub fn load_dir_or_builtin(dir: Option<&Path>) -> Result<Vec<Sample>> {
    match dir {
        Some(dir) => load_dir(dir),
        None => {
            log::info!(
                "using the {} built-in photographs (pass a directory of your camera's for ranges that fit it)",
                BUILTIN.len()
            );
            builtin()
        }
    }
}

/// The built-in photographs, named `built-in/<file>`.
pub fn builtin() -> Result<Vec<Sample>> {
    BUILTIN
        .iter()
        .map(|(name, bytes)| {
            let path = Path::new("built-in").join(name);
            let image = decode_rgb(bytes, &path.display().to_string())?;
            Ok(Sample { path, image })
        })
        .collect()
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
