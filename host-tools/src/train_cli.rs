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
        /// image<TAB>caption lines (paths relative to the file) or COCO-style JSON.
        #[arg(long)]
        data: PathBuf,
        /// Use this CLIP vocabulary instead of learning one (dir or bpe_simple_vocab file).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        image_size: usize,
        #[arg(long, default_value_t = 8)]
        patch_size: usize,
        #[arg(long, default_value_t = 96)]
        vision_width: usize,
        #[arg(long, default_value_t = 4)]
        vision_layers: usize,
        #[arg(long, default_value_t = 64)]
        text_width: usize,
        #[arg(long, default_value_t = 2)]
        text_layers: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        #[arg(long, default_value_t = 64)]
        projection_dim: usize,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Decay the learning rate linearly to zero at --steps (a resume must keep --steps).
        #[arg(long)]
        lr_decay: bool,
        /// Half of each batch: captions one token away from the other half's (hard negatives).
        #[arg(long)]
        hard_negatives: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// ClipCap: train the mapping network (and GPT-2 with --tune-lm) on image–caption pairs.
    Clipcap {
        /// HF CLIP directory: embeds the images (once; cached in --out).
        #[arg(long)]
        clip: PathBuf,
        /// HF GPT-2 directory (config.json + weights).
        #[arg(long)]
        lm: PathBuf,
        /// image<TAB>caption lines (paths relative to the file) or COCO-style JSON.
        #[arg(long)]
        data: PathBuf,
        /// GPT-2 vocab.json + merges.txt (or tokenizer.json) directory, when --lm has none.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = MapperArg::Mlp)]
        mapper: MapperArg,
        #[arg(long, default_value_t = 10)]
        prefix_length: usize,
        /// Transformer mapper layers.
        #[arg(long, default_value_t = 8)]
        mapper_layers: usize,
        /// Train GPT-2 too (ClipCap's "GPT-2 tuned" variant); otherwise it stays frozen.
        #[arg(long)]
        tune_lm: bool,
        /// Caption tokens per example (longer captions are cut).
        #[arg(long, default_value_t = 40)]
        max_tokens: usize,
        #[arg(long, default_value_t = 40)]
        batch: usize,
        #[arg(long, default_value_t = 2e-5)]
        lr: f64,
        #[arg(long, default_value_t = 500)]
        warmup: usize,
        #[command(flatten)]
        run: RunArgs,
    },
    /// DeCap: train a decoder on text alone, prefixed by each caption's CLIP text embedding.
    Decap {
        /// HF CLIP directory (its text tower embeds the captions; cached in --out).
        #[arg(long)]
        clip: PathBuf,
        /// Captions: one per line, image<TAB>caption lines, or COCO-style JSON.
        #[arg(long)]
        captions: PathBuf,
        /// CLIP BPE vocabulary when the CLIP directory has none.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 768)]
        hidden: usize,
        #[arg(long, default_value_t = 4)]
        heads: usize,
        /// Target tokens per caption (DeCap: the first 20 CLIP tokens).
        #[arg(long, default_value_t = decap::DECAP_TARGET_TOKENS)]
        max_tokens: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 1e-4)]
        lr: f64,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        #[arg(long, default_value_t = 0.1)]
        label_smoothing: f64,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Distil a GPT-2 into fewer layers with a KL loss to it on caption text.
#[derive(Args)]
pub struct DistillArgs {
    /// HF GPT-2 directory of the teacher.
    #[arg(long)]
    teacher: PathBuf,
    /// Student layers (initialised from every other teacher layer).
    #[arg(long)]
    layers: usize,
    /// Captions: one per line, image<TAB>caption lines, or COCO-style JSON.
    #[arg(long)]
    data: PathBuf,
    /// GPT-2 tokenizer directory when the teacher's has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 2.0)]
    temperature: f64,
    #[arg(long, default_value_t = 40)]
    max_tokens: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
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
        TrainCommand::Clip {
            data,
            tokenizer,
            image_size,
            patch_size,
            vision_width,
            vision_layers,
            text_width,
            text_layers,
            heads,
            projection_dim,
            batch,
            lr,
            warmup,
            lr_decay,
            hard_negatives,
            run,
        } => {
            let opts = ClipTrainOptions {
                data,
                tokenizer,
                image_size,
                patch_size,
                vision_width,
                vision_layers,
                text_width,
                text_layers,
                heads,
                projection_dim,
                batch,
                lr,
                warmup,
                lr_decay,
                hard_negatives,
                seed: run.seed,
                run: run.options(),
            };
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
        TrainCommand::Clipcap {
            clip,
            lm,
            data,
            tokenizer,
            mapper,
            prefix_length,
            mapper_layers,
            tune_lm,
            max_tokens,
            batch,
            lr,
            warmup,
            run,
        } => {
            let opts = ClipcapTrainOptions {
                clip,
                lm,
                data,
                tokenizer,
                mapper,
                prefix_length,
                mapper_layers,
                tune_lm,
                max_tokens,
                batch,
                lr,
                warmup,
                seed: run.seed,
                run: run.options(),
            };
            let r = train_clipcap(&opts)?;
            let summary = format!(
                "{}: ClipCap {} mapper{}, {} trained parameters, {} pairs ({} images, {} captions skipped); export with: host-tools export --clip {} --clipcap {} --lm {} --out BUNDLE",
                r.weights.display(),
                match mapper {
                    MapperArg::Mlp => "MLP",
                    MapperArg::Transformer => "transformer",
                },
                if tune_lm { " + GPT-2" } else { "" },
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
        TrainCommand::Decap {
            clip,
            captions,
            tokenizer,
            layers,
            hidden,
            heads,
            max_tokens,
            batch,
            lr,
            warmup,
            label_smoothing,
            run,
        } => {
            let opts = DecapTrainOptions {
                clip,
                captions,
                tokenizer,
                layers,
                hidden,
                heads,
                max_tokens,
                batch,
                lr,
                warmup,
                label_smoothing,
                seed: run.seed,
                run: run.options(),
            };
            decap::check_options(&opts)?;
            let r = train_decap(&opts)?;
            let summary = format!(
                "{}: DeCap decoder, {} parameters, {} captions ({} skipped); export with: host-tools export --clip {} --decap {} --decoder-heads {heads} --memory-captions {} --out BUNDLE",
                r.weights.display(),
                r.parameters,
                r.captions,
                r.skipped,
                opts.clip.display(),
                r.weights.display(),
                opts.captions.display()
            );
            finish(&run, &r, &r.run, &summary)
        }
    }
}

pub fn run_distill(args: DistillArgs) -> Result<ExitCode> {
    keep_freed_memory();
    let DistillArgs { teacher, layers, data, tokenizer, temperature, max_tokens, batch, lr, warmup, run } = args;
    let opts = DistillOptions {
        teacher,
        layers,
        data,
        tokenizer,
        temperature,
        max_tokens,
        batch,
        lr,
        warmup,
        seed: run.seed,
        run: run.options(),
    };
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
        println!(
            "steps {}..{}: loss {:.4} → {:.4}, {:.1} s, {:.1} items/s",
            run.resumed_from, run.steps, run.first_loss, run.last_loss, run.seconds, run.items_per_second
        );
    }
    Ok(ExitCode::SUCCESS)
}
