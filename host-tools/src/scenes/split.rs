//! Scene directories ("splits") on disk:
//!
//! * `scene-00000.png`, … — the pictures (`.jpg` for camera renderings, see [`Rendering`]);
//! * `captions.tsv` — `scene-00000.png<TAB>caption` lines, the format [`crate::references::read`]
//!   parses, so every tool that takes references takes a split;
//! * `scenes.jsonl` — one JSON object per scene: file, seed, index, caption, the description's
//!   attributes (`kind` = `group` or `relation`), the placed objects and, for a camera
//!   rendering, its side and JPEG quality.
//!
//! Every file is written atomically, and the two index files last, so an interrupted run never
//! leaves an index naming pictures that are not there.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::fsutil::write_atomic;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::{encode_jpeg, generate, generate_camera, parse_caption, Description, Placed, Scene};
use crate::references;
use crate::rng::Rng;

pub const CAPTIONS_FILE: &str = "captions.tsv";
pub const SCENES_FILE: &str = "scenes.jsonl";

/// How the scenes of a split are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rendering {
    /// The generator's 128×128 PNGs.
    Plain,
    /// As a camera might take them: 160–320 px, other backgrounds, exposure, blur, noise, JPEG.
    Camera,
    /// Each scene one or the other, at random (half and half).
    Mixed,
}

/// Separates the mixed rendering's choice from every other draw.
const MIX_STREAM: u64 = 0x6d_6978;

impl Rendering {
    /// Scene `index` of `seed` rendered this way.
    pub fn scene(self, seed: u64, index: u64) -> Scene {
        let camera = match self {
            Rendering::Plain => false,
            Rendering::Camera => true,
            Rendering::Mixed => Rng::derive(seed ^ MIX_STREAM, index).uniform() < 0.5,
        };
        if camera {
            generate_camera(seed, index)
        } else {
            generate(seed, index)
        }
    }
}

/// `scene-00042.png`, or `scene-00042.jpg` for a camera rendering.
pub fn scene_file_name(index: u64, jpeg: bool) -> String {
    format!("scene-{index:05}.{}", if jpeg { "jpg" } else { "png" })
}

/// One line of `scenes.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    file: String,
    seed: u64,
    index: u64,
    caption: String,
    #[serde(flatten)]
    description: Description,
    objects: Vec<Placed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    camera: Option<CameraRecord>,
}

/// What a camera rendering varied that a reader of the split may want to group by.
#[derive(Debug, Serialize, Deserialize)]
struct CameraRecord {
    side: u32,
    jpeg_quality: u8,
}

/// Writes scenes 0..count of `seed`, rendered as `rendering` says, into `dir` (created if
/// needed; files of an earlier split there are overwritten) and returns their descriptions in
/// index order. `threads` workers render and encode (scene i depends only on the seed and i, so
/// the files are the same for any count); the index files are written once every picture is.
pub fn write_split(
    dir: &Path,
    seed: u64,
    count: usize,
    rendering: Rendering,
    threads: usize,
    progress: bool,
) -> Result<Vec<Description>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the scene directory", dir.display()))?;
    let bar = progress_bar(progress, count);
    let workers = threads.clamp(1, count.max(1));
    // Worker w writes scenes w, w + workers, …; its entries come back in that order.
    let per_worker: Vec<Vec<Result<Written>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let bar = &bar;
                scope.spawn(move || {
                    (w..count)
                        .step_by(workers)
                        .map(|index| {
                            let written = write_scene(dir, seed, index as u64, rendering);
                            bar.inc(1);
                            written
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a scene worker panicked")).collect()
    });
    let mut iters: Vec<_> = per_worker.into_iter().map(Vec::into_iter).collect();
    let (mut tsv, mut jsonl) = (String::new(), String::new());
    let mut descriptions = Vec::with_capacity(count);
    for index in 0..count {
        let written = iters[index % workers].next().expect("one entry per scene")?;
        tsv.push_str(&written.tsv_line);
        jsonl.push_str(&written.jsonl_line);
        descriptions.push(written.description);
    }
    for (name, text) in [(CAPTIONS_FILE, &tsv), (SCENES_FILE, &jsonl)] {
        let path = dir.join(name);
        write_atomic(&path, text.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    bar.finish_and_clear();
    Ok(descriptions)
}

/// One scene on disk: its lines of the two index files, and what it shows.
struct Written {
    tsv_line: String,
    jsonl_line: String,
    description: Description,
}

/// Renders scene `index` of `seed`, writes its picture into `dir`, and returns its index lines.
fn write_scene(dir: &Path, seed: u64, index: u64, rendering: Rendering) -> Result<Written> {
    let scene = rendering.scene(seed, index);
    let file = scene_file_name(index, scene.look.is_some());
    let path = dir.join(&file);
    let bytes = match &scene.look {
        Some(look) => encode_jpeg(&scene.image, look.quality),
        None => encode_png(&scene.image),
    };
    let bytes = bytes.with_context(|| format!("{}: cannot encode", path.display()))?;
    write_atomic(&path, &bytes).with_context(|| format!("{}: cannot write", path.display()))?;
    let caption = scene.description.caption();
    let tsv_line = format!("{file}\t{caption}\n");
    let camera = scene.look.map(|l| CameraRecord { side: l.side, jpeg_quality: l.quality });
    let description = scene.description;
    let record = Record { file, seed, index, caption, description, objects: scene.objects, camera };
    let jsonl_line = serde_json::to_string(&record)? + "\n";
    Ok(Written { tsv_line, jsonl_line, description })
}

fn progress_bar(show: bool, count: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(count as u64);
    bar.set_style(
        ProgressStyle::with_template("scenes [{bar:20}] {pos}/{len} ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn encode_png(image: &image::RgbImage) -> Result<Vec<u8>> {
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

/// The scenes of a split, in index order: each picture's path and description, from
/// `scenes.jsonl`, or, when a split has only `captions.tsv` (written by hand or another tool), by
/// parsing its captions (in file-name order).
pub fn read_split(dir: &Path) -> Result<Vec<(PathBuf, Description)>> {
    if !dir.is_dir() {
        bail!("{}: not a scene directory", dir.display());
    }
    let (jsonl, tsv) = (dir.join(SCENES_FILE), dir.join(CAPTIONS_FILE));
    let scenes = if jsonl.is_file() {
        from_jsonl(dir, &jsonl)?
    } else if tsv.is_file() {
        from_tsv(dir, &tsv)?
    } else {
        bail!("{}: no {SCENES_FILE} or {CAPTIONS_FILE}; make a split with `host-tools scenes generate`", dir.display());
    };
    if scenes.is_empty() {
        bail!("{}: the split has no scenes", dir.display());
    }
    Ok(scenes)
}

fn from_jsonl(dir: &Path, path: &Path) -> Result<Vec<(PathBuf, Description)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut scenes = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: Record = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not a scene record", path.display(), i + 1))?;
        scenes.push((dir.join(record.file), record.description));
    }
    Ok(scenes)
}

fn from_tsv(dir: &Path, path: &Path) -> Result<Vec<(PathBuf, Description)>> {
    let mut scenes = Vec::new();
    for (file, captions) in references::read(path)? {
        let caption = &captions[0];
        let description = parse_caption(caption)
            .with_context(|| format!("{}: {file}: {caption:?} is not a scene caption", path.display()))?;
        scenes.push((dir.join(file), description));
    }
    Ok(scenes)
}

#[cfg(test)]
mod tests {
    use super::super::generate;
    use super::*;

    #[test]
    fn written_splits_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_split(dir.path(), 3, 12, Rendering::Plain, 1, false).unwrap();
        assert_eq!(written.len(), 12);
        let read = read_split(dir.path()).unwrap();
        let expected: Vec<(PathBuf, Description)> =
            written.iter().enumerate().map(|(i, d)| (dir.path().join(scene_file_name(i as u64, false)), *d)).collect();
        assert_eq!(read, expected);
        // The picture on disk is the generated one, pixel for pixel (PNG is lossless).
        let png = edgecap_engine::image_load::load_rgb(&read[7].0).unwrap();
        assert_eq!(png, generate(3, 7).image);
        // captions.tsv is a references file keyed by picture name.
        let refs = references::read(&dir.path().join(CAPTIONS_FILE)).unwrap();
        assert_eq!(refs["scene-00004.png"], vec![written[4].caption()]);
        // Without scenes.jsonl the captions alone give the same split.
        std::fs::remove_file(dir.path().join(SCENES_FILE)).unwrap();
        assert_eq!(read_split(dir.path()).unwrap(), expected);
    }

    #[test]
    fn camera_and_mixed_splits_hold_the_same_scenes_as_jpegs() {
        let dir = tempfile::tempdir().unwrap();
        let plain = write_split(&dir.path().join("plain"), 3, 16, Rendering::Plain, 1, false).unwrap();
        let camera = write_split(&dir.path().join("camera"), 3, 16, Rendering::Camera, 3, false).unwrap();
        let mixed = write_split(&dir.path().join("mixed"), 3, 16, Rendering::Mixed, 2, false).unwrap();
        assert_eq!(plain, camera);
        assert_eq!(plain, mixed);
        let read = read_split(&dir.path().join("camera")).unwrap();
        assert!(read.iter().all(|(p, _)| p.extension().unwrap() == "jpg"));
        let picture = edgecap_engine::image_load::load_rgb(&read[5].0).unwrap();
        assert_eq!(picture.dimensions(), generate_camera(3, 5).image.dimensions());
        let jpegs = read_split(&dir.path().join("mixed"))
            .unwrap()
            .iter()
            .filter(|(p, _)| p.extension().unwrap() == "jpg")
            .count();
        assert!((3..=13).contains(&jpegs), "about half of 16 should be camera renderings: {jpegs}");
        let jsonl = std::fs::read_to_string(dir.path().join("camera").join(SCENES_FILE)).unwrap();
        assert!(jsonl.lines().all(|l| l.contains("\"jpeg_quality\"")), "{jsonl}");
    }

    #[test]
    fn any_number_of_workers_writes_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let (one, three) = (dir.path().join("one"), dir.path().join("three"));
        let written = write_split(&one, 5, 11, Rendering::Mixed, 1, false).unwrap();
        assert_eq!(write_split(&three, 5, 11, Rendering::Mixed, 3, false).unwrap(), written);
        let mut names: Vec<_> = std::fs::read_dir(&one).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names.len(), 13, "11 pictures and two index files: {names:?}");
        for name in names {
            let (a, b) = (std::fs::read(one.join(&name)).unwrap(), std::fs::read(three.join(&name)).unwrap());
            assert!(a == b, "{name:?} differs between 1 and 3 workers");
        }
        // More workers than scenes.
        assert_eq!(write_split(&dir.path().join("few"), 5, 2, Rendering::Plain, 8, false).unwrap(), written[..2]);
    }

    #[test]
    fn bad_splits_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", read_split(dir.path()).unwrap_err());
        assert!(err.contains("no scenes.jsonl or captions.tsv"), "{err}");
        std::fs::write(dir.path().join(CAPTIONS_FILE), "scene-00000.png\ta cat on a mat\n").unwrap();
        let err = format!("{:#}", read_split(dir.path()).unwrap_err());
        assert!(err.contains("captions.tsv") && err.contains("a cat on a mat"), "{err}");
        std::fs::write(dir.path().join(SCENES_FILE), "{\"file\": 3}\n").unwrap();
        let err = format!("{:#}", read_split(dir.path()).unwrap_err());
        assert!(err.contains("scenes.jsonl: line 1"), "{err}");
        let err = format!("{:#}", read_split(&dir.path().join("absent")).unwrap_err());
        assert!(err.contains("absent: not a scene directory"), "{err}");
    }
}
