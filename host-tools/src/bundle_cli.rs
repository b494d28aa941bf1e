//! The bundle commands of `host-tools` (export, quantize, validate, trim-vocab, bench, trace,
//! projection, memory build): each one's options as a clap `Args` struct and what it runs, as
//! `train_cli` and `scenes_cli` do for theirs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::model::CaptionModel;
use host_tools::bench::{bench, BenchOptions};
use host_tools::export::{export_clipcap, ExportOptions};
use host_tools::export_decap::{export_decap, DecapExportOptions};
use host_tools::images::image_paths;
use host_tools::memory::{build_memory, MemoryOptions};
use host_tools::projection::compare_top_k;
use host_tools::quantize::{mib, quantize_bundle, QuantScheme, QuantizeOptions, Target};
use host_tools::trim::{corpus_ids, trim_bundle};
use host_tools::validate::{validate, Thresholds, ValidateOptions};

/// The options of `host-tools export`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("model").required(true).args(["clipcap", "decap"])))]
pub struct ExportArgs {
    /// HF CLIP directory (config.json + model.safetensors), as save_pretrained writes it.
    #[arg(long)]
    clip: PathBuf,
    /// ClipCap checkpoint saved with torch.save(model.state_dict()).
    #[arg(long)]
    clipcap: Option<PathBuf>,
    /// DeCap checkpoint saved with torch.save(model.state_dict()).
    #[arg(long)]
    decap: Option<PathBuf>,
    /// HF GPT-2 directory: config always; weights when the checkpoint has no gpt.* keys (ClipCap).
    #[arg(long, conflicts_with = "decap")]
    lm: Option<PathBuf>,
    /// ClipCap: GPT-2 vocab.json + merges.txt or tokenizer.json dir (default: --lm). DeCap: CLIP's
    /// bpe_simple_vocab_16e6.txt.gz or a vocab.json + merges.txt dir (default: --clip).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// ClipCap: GPT-2 attention heads when no config.json says (default: width / 64).
    #[arg(long, conflicts_with = "decap")]
    heads: Option<usize>,
    /// DeCap: support memory from `host-tools memory build`.
    #[arg(long, requires = "decap", conflicts_with = "memory_captions")]
    memory: Option<PathBuf>,
    /// DeCap: build the support memory from these captions (one per line).
    #[arg(long, requires = "decap")]
    memory_captions: Option<PathBuf>,
    /// DeCap: decoder attention heads (the checkpoint does not say; the released model has 4).
    #[arg(long, requires = "decap")]
    decoder_heads: Option<usize>,
    /// DeCap: softmax temperature of the projection onto the memory.
    #[arg(long, requires = "decap", default_value_t = host_tools::export_decap::DECAP_TEMPERATURE)]
    temperature: f32,
    /// DeCap: project onto the K most similar memory entries only (0 = all).
    #[arg(long, requires = "decap", default_value_t = 0)]
    top_k: usize,
    /// Bundle directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Write into --out even though it holds files (a bundle there is replaced).
    #[arg(long)]
    force: bool,
}

/// The options of `host-tools projection`.
#[derive(Args)]
pub struct ProjectionArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// Values of k to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,512")]
    top_k: Vec<usize>,
    /// Image files or directories.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// The options of `host-tools quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// The fp32 bundle.
    bundle: PathBuf,
    /// The int8 bundle to write (a new directory).
    #[arg(long)]
    out: PathBuf,
    /// Write into --out even though it holds files (a bundle there is replaced).
    #[arg(long)]
    force: bool,
    /// Calibration photographs, 10-100 like the camera's (static schemes; default: the 10
    /// photographs built into host-tools).
    #[arg(long)]
    calibration: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = SchemeArg::StaticMinmax)]
    scheme: SchemeArg,
    /// Keep the decoder's LM head in float.
    #[arg(long)]
    float_lm_head: bool,
    /// The machine the bundle is for: `board` (every graph int8: edgecap's kernels make int8
    /// the faster precision on every board CPU) or `host` (fp32 kept for a graph where int8
    /// measures slower on this machine).
    #[arg(long = "for", value_enum, default_value_t = TargetArg::Board)]
    target: TargetArg,
    /// The same as `--for board` (kept for scripts written before `--for`).
    #[arg(long, hide = true, conflicts_with = "target")]
    all_int8: bool,
    /// SmoothQuant migration strength (0..1) for LayerNorm outputs read only by linear layers:
    /// the share of each channel's range moved into the weights, folded into the LayerNorm.
    #[arg(long, default_value_t = host_tools::quantize::smooth::DEFAULT_ALPHA)]
    smooth_alpha: f32,
    /// Leave the LayerNorm outputs as they are (no smoothing).
    #[arg(long)]
    no_smooth: bool,
}

/// The options of `host-tools validate`.
#[derive(Args)]
pub struct ValidateArgs {
    fp32: PathBuf,
    int8: PathBuf,
    /// Photographs to caption with both bundles.
    #[arg(long)]
    images: PathBuf,
    /// Reference captions: COCO-style annotations JSON or image<TAB>caption lines.
    #[arg(long)]
    references: Option<PathBuf>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 0.99)]
    min_embedding_cosine: f64,
    #[arg(long, default_value_t = 0.9)]
    min_token_agreement: f64,
    /// Largest allowed CIDEr-D drop (needs --references).
    #[arg(long)]
    max_cider_drop: Option<f64>,
    /// Smallest allowed mean SQNR of the decoder's logits (dB, teacher-forced).
    #[arg(long)]
    min_logits_sqnr: Option<f64>,
}

/// The options of `host-tools trim-vocab`.
#[derive(Args)]
pub struct TrimVocabArgs {
    /// The fp32 bundle.
    bundle: PathBuf,
    /// Captions in the target domain, one per line: their tokens (and the stop tokens) stay.
    #[arg(long)]
    captions: PathBuf,
    /// The trimmed bundle to write (a new directory).
    #[arg(long)]
    out: PathBuf,
    /// Write into --out even though it holds files (a bundle there is replaced).
    #[arg(long)]
    force: bool,
}

/// The options of `host-tools bench`.
#[derive(Args)]
pub struct BenchArgs {
    bundle: PathBuf,
    /// Photographs to caption (default: the 10 built into host-tools).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Timed captions per image.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Exactly N tokens per caption (greedy, no stop token), so runs compare like for like.
    #[arg(long)]
    tokens: Option<usize>,
    #[arg(long)]
    json: bool,
    /// With --json: every caption's timings too.
    #[arg(long)]
    samples: bool,
}

/// The options of `host-tools trace`.
#[derive(Args)]
pub struct TraceArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    image: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Beam width (default: the bundle's).
    #[arg(long)]
    beam: Option<usize>,
}

/// The options of `host-tools memory build`.
#[derive(Args)]
pub struct MemoryBuildArgs {
    /// HF CLIP directory (config.json + weights; vocab.json + merges.txt unless --tokenizer).
    #[arg(long)]
    clip: PathBuf,
    /// UTF-8 text file, one caption per line; blank lines are skipped.
    #[arg(long)]
    captions: PathBuf,
    /// CLIP BPE vocabulary: open_clip's bpe_simple_vocab_16e6.txt.gz or a vocab.json + merges.txt dir.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Keep a random sample of N captions (seeded), to fit the board's memory.
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store int8 rows with per-row scales (4× smaller) instead of f32.
    #[arg(long)]
    int8: bool,
    /// Captions per text-encoder batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Memory file to write (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    Board,
    Host,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SchemeArg {
    /// Calibrated per-tensor min/max activation ranges (QLinearMatMul).
    StaticMinmax,
    /// Calibrated 0.01/99.99 percentile activation ranges (QLinearMatMul).
    StaticPercentile,
    /// Ranges measured on each input at run time (MatMulInteger).
    Dynamic,
}

/// An output directory must be new or empty, or `--force` given: a bundle written into one that
/// holds another would replace it without a word. Never one of the command's inputs.
fn check_output_dir(out: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if let Some(input) = inputs.iter().find(|input| same(out, input)) {
        anyhow::bail!("--out {}: is the input {}; write to a new directory", out.display(), input.display());
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        anyhow::bail!("--out {}: exists and is not a directory", out.display());
    }
    let holds_files =
        std::fs::read_dir(out).with_context(|| format!("--out {}: cannot read", out.display()))?.next().is_some();
    if holds_files && !force {
        anyhow::bail!(
            "--out {}: exists and is not empty (a bundle there would be replaced); choose a new directory or pass --force",
            out.display()
        );
    }
    Ok(())
}

impl ExportArgs {
    pub fn run(self) -> Result<ExitCode> {
        let ExportArgs {
            clip,
            clipcap,
            decap,
            lm,
            tokenizer,
            heads,
            memory,
            memory_captions,
            decoder_heads,
            temperature,
            top_k,
            out,
            force,
        } = self;
        check_output_dir(&out, force, &[&clip])?;
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let manifest = match (clipcap, decap) {
            (Some(clipcap), _) => {
                export_clipcap(&ExportOptions { clip, clipcap, lm, tokenizer, heads, out: out.clone(), progress })?
            }
            (None, Some(decap)) => export_decap(&DecapExportOptions {
                clip,
                decap,
                memory,
                memory_captions,
                tokenizer,
                decoder_heads,
                temperature,
                top_k,
                out: out.clone(),
                progress,
            })?,
            (None, None) => unreachable!("clap requires --clipcap or --decap"),
        };
        let m = &manifest.model;
        println!(
            "{}: {} bundle, prefix {}, decoder {} layers × {} wide, vocabulary {}",
            out.display(),
            manifest.architecture.name(),
            m.prefix_length,
            m.num_layers,
            m.hidden_size,
            m.vocab_size
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl ProjectionArgs {
    pub fn run(self) -> Result<ExitCode> {
        let ProjectionArgs { bundle, top_k, images } = self;
        let model = CaptionModel::load(&bundle).with_context(|| format!("loading {}", bundle.display()))?;
        let report = compare_top_k(&model, &image_paths(&images)?, &top_k)?;
        for (path, e) in &report.failed {
            eprintln!("skipped {}: {e}", path.display());
        }
        println!("{:>8}  {:>8}  {:>16}", "top-k", "images", "caption changed");
        for r in &report.per_k {
            let pct = 100.0 * r.changed as f64 / r.images.max(1) as f64;
            println!("{:>8}  {:>8}  {:>8} ({pct:5.1}%)", r.k, r.images, r.changed);
        }
        println!("(memory of {} captions; full projection = all of them)", report.rows);
        Ok(ExitCode::SUCCESS)
    }
}

impl QuantizeArgs {
    pub fn run(self) -> Result<ExitCode> {
        let QuantizeArgs {
            bundle,
            out,
            calibration,
            scheme,
            float_lm_head,
            target,
            all_int8,
            smooth_alpha,
            no_smooth,
            force,
        } = self;
        if !(0.0..=1.0).contains(&smooth_alpha) {
            anyhow::bail!("--smooth-alpha {smooth_alpha}: must be between 0 and 1");
        }
        check_output_dir(&out, force, &[&bundle])?;
        let scheme = match scheme {
            SchemeArg::StaticMinmax => QuantScheme::StaticMinMax,
            SchemeArg::StaticPercentile => QuantScheme::StaticPercentile,
            SchemeArg::Dynamic => QuantScheme::Dynamic,
        };
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let smooth_alpha = (!no_smooth).then_some(smooth_alpha);
        let opts = QuantizeOptions {
            bundle,
            out: out.clone(),
            calibration,
            scheme,
            float_lm_head,
            target: if target == TargetArg::Host && !all_int8 { Target::Host } else { Target::Board },
            smooth_alpha,
            progress,
        };
        let report = quantize_bundle(&opts)?;
        for g in &report.graphs {
            println!(
                "{:<20} {:>8.1} MiB → {:>7.1} MiB  {:>8.2} ms fp32 {:>8.2} ms int8  {}",
                g.file,
                mib(g.fp32_bytes),
                mib(g.int8_bytes),
                g.fp32_ms,
                g.int8_ms,
                if g.kept_fp32 {
                    "fp32 kept (int8 not faster on this machine, --for host)".to_string()
                } else {
                    format!(
                        "int8 (--for {}): {} linear layers in {} blocks",
                        opts.target.name(),
                        g.stats.sites,
                        g.stats.blocks
                    )
                }
            );
        }
        for g in &report.graphs {
            print!("{}", host_tools::quantize::render_layers(g));
        }
        println!("{}", host_tools::quantize::smoothing_summary(&report));
        println!(
            "{}: int8 bundle ({}, {} calibration images), {:.1} MiB → {:.1} MiB",
            out.display(),
            scheme.name(),
            report.calibration_images,
            mib(report.fp32_bundle_bytes),
            mib(report.int8_bundle_bytes)
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl ValidateArgs {
    pub fn run(self) -> Result<ExitCode> {
        let ValidateArgs {
            fp32,
            int8,
            images,
            references,
            json,
            min_embedding_cosine,
            min_token_agreement,
            max_cider_drop,
            min_logits_sqnr,
        } = self;
        if max_cider_drop.is_some() && references.is_none() {
            anyhow::bail!("--max-cider-drop needs --references FILE");
        }
        let thresholds = Thresholds {
            min_embedding_cosine,
            min_token_agreement,
            max_cider_drop,
            min_logits_sqnr_db: min_logits_sqnr,
        };
        let report = validate(&ValidateOptions { fp32, int8, images, references, thresholds })?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", host_tools::validate::render(&report));
        }
        Ok(if report.pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }
}

impl TrimVocabArgs {
    pub fn run(self) -> Result<ExitCode> {
        let TrimVocabArgs { bundle, captions, out, force } = self;
        check_output_dir(&out, force, &[&bundle])?;
        let opened = Bundle::open(&bundle).with_context(|| format!("cannot open bundle {}", bundle.display()))?;
        let keep = corpus_ids(&opened, &captions)?;
        let report = trim_bundle(&opened, &out, &keep)?;
        println!(
            "{}: LM head trimmed to {} of {} tokens, decoder {:.1} MiB → {:.1} MiB",
            out.display(),
            report.kept,
            report.vocab_size,
            mib(report.decoder_bytes.0),
            mib(report.decoder_bytes.1)
        );
        Ok(ExitCode::SUCCESS)
    }
}

impl BenchArgs {
    pub fn run(self, threads: usize) -> Result<ExitCode> {
        let BenchArgs { bundle, images, runs, tokens, json, samples } = self;
        let report = bench(&BenchOptions { bundle, images, runs, threads, tokens, samples })?;
        if json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{}", host_tools::bench::render(&report));
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl TraceArgs {
    pub fn run(self) -> Result<ExitCode> {
        let TraceArgs { bundle, image, out, beam } = self;
        let model = CaptionModel::load(&bundle).with_context(|| format!("loading {}", bundle.display()))?;
        let mut opts = model.default_options();
        if let Some(b) = beam {
            opts.beam_width = b;
        }
        host_tools::trace::trace(&model, &image, &opts, &out)?;
        println!("{}: wrote pixel_values, image_embeds, prefix, logits_step0 (.npy) and caption.json", out.display());
        Ok(ExitCode::SUCCESS)
    }
}

impl MemoryBuildArgs {
    pub fn run(self) -> Result<ExitCode> {
        let MemoryBuildArgs { clip, captions, tokenizer, size, seed, int8, batch, out } = self;
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let opts = MemoryOptions { clip, captions, tokenizer, out: out.clone(), size, seed, int8, batch, progress };
        let s = build_memory(&opts)?;
        println!(
            "{}: {} captions × {} ({}) from {} lines; {} blank lines skipped, {} captions cut to CLIP's context",
            out.display(),
            s.rows,
            s.dim,
            if int8 { "int8" } else { "f32" },
            s.corpus_lines,
            s.blank_lines,
            s.truncated
        );
        Ok(ExitCode::SUCCESS)
    }
}
