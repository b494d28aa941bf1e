//! ONNX graphs written from Rust: the CLIP image encoder, the ClipCap mappers and the GPT-2 decoder.
