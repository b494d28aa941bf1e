//! Captions images with edgecap's engine, the way `edgecap caption` does, in the fewest lines
//! its public API allows:
//!
//! ```sh
//! cargo run --release -p edgecap-example-caption -- models/default photo.jpg [more.jpg ...]
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use edgecap_engine::{load_rgb, CaptionModel};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let bundle = args.next().context("usage: edgecap-example-caption BUNDLE IMAGE...")?;
    // Verifies the bundle's files and loads its three graphs once; captions share it.
    let model = CaptionModel::load(&bundle)?;
    // What the bundle's manifest asks for: greedy or beam search, token limit, stop tokens.
    let options = model.default_options();
    for image in args {
        let rgb = load_rgb(&image)?;
        let caption = model.caption(&rgb, &options)?;
        println!("{}: {}", image.display(), caption.text);
    }
    Ok(())
}
