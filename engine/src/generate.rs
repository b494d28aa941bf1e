//! Decoding strategies over a [`DecoderState`]: greedy and beam search.
//!
//! Both follow the ClipCap reference (`generate2` and `generate_beam`) step for step, so the
//! same weights give the same token ids; the only difference is that previous positions come
//! from the KV cache instead of being recomputed.

use std::time::{Duration, Instant};

use crate::error::EngineError;
use crate::logits::{argmax, log_softmax, top_k};
use crate::session::DecoderState;
use crate::stage::edgecap_stage_next_token;

/// How to decode one caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationOptions {
    pub max_tokens: usize,
    /// 1 = greedy.
    pub beam_width: usize,
    pub stop_token_ids: Vec<u32>,
    /// DeCap only: project onto the k most similar memory entries (`Some(0)` = all of them);
    /// `None` = the bundle's setting.
    pub projection_top_k: Option<usize>,
}

/// The widest beam decoding accepts.
pub const MAX_BEAM: usize = 16;

impl GenerationOptions {
    /// The checks that need no model: at least one token, and 1..=[`MAX_BEAM`] beams. Each beam
    /// holds a key/value cache: a width from a request or a typo must not allocate without
    /// bound. [`crate::CaptionModel::check_options`] adds the model's own limits.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.max_tokens == 0 || self.beam_width == 0 {
            return Err(EngineError::Option("max tokens and beam width must be at least 1".into()));
        }
        if self.beam_width > MAX_BEAM {
            return Err(EngineError::Option(format!("beam width must be at most {MAX_BEAM}, got {}", self.beam_width)));
        }
        Ok(())
    }

    fn is_stop(&self, id: u32) -> bool {
        self.stop_token_ids.contains(&id)
    }
}

/// What decoding produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The generated ids, the stop token included when one was reached.
    pub tokens: Vec<u32>,
    /// Logits predicting the first token (kept for tracing and validation).
    pub first_logits: Vec<f32>,
    /// Time to the first token: the prefix fed through the decoder and the first choice made.
    pub first_token_time: Duration,
}

/// Decodes from `prefix` ([prefix_len × hidden] embeddings) with an empty `state`.
pub fn generate(
    state: &mut DecoderState,
    prefix: &[f32],
    prefix_len: usize,
    opts: &GenerationOptions,
) -> Result<Generated, EngineError> {
    opts.validate()?;
    if opts.beam_width == 1 {
        greedy(state, prefix, prefix_len, opts)
    } else {
        beam_search(state, prefix, prefix_len, opts)
    }
}

fn greedy(
    state: &mut DecoderState,
    prefix: &[f32],
    prefix_len: usize,
    opts: &GenerationOptions,
) -> Result<Generated, EngineError> {
    let started = Instant::now();
    let first_logits = state.feed_embeddings(prefix, prefix_len)?;
    let mut tokens = vec![state.token_of_logit(argmax(&first_logits) as usize)];
    let first_token_time = started.elapsed();
    edgecap_stage_next_token();
    while !opts.is_stop(tokens[tokens.len() - 1]) && tokens.len() < opts.max_tokens {
        let logits = state.feed_tokens(&tokens[tokens.len() - 1..])?;
        tokens.push(state.token_of_logit(argmax(&logits) as usize));
        edgecap_stage_next_token();
    }
    Ok(Generated { tokens, first_logits, first_token_time })
}

struct Beam {
    tokens: Vec<u32>,
    /// Sum of log-probabilities of the tokens up to and including the stop token.
    score: f32,
    /// Tokens counted in the score (stops growing once the beam stopped); f32 like the reference.
    length: f32,
    stopped: bool,
}

fn beam_search(
    state: &mut DecoderState,
    prefix: &[f32],
    prefix_len: usize,
    opts: &GenerationOptions,
) -> Result<Generated, EngineError> {
    let started = Instant::now();
    let first_logits = state.feed_embeddings(prefix, prefix_len)?;
    let mut beams: Vec<Beam> = top_k(&log_softmax(&first_logits), opts.beam_width)
        .into_iter()
        .map(|(i, score)| {
            let token = state.token_of_logit(i);
            Beam { tokens: vec![token], score, length: 1.0, stopped: opts.is_stop(token) }
        })
        .collect();
    let first_token_time = started.elapsed();
    edgecap_stage_next_token();
    state.reorder(&vec![0; beams.len()])?;
    while !beams.iter().all(|b| b.stopped) && beams[0].tokens.len() < opts.max_tokens {
        let last: Vec<u32> = beams.iter().map(|b| b.tokens[b.tokens.len() - 1]).collect();
        let logits = state.feed_tokens(&last)?;
        let (next, sources) = extend_beams(&beams, &logits, opts, |i| state.token_of_logit(i));
        state.reorder(&sources)?;
        beams = next;
        edgecap_stage_next_token();
    }
    // Rank by mean log-probability; the first of equals wins, as with a stable sort.
    let best = (0..beams.len())
        .reduce(|a, b| if beams[b].score / beams[b].length > beams[a].score / beams[a].length { b } else { a })
        .unwrap_or(0);
    let beam = &beams[best];
    Ok(Generated { tokens: beam.tokens[..beam.length as usize].to_vec(), first_logits, first_token_time })
}

/// One beam-search step: every (beam, token) candidate is scored by its mean log-probability;
/// the best `width` survive. A stopped beam has one candidate, token 0 at no cost and no extra
/// length, so it competes with its final score (the reference's convention).
/// Returns the new beams and, for each, the index of the beam it extends.
/// `token_of` maps a logit's index to its token id (they differ when the LM head was trimmed).
fn extend_beams(
    beams: &[Beam],
    logits: &[f32],
    opts: &GenerationOptions,
    token_of: impl Fn(usize) -> u32,
) -> (Vec<Beam>, Vec<usize>) {
    let vocab = logits.len() / beams.len();
    let mut averages = vec![f32::NEG_INFINITY; logits.len()];
    let mut lengths = Vec::with_capacity(beams.len());
    for (b, beam) in beams.iter().enumerate() {
        let row = &mut averages[b * vocab..(b + 1) * vocab];
        let length = if beam.stopped { beam.length } else { beam.length + 1.0 };
        lengths.push(length);
        if beam.stopped {
            row[0] = beam.score / length;
        } else {
            for (slot, lp) in row.iter_mut().zip(log_softmax(&logits[b * vocab..(b + 1) * vocab])) {
                *slot = (beam.score + lp) / length;
            }
        }
    }
    top_k(&averages, beams.len())
        .into_iter()
        .map(|(flat, average)| {
            let (source, token) = (flat / vocab, token_of(flat % vocab));
            let parent = &beams[source];
            let mut tokens = parent.tokens.clone();
            tokens.push(token);
            let length = lengths[source];
            let beam = Beam { tokens, score: average * length, length, stopped: parent.stopped || opts.is_stop(token) };
            (beam, source)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_need_a_token_and_a_bounded_beam() {
        let opts = |max_tokens, beam_width| GenerationOptions {
            max_tokens,
            beam_width,
            stop_token_ids: vec![],
            projection_top_k: None,
        };
        assert!(opts(1, 1).validate().is_ok());
        assert!(opts(20, MAX_BEAM).validate().is_ok());
        for (bad, says) in
            [(opts(0, 1), "at least 1"), (opts(5, 0), "at least 1"), (opts(5, MAX_BEAM + 1), "at most 16")]
        {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn stopped_beam_keeps_score_and_length() {
        let opts = GenerationOptions { max_tokens: 10, beam_width: 2, stop_token_ids: vec![2], projection_top_k: None };
        let beams = vec![
            Beam { tokens: vec![2], score: -0.1, length: 1.0, stopped: true },
            Beam { tokens: vec![1], score: -1.0, length: 1.0, stopped: false },
        ];
        // Live beam: log-probs of a uniform row over 3 tokens are -ln 3 ≈ -1.0986.
        let (next, sources) = extend_beams(&beams, &[9.0, 9.0, 9.0, 0.0, 0.0, 0.0], &opts, |i| i as u32);
        assert_eq!(sources[0], 0);
        assert_eq!(next[0].tokens, vec![2, 0]);
        assert_eq!((next[0].score, next[0].length, next[0].stopped), (-0.1, 1.0, true));
        assert_eq!(sources[1], 1);
        assert_eq!(next[1].length, 2.0);
        assert!((next[1].score - (-1.0 - 3f32.ln())).abs() < 1e-5);
    }
}
