//! `host-tools`: the workstation side of edgecap.

use std::process::ExitCode;

use anyhow::Result;
use bundle_cli::{
    BenchArgs, ExportArgs, MemoryBuildArgs, ProjectionArgs, QuantizeArgs, TraceArgs, TrimVocabArgs, ValidateArgs,
};
use clap::{Parser, Subcommand};

mod bundle_cli;
mod scenes_cli;
#[cfg(feature = "train")]
mod train_cli;

#[derive(Parser)]
#[command(name = "host-tools", version, about = "Export, inspect and check edgecap model bundles")]
struct Cli {
    /// Threads for tract's matrix products, and for rendering `scenes generate` (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert weights into an fp32 bundle: HF CLIP dir + a ClipCap checkpoint [+ HF GPT-2 dir],
    /// or HF CLIP dir + a DeCap checkpoint + a support memory.
    Export(ExportArgs),
    /// DeCap support memories.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// DeCap: how often a top-k projection changes the caption against the full projection.
    Projection(ProjectionArgs),
    /// Post-training int8 quantization of a bundle's image encoder, mapper and decoder.
    Quantize(QuantizeArgs),
    /// Compare an int8 bundle with its fp32 original; exit 0 pass, 1 fail, 2 error.
    Validate(ValidateArgs),
    /// Trim an fp32 bundle's LM head to the tokens a caption corpus uses (then quantize it).
    TrimVocab(TrimVocabArgs),
    /// Load time, per-stage latency (median, p90), tokens/s and peak RSS of a bundle.
    Bench(BenchArgs),
    /// Train models (candle): a CLIP-style dual encoder, a ClipCap mapper, a DeCap decoder.
    #[cfg(feature = "train")]
    #[command(subcommand)]
    Train(train_cli::TrainCommand),
    /// Distil a GPT-2 into a smaller one (every other layer) with a KL loss on caption text.
    #[cfg(feature = "train")]
    Distill(train_cli::DistillArgs),
    /// Synthetic captioned scenes: the default model's training and held-out data.
    #[command(subcommand)]
    Scenes(scenes_cli::ScenesCommand),
    /// Caption one image and write its intermediate tensors as .npy files.
    Trace(TraceArgs),
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// Embed a caption corpus (one caption per line) with CLIP's text tower into a support memory.
    Build(MemoryBuildArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let threads = edgecap_engine::platform::thread_count(cli.threads).map_err(|e| anyhow::anyhow!("--{e}"))?;
    edgecap_engine::platform::set_threads(threads);
    match cli.command {
        Command::Export(args) => args.run(),
        Command::Quantize(args) => args.run(),
        Command::Validate(args) => args.run(),
        Command::TrimVocab(args) => args.run(),
        Command::Bench(args) => args.run(threads),
        Command::Memory(MemoryCommand::Build(args)) => args.run(),
        Command::Projection(args) => args.run(),
        #[cfg(feature = "train")]
        Command::Train(command) => train_cli::run_train(command),
        #[cfg(feature = "train")]
        Command::Distill(args) => train_cli::run_distill(args),
        Command::Scenes(command) => scenes_cli::run(command, threads),
        Command::Trace(args) => args.run(),
    }
}
