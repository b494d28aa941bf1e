//! Byte-pair-encoding pieces shared by the GPT-2 and CLIP tokenizers: the byte-to-symbol table both
//! use, the `merges.txt` parser, and the merge algorithm itself.
//!
//! The merge algorithm works on token ids, not strings: a word starts as one symbol per byte and
//! the lowest-ranked adjacent pair is merged until no pair has a rule. Ties go to the leftmost pair,
//! which gives the same result as the reference implementations (OpenAI's `bpe()` loop and Hugging
//! Face's priority queue). Symbols live in a doubly linked list over a vector and candidate pairs in
//! a min-heap, so a word of n bytes costs O(n log n) even for pathological multi-thousand-byte
//! words, without any cache.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;

use super::TokenizerError;

/// Bytes GPT-2 (and CLIP) write as themselves: the printable Latin-1 ones.
fn is_printable_byte(b: u32) -> bool {
    (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
}

/// One past the largest symbol code: 256 + the 68 non-printable bytes.
const SYMBOL_CODE_END: usize = 256 + 68;

/// The printable character GPT-2 (and CLIP) use to stand for each byte, and its inverse: printable
/// Latin-1 bytes stand for themselves, the other 68 bytes are moved to U+0100.. in byte order, so
/// that every token of the vocabulary is a printable string.
#[derive(Debug, Clone)]
pub(crate) struct ByteSymbols {
    chars: [char; 256],
    bytes: [Option<u8>; SYMBOL_CODE_END],
}

impl ByteSymbols {
    pub(crate) fn new() -> Self {
        let mut chars = ['\0'; 256];
        let mut bytes = [None; SYMBOL_CODE_END];
        let mut next_moved = 256u32;
        for byte in 0..=255u8 {
            let code = if is_printable_byte(u32::from(byte)) {
                u32::from(byte)
            } else {
                next_moved += 1;
                next_moved - 1
            };
            // Every code is below U+0144, so it is a valid char and a valid index.
            chars[usize::from(byte)] = char::from_u32(code).unwrap_or('\u{fffd}');
            bytes[code as usize] = Some(byte);
        }
        Self { chars, bytes }
    }

    /// The symbol standing for `byte`.
    pub(crate) fn char_of(&self, byte: u8) -> char {
        self.chars[usize::from(byte)]
    }

    /// The byte `c` stands for, or `None` for a character that is not one of the 256 symbols.
    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        self.bytes.get(c as usize).copied().flatten()
    }
}

/// Where a merge rule came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MergeLocation {
    /// 1-based line of a `merges.txt`.
    Line(usize),
    /// 0-based index into `model.merges` of a `tokenizer.json`.
    JsonIndex(usize),
}

impl fmt::Display for MergeLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeLocation::Line(n) => write!(f, "line {n}"),
            MergeLocation::JsonIndex(i) => write!(f, "model.merges[{i}]"),
        }
    }
}

/// One merge rule as written in the file, in rank order.
#[derive(Debug, Clone)]
pub(crate) struct MergeRule {
    pub left: String,
    pub right: String,
    pub location: MergeLocation,
}

/// Splits the text form `"left right"` of a rule, which both `merges.txt` and older
/// `tokenizer.json` files use.
pub(crate) fn split_rule(text: &str, location: MergeLocation, path: &Path) -> Result<MergeRule, TokenizerError> {
    let mut parts = text.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
            Ok(MergeRule { left: left.to_owned(), right: right.to_owned(), location })
        }
        _ => Err(TokenizerError::BadMerge {
            path: path.to_owned(),
            location: location.to_string(),
            text: text.to_owned(),
        }),
    }
}

/// Parses a `merges.txt`: one `left right` rule per line in rank order. `#version` header lines and
/// blank lines (the file usually ends with a newline) are skipped; Windows line endings are accepted.
pub(crate) fn parse_merges_txt(text: &str, path: &Path) -> Result<Vec<MergeRule>, TokenizerError> {
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        rules.push(split_rule(line, MergeLocation::Line(index + 1), path)?);
    }
    Ok(rules)
}

/// Rank and result of a merge rule.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// The merge rules resolved to token ids.
#[derive(Debug, Clone, Default)]
pub(crate) struct MergeTable {
    pairs: HashMap<(u32, u32), Merge>,
}

const NONE: usize = usize::MAX;

impl MergeTable {
    /// Resolves rules against the vocabulary. Both halves and their concatenation must be tokens.
    /// A rule repeated later in the file takes the later rank, as in the reference implementations.
    pub(crate) fn build(
        rules: &[MergeRule],
        vocab: &HashMap<String, u32>,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let mut pairs = HashMap::with_capacity(rules.len());
        for (rank, rule) in rules.iter().enumerate() {
            let id_of = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| TokenizerError::MergeTokenMissing {
                    path: path.to_owned(),
                    location: rule.location.to_string(),
                    token: token.to_owned(),
                })
            };
            let left = id_of(&rule.left)?;
            let right = id_of(&rule.right)?;
            let merged = id_of(&format!("{}{}", rule.left, rule.right))?;
            let rank = u32::try_from(rank).map_err(|_| TokenizerError::Invalid {
                path: path.to_owned(),
                problem: "more than 2^32 merge rules".to_owned(),
            })?;
            pairs.insert((left, right), Merge { rank, merged });
        }
        Ok(Self { pairs })
    }

    /// Merges `symbols` (token ids of one pre-tokenized word) in place until no adjacent pair has a
    /// rule, always applying the lowest-ranked pair first and the leftmost one among equal ranks.
    pub(crate) fn apply(&self, symbols: &mut Vec<u32>) {
        if symbols.len() < 2 {
            return;
        }
        let n = symbols.len();
        let mut ids = std::mem::take(symbols);
        // Linked list over positions: merging keeps the left position and unlinks the right one,
        // so positions keep their left-to-right order, which breaks rank ties.
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
        let mut next: Vec<usize> = (0..n).map(|i| if i + 1 == n { NONE } else { i + 1 }).collect();
        let mut alive = vec![true; n];
        // Heap entries: (rank, left position, left id, right id); ids let stale entries be detected.
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            self.push_candidate(&mut heap, &ids, i, i + 1);
        }
        while let Some(Reverse((_, left, left_id, right_id))) = heap.pop() {
            let right = next[left];
            if !alive[left] || right == NONE || ids[left] != left_id || ids[right] != right_id {
                continue; // one of the two symbols has been merged since this entry was pushed
            }
            let Some(merge) = self.pairs.get(&(left_id, right_id)) else {
                continue;
            };
            ids[left] = merge.merged;
            alive[right] = false;
            next[left] = next[right];
            if next[left] != NONE {
                prev[next[left]] = left;
                self.push_candidate(&mut heap, &ids, left, next[left]);
            }
            if prev[left] != NONE {
                self.push_candidate(&mut heap, &ids, prev[left], left);
            }
        }
        let mut pos = 0; // position 0 is never unlinked: merges keep the left symbol
        while pos != NONE {
            symbols.push(ids[pos]);
            pos = next[pos];
        }
    }

    fn push_candidate(
        &self,
        heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>,
        ids: &[u32],
        left: usize,
        right: usize,
    ) {
        if let Some(merge) = self.pairs.get(&(ids[left], ids[right])) {
            heap.push(Reverse((merge.rank, left, ids[left], ids[right])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_match_gpt2_table() {
        let table = ByteSymbols::new();
        assert_eq!(table.char_of(b'a'), 'a');
        assert_eq!(table.char_of(b' '), '\u{120}'); // 'Ġ'
        assert_eq!(table.char_of(b'\n'), '\u{10a}'); // 'Ċ'
        assert_eq!(table.char_of(0), '\u{100}');
        assert_eq!(table.char_of(0xad), '\u{143}');
        let mut seen: Vec<char> = (0..=255u8).map(|b| table.char_of(b)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256, "symbols must be distinct");
        for byte in 0..=255u8 {
            assert_eq!(table.byte_of(table.char_of(byte)), Some(byte));
        }
        assert_eq!(table.byte_of(' '), None);
        assert_eq!(table.byte_of('\u{1000}'), None);
    }

    fn table(rules: &[(&str, &str)], vocab: &[&str]) -> MergeTable {
        let vocab: HashMap<String, u32> = vocab.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let rules: Vec<MergeRule> = rules
            .iter()
            .enumerate()
            .map(|(i, (l, r))| MergeRule {
                left: l.to_string(),
                right: r.to_string(),
                location: MergeLocation::Line(i + 1),
            })
            .collect();
        MergeTable::build(&rules, &vocab, Path::new("t")).unwrap()
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        // vocab ids: a=0 b=1 c=2 ab=3 bc=4 abc=5 aa=6
        let t = table(&[("b", "c"), ("a", "b"), ("a", "bc"), ("a", "a")], &["a", "b", "c", "ab", "bc", "abc", "aa"]);
        let mut w = vec![0, 1, 2]; // "abc": bc (rank 0) first, then a+bc
        t.apply(&mut w);
        assert_eq!(w, vec![5]);
        let mut w = vec![0, 0, 0]; // "aaa": leftmost pair wins the tie
        t.apply(&mut w);
        assert_eq!(w, vec![6, 0]);
        let mut w = vec![0, 1, 0, 1]; // "abab" -> ab ab
        t.apply(&mut w);
        assert_eq!(w, vec![3, 3]);
    }

    #[test]
    fn merges_txt_errors_name_the_line() {
        let p = Path::new("m.txt");
        let rules = parse_merges_txt("#version: 0.2\na b\r\n\nc d\n", p).unwrap();
        assert_eq!(rules.len(), 2);
        let err = parse_merges_txt("#version: 0.2\na b\nabc\n", p).unwrap_err().to_string();
        assert_eq!(err, "m.txt: line 3: merge rule \"abc\" is not two tokens separated by one space");
        assert!(parse_merges_txt("a b c\n", p).is_err());
        assert!(parse_merges_txt("a  b\n", p).is_err());
    }
}
