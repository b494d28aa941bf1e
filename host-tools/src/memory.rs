//! `host-tools memory build`: a caption corpus → DeCap's support memory (L2-normalised CLIP text
//! embeddings, f32 or per-row int8), streamed to disk batch by batch so that hundreds of
//! thousands of captions need no more RAM than one batch (plus 4 bytes a row for int8 scales).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::memory::{quantize_row, safetensors_header};
use edgecap_engine::tokenizer::CLIP_CONTEXT_LENGTH;
use indicatif::{ProgressBar, ProgressStyle};

use crate::text_encoder::TextEncoder;

#[derive(Debug, Clone)]
pub struct MemoryOptions {
    pub clip: PathBuf,
    /// One caption per line, UTF-8.
    pub captions: PathBuf,
    /// CLIP BPE vocabulary when the CLIP directory has none.
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
    /// Keep a seeded random sample of this many captions.
    pub size: Option<usize>,
    pub seed: u64,
    pub int8: bool,
    pub batch: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemorySummary {
    pub rows: usize,
    pub dim: usize,
    /// Non-blank lines in the corpus, before sampling.
    pub corpus_lines: usize,
    pub blank_lines: usize,
    /// Captions longer than CLIP's context, embedded from their first 75 tokens (as CLIP does).
    pub truncated: usize,
}

pub fn build_memory(opts: &MemoryOptions) -> Result<MemorySummary> {
    let shown = opts.captions.display().to_string();
    let text = std::fs::read(&opts.captions).with_context(|| format!("{shown}: cannot read"))?;
    let (lines, blank_lines) = caption_lines(&text).with_context(|| shown.clone())?;
    if lines.is_empty() {
        bail!("{shown}: no captions (the corpus is empty or blank)");
    }
    let corpus_lines = lines.len();
    let chosen = sample(lines, opts.size, opts.seed);
    let encoder = TextEncoder::load(&opts.clip, opts.tokenizer.as_deref())?;
    let dim = encoder.embed_dim();
    let meta = HashMap::from([
        ("captions".to_string(), file_name(&opts.captions)),
        ("corpus_lines".to_string(), corpus_lines.to_string()),
        ("seed".to_string(), opts.seed.to_string()),
        ("normalised".to_string(), "l2".to_string()),
    ]);
    let bar = progress_bar(opts.progress, chosen.len());
    let mut truncated = 0;
    write_streamed(&opts.out, |out| {
        let dtype = if opts.int8 { "I8" } else { "F32" };
        out.write_all(&safetensors_header(chosen.len(), dim, dtype, &meta))?;
        let mut scales = Vec::new();
        for batch in chosen.chunks(opts.batch.max(1)) {
            truncated += batch.iter().filter(|c| encoder.tokenizer.encode(c).len() > CLIP_CONTEXT_LENGTH - 2).count();
            let embeds = encoder.embed(batch)?;
            for row in embeds.chunks_exact(dim) {
                let row = l2_normalised(row);
                if opts.int8 {
                    let (q, s) = quantize_row(&row);
                    out.write_all(&q.iter().map(|&v| v as u8).collect::<Vec<u8>>())?;
                    scales.push(s);
                } else {
                    out.write_all(&row.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
                }
            }
            bar.inc(batch.len() as u64);
        }
        for s in scales {
            out.write_all(&s.to_le_bytes())?;
        }
        Ok(())
    })
    .with_context(|| format!("{}: cannot write the memory", opts.out.display()))?;
    bar.finish_and_clear();
    Ok(MemorySummary { rows: chosen.len(), dim, corpus_lines, blank_lines, truncated })
}

/// The corpus's non-blank lines (trimmed), and how many blank lines were skipped. A line that is
/// not UTF-8 is an error naming it: a corpus in another encoding would give garbage captions.
fn caption_lines(bytes: &[u8]) -> Result<(Vec<&str>, usize)> {
    // The newline that ends the last line does not start a blank one.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut lines = Vec::new();
    let mut blank = 0;
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!("line {}: not UTF-8 (invalid byte at column {})", i + 1, e.valid_up_to() + 1)
        })?;
        match line.trim() {
            "" => blank += 1,
            caption => lines.push(caption),
        }
    }
    Ok((lines, blank))
}

/// A seeded sample of `size` lines (all of them when `size` is absent or not smaller), in corpus
/// order; splitmix64 drives a partial Fisher–Yates shuffle, so the same seed gives the same rows.
fn sample(lines: Vec<&str>, size: Option<usize>, seed: u64) -> Vec<&str> {
    let Some(n) = size.filter(|&n| n < lines.len()) else { return lines };
    let mut index: Vec<usize> = (0..lines.len()).collect();
    let mut state = seed;
    for i in 0..n {
        let j = i + (splitmix64(&mut state) % (index.len() - i) as u64) as usize;
        index.swap(i, j);
    }
    let mut picked = index[..n].to_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| lines[i]).collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn l2_normalised(row: &[f32]) -> Vec<f32> {
    let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    row.iter().map(|v| v / n).collect()
}

/// Streams into a temporary sibling of `path`, then renames it over `path`: an interrupted or
/// failed build never leaves a file that looks complete.
fn write_streamed(path: &Path, write: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn progress_bar(show: bool, total: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("memory [{bar:30}] {pos}/{len} captions ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_counted_and_the_final_newline_is_not_one() {
        let (lines, blank) = caption_lines(b"a cat\n\n  \nthe dog\n").unwrap();
        assert_eq!((lines, blank), (vec!["a cat", "the dog"], 2));
        let (lines, blank) = caption_lines(b"a cat").unwrap();
        assert_eq!((lines, blank), (vec!["a cat"], 0));
    }

    #[test]
    fn non_utf8_lines_are_named() {
        let e = caption_lines(b"ok\nbad \xff here\n").unwrap_err().to_string();
        assert_eq!(e, "line 2: not UTF-8 (invalid byte at column 5)");
    }

    #[test]
    fn samples_are_seeded_distinct_and_in_corpus_order() {
        let lines: Vec<String> = (0..100).map(|i| format!("caption {i:03}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let a = sample(refs.clone(), Some(10), 7);
        assert_eq!(a, sample(refs.clone(), Some(10), 7));
        assert_ne!(a, sample(refs.clone(), Some(10), 8));
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        assert_eq!(sample(refs.clone(), Some(1000), 7).len(), 100);
    }
}
