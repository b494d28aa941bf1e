//! `host-tools quantize`: an fp32 bundle → an int8 bundle (post-training quantization).
//!
//! The fp32 weights are read back from the bundle's own ONNX initializers, so quantization needs
//! nothing but the bundle. Activation ranges come from running the fp32 bundle on calibration
//! photographs: the image encoder on their pixels, the mapper on their embeddings, the decoder on
//! each prefix followed by the fp32 greedy caption (teacher forcing, one call per image, which
//! sees the same activations as step-by-step decoding).

pub mod calibrate;
pub mod dequantize;
pub mod rewrite;
pub mod smooth;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::Bundle;
use edgecap_engine::graph::{self, GraphShapes};
use edgecap_engine::manifest::{FileRole, Precision};
use edgecap_engine::model::CaptionModel;
use edgecap_engine::npy::{self, f16};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::images;
use crate::progress::Steps;
use calibrate::{Calibrator, Method, Range};
use rewrite::{linear_sites, quantize_model, RewriteOptions, RewriteStats, Scheme, SiteReport};
use smooth::{norm_groups, smooth, NotSmoothed, Smoothed};

/// The activation scheme asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    StaticMinMax,
    StaticPercentile,
    Dynamic,
}

impl QuantScheme {
    pub fn name(self) -> &'static str {
        match self {
            QuantScheme::StaticMinMax => "static-minmax",
            QuantScheme::StaticPercentile => "static-percentile",
            QuantScheme::Dynamic => "dynamic",
        }
    }

    fn method(self) -> Option<Method> {
        match self {
            QuantScheme::StaticMinMax => Some(Method::MinMax),
            QuantScheme::StaticPercentile => Some(Method::Percentile(99.99)),
            QuantScheme::Dynamic => None,
        }
    }
}

/// The machine a bundle is made for, which decides the graphs that become int8. A bundle is made
/// on a workstation for a board, so the workstation's own timing is not the right judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A Raspberry Pi / Jetson-class board: every graph int8. edgecap's int8 kernels (SDOT, the
    /// widening multiply, armv7 NEON) run each graph of the full-size model in fewer instructions
    /// than fp32 on every board CPU profiled (docs/arm-profile.md), and move a quarter of the bytes.
    Board,
    /// The machine quantizing: a graph stays fp32 where int8 measures slower here.
    Host,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Board => "board",
            Target::Host => "host",
        }
    }
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub bundle: PathBuf,
    pub out: PathBuf,
    /// Calibration photographs; none = the built-in ones.
    pub calibration: Option<PathBuf>,
    pub scheme: QuantScheme,
    /// Keep the decoder's LM head in float.
    pub float_lm_head: bool,
    /// The machine the bundle is for: where int8 replaces fp32.
    pub target: Target,
    /// SmoothQuant's α for the LayerNorm outputs that only linear layers read; `None`: off.
    pub smooth_alpha: Option<f32>,
    pub progress: bool,
}

/// What quantization did to one linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    pub site: SiteReport,
    pub smoothing: Smoothing,
}

/// Whether a layer's input was smoothed.
#[derive(Debug, Clone, PartialEq)]
pub enum Smoothing {
    Applied(Smoothed),
    /// A LayerNorm output that could be smoothed, but smoothing is off.
    Off,
    Skipped(NotSmoothed),
}

/// One graph's result.
#[derive(Debug, Clone)]
pub struct GraphReport {
    pub file: String,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
    pub stats: RewriteStats,
    /// Every quantized layer, in graph order.
    pub layers: Vec<LayerReport>,
    /// Median run time of one input (the decoder: one token step) on this machine.
    pub fp32_ms: f64,
    pub int8_ms: f64,
    /// int8 measured slower, so the bundle holds the fp32 graph.
    pub kept_fp32: bool,
}

#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub graphs: Vec<GraphReport>,
    pub fp32_bundle_bytes: u64,
    pub int8_bundle_bytes: u64,
    pub calibration_images: usize,
}

/// The three graphs of a bundle, in pipeline order.
const GRAPHS: [(FileRole, &str); 3] =
    [(FileRole::ImageEncoder, "image encoder"), (FileRole::Mapper, "mapper"), (FileRole::Decoder, "decoder")];

pub fn quantize_bundle(opts: &QuantizeOptions) -> Result<QuantizeReport> {
    let shown = opts.bundle.display().to_string();
    let bundle = Bundle::open(&opts.bundle).with_context(|| format!("cannot open bundle {shown}"))?;
    if bundle.manifest.precision != Precision::Fp32 {
        bail!("{shown}: already quantized (precision {:?}); quantize an fp32 bundle", bundle.manifest.precision);
    }
    if same_dir(&opts.bundle, &opts.out) {
        bail!("{}: the output must be a new directory, not the input bundle", opts.out.display());
    }
    let model = CaptionModel::from_bundle(&bundle).with_context(|| format!("cannot load bundle {shown}"))?;
    let steps = Steps::new(opts.progress, "quantize", 2 + GRAPHS.len() as u64);

    // The fp32 bundle's activations on the calibration photographs (also the timing inputs).
    steps.next("running the fp32 bundle on the calibration images");
    let samples = images::load_dir_or_builtin(opts.calibration.as_deref())?;
    let mut inputs: Vec<Vec<TVec<TValue>>> = vec![Vec::new(); GRAPHS.len()];
    for s in &samples {
        let per_graph = calibration_inputs(&model, &s.image)
            .with_context(|| format!("{}: calibration run failed", s.path.display()))?;
        for (all, one) in inputs.iter_mut().zip(per_graph) {
            all.push(one);
        }
    }
    let timing = timing_inputs(&model, &inputs)?;

    let mut writer = crate::export::create_writer(&opts.out)?;
    let write_err = || format!("{}: cannot write bundle", opts.out.display());
    let mut graphs = Vec::new();
    for (((role, label), graph_inputs), timing) in GRAPHS.iter().zip(&inputs).zip(&timing) {
        steps.next(&format!("quantizing the {label}"));
        let entry = bundle.manifest.file(*role).context("manifest checked at open")?;
        let bytes = std::fs::read(bundle.path(*role)).with_context(|| format!("{}: cannot read", entry.path))?;
        let fp32 = pb::ModelProto::decode(bytes.as_slice())
            .with_context(|| format!("{}: not an ONNX model", bundle.path(*role).display()))?;
        let decoder_prefix = (*role == FileRole::Decoder).then_some(bundle.manifest.model.prefix_length);
        let (int8, stats, layers) = quantize_graph(&fp32, graph_inputs, opts, decoder_prefix)
            .with_context(|| format!("{}: cannot quantize the {label}", bundle.path(*role).display()))?;
        let encoded = int8.encode_to_vec();
        let d = &bundle.manifest.model;
        let shapes =
            GraphShapes::for_role(*role, d, bundle.manifest.preprocess.image_size as usize).context("a graph role")?;
        let fp32_ms =
            median_run_ms(&bytes, &entry.path, &shapes, timing).with_context(|| format!("timing the fp32 {label}"))?;
        let int8_ms = median_run_ms(&encoded, &entry.path, &shapes, timing)
            .with_context(|| format!("timing the int8 {label}"))?;
        // Timed either way, for the report; only a bundle for this machine keeps the fp32 graph
        // where int8 measures slower here (tract's int8 without edgecap's kernels, a tiny graph).
        let kept_fp32 = opts.target == Target::Host && int8_ms >= fp32_ms;
        let written = if kept_fp32 { &bytes } else { &encoded };
        writer.add(*role, &entry.path, written).with_context(write_err)?;
        log::info!(
            "{label}: {} linear layers int8 in {} blocks ({} matmuls left float), {:.1} MiB → {:.1} MiB, \
             {fp32_ms:.2} ms fp32 vs {int8_ms:.2} ms int8{}",
            stats.sites,
            stats.blocks,
            stats.float_matmuls,
            mib(bytes.len() as u64),
            mib(encoded.len() as u64),
            if kept_fp32 { ": int8 is not faster here, fp32 kept" } else { "" }
        );
        graphs.push(GraphReport {
            file: entry.path.clone(),
            fp32_bytes: bytes.len() as u64,
            int8_bytes: written.len() as u64,
            stats,
            layers,
            fp32_ms,
            int8_ms,
            kept_fp32,
        });
    }

    steps.next("copying the other files and checking the new bundle");
    // Every other file travels unchanged (a DeCap memory included), except the token-embedding
    // table, stored in f16: half the memory on the board, far below int8's error.
    let graph_roles = [FileRole::ImageEncoder, FileRole::Mapper, FileRole::Decoder];
    for entry in bundle.manifest.files.iter().filter(|f| !graph_roles.contains(&f.role)) {
        let role = entry.role;
        let path = bundle.path(role);
        let bytes = match role {
            FileRole::TokenEmbeddings => token_embeddings_f16(&path)?,
            _ => std::fs::read(&path).with_context(|| format!("{}: cannot read", entry.path))?,
        };
        writer.add(role, &entry.path, &bytes).with_context(write_err)?;
    }
    let mut manifest = bundle.manifest.clone();
    // A bundle whose graphs all stayed fp32 (int8 slower everywhere) is still an fp32 bundle.
    manifest.precision = if graphs.iter().any(|g| !g.kept_fp32) { Precision::Int8 } else { Precision::Fp32 };
    if manifest.precision == Precision::Fp32 {
        log::warn!(
            "int8 was slower than fp32 for every graph on this machine: the bundle stays fp32 (--for board makes it int8)"
        );
    }
    let names = |kept: bool| {
        let v: Vec<&str> = graphs.iter().filter(|g| g.kept_fp32 == kept).map(|g| g.file.as_str()).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let smoothing = match opts.smooth_alpha {
        Some(alpha) => format!(", LayerNorm outputs smoothed with alpha {alpha}"),
        None => String::new(),
    };
    manifest.source = format!(
        "{}; int8 ({}{smoothing}, per-column weight scales) by host-tools quantize --for {}: int8 {}; fp32 (faster on the \
         quantizing machine) {}",
        manifest.source,
        opts.scheme.name(),
        opts.target.name(),
        names(false),
        names(true)
    );
    writer.finish(manifest)?;
    steps.finish();
    let int8 = CaptionModel::load(&opts.out)
        .with_context(|| format!("{}: the quantized bundle does not load", opts.out.display()))?;
    Ok(QuantizeReport {
        graphs,
        fp32_bundle_bytes: bundle.manifest.files.iter().map(|f| f.bytes).sum(),
        int8_bundle_bytes: int8.manifest.files.iter().map(|f| f.bytes).sum(),
        calibration_images: samples.len(),
    })
}

/// The f32 token-embedding table at `path` as f16 `.npy` bytes (an f16 table is kept as is).
fn token_embeddings_f16(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    if npy::element_type(&shown, &bytes)? == "<f2" {
        return Ok(bytes);
    }
    let (shape, table) = npy::from_bytes::<f32>(&shown, &bytes)?;
    let halves: Vec<f16> = table.iter().map(|&v| f16::from_f32(v)).collect();
    Ok(npy::to_bytes(&shape, &halves))
}

/// Smooths (when asked), calibrates (static schemes) and rewrites one graph. `decoder_prefix`:
/// the graph is the decoder, with prefixes of this length.
fn quantize_graph(
    fp32: &pb::ModelProto,
    calibration: &[TVec<TValue>],
    opts: &QuantizeOptions,
    decoder_prefix: Option<usize>,
) -> Result<(pb::ModelProto, RewriteStats, Vec<LayerReport>)> {
    let mut rewrite = RewriteOptions::default();
    if decoder_prefix.is_some() && opts.float_lm_head {
        rewrite.keep_float.push("lm_head".into());
    }
    let (model, smoothing) = smooth_graph(fp32, calibration, &rewrite, opts.smooth_alpha, decoder_prefix)?;
    let ranges = match opts.scheme.method() {
        None => {
            rewrite.scheme = Scheme::Dynamic;
            HashMap::new()
        }
        Some(method) => calibrate_graph(&model, calibration, &rewrite, method, decoder_prefix)?,
    };
    let (int8, stats) = quantize_model(&model, &ranges, &rewrite)?;
    let layers = stats
        .layers
        .iter()
        .map(|site| LayerReport {
            site: site.clone(),
            smoothing: smoothing.get(&site.input).cloned().unwrap_or(Smoothing::Off),
        })
        .collect();
    Ok((int8, stats, layers))
}

/// The graph with its foldable LayerNorm outputs smoothed (`alpha`; `None`: unchanged), and what
/// happened to each linear site's input. `decoder_prefix` as for [`calibrate_graph`].
pub fn smooth_graph(
    fp32: &pb::ModelProto,
    calibration: &[TVec<TValue>],
    rewrite: &RewriteOptions,
    alpha: Option<f32>,
    decoder_prefix: Option<usize>,
) -> Result<(pb::ModelProto, HashMap<String, Smoothing>)> {
    let sites = linear_sites(fp32, rewrite)?;
    let (groups, skipped) = norm_groups(fp32, &sites)?;
    let mut report: HashMap<String, Smoothing> =
        skipped.into_iter().map(|(x, why)| (x, Smoothing::Skipped(why))).collect();
    let mut model = fp32.clone();
    match alpha {
        Some(alpha) if !groups.is_empty() => {
            let names: Vec<String> = groups.iter().map(|g| g.activation.clone()).collect();
            let mut calibrator = calibrator(fp32, names.clone(), Method::MinMax, decoder_prefix)?.with_channels(names);
            for inputs in calibration {
                calibrator.observe(inputs.clone())?;
            }
            let done = smooth(&mut model, &groups, &calibrator.channel_absmax, alpha)?;
            for (g, s) in groups.iter().zip(done) {
                report.insert(g.activation.clone(), Smoothing::Applied(s));
            }
        }
        _ => {
            for g in &groups {
                report.insert(g.activation.clone(), Smoothing::Off);
            }
        }
    }
    Ok((model, report))
}

/// One line: how many layer inputs were smoothed, how far their channels' ranges came together,
/// and why the others were not.
pub fn smoothing_summary(r: &QuantizeReport) -> String {
    let mut applied: Vec<&Smoothed> = Vec::new();
    let (mut off, mut not_norm) = (0, 0);
    let mut unfoldable: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for g in &r.graphs {
        for l in g.layers.iter().filter(|l| seen.insert((g.file.clone(), l.site.input.clone()))) {
            match &l.smoothing {
                Smoothing::Applied(s) => applied.push(s),
                Smoothing::Off => off += 1,
                Smoothing::Skipped(NotSmoothed::NotLayerNorm(_)) => not_norm += 1,
                Smoothing::Skipped(why @ NotSmoothed::Unfoldable(_)) => {
                    unfoldable.push(format!("{}: {why}", l.site.input))
                }
            }
        }
    }
    let mut out = String::from("smoothing: ");
    if applied.is_empty() {
        out.push_str("no LayerNorm output smoothed");
    } else {
        let worst = applied.iter().max_by(|a, b| a.spread_before.total_cmp(&b.spread_before)).expect("non-empty");
        let after = applied.iter().map(|s| s.spread_after).fold(0f32, f32::max);
        out.push_str(&format!(
            "{} LayerNorm outputs smoothed (α {}), largest channel over median {:.1} → at most {:.1} after",
            applied.len(),
            worst.alpha,
            worst.spread_before,
            after
        ));
    }
    if off > 0 {
        out.push_str(&format!("; {off} left as they are (--no-smooth)"));
    }
    out.push_str(&format!("; {not_norm} layer inputs not from a LayerNorm (per-tensor as they are)"));
    for u in unfoldable {
        out.push_str(&format!("; {u}"));
    }
    out
}

/// The per-layer table of one graph: what each linear layer became.
pub fn render_layers(g: &GraphReport) -> String {
    let mut out = format!(
        "{}: {:<52} {:>11} {:>10} {:>5} {:>19}  {}\n",
        g.file, "layer", "in×out", "in scale", "zero", "weight scales", "input smoothing"
    );
    for l in &g.layers {
        let s = &l.site;
        let (scale, zero) = match s.input_qparams {
            Some((scale, zero)) => (format!("{scale:.3e}"), zero.to_string()),
            None => ("dynamic".to_string(), "-".to_string()),
        };
        let smoothing = match &l.smoothing {
            Smoothing::Applied(m) => format!(
                "{} (α {}): s {:.3}–{:.3}, channel spread {:.1} → {:.1}",
                m.norm, m.alpha, m.factor_range.0, m.factor_range.1, m.spread_before, m.spread_after
            ),
            Smoothing::Off => "off (a LayerNorm output; --no-smooth)".to_string(),
            Smoothing::Skipped(why) => format!("none: {why}"),
        };
        out.push_str(&format!(
            "  {:<52} {:>11} {:>10} {:>5} {:>19}  {}{}\n",
            s.name(),
            format!("{}×{}", s.shape.0, s.shape.1),
            scale,
            zero,
            format!("{:.1e}–{:.1e}", s.weight_scales.0, s.weight_scales.1),
            smoothing,
            if s.wide_output { "; i32 output" } else { "" }
        ));
    }
    out
}

fn calibrator(
    fp32: &pb::ModelProto,
    names: Vec<String>,
    method: Method,
    decoder_prefix: Option<usize>,
) -> Result<Calibrator> {
    match decoder_prefix {
        Some(prefix) => Calibrator::decoder(fp32, names, method, prefix),
        None => Calibrator::new(fp32, names, method),
    }
}

/// Activation ranges of every linear site's input and output over the calibration inputs.
/// `decoder_prefix`: the graph is a bundle's decoder, each input a whole teacher-forced sequence
/// decoded as the engine does ([`Calibrator::decoder`]).
pub fn calibrate_graph(
    fp32: &pb::ModelProto,
    calibration: &[TVec<TValue>],
    rewrite: &RewriteOptions,
    method: Method,
    decoder_prefix: Option<usize>,
) -> Result<HashMap<String, Range>> {
    let names: BTreeSet<String> = linear_sites(fp32, rewrite)?.into_iter().flat_map(|s| [s.input, s.output]).collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let mut calibrator = calibrator(fp32, names.into_iter().collect(), method, decoder_prefix)?;
    for inputs in calibration {
        calibrator.observe(inputs.clone())?;
    }
    Ok(calibrator.ranges)
}

/// The inputs each graph sees when the fp32 bundle captions `image`: pixels, embedding, and the
/// prefix followed by the greedy caption's tokens in one decoder call.
pub fn calibration_inputs(model: &CaptionModel, image: &image::RgbImage) -> Result<Vec<TVec<TValue>>> {
    let trace = model.trace(image, &model.default_options())?;
    let d = model.dims();
    let s = model.manifest.preprocess.image_size as usize;
    let pixels = Tensor::from_shape(&[1, 3, s, s], &trace.pixel_values)?;
    let embeds = Tensor::from_shape(&[1, d.embed_dim], &trace.image_embeds)?;

    // The last generated token is never fed back, so it is left out.
    let fed = &trace.caption.tokens[..trace.caption.tokens.len().saturating_sub(1)];
    let mut sequence = trace.prefix.clone();
    for &t in fed {
        model.push_token_embedding(t, &mut sequence)?;
    }
    let total = d.prefix_length + fed.len();
    let positions: Vec<i64> = (0..total as i64).collect();
    let bias = edgecap_engine::model::causal_bias(total, 0);
    let decoder = tvec!(
        Tensor::from_shape(&[1, total, d.hidden_size], &sequence)?.into_tvalue(),
        Tensor::from_shape(&[total], &positions)?.into_tvalue(),
        Tensor::from_shape(&[total, total], &bias)?.into_tvalue(),
        Tensor::zero::<f32>(&[d.num_layers, 2, 1, d.num_heads, 0, d.head_dim()])?.into_tvalue(),
    );
    Ok(vec![tvec!(pixels.into_tvalue()), tvec!(embeds.into_tvalue()), decoder])
}

/// Timing inputs per graph: the first calibration image for the encoder and mapper; for the
/// decoder, the step that dominates captioning: one new token after the prefix and 19 tokens.
fn timing_inputs(model: &CaptionModel, calibration: &[Vec<TVec<TValue>>]) -> Result<Vec<TVec<TValue>>> {
    let d = model.dims();
    let past = (d.prefix_length + 19).min(d.max_positions - 1);
    let step = tvec!(
        Tensor::zero::<f32>(&[1, 1, d.hidden_size])?.into_tvalue(),
        Tensor::from_shape(&[1], &[past as i64])?.into_tvalue(),
        Tensor::zero::<f32>(&[1, past + 1])?.into_tvalue(),
        Tensor::zero::<f32>(&[d.num_layers, 2, 1, d.num_heads, past, d.head_dim()])?.into_tvalue(),
    );
    let first = |g: usize| calibration[g].first().cloned().context("no calibration input");
    Ok(vec![first(0)?, first(1)?, step])
}

/// Loads and optimises an ONNX graph exactly as the engine does, then returns the median of
/// repeated runs.
fn median_run_ms(onnx: &[u8], label: &str, shapes: &GraphShapes, inputs: &TVec<TValue>) -> Result<f64> {
    const RUNS: usize = 7;
    let plan = graph::load_bytes(onnx, label, shapes)?;
    plan.run(inputs.clone())?;
    let mut ms: Vec<f64> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = std::time::Instant::now();
        plan.run(inputs.clone())?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[RUNS / 2])
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
