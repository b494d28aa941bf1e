//! Caption normalisation like pycocoevalcap's `PTBTokenizer`: lower-case, PTB-style splitting of
//! punctuation and clitics ("dog's" → "dog 's", "don't" → "do n't"), then the punctuation tokens
//! it drops (`. , ? ! : ; - -- ... ' '' ` `` ( ) { }`) removed. A pure-Rust approximation of the
//! Stanford tokenizer (which needs Java) that agrees with it on ordinary caption text.

/// Tokens pycocoevalcap removes after tokenising.
const DROPPED: [&str; 17] =
    ["''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";"];

/// The normalised caption: tokens joined by single spaces.
pub fn normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let mut tokens: Vec<String> = Vec::new();
    for word in lower.split_whitespace() {
        split_word(word, &mut tokens);
    }
    tokens.retain(|t| !DROPPED.contains(&t.as_str()) && !t.chars().all(|c| "()[]{}\"".contains(c)));
    tokens.join(" ")
}

/// Splits leading/trailing punctuation and English clitics off one whitespace-separated word.
fn split_word(word: &str, out: &mut Vec<String>) {
    let is_punct = |c: char| !c.is_alphanumeric() && c != '\'' && c != '-' && c != '&';
    let mut w = word;
    while let Some(c) = w.chars().next().filter(|&c| is_punct(c) || c == '\'') {
        out.push(c.to_string());
        w = &w[c.len_utf8()..];
    }
    let mut tail = Vec::new();
    while let Some(c) = w.chars().next_back().filter(|&c| is_punct(c) || (c == '\'' && !w.ends_with("s'"))) {
        tail.push(c.to_string());
        w = &w[..w.len() - c.len_utf8()];
    }
    if !w.is_empty() {
        let (stem, clitic) = split_clitic(w);
        if !stem.is_empty() {
            out.push(stem.to_string());
        }
        if let Some(c) = clitic {
            out.push(c.to_string());
        }
    }
    out.extend(tail.into_iter().rev());
}

fn split_clitic(w: &str) -> (&str, Option<&str>) {
    if let Some(stem) = w.strip_suffix("n't") {
        return (stem, Some(&w[stem.len()..]));
    }
    for c in ["'s", "'re", "'ve", "'ll", "'d", "'m", "'"] {
        if let Some(stem) = w.strip_suffix(c) {
            if !stem.is_empty() {
                return (stem, Some(&w[stem.len()..]));
            }
        }
    }
    (w, None)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn lowercases_and_drops_punctuation() {
        assert_eq!(normalize("A man, riding a horse."), "a man riding a horse");
        assert_eq!(normalize("The dog's ball isn't red!"), "the dog 's ball is n't red");
        assert_eq!(normalize("  \"Two\" cats (sleeping) -- on a bed... "), "two cats sleeping on a bed");
        assert_eq!(normalize("a black-and-white photo"), "a black-and-white photo");
    }
}
