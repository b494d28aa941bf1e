//! Training data: caption corpora, image–caption pairs, and the seeded order of batches.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::references;
use crate::rng::Rng;

/// Captions for text-only training (DeCap). Accepts one caption per line, `image<TAB>caption`
/// lines, or a COCO-style annotations JSON. Blank lines are skipped and counted.
#[derive(Debug)]
pub struct Captions {
    pub captions: Vec<String>,
    pub skipped: usize,
}

pub fn read_captions(path: &Path) -> Result<Captions> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read captions"))?;
    if text.trim_start().starts_with('{') {
        let refs = references::read(path)?;
        let captions: Vec<String> = refs.into_values().flatten().collect();
        let total = captions.len();
        let captions: Vec<String> = captions.into_iter().filter(|c| !c.trim().is_empty()).collect();
        return Ok(Captions { skipped: total - captions.len(), captions });
    }
    let mut captions = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        let caption = line.split_once('\t').map_or(line, |(_, c)| c).trim();
        if caption.is_empty() {
            if !line.trim().is_empty() || i + 1 < text.lines().count() {
                log::warn!("{shown}: line {}: no caption, skipped", i + 1);
            }
            skipped += 1;
            continue;
        }
        captions.push(caption.to_string());
    }
    if captions.is_empty() {
        bail!("{shown}: no captions");
    }
    Ok(Captions { captions, skipped })
}

/// Image–caption pairs (ClipCap): `image<TAB>caption` lines or COCO-style JSON, image paths
/// relative to the file's directory (or absolute).
pub fn read_pairs(path: &Path) -> Result<Vec<(PathBuf, String)>> {
    let refs = references::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pairs = Vec::new();
    for (image, captions) in refs {
        for caption in captions.into_iter().filter(|c| !c.trim().is_empty()) {
            pairs.push((base.join(&image), caption));
        }
    }
    if pairs.is_empty() {
        bail!("{}: no image–caption pairs", path.display());
    }
    Ok(pairs)
}

/// The items of each batch: epochs of a seeded permutation, so batch `step` is the same in a
/// fresh run and in a resumed one.
pub struct Schedule {
    seed: u64,
    items: usize,
    batch: usize,
    epoch: Option<(usize, Vec<usize>)>,
}

impl Schedule {
    pub fn new(seed: u64, items: usize, batch: usize) -> Schedule {
        Schedule { seed, items, batch: batch.min(items).max(1), epoch: None }
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn batch(&mut self, step: usize) -> Vec<usize> {
        (step * self.batch..(step + 1) * self.batch).map(|p| self.item_at(p)).collect()
    }

    fn item_at(&mut self, position: usize) -> usize {
        let epoch = position / self.items;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.items).collect();
            Rng::derive(self.seed, epoch as u64).shuffle(&mut order);
            self.epoch = Some((epoch, order));
        }
        self.epoch.as_ref().map_or(0, |(_, order)| order[position % self.items])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_covers_each_epoch_once_and_repeats() {
        let mut s = Schedule::new(7, 10, 4);
        let first: Vec<usize> = (0..5).flat_map(|step| s.batch(step)).collect();
        let mut epoch0 = first[..10].to_vec();
        epoch0.sort();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        let mut again = Schedule::new(7, 10, 4);
        assert_eq!(again.batch(3), first[12..16].to_vec());
        assert_ne!(Schedule::new(8, 10, 4).batch(0), first[..4].to_vec());
    }

    #[test]
    fn captions_skip_blank_lines_and_take_tsv_captions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        std::fs::write(&path, "a red circle\n\n img.png\ta blue square \n   \n").unwrap();
        let c = read_captions(&path).unwrap();
        assert_eq!(c.captions, vec!["a red circle", "a blue square"]);
        assert_eq!(c.skipped, 2);
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read_captions(&path).unwrap_err().to_string().contains("no captions"));
    }
}
