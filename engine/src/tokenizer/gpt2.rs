//! GPT-2's byte-level BPE tokenizer, id-for-id compatible with Hugging Face's `GPT2TokenizerFast`.
//!
//! Encoding a text goes through three steps, as in the reference:
//! 1. **Added tokens.** Occurrences of added tokens (for GPT-2 only `<|endoftext|>`) are cut out of
//!    the text and become their id directly; the text between them is encoded on its own. This is
//!    `GPT2TokenizerFast`'s default: special tokens written in the text are recognised, so
//!    `"a<|endoftext|>b"` encodes to `[64, 50256, 65]`, while a partial `"<|endoftext|"` is ordinary
//!    text.
//! 2. **Pre-tokenization.** Each piece of text is split into words with GPT-2's pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! 3. **BPE.** Each word's UTF-8 bytes become byte symbols, merged by [`MergeTable::apply`].
//!
//! Decoding concatenates the bytes of the tokens and replaces invalid UTF-8 with U+FFFD, like the
//! reference's `errors="replace"`; it does not "clean up tokenization spaces", so
//! `decode(encode(s)) == s` for every string.

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::bpe::{parse_merges_txt, split_rule, ByteSymbols, MergeLocation, MergeRule, MergeTable};
use super::{read_json, read_text, TokenizerError};

/// GPT-2's pre-tokenization pattern without its `\s+(?!\S)` alternative. The lookahead would need
/// the backtracking engine (which has a backtrack limit and can fail on long whitespace runs);
/// instead the plain `\s+` match is shortened afterwards by [`Gpt2Tokenizer::word_end`], which is
/// exactly what the lookahead does.
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// The token GPT-2 uses as end of text (and beginning of text, and padding).
const END_OF_TEXT: &str = "<|endoftext|>";

/// A token matched literally in the text before pre-tokenization.
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    /// Also swallow the whitespace just before the token.
    lstrip: bool,
    /// Also swallow the whitespace just after the token.
    rstrip: bool,
}

/// The knobs of a `tokenizer.json` that this implementation honours.
#[derive(Debug, Clone, Copy, Default)]
struct Options {
    /// Prefix each piece of text with a space when it does not start with one.
    add_prefix_space: bool,
    /// Emit a word that is itself a vocabulary token as is, without merging.
    ignore_merges: bool,
}

/// GPT-2 byte-level BPE tokenizer. Immutable after loading, so it can be shared between threads.
#[derive(Debug, Clone)]
pub struct Gpt2Tokenizer {
    /// Token string (in byte-symbol form for vocabulary tokens) to id, added tokens included.
    token_ids: HashMap<String, u32>,
    /// The bytes each id decodes to.
    id_bytes: HashMap<u32, Box<[u8]>>,
    merges: MergeTable,
    symbols: ByteSymbols,
    /// Id of the single-byte token of each byte: the starting point of every word.
    byte_ids: [u32; 256],
    added: Vec<AddedToken>,
    word_pattern: Regex,
    options: Options,
}

/// One piece of a text after cutting out added tokens.
enum Piece<'t> {
    Text(&'t str),
    Added(u32),
}

impl Gpt2Tokenizer {
    /// Loads the classic pair of files: `vocab.json` (token → id, a.k.a. `encoder.json`) and
    /// `merges.txt` (a.k.a. `vocab.bpe`). Like `GPT2TokenizerFast`, `<|endoftext|>` is treated as an
    /// added special token when the vocabulary has it.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path) -> Result<Self, TokenizerError> {
        let vocab: HashMap<String, u32> = read_json(vocab_json)?;
        let merges_text = read_text(merges_txt)?;
        let rules = parse_merges_txt(&merges_text, merges_txt)?;
        let added = match vocab.get(END_OF_TEXT) {
            Some(&id) => vec![AddedToken { content: END_OF_TEXT.to_owned(), id, lstrip: false, rstrip: false }],
            None => Vec::new(),
        };
        let files = Files { vocab: vocab_json, merges: merges_txt };
        Self::build(files, vocab, &rules, added, Options::default())
    }

    /// Loads a Hugging Face `tokenizer.json` holding a BPE model with a byte-level pre-tokenizer and
    /// decoder. Merges may be `"a b"` strings or `["a", "b"]` pairs. Features that would change the
    /// ids (normalizers, other pre-tokenizers, dropout, subword prefixes, `single_word` added tokens)
    /// are refused with [`TokenizerError::Unsupported`]. The post-processor is ignored: `encode`
    /// never adds template tokens (GPT-2's adds none).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let file: TokenizerJson = read_json(path)?;
        let unsupported = |feature: String| TokenizerError::Unsupported { path: path.to_owned(), feature };
        check_absent(&file.normalizer, "normalizer").map_err(unsupported)?;
        let options = check_model(&file.model).map_err(unsupported)?;
        let add_prefix_space = check_pre_tokenizer(file.pre_tokenizer.as_ref()).map_err(unsupported)?;
        check_decoder(file.decoder.as_ref()).map_err(unsupported)?;
        let options = Options { add_prefix_space, ..options };
        let rules = json_merge_rules(&file.model.merges, path)?;
        let added = json_added_tokens(&file.added_tokens, &file.model.vocab, path)?;
        let mut vocab = file.model.vocab;
        for token in &added {
            vocab.insert(token.content.clone(), token.id);
        }
        Self::build(Files { vocab: path, merges: path }, vocab, &rules, added, options)
    }

    /// Text → token ids. Never fails: every byte has a token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut word = Vec::new();
        for piece in self.split_added(text) {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(segment) if self.options.add_prefix_space && !segment.starts_with(' ') => {
                    self.encode_segment(&format!(" {segment}"), &mut ids, &mut word)
                }
                Piece::Text(segment) => self.encode_segment(segment, &mut ids, &mut word),
            }
        }
        ids
    }

    /// Token ids → text. Byte sequences that are not valid UTF-8 (an id sequence that cuts a
    /// character) become U+FFFD. An id that no token has is an error naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let token =
                self.id_bytes.get(&id).ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })?;
            bytes.extend_from_slice(token);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        })
    }

    /// Id of a token written as in the vocabulary file (byte-symbol form, e.g. `"Ġcat"` for " cat").
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.token_ids.get(token).copied()
    }

    /// Number of distinct ids (vocabulary plus added tokens): 50257 for GPT-2.
    pub fn vocab_size(&self) -> usize {
        self.id_bytes.len()
    }

    /// Id of `<|endoftext|>`, GPT-2's end-of-text token, if the vocabulary has it.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.token_to_id(END_OF_TEXT)
    }

    fn build(
        files: Files<'_>,
        token_ids: HashMap<String, u32>,
        rules: &[MergeRule],
        mut added: Vec<AddedToken>,
        options: Options,
    ) -> Result<Self, TokenizerError> {
        let symbols = ByteSymbols::new();
        let invalid = |problem: String| TokenizerError::Invalid { path: files.vocab.to_owned(), problem };
        let byte_ids = byte_token_ids(&token_ids, &symbols).map_err(invalid)?;
        let id_bytes = decoding_table(&token_ids, &symbols).map_err(invalid)?;
        let merges = MergeTable::build(rules, &token_ids, files.merges)?;
        // Longest first, so that of two tokens found at the same place the longer wins.
        added.sort_by_key(|token| std::cmp::Reverse(token.content.len()));
        let word_pattern = Regex::new(WORD_PATTERN).map_err(|err| invalid(format!("internal: word pattern: {err}")))?;
        Ok(Self { token_ids, id_bytes, merges, symbols, byte_ids, added, word_pattern, options })
    }

    /// Cuts `text` at added tokens (leftmost, then longest match, as Hugging Face's matcher does).
    fn split_added<'t>(&self, text: &'t str) -> Vec<Piece<'t>> {
        let mut pieces = Vec::new();
        // Next occurrence of each added token at or after `pos`, found once and reused until passed,
        // so a text with many special tokens is still scanned in linear time.
        let mut next: Vec<Option<usize>> = self.added.iter().map(|t| text.find(&t.content)).collect();
        let mut pos = 0;
        loop {
            for (slot, token) in next.iter_mut().zip(&self.added) {
                if matches!(*slot, Some(at) if at < pos) {
                    *slot = text[pos..].find(&token.content).map(|at| at + pos);
                }
            }
            // `added` is sorted longest first and min_by_key keeps the first minimum.
            let found =
                next.iter().zip(&self.added).filter_map(|(at, t)| at.map(|at| (at, t))).min_by_key(|(at, _)| *at);
            let Some((start, token)) = found else { break };
            let mut end = start + token.content.len();
            let mut text_end = start;
            if token.lstrip {
                text_end = pos + text[pos..start].trim_end().len();
            }
            if token.rstrip {
                end += text[end..].len() - text[end..].trim_start().len();
            }
            if text_end > pos {
                pieces.push(Piece::Text(&text[pos..text_end]));
            }
            pieces.push(Piece::Added(token.id));
            pos = end;
        }
        if pos < text.len() {
            pieces.push(Piece::Text(&text[pos..]));
        }
        pieces
    }

    /// Pre-tokenizes one piece of text and appends the ids of its words.
    fn encode_segment(&self, segment: &str, ids: &mut Vec<u32>, word: &mut Vec<u32>) {
        let mut pos = 0;
        while pos < segment.len() {
            let end = self.word_end(segment, pos);
            let bytes = &segment.as_bytes()[pos..end];
            pos = end;
            if self.options.ignore_merges {
                let as_symbols: String = bytes.iter().map(|&b| self.symbols.char_of(b)).collect();
                if let Some(&id) = self.token_ids.get(&as_symbols) {
                    ids.push(id);
                    continue;
                }
            }
            word.clear();
            word.extend(bytes.iter().map(|&b| self.byte_ids[usize::from(b)]));
            self.merges.apply(word);
            ids.extend_from_slice(word);
        }
    }

    /// End (byte offset) of the word starting at `pos`.
    fn word_end(&self, text: &str, pos: usize) -> usize {
        let end = match self.word_pattern.find_from_pos(text, pos) {
            Ok(Some(m)) if m.start() == pos && m.end() > pos => m.end(),
            // Unreachable: every character is \s, \p{L}, \p{N} or none of those, so the pattern
            // matches at every position. Taking one character keeps encode total anyway.
            _ => return pos + text[pos..].chars().next().map_or(1, char::len_utf8),
        };
        // GPT-2's `\s+(?!\S)`: a whitespace run followed by a non-space leaves its last character
        // to the next word (where " word" picks up a space, or a lone tab stands alone).
        let word = &text[pos..end];
        let mut chars = word.chars();
        match (chars.next_back(), chars.next_back()) {
            (Some(last), Some(_)) if last.is_whitespace() && end < text.len() => end - last.len_utf8(),
            _ => end,
        }
    }
}

/// The files errors are reported against (the same file twice for a `tokenizer.json`).
#[derive(Clone, Copy)]
struct Files<'p> {
    vocab: &'p Path,
    merges: &'p Path,
}

/// Id of every single-byte token; a byte-level vocabulary must have all 256.
fn byte_token_ids(vocab: &HashMap<String, u32>, symbols: &ByteSymbols) -> Result<[u32; 256], String> {
    let mut ids = [0u32; 256];
    for (byte, slot) in (0..=255u8).zip(ids.iter_mut()) {
        let symbol = symbols.char_of(byte);
        *slot = *vocab.get(symbol.encode_utf8(&mut [0; 4]) as &str).ok_or_else(|| {
            format!("vocabulary lacks the byte-level token {symbol:?} for byte 0x{byte:02x}: not a byte-level BPE vocabulary")
        })?;
    }
    Ok(ids)
}

/// The bytes of every id. A token made only of byte symbols stands for those bytes; any other
/// token (an added token such as "<|endoftext|>" written with other characters) for its own UTF-8,
/// as in Hugging Face's byte-level decoder.
fn decoding_table(vocab: &HashMap<String, u32>, symbols: &ByteSymbols) -> Result<HashMap<u32, Box<[u8]>>, String> {
    let mut table: HashMap<u32, Box<[u8]>> = HashMap::with_capacity(vocab.len());
    let mut owners: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (token, &id) in vocab {
        if let Some(other) = owners.insert(id, token) {
            let (a, b) = if other < token.as_str() { (other, token.as_str()) } else { (token.as_str(), other) };
            return Err(format!("id {id} is given to two tokens, {a:?} and {b:?}"));
        }
        let bytes: Option<Vec<u8>> = token.chars().map(|c| symbols.byte_of(c)).collect();
        let bytes = bytes.unwrap_or_else(|| token.as_bytes().to_vec());
        table.insert(id, bytes.into_boxed_slice());
    }
    Ok(table)
}

/// The parts of a Hugging Face `tokenizer.json` that matter here; other fields are ignored.
#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    #[serde(default)]
    normalizer: Option<Value>,
    #[serde(default)]
    pre_tokenizer: Option<Value>,
    #[serde(default)]
    decoder: Option<Value>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    merges: Vec<Value>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    ignore_merges: Option<bool>,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
}

fn check_absent(value: &Option<Value>, name: &str) -> Result<(), String> {
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(v) => Err(format!("{name} {} (only none is supported)", type_name(v))),
    }
}

/// The `"type"` of a component, for messages.
fn type_name(value: &Value) -> String {
    value.get("type").map_or_else(|| value.to_string(), |t| t.to_string())
}

fn check_model(model: &ModelJson) -> Result<Options, String> {
    if let Some(kind) = model.kind.as_deref().filter(|k| *k != "BPE") {
        return Err(format!("model type {kind:?} (only \"BPE\" is supported)"));
    }
    if model.dropout.is_some_and(|p| p != 0.0) {
        return Err("model.dropout (BPE dropout is random; only null is supported)".to_owned());
    }
    for (name, value) in [
        ("continuing_subword_prefix", &model.continuing_subword_prefix),
        ("end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(format!("model.{name} {value:?} (only empty is supported)"));
        }
    }
    if model.byte_fallback == Some(true) {
        return Err("model.byte_fallback true (not byte-level BPE)".to_owned());
    }
    Ok(Options { add_prefix_space: false, ignore_merges: model.ignore_merges.unwrap_or(false) })
}

/// Accepts only a ByteLevel pre-tokenizer using GPT-2's pattern; returns its `add_prefix_space`.
fn check_pre_tokenizer(value: Option<&Value>) -> Result<bool, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Err("no pre_tokenizer (a ByteLevel one is required)".to_owned());
    };
    if value.get("type").and_then(Value::as_str) != Some("ByteLevel") {
        return Err(format!("pre_tokenizer {} (only ByteLevel is supported)", type_name(value)));
    }
    if value.get("use_regex").and_then(Value::as_bool) == Some(false) {
        return Err("pre_tokenizer ByteLevel with use_regex false".to_owned());
    }
    value
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .ok_or_else(|| "pre_tokenizer ByteLevel without a boolean add_prefix_space".to_owned())
}

fn check_decoder(value: Option<&Value>) -> Result<(), String> {
    match value.filter(|v| !v.is_null()) {
        Some(v) if v.get("type").and_then(Value::as_str) == Some("ByteLevel") => Ok(()),
        Some(v) => Err(format!("decoder {} (only ByteLevel is supported)", type_name(v))),
        None => Err("no decoder (a ByteLevel one is required)".to_owned()),
    }
}

/// Merge rules in either of the two forms `tokenizer.json` files use.
fn json_merge_rules(merges: &[Value], path: &Path) -> Result<Vec<MergeRule>, TokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let location = MergeLocation::JsonIndex(index);
            match value {
                Value::String(text) => split_rule(text, location, path),
                Value::Array(pair) => match pair.as_slice() {
                    [Value::String(left), Value::String(right)] if !left.is_empty() && !right.is_empty() => {
                        Ok(MergeRule { left: left.clone(), right: right.clone(), location })
                    }
                    _ => Err(bad_merge(path, location, value)),
                },
                _ => Err(bad_merge(path, location, value)),
            }
        })
        .collect()
}

fn bad_merge(path: &Path, location: MergeLocation, value: &Value) -> TokenizerError {
    TokenizerError::BadMerge { path: path.to_owned(), location: location.to_string(), text: value.to_string() }
}

/// Added tokens, checked against the vocabulary: an added token that is also a vocabulary token must
/// keep the vocabulary's id.
fn json_added_tokens(
    tokens: &[AddedTokenJson],
    vocab: &HashMap<String, u32>,
    path: &Path,
) -> Result<Vec<AddedToken>, TokenizerError> {
    let invalid = |problem: String| TokenizerError::Invalid { path: path.to_owned(), problem };
    tokens
        .iter()
        .enumerate()
        .map(|(index, token)| {
            if token.content.is_empty() {
                return Err(invalid(format!("added_tokens[{index}] has empty content")));
            }
            if token.single_word {
                return Err(TokenizerError::Unsupported {
                    path: path.to_owned(),
                    feature: format!("added_tokens[{index}] {:?} with single_word true", token.content),
                });
            }
            if let Some(&id) = vocab.get(&token.content).filter(|&&id| id != token.id) {
                return Err(invalid(format!(
                    "added_tokens[{index}] {:?} has id {} but the vocabulary gives it id {id}",
                    token.content, token.id
                )));
            }
            Ok(AddedToken { content: token.content.clone(), id: token.id, lstrip: token.lstrip, rstrip: token.rstrip })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_whitespace_runs_split_like_the_lookahead() {
        // A million spaces would exceed the backtracking VM's limit if the pattern needed it.
        let tok = Gpt2Tokenizer {
            token_ids: HashMap::new(),
            id_bytes: HashMap::new(),
            merges: MergeTable::default(),
            symbols: ByteSymbols::new(),
            byte_ids: [0; 256],
            added: Vec::new(),
            word_pattern: Regex::new(WORD_PATTERN).unwrap(),
            options: Options::default(),
        };
        let text = format!("{}x", " ".repeat(1_000_000));
        assert_eq!(tok.word_end(&text, 0), 999_999, "run minus the space that joins \" x\"");
        assert_eq!(tok.word_end(&text, 999_999), text.len());
        assert_eq!(tok.word_end("a \t\tb", 1), 3, "the last tab stands alone");
        assert_eq!(tok.word_end("a  ", 1), 3, "a trailing run stays whole");
        assert_eq!(tok.word_end("it's", 2), 4);
    }
}
