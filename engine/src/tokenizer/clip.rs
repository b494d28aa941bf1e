//! CLIP's BPE tokenizer, id-for-id compatible with transformers' `CLIPTokenizer`.
//!
//! Encoding, as in the reference:
//! 1. **Special tokens.** `<|startoftext|>` and `<|endoftext|>` written in the text are cut out
//!    first and become their ids.
//! 2. **Normalisation.** Unicode NFC, every whitespace run → one space, lower case.
//! 3. **Pre-tokenization.** Words are the matches of
//!    `'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+` (one digit per word); spaces vanish.
//! 4. **BPE.** A word's UTF-8 bytes become byte symbols, the last one carrying the `</w>` word end,
//!    merged by rank.
//!
//! [`ClipTokenizer::encode_for_model`] wraps the ids in start/end tokens and truncates to CLIP's
//! context of 77, keeping the end token. Decoding turns `</w>` back into spaces.
//!
//! open_clip's tokenizer (used by the DeCap reference) also runs `ftfy.fix_text` and HTML
//! unescaping; on ordinary captions both give the same ids, and transformers' is the reference here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use fancy_regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::bpe::{parse_merges_txt, MergeRule, MergeTable};
use super::bpe::{ByteSymbols, MergeLocation};
use super::{read_json, read_text, TokenizerError};

/// CLIP's text context: start token + at most 75 tokens + end token.
pub const CLIP_CONTEXT_LENGTH: usize = 77;

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
const WORD_END: &str = "</w>";
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const WHITESPACE_PATTERN: &str = r"\s+";

/// Number of merge rules CLIP uses from `bpe_simple_vocab_16e6.txt` (49152 − 256 − 2).
const CLIP_MERGES: usize = 48894;

/// CLIP BPE tokenizer. Immutable after loading, so it can be shared between threads.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    merges: MergeTable,
    symbols: ByteSymbols,
    /// Id of each byte's symbol inside a word, and at the end of a word (with `</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// Text of each id, in byte-symbol form.
    tokens: Vec<String>,
    start_id: u32,
    end_id: u32,
    word_pattern: Regex,
    whitespace: Regex,
}

impl ClipTokenizer {
    /// Loads an HF CLIP directory's `vocab.json` + `merges.txt`.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = read_json(vocab_json)?;
        let rules = parse_merges_txt(&read_text(merges_txt)?, merges_txt)?;
        Self::build(vocab, &rules, vocab_json, merges_txt)
    }

    /// Builds the tokenizer from the text of open_clip's `bpe_simple_vocab_16e6.txt` (the caller
    /// decompresses the `.gz`); `path` names it in errors.
    pub fn from_bpe_vocab(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        let (vocab, merges) = clip_vocab_from_bpe(text, path)?;
        let rules = parse_merges_txt(&merges, path)?;
        Self::build(vocab, &rules, path, path)
    }

    fn build(
        vocab: HashMap<String, u32>,
        rules: &[MergeRule],
        vocab_path: &Path,
        merges_path: &Path,
    ) -> Result<Self, TokenizerError> {
        let invalid = |problem: String| TokenizerError::Invalid { path: vocab_path.to_owned(), problem };
        let symbols = ByteSymbols::new();
        let id_of = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| invalid(format!("vocabulary lacks {token:?}: not a CLIP vocabulary")))
        };
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for byte in 0..=255u8 {
            let symbol = symbols.char_of(byte).to_string();
            byte_ids[usize::from(byte)] = id_of(&symbol)?;
            byte_end_ids[usize::from(byte)] = id_of(&format!("{symbol}{WORD_END}"))?;
        }
        let (start_id, end_id) = (id_of(START_OF_TEXT)?, id_of(END_OF_TEXT)?);
        let mut tokens = vec![String::new(); vocab.len()];
        for (token, &id) in &vocab {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                invalid(format!("id {id} of {token:?} is not below the vocabulary size {}", vocab.len()))
            })?;
            if !slot.is_empty() {
                return Err(invalid(format!("id {id} is given to two tokens, {slot:?} and {token:?}")));
            }
            *slot = token.clone();
        }
        let merges = MergeTable::build(rules, &vocab, merges_path)?;
        let regex = |p: &str| Regex::new(p).map_err(|e| invalid(format!("internal: pattern {p}: {e}")));
        Ok(Self {
            merges,
            symbols,
            byte_ids,
            byte_end_ids,
            tokens,
            start_id,
            end_id,
            word_pattern: regex(WORD_PATTERN)?,
            whitespace: regex(WHITESPACE_PATTERN)?,
        })
    }

    /// Text → token ids, without start/end tokens and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while let Some((at, special, id)) = self.next_special(rest) {
            self.encode_text(&rest[..at], &mut ids);
            ids.push(id);
            rest = &rest[at + special.len()..];
        }
        self.encode_text(rest, &mut ids);
        ids
    }

    /// What CLIP's text encoder reads: start token, the text's ids cut to fit, end token; at most
    /// [`CLIP_CONTEXT_LENGTH`] ids, the end token always last (as `truncation=True` gives).
    pub fn encode_for_model(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.start_id];
        ids.extend(self.encode(text).into_iter().take(CLIP_CONTEXT_LENGTH - 2));
        ids.push(self.end_id);
        ids
    }

    /// Token ids → text: start/end tokens dropped, `</w>` word ends become spaces, the result
    /// trimmed; bytes that are not UTF-8 become U+FFFD. An unknown id is an error naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if id == self.start_id || id == self.end_id {
                continue;
            }
            let token =
                self.tokens.get(id as usize).ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })?;
            let (body, word_end) = match token.strip_suffix(WORD_END) {
                Some(body) => (body, true),
                None => (token.as_str(), false),
            };
            for c in body.chars() {
                match self.symbols.byte_of(c) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if word_end {
                bytes.push(b' ');
            }
        }
        Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// `<|startoftext|>` (49406 in CLIP's vocabulary).
    pub fn start_token_id(&self) -> u32 {
        self.start_id
    }

    /// `<|endoftext|>` (49407 in CLIP's vocabulary).
    pub fn end_token_id(&self) -> u32 {
        self.end_id
    }

    fn next_special(&self, text: &str) -> Option<(usize, &'static str, u32)> {
        [(START_OF_TEXT, self.start_id), (END_OF_TEXT, self.end_id)]
            .into_iter()
            .filter_map(|(s, id)| text.find(s).map(|at| (at, s, id)))
            .min_by_key(|(at, _, _)| *at)
    }

    fn encode_text(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let normalised = normalise(text, &self.whitespace);
        let mut word = Vec::new();
        // The pattern has no look-around, so matching cannot hit fancy-regex's backtrack limit.
        for found in self.word_pattern.find_iter(&normalised).flatten() {
            let bytes = found.as_str().as_bytes();
            word.clear();
            word.extend(bytes[..bytes.len() - 1].iter().map(|&b| self.byte_ids[usize::from(b)]));
            word.push(self.byte_end_ids[usize::from(bytes[bytes.len() - 1])]);
            self.merges.apply(&mut word);
            ids.extend_from_slice(&word);
        }
    }
}

/// Step 2 of encoding: NFC, whitespace runs → one space, lower case.
fn normalise(text: &str, whitespace: &Regex) -> String {
    let nfc: String = text.nfc().collect();
    whitespace.replace_all(&nfc, " ").to_lowercase()
}

/// The words BPE sees in `text`: steps 2 and 3 of encoding (normalisation, pre-tokenization),
/// for tools that learn a vocabulary with the tokenizer's own word boundaries. Unlike
/// [`ClipTokenizer::encode`], special-token text is not cut out first.
pub fn clip_words(text: &str) -> Vec<String> {
    static PATTERNS: LazyLock<(Regex, Regex)> = LazyLock::new(|| {
        let compile = |p: &str| Regex::new(p).expect("CLIP's constant patterns compile");
        (compile(WORD_PATTERN), compile(WHITESPACE_PATTERN))
    });
    let (words, whitespace) = &*PATTERNS;
    words.find_iter(&normalise(text, whitespace)).flatten().map(|m| m.as_str().to_owned()).collect()
}

/// The character standing for each byte in CLIP's (and GPT-2's) tokens, indexed by byte: GPT-2's
/// `bytes_to_unicode` table. OpenAI's CLIP vocabulary lists the 256 byte tokens in the order of
/// that table's values, which is ascending order of these characters.
pub fn clip_byte_symbols() -> [char; 256] {
    let symbols = ByteSymbols::new();
    std::array::from_fn(|byte| symbols.char_of(byte as u8))
}

/// The 256 byte symbols in the order CLIP numbers them (ids 0..256; `'!'` = 0, `a` = 64, so
/// `"a</w>"` = 320): ascending character order, not byte order.
pub fn clip_byte_symbols_in_id_order() -> Vec<char> {
    let mut symbols = clip_byte_symbols().to_vec();
    symbols.sort_unstable();
    symbols
}

/// CLIP's vocabulary (`token → id`) and `merges.txt` text, from open_clip's
/// `bpe_simple_vocab_16e6.txt`: the 256 byte symbols, the same with `</w>`, one token per merge
/// rule (the first 48894 rules of the file), then `<|startoftext|>` and `<|endoftext|>`.
pub fn clip_vocab_from_bpe(text: &str, path: &Path) -> Result<(HashMap<String, u32>, String), TokenizerError> {
    let mut lines = text.lines();
    lines.next(); // the "#version" header
    let merges: Vec<&str> = lines.take(CLIP_MERGES).collect();
    if merges.len() < CLIP_MERGES {
        return Err(TokenizerError::Invalid {
            path: path.to_owned(),
            problem: format!("{} merge rules, CLIP needs {CLIP_MERGES}", merges.len()),
        });
    }
    let symbols = clip_byte_symbols_in_id_order();
    let mut tokens: Vec<String> = symbols.iter().map(char::to_string).collect();
    tokens.extend(symbols.iter().map(|c| format!("{c}{WORD_END}")));
    for (i, line) in merges.iter().enumerate() {
        let rule = super::bpe::split_rule(line, MergeLocation::Line(i + 2), path)?;
        tokens.push(format!("{}{}", rule.left, rule.right));
    }
    tokens.push(START_OF_TEXT.to_owned());
    tokens.push(END_OF_TEXT.to_owned());
    let vocab = tokens.into_iter().enumerate().map(|(id, t)| (t, id as u32)).collect();
    let mut merges_txt = String::from("#version: 0.2\n");
    for line in merges {
        merges_txt.push_str(line);
        merges_txt.push('\n');
    }
    Ok((vocab, merges_txt))
}
