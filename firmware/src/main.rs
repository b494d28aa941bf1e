//! `edgecap`: the device program. `edgecap caption` describes image files in sentences;
//! `edgecap run` is the service: camera frames in, captions out over stdout, serial and MQTT.

mod builtin;
mod caption;
mod http;
mod model;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit codes, documented in the README (caption) and docs/service.md (run).
pub mod exit {
    /// Every image was captioned.
    pub const OK: u8 = 0;
    /// Some inputs failed (each reported on stderr); the others were captioned. For `run`: some
    /// captions could not be delivered before shutdown (an output stayed away).
    pub const SOME_FAILED: u8 = 1;
    /// Nothing could run: bad bundle, bad options, bad configuration.
    pub const FATAL: u8 = 2;
    /// `run` stopped on an engine failure that no later frame could avoid.
    pub const RUNTIME: u8 = 3;
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
    /// The service: caption frames from a source, send captions to stdout, serial, MQTT.
    Run(service::config::RunArgs),
    /// The HTTP API only: captions for POST /v1/caption and OpenAI-compatible
    /// /v1/chat/completions (docs/http.md).
    Serve(http::ServeArgs),
    /// Check the configuration and the bundle, print the resolved configuration, do not run.
    CheckConfig(service::config::RunArgs),
    /// Print the version and the CPU features the inference kernels use on this board.
    Info,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let code = match Cli::parse().command {
        Command::Caption(args) => caption::run(&args),
        Command::Run(args) => service::run(&args),
        Command::Serve(args) => http::serve(&args),
        Command::CheckConfig(args) => service::check(&args),
        Command::Info => info(),
    };
    ExitCode::from(code)
}

fn info() -> u8 {
    println!("edgecap {} ({}-{})", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH, std::env::consts::OS);
    println!("cpu {}", edgecap_engine::platform::CpuFeatures::detect());
    println!("int8 kernel {}", edgecap_engine::int8::kernel::Kernel::detect().map_or("tract", |k| k.name()));
    exit::OK
}
