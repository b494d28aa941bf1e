//! The `train` and `distill` commands (feature `train`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use host_tools::train::clipcap::{train_clipcap, ClipcapTrainOptions, MapperArg};
use host_tools::train::contrastive::{self, train_clip, ClipTrainOptions};
use host_tools::train::decap::{self, train_decap, DecapTrainOptions};
use host_tools::train::distill::{distill, DistillOptions};
use host_tools::train::run::{RunOptions, RunReport};
use serde::Serialize;

/// What every trainer takes: where the run lives, how long, from which seed.
#[derive(Args)]
pub struct RunArgs {
    /// Run directory: checkpoints, caches and the trained weights.
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps (a resumed run continues up to this count).
    #[arg(long)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 200)]
    checkpoint_every: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            out: self.out.clone(),
            seed: self.seed,
            steps: self.steps,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// A small CLIP-style dual encoder, trained contrastively on image<TAB>caption pairs; writes
    /// an HF CLIP directory (with a BPE vocabulary learned from the captions).
    Clip {
        #[command(flatten)]
        opts: ClipTrainOptions,
        #[command(flatten)]
        run: RunArgs,
    },
    /// ClipCap: train the mapping network (and GPT-2 with --tune-lm) on image–caption pairs.
    Clipcap {
        #[command(flatten)]
        opts: ClipcapTrainOptions,
        #[command(flatten)]
        run: RunArgs,
    },
    /// DeCap: train a decoder on text alone, prefixed by each caption's CLIP text embedding.
    Decap {
        #[command(flatten)]
        opts: DecapTrainOptions,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Distil a GPT-2 into fewer layers with a KL loss to it on caption text.
#[derive(Args)]
pub struct DistillArgs {
    #[command(flatten)]
    opts: DistillOptions,
    #[command(flatten)]
    run: RunArgs,
}

/// glibc hands every large freed block back to the kernel, so each step's big temporaries
/// (activations, logits over the vocabulary) page-fault in afresh: on the DeCap test fixture
/// that was half of every step, in system time. Keeping freed memory removes it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any training thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

pub fn run_train(command: TrainCommand) -> Result<ExitCode> {
    keep_freed_memory();
    match command {
        TrainCommand::Clip { mut opts, run } => {
            opts.run = run.options();
            contrastive::check_options(&opts)?;
            let r = train_clip(&opts)?;
            let summary = format!(
                "{}: CLIP dual encoder, {} parameters, {} pairs ({} images skipped), {} distinct captions, vocabulary {}; image→caption top-1 {:.1}%",
                r.out.display(),
                r.parameters,
                r.pairs,
                r.skipped_images,
                r.distinct_captions,
                r.vocab_size,
                100.0 * r.retrieval_top1
            );
            finish(&run, &r, &r.run, &summary)
        }
        TrainCommand::Clipcap { mut opts, run } => {
            opts.run = run.options();
            let r = train_clipcap(&opts)?;
            let summary = format!(
                "{}: ClipCap {} mapper{}, {} trained parameters, {} pairs ({} images, {} captions skipped); export with: host-tools export --clip {} --clipcap {} --lm {} --out BUNDLE",
                r.weights.display(),
                match opts.mapper {
                    MapperArg::Mlp => "MLP",
                    MapperArg::Transformer => "transformer",
                },
                if opts.tune_lm { " + GPT-2" } else { "" },
                r.parameters,
                r.pairs,
                r.skipped_images,
                r.skipped_captions,
                opts.clip.display(),
                r.weights.display(),
                opts.lm.display()
            );
            finish(&run, &r, &r.run, &summary)
        }
        TrainCommand::Decap { mut opts, run } => {
            opts.run = run.options();
            decap::check_options(&opts)?;
            let r = train_decap(&opts)?;
            let summary = format!(
                "{}: DeCap decoder, {} parameters, {} captions ({} skipped); export with: host-tools export --clip {} --decap {} --decoder-heads {} --memory-captions {} --out BUNDLE",
                r.weights.display(),
                r.parameters,
                r.captions,
                r.skipped,
                opts.clip.display(),
                r.weights.display(),
                opts.heads,
                opts.captions.display()
            );
            finish(&run, &r, &r.run, &summary)
        }
    }
}

pub fn run_distill(args: DistillArgs) -> Result<ExitCode> {
    keep_freed_memory();
    let DistillArgs { mut opts, run } = args;
    opts.run = run.options();
    let r = distill(&opts)?;
    let summary = format!(
        "{}: {}-layer student of a {}-layer teacher; held-out ({} captions) cross-entropy teacher {:.3} / student {:.3} (perplexity {:.1} / {:.1}), same top token {:.1}%, forward {:.0} / {:.0} tokens/s",
        r.out.display(),
        r.student.layers,
        r.teacher.layers,
        r.held_out,
        r.teacher.cross_entropy,
        r.student.cross_entropy,
        r.teacher.perplexity,
        r.student.perplexity,
        100.0 * r.top1_agreement,
        r.teacher.tokens_per_second,
        r.student.tokens_per_second
    );
    finish(&run, &r, &r.run, &summary)
}

/// Writes `report.json` into the run directory and prints the summary (or the JSON).
fn finish<R: Serialize>(args: &RunArgs, report: &R, run: &RunReport, summary: &str) -> Result<ExitCode> {
    let json = serde_json::to_vec_pretty(report)?;
    edgecap_engine::fsutil::write_atomic(&args.out.join("report.json"), &json)?;
    if args.json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{summary}");
        // The losses span the whole run, resumes included; the time and rate only this segment.
        let first = if run.resumed_from > 0 { "loss since step 0" } else { "loss" };
        println!(
            "steps {}..{}: {first} {:.4} → {:.4}, {:.1} s, {:.1} items/s",
            run.resumed_from, run.steps, run.first_loss, run.last_loss, run.seconds, run.items_per_second
        );
    }
    Ok(ExitCode::SUCCESS)
}
