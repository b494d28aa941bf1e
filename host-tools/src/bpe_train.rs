//! Learning a small BPE vocabulary from a caption corpus, written in CLIP's file layout so that
//! the engine's [`ClipTokenizer::from_files`](edgecap_engine::tokenizer::ClipTokenizer::from_files)
//! loads it. The default model speaks only the scene captions (a few dozen words), so CLIP's 49408
//! tokens would be almost all dead weight in its embedding and output layers.
//!
//! Words are what the tokenizer itself sees ([`clip_words`]: NFC, lower case, CLIP's
//! pre-tokenization), each spelled in byte symbols with `</w>` on its last one. The standard BPE
//! algorithm then repeatedly merges the most frequent adjacent pair over the corpus's word
//! frequencies, ties broken by the smaller pair text, until no pair occurs `min_frequency` times
//! or `max_merges` rules exist. Pair counts are recomputed after every merge: O(merges × symbols),
//! plenty fast for caption corpora.
//!
//! Vocabulary layout, as OpenAI's CLIP: ids 0..256 are the byte symbols in CLIP's order (ascending
//! symbol, the order of `bytes_to_unicode`'s values), 256..512 the same with `</w>`, then one token
//! per merge rule in rule order, then `<|startoftext|>` and `<|endoftext|>`, which is the largest
//! id because CLIP's text tower pools at the highest id. Every byte keeps a token, so any text,
//! however unlike the corpus, still encodes and decodes.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use edgecap_engine::fsutil::write_atomic;
use edgecap_engine::tokenizer::{clip_byte_symbols, clip_byte_symbols_in_id_order, clip_words};

const WORD_END: &str = "</w>";
const SPECIAL_TOKENS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];
/// The header line CLIP's (and GPT-2's) `merges.txt` start with.
const MERGES_HEADER: &str = "#version: 0.2";

/// A learned vocabulary, as the bytes of its two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedVocab {
    /// `vocab.json`: token → id, one entry per line in id order.
    pub vocab_json: Vec<u8>,
    /// `merges.txt`: the header, then one `left right` rule per line in rank order.
    pub merges_txt: Vec<u8>,
    /// Number of merge rules.
    pub merges: usize,
    /// Number of tokens: 512 + merges + 2, less one for each rule whose result another rule
    /// already produced (possible in principle, rare in practice).
    pub vocab_size: usize,
}

impl LearnedVocab {
    /// Writes `vocab.json` and `merges.txt` into `dir` (which must exist), atomically.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in [("vocab.json", &self.vocab_json), ("merges.txt", &self.merges_txt)] {
            let path = dir.join(name);
            write_atomic(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }
}

/// A merge rule: the two adjacent symbols that become one.
type Pair = (String, String);

/// Learns up to `max_merges` merge rules from `captions` (see the module docs).
pub fn learn_clip_vocab(captions: &[String], max_merges: usize, min_frequency: usize) -> Result<LearnedVocab> {
    if min_frequency == 0 {
        bail!("BPE min_frequency must be at least 1 (a pair that never occurs cannot be merged)");
    }
    let mut words = corpus_words(captions);
    let mut merges: Vec<Pair> = Vec::new();
    while merges.len() < max_merges {
        match most_frequent_pair(&words) {
            Some((pair, count)) if count >= min_frequency => {
                merge_everywhere(&mut words, &pair);
                merges.push(pair);
            }
            _ => break,
        }
    }
    let tokens = vocabulary(&merges);
    Ok(LearnedVocab {
        vocab_json: vocab_json(&tokens)?,
        merges_txt: merges_txt(&merges),
        merges: merges.len(),
        vocab_size: tokens.len(),
    })
}

/// The distinct words of the corpus, each as its byte symbols (the last with `</w>`), with how
/// often it occurs. A BTreeMap, so that nothing depends on the corpus's order or on hashing.
fn corpus_words(captions: &[String]) -> Vec<(Vec<String>, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for caption in captions {
        for word in clip_words(caption) {
            *counts.entry(word).or_insert(0) += 1;
        }
    }
    let symbols = clip_byte_symbols();
    counts
        .into_iter()
        .map(|(word, count)| {
            let mut spelled: Vec<String> = word.bytes().map(|b| symbols[usize::from(b)].to_string()).collect();
            if let Some(last) = spelled.last_mut() {
                last.push_str(WORD_END);
            }
            (spelled, count)
        })
        .collect()
}

/// The adjacent pair occurring most often over the corpus, the smaller pair text on a tie.
fn most_frequent_pair(words: &[(Vec<String>, usize)]) -> Option<(Pair, usize)> {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (symbols, count) in words {
        for pair in symbols.windows(2) {
            *counts.entry((pair[0].as_str(), pair[1].as_str())).or_insert(0) += count;
        }
    }
    // Iteration is in ascending pair order and `max_by_key` keeps the last maximum, so walk it
    // backwards to keep the smallest pair among equal counts.
    let ((left, right), count) = counts.into_iter().rev().max_by_key(|&(_, count)| count)?;
    Some(((left.to_string(), right.to_string()), count))
}

/// Replaces every occurrence of `pair` by its concatenation, left to right as encoding does.
fn merge_everywhere(words: &mut [(Vec<String>, usize)], pair: &Pair) {
    let merged = format!("{}{}", pair.0, pair.1);
    for (symbols, _) in words {
        let mut out = Vec::with_capacity(symbols.len());
        let mut i = 0;
        while i < symbols.len() {
            if i + 1 < symbols.len() && symbols[i] == pair.0 && symbols[i + 1] == pair.1 {
                out.push(merged.clone());
                i += 2;
            } else {
                out.push(std::mem::take(&mut symbols[i]));
                i += 1;
            }
        }
        *symbols = out;
    }
}

/// Every token in id order (see the module docs for the layout).
fn vocabulary(merges: &[Pair]) -> Vec<String> {
    let bytes = clip_byte_symbols_in_id_order();
    let mut tokens: Vec<String> = bytes.iter().map(char::to_string).collect();
    tokens.extend(bytes.iter().map(|c| format!("{c}{WORD_END}")));
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    for (left, right) in merges {
        // Two rules can build the same text from different halves; it keeps one id, since ids
        // must be exactly 0..len.
        let token = format!("{left}{right}");
        if seen.insert(token.clone()) {
            tokens.push(token);
        }
    }
    tokens.extend(SPECIAL_TOKENS.map(str::to_string));
    tokens
}

fn vocab_json(tokens: &[String]) -> Result<Vec<u8>> {
    let mut out = String::from("{\n");
    for (id, token) in tokens.iter().enumerate() {
        let separator = if id + 1 < tokens.len() { "," } else { "" };
        out.push_str(&format!("  {}: {id}{separator}\n", serde_json::to_string(token)?));
    }
    out.push_str("}\n");
    Ok(out.into_bytes())
}

fn merges_txt(merges: &[Pair]) -> Vec<u8> {
    let mut out = format!("{MERGES_HEADER}\n");
    for (left, right) in merges {
        out.push_str(&format!("{left} {right}\n"));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use edgecap_engine::tokenizer::ClipTokenizer;

    use super::*;
    use crate::scenes::generate;

    fn scene_captions(count: u64) -> Vec<String> {
        (0..count).map(|i| generate(1, i).description.caption()).collect()
    }

    fn load(learned: &LearnedVocab) -> (tempfile::TempDir, ClipTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        learned.write_to(dir.path()).unwrap();
        let tok = ClipTokenizer::from_files(&dir.path().join("vocab.json"), &dir.path().join("merges.txt")).unwrap();
        (dir, tok)
    }

    #[test]
    fn scene_words_become_single_tokens() {
        let captions = scene_captions(600);
        let learned = learn_clip_vocab(&captions, 10_000, 2).unwrap();
        let (_dir, tok) = load(&learned);
        let words: HashSet<String> = captions.iter().flat_map(|c| clip_words(c)).collect();
        assert!((20..40).contains(&words.len()), "{} distinct words", words.len());
        for word in &words {
            assert_eq!(tok.encode(word).len(), 1, "{word:?} is not one token");
        }
        for caption in &captions {
            let ids = tok.encode(caption);
            assert_eq!(ids.len(), caption.split(' ').count());
            assert_eq!(&tok.decode(&tok.encode_for_model(caption)).unwrap(), caption);
        }
        assert_eq!(learned.vocab_size, 512 + learned.merges + 2);
        assert_eq!(tok.vocab_size(), learned.vocab_size);
        assert_eq!(tok.end_token_id() as usize, learned.vocab_size - 1);
        assert_eq!(tok.start_token_id() as usize, learned.vocab_size - 2);
    }

    #[test]
    fn byte_tokens_have_clips_ids() {
        let learned = learn_clip_vocab(&scene_captions(50), 10_000, 2).unwrap();
        let vocab: HashMap<String, u32> = serde_json::from_slice(&learned.vocab_json).unwrap();
        // As in OpenAI's vocab.json: "!" 0, "a" 64, "a</w>" 320, byte 0 ("Ā") 188, "ÿ</w>" 443.
        assert_eq!(vocab["!"], 0);
        assert_eq!(vocab["a"], 64);
        assert_eq!(vocab["a</w>"], 320);
        assert_eq!(vocab["\u{100}"], 188);
        assert_eq!(vocab["\u{ff}</w>"], 443);
        let mut ids: Vec<u32> = vocab.values().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..learned.vocab_size as u32).collect::<Vec<_>>());
        assert!(learned.merges_txt.starts_with(b"#version: 0.2\n"));
    }

    #[test]
    fn unseen_text_round_trips_through_bytes() {
        let learned = learn_clip_vocab(&scene_captions(300), 10_000, 2).unwrap();
        let (_dir, tok) = load(&learned);
        for text in
            ["Hello, World 42!", "naïve café — Straße", "日本語 🐱 ½ → ∞", "a red zebra at 3:45pm?", "x\ty\n\nz"]
        {
            let ids = tok.encode(text);
            assert!(ids.iter().all(|&id| (id as usize) < learned.vocab_size - 2));
            assert_eq!(tok.decode(&ids).unwrap(), clip_words(text).join(" "), "{text:?}");
        }
    }

    #[test]
    fn learning_is_deterministic_and_order_free() {
        let captions = scene_captions(300);
        let once = learn_clip_vocab(&captions, 10_000, 2).unwrap();
        assert_eq!(learn_clip_vocab(&captions, 10_000, 2).unwrap(), once);
        let reversed: Vec<String> = captions.iter().rev().cloned().collect();
        assert_eq!(learn_clip_vocab(&reversed, 10_000, 2).unwrap(), once);
    }

    #[test]
    fn limits_stop_learning() {
        let captions = scene_captions(300);
        let few = learn_clip_vocab(&captions, 5, 2).unwrap();
        assert_eq!((few.merges, few.vocab_size), (5, 519));
        load(&few);
        // Each caption appears once: no pair reaches 10 000 occurrences.
        let none = learn_clip_vocab(&captions[..3], 10_000, 10_000).unwrap();
        assert_eq!(none.merges, 0);
        let (_dir, tok) = load(&none);
        assert_eq!(tok.decode(&tok.encode("two red circles")).unwrap(), "two red circles");
        assert!(learn_clip_vocab(&captions, 10, 0).unwrap_err().to_string().contains("min_frequency"));
        assert_eq!(learn_clip_vocab(&[], 10, 2).unwrap().merges, 0);
    }

    #[test]
    fn most_frequent_pair_breaks_ties_by_text() {
        let word = |s: &[&str], n| (s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), n);
        let words = vec![word(&["c", "d</w>"], 2), word(&["a", "b</w>"], 2), word(&["x", "y</w>"], 1)];
        assert_eq!(most_frequent_pair(&words), Some((("a".into(), "b</w>".into()), 2)));
        let mut aaa = vec![word(&["a", "a", "a</w>"], 1)];
        merge_everywhere(&mut aaa, &("a".into(), "a".into()));
        assert_eq!(aaa[0].0, ["aa", "a</w>"]);
    }

    #[test]
    fn a_token_built_twice_keeps_one_id() {
        let rule = |l: &str, r: &str| (l.to_string(), r.to_string());
        let merges = [rule("b", "c"), rule("a", "bc"), rule("a", "b"), rule("ab", "c")];
        let tokens = vocabulary(&merges);
        assert_eq!(tokens.len(), 512 + 3 + 2);
        let learned = LearnedVocab {
            vocab_json: vocab_json(&tokens).unwrap(),
            merges_txt: merges_txt(&merges),
            merges: merges.len(),
            vocab_size: tokens.len(),
        };
        let (_dir, tok) = load(&learned);
        assert_eq!(tok.decode(&tok.encode("abc bcd")).unwrap(), "abc bcd");
    }
}
