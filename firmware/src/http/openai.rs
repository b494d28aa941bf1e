//! OpenAI's chat-completions shapes, as far as a captioner answers them: the image of a request
//! in, one `chat.completion` (or its stream of chunks) out. What Frigate's and Home Assistant's
//! OpenAI providers send; the text prompt is read past, not followed.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// The parts of a request edgecap reads; everything else (temperature, tools...) is ignored.
#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
pub struct Message {
    /// A string, or a list of parts (`text`, `image_url`).
    #[serde(default)]
    pub content: Value,
}

impl ChatRequest {
    /// The image to caption: the first `image_url` part of the last message that has one. An
    /// error names what is wrong with the request.
    pub fn image(&self) -> Result<Vec<u8>, String> {
        let url = self
            .messages
            .iter()
            .rev()
            .find_map(|m| image_urls(&m.content).into_iter().next())
            .ok_or("no image: send one as an image_url part of a message's content")?;
        decode_data_url(url)
    }

    pub fn max_tokens(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// The `image_url` parts' URLs, in order: `{"type": "image_url", "image_url": {"url": U}}` or,
/// as some clients send it, `"image_url": U`.
fn image_urls(content: &Value) -> Vec<&str> {
    let Some(parts) = content.as_array() else { return Vec::new() };
    parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
        .filter_map(|p| {
            let u = p.get("image_url")?;
            u.get("url").and_then(Value::as_str).or_else(|| u.as_str())
        })
        .collect()
}

/// The bytes of a `data:image/...;base64,` URL. Other URLs are refused: the device fetches
/// nothing from the network.
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, String> {
    let Some(rest) = url.strip_prefix("data:") else {
        let shown: String = url.chars().take(40).collect();
        return Err(format!(
            "image_url {shown:?} is not a data: URL; edgecap fetches nothing: send the image inline as data:image/jpeg;base64,..."
        ));
    };
    let (meta, payload) = rest.split_once(',').ok_or("data: URL without a comma before its data")?;
    let media = meta.split(';').next().unwrap_or("");
    if !media.starts_with("image/") {
        return Err(format!("data: URL of type {media:?}, expected image/*"));
    }
    if !meta.split(';').any(|p| p == "base64") {
        return Err("data: URL not base64-encoded (expected ;base64,)".into());
    }
    // Standard alphabet; padding optional (some encoders drop it); line breaks tolerated.
    let payload: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(payload.as_bytes()).map_err(|e| format!("data: URL's base64: {e}"))?;
    if bytes.is_empty() {
        return Err("data: URL with an empty image".into());
    }
    Ok(bytes)
}

/// What a caption answers, in both forms.
pub struct Answer<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    /// The image's prefix positions, counted as the prompt.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `stop` (the model ended the sentence) or `length` (max tokens reached).
    pub finish_reason: &'a str,
}

impl Answer<'_> {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// A `chat.completion` object.
    pub fn completion(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": self.text },
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(),
        })
    }

    /// The `chat.completion.chunk` objects of a stream: the role, the caption, the finish
    /// reason, then (if asked) the usage with no choices, as OpenAI sends them.
    pub fn chunks(&self, include_usage: bool) -> Vec<Value> {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
        };
        let mut chunks = vec![
            chunk(json!({ "role": "assistant", "content": "" }), Value::Null),
            chunk(json!({ "content": self.text }), Value::Null),
            chunk(json!({}), json!(self.finish_reason)),
        ];
        if include_usage {
            chunks.push(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }));
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_and_other_urls_are_refused_by_name() {
        assert_eq!(decode_data_url("data:image/png;base64,AAEC").unwrap(), vec![0, 1, 2]);
        assert_eq!(decode_data_url("data:image/jpeg;base64,AAECAw").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(decode_data_url("data:image/jpeg;base64,AAEC\nAw==").unwrap(), vec![0, 1, 2, 3]);
        let err = decode_data_url("https://example.org/cat.jpg").unwrap_err();
        assert!(err.contains("fetches nothing") && err.contains("https://example.org"), "{err}");
        assert!(decode_data_url("data:text/plain;base64,AAEC").unwrap_err().contains("text/plain"));
        assert!(decode_data_url("data:image/png,AAEC").unwrap_err().contains("base64"));
        assert!(decode_data_url("data:image/png;base64,@@@").unwrap_err().contains("base64"));
        assert!(decode_data_url("data:image/png;base64,").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_image_is_the_first_of_the_last_message_that_has_one() {
        let request: ChatRequest = serde_json::from_value(json!({
            "messages": [
                { "role": "system", "content": "You describe pictures." },
                { "role": "user", "content": [
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,AQ==" } } ] },
                { "role": "user", "content": [
                    { "type": "text", "text": "What is in this frame?" },
                    { "type": "image_url", "image_url": { "url": "data:image/png;base64,Ag==" } },
                    { "type": "image_url", "image_url": "data:image/png;base64,Aw==" } ] },
                { "role": "user", "content": "Be brief." },
            ],
            "max_tokens": 12,
        }))
        .unwrap();
        assert_eq!(request.image().unwrap(), vec![2]);
        assert_eq!(request.max_tokens(), Some(12));
        let none: ChatRequest =
            serde_json::from_value(json!({ "messages": [{ "role": "user", "content": "hi" }] })).unwrap();
        assert!(none.image().unwrap_err().contains("no image"));
    }
}
