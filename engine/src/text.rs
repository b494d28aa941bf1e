//! One-line messages from any text: what every error shown to a user goes through. A leaf
//! module (it imports nothing of the crate), so that any module may use it.

/// `text` on one line: every run of whitespace (newlines included) becomes one space. Messages
/// from tract, toml and the OS span lines; ours are one line each.
pub fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max_chars` characters of `text`, with "…" where it was cut: a user's value quoted in
/// an error stays one short line however long the value.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An error and its chain of causes on one line, outermost first, skipping a cause whose text
/// an earlier part already contains (wrappers often repeat their source). Both binaries print
/// user-facing errors this way.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = collapse_whitespace(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}
