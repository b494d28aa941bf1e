//! `host-tools scenes`: write synthetic scene splits and measure bundles on them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use edgecap_engine::model::CaptionModel;
use host_tools::scenes::{evaluate, render_table, write_split, Description, Rendering};

#[derive(Subcommand)]
pub enum ScenesCommand {
    /// Write scenes 0..COUNT of a seed: scene-00000.png…, captions.tsv (file<TAB>caption) and
    /// scenes.jsonl (attributes). Scene i depends only on (seed, i): a smaller --count is a prefix,
    /// and --rendering camera shows the same scenes as the plain split, otherwise taken.
    Generate {
        /// Directory to write (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Number of scenes (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Which split: by convention 1 = training, 2 = held-out.
        #[arg(long)]
        seed: u64,
        /// plain: 128-px PNGs; camera: 160–320 px JPEGs on other backgrounds, with exposure,
        /// blur and noise; mixed: each scene one or the other.
        #[arg(long, value_enum, default_value_t = Rendering::Plain)]
        rendering: Rendering,
    },
    /// Caption every scene of a split with a bundle; print per-attribute accuracy, exact match and
    /// CIDEr-D against the scenes' captions.
    Score {
        #[arg(long)]
        bundle: PathBuf,
        /// A directory written by `scenes generate`.
        #[arg(long)]
        scenes: PathBuf,
        /// One JSON object on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// `threads`: the workers that render a split (and, process-wide, the products that score one).
pub fn run(command: ScenesCommand, threads: usize) -> Result<ExitCode> {
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match command {
        ScenesCommand::Generate { out, count, seed, rendering } => {
            let count = usize::try_from(count).context("--count does not fit this machine's memory")?;
            let written = write_split(&out, seed, count, rendering, threads, progress)?;
            let groups = written.iter().filter(|d| matches!(d, Description::Group { .. })).count();
            println!(
                "{}: {count} scenes of seed {seed} ({groups} group, {} relation captions)",
                out.display(),
                count - groups
            );
        }
        ScenesCommand::Score { bundle, scenes, json } => {
            let model = CaptionModel::load(&bundle).with_context(|| format!("loading {}", bundle.display()))?;
            let evaluation = evaluate(&model, &scenes, progress)?;
            if json {
                println!("{}", serde_json::to_string(&evaluation)?);
            } else {
                print!("{}", render_table(&evaluation));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
