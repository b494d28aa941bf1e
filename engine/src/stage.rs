//! Stage markers for the emulated profiler (`scripts/arm-profile.sh`, `docs/arm-profile.md`).
//!
//! Each function here is an empty call that marks a boundary between stages of a run (bundle
//! load, preprocessing, image encoder, mapper, the first token, each next token, ...). Nothing
//! reads them in a normal run: their whole cost is a call and a return. Under qemu-user with the
//! project's TCG plugin (`tools/qemu-plugin/edgecap_profile.c`) the plugin recognises them by
//! their symbol names (`edgecap_stage_<stage>`) and records the instructions and memory traffic
//! counted so far, which splits one emulated run into stages without timers or extra processes.
//!
//! So that the symbols survive optimisation: `#[no_mangle]` keeps each name in the binary's symbol
//! table (release builds strip debug information only, see `Cargo.toml`), `#[inline(never)]`
//! keeps every call a call, and each body differs from the others (`black_box` of its own
//! number) so that LLVM's identical-function merging cannot fold two markers into one address.
//! `tests/stage_markers.rs` checks that a release binary has every one of them.

use std::hint::black_box;

macro_rules! markers {
    ($($(#[$doc:meta])* $name:ident = $id:literal;)*) => {
        $(
            $(#[$doc])*
            #[no_mangle]
            #[inline(never)]
            pub extern "C" fn $name() {
                black_box($id as u32);
            }
        )*
        /// Every marker's symbol name, for tests and tools.
        pub const MARKER_SYMBOLS: &[&str] = &[$(stringify!($name)),*];
    };
}

markers! {
    /// The start of `CaptionModel::load` (manifest read, then the image encoder).
    edgecap_stage_load = 1;
    /// Image encoder loaded; the decoder's graph comes next.
    edgecap_stage_load_decoder = 2;
    /// Decoder loaded; the mapper's graph comes next.
    edgecap_stage_load_mapper = 3;
    /// Mapper loaded; token embeddings, tokenizer, the bundle's verification (joined) come next.
    edgecap_stage_load_rest = 4;
    /// The model is loaded.
    edgecap_stage_loaded = 5;
    /// An image file is about to be read and decoded (`edgecap caption`).
    edgecap_stage_image_decode = 6;
    /// Preprocessing (resize, crop, normalise) starts.
    edgecap_stage_preprocess = 7;
    /// The image encoder starts.
    edgecap_stage_encoder = 8;
    /// The mapper (and DeCap's projection) starts.
    edgecap_stage_mapper = 9;
    /// Decoding starts: the prefix goes through the decoder, then the first token is chosen.
    edgecap_stage_first_token = 10;
    /// A token has been chosen; the next one (or the end of decoding) follows.
    edgecap_stage_next_token = 11;
    /// Decoding is over; the tokens become text.
    edgecap_stage_detokenize = 12;
    /// The caption is complete.
    edgecap_stage_caption_end = 13;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_callable_and_distinct() {
        edgecap_stage_load();
        edgecap_stage_caption_end();
        let mut names = MARKER_SYMBOLS.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MARKER_SYMBOLS.len());
        assert!(names.iter().all(|n| n.starts_with("edgecap_stage_")));
    }
}
