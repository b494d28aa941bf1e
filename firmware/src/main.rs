//! `edgecap`: the device program. `edgecap caption` describes image files in sentences.

mod caption;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, documented in the README.
pub mod exit {
    /// Every image was captioned.
    pub const OK: u8 = 0;
    /// Some inputs failed (each reported on stderr); the others were captioned.
    pub const SOME_FAILED: u8 = 1;
    /// Nothing could run: bad bundle, bad options.
    pub const FATAL: u8 = 2;
}

#[derive(Parser)]
#[command(name = "edgecap", version, about = "Image captioning on the edge")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption image files: one line per image on stdout.
    Caption(caption::CaptionArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let code = match Cli::parse().command {
        Command::Caption(args) => caption::run(&args),
    };
    ExitCode::from(code)
}
