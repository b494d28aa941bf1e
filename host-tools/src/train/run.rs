//! The loop every trainer shares: seeded batches, AdamW steps, a progress bar with loss and
//! throughput, and checkpoints that a later run with `--resume` continues from exactly.
//!
//! A run directory holds `checkpoint.safetensors` (trained weights under their model names, the
//! optimiser moments under `adam.*`, the step under `run.step`) and `checkpoint.json` (the
//! recipe's settings and the loss curve). A resume must use the same settings: the schedule of
//! batches depends on them, and silently mixing two recipes would make the result unreproducible.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::params::{save_safetensors, to_host, Params};
use crate::checkpoint::read_safetensors;
use crate::tensor::{self as host, TensorMap};

pub const CHECKPOINT_WEIGHTS: &str = "checkpoint.safetensors";
pub const CHECKPOINT_JSON: &str = "checkpoint.json";

/// Where a run lives and how long it goes; the command line's `--out`, `--steps`, `--resume`…
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Seeds the initial weights and the batch schedule; part of the settings a resume checks.
    pub seed: u64,
    pub steps: usize,
    /// Steps between checkpoints (the last step always writes one).
    pub checkpoint_every: usize,
    pub resume: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    settings: serde_json::Value,
    step: usize,
    losses: Vec<(usize, f32)>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub steps: usize,
    pub resumed_from: usize,
    /// Mean loss over the first and the last few steps of the whole run (resumes included).
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
    pub items_per_second: f64,
}

/// One training step's result: the loss to minimise and how many items (captions, tokens) it
/// covered, for the throughput shown.
pub struct StepOutput {
    pub loss: Tensor,
    pub items: usize,
}

/// Runs `opts.steps` steps of `step_fn` (given the 0-based step) from a fresh or resumed state.
pub fn train(
    opts: &RunOptions,
    label: &str,
    mut settings: serde_json::Value,
    params: &Params,
    optimizer: &mut AdamW,
    mut step_fn: impl FnMut(usize) -> Result<StepOutput>,
) -> Result<RunReport> {
    std::fs::create_dir_all(&opts.out).with_context(|| format!("{}: cannot create", opts.out.display()))?;
    if let Some(map) = settings.as_object_mut() {
        map.insert("seed".into(), opts.seed.into());
    }
    let mut record = start_or_resume(opts, &settings, params, optimizer)?;
    let resumed_from = record.step;
    if resumed_from >= opts.steps {
        bail!("{}: the run already has {resumed_from} steps; ask for more with --steps", opts.out.display());
    }
    let bar = progress_bar(opts, label, resumed_from);
    let started = Instant::now();
    let mut items = 0usize;
    for step in resumed_from..opts.steps {
        let out = step_fn(step)?;
        let loss = out.loss.to_scalar::<f32>().context("loss is not a scalar")?;
        if !loss.is_finite() {
            bail!("step {step}: the loss is {loss}; lower --lr or check the data");
        }
        optimizer.backward_step(&out.loss)?;
        items += out.items;
        record.losses.push((step, loss));
        record.step = step + 1;
        if let Some(bar) = &bar {
            bar.set_position(record.step as u64);
            let rate = items as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4} · {rate:.0}/s"));
        } else if record.step % 50 == 0 || record.step == opts.steps {
            log::info!("{label}: step {}/{} loss {loss:.4}", record.step, opts.steps);
        }
        if record.step % opts.checkpoint_every.max(1) == 0 || record.step == opts.steps {
            save_checkpoint(&opts.out, &record, params, optimizer)?;
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(RunReport {
        steps: record.step,
        resumed_from,
        first_loss: mean_loss(record.losses.iter().take(5)),
        last_loss: mean_loss(record.losses.iter().rev().take(5)),
        seconds,
        items_per_second: items as f64 / seconds.max(1e-9),
    })
}

fn mean_loss<'a>(losses: impl Iterator<Item = &'a (usize, f32)>) -> f32 {
    let v: Vec<f32> = losses.map(|(_, l)| *l).collect();
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

fn progress_bar(opts: &RunOptions, label: &str, at: usize) -> Option<ProgressBar> {
    opts.progress.then(|| {
        let bar = ProgressBar::new(opts.steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(at as u64);
        bar
    })
}

fn start_or_resume(
    opts: &RunOptions,
    settings: &serde_json::Value,
    params: &Params,
    optimizer: &mut AdamW,
) -> Result<RunRecord> {
    let json_path = opts.out.join(CHECKPOINT_JSON);
    let exists = json_path.is_file();
    match (exists, opts.resume) {
        (false, false) => Ok(RunRecord { settings: settings.clone(), step: 0, losses: Vec::new() }),
        (true, false) => bail!(
            "{}: a training run is already there; pass --resume to continue it or choose another --out",
            opts.out.display()
        ),
        (false, true) => bail!("{}: no checkpoint to resume (no {CHECKPOINT_JSON})", opts.out.display()),
        (true, true) => resume(&opts.out, settings, params, optimizer),
    }
}

fn resume(dir: &Path, settings: &serde_json::Value, params: &Params, optimizer: &mut AdamW) -> Result<RunRecord> {
    let json_path = dir.join(CHECKPOINT_JSON);
    let text = std::fs::read_to_string(&json_path).with_context(|| format!("{}: cannot read", json_path.display()))?;
    let mut record: RunRecord =
        serde_json::from_str(&text).with_context(|| format!("{}: not a checkpoint record", json_path.display()))?;
    if &record.settings != settings {
        bail!(
            "{}: the run was started with other settings ({}); resume with the same ones",
            json_path.display(),
            record.settings
        );
    }
    let weights_path = dir.join(CHECKPOINT_WEIGHTS);
    let state = read_safetensors(&weights_path)?;
    let step = state.get("run.step").with_context(|| weights_path.display().to_string())?.data[0] as usize;
    for (name, var) in params.trained() {
        let t = state.get(name).with_context(|| format!("{}: no weight `{name}`", weights_path.display()))?;
        var.set(&Tensor::from_vec(t.data.clone(), t.shape.as_slice(), var.as_tensor().device())?)
            .with_context(|| format!("{}: weight `{name}`", weights_path.display()))?;
    }
    optimizer.restore(&state, step).with_context(|| weights_path.display().to_string())?;
    record.step = step;
    record.losses.retain(|(s, _)| *s < step);
    log::info!("resuming {} at step {step}", dir.display());
    Ok(record)
}

fn save_checkpoint(dir: &Path, record: &RunRecord, params: &Params, optimizer: &AdamW) -> Result<()> {
    // Frozen weights come from their own files; the checkpoint holds what training changes.
    let mut state = TensorMap::new();
    for (name, var) in params.trained() {
        state.insert(name, to_host(var.as_tensor())?);
    }
    for (name, t) in optimizer.state()?.iter() {
        state.insert(name, t.clone());
    }
    state.insert("run.step", host::Tensor::new(vec![1], vec![record.step as f32])?);
    save_safetensors(&dir.join(CHECKPOINT_WEIGHTS), &state)?;
    let json = serde_json::to_vec_pretty(record)?;
    let path = dir.join(CHECKPOINT_JSON);
    edgecap_engine::fsutil::write_atomic(&path, &json).with_context(|| format!("{}: cannot write", path.display()))
}
