//! `host-tools quantize`: an fp32 bundle → an int8 bundle (post-training quantization).
//!
//! The fp32 weights are read back from the bundle's own ONNX initializers, so quantization needs
//! nothing but the bundle. Activation ranges come from running the fp32 bundle on calibration
//! photographs: the image encoder on their pixels, the mapper on their embeddings, the decoder on
//! each prefix followed by the fp32 greedy caption (teacher forcing, one call per image, which
//! sees the same activations as step-by-step decoding).

pub mod calibrate;
pub mod rewrite;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgecap_engine::bundle::{Bundle, BundleWriter};
use edgecap_engine::manifest::{FileRole, Precision};
use edgecap_engine::model::CaptionModel;
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::images;
use crate::progress::Steps;
use calibrate::{Calibrator, Method, Range};
use rewrite::{linear_sites, quantize_model, RewriteOptions, RewriteStats, Scheme};

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

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub bundle: PathBuf,
    pub out: PathBuf,
    pub calibration: PathBuf,
    pub scheme: QuantScheme,
    /// Keep the decoder's LM head in float.
    pub float_lm_head: bool,
    pub progress: bool,
}

/// One graph's result.
#[derive(Debug, Clone)]
pub struct GraphReport {
    pub file: String,
    pub fp32_bytes: u64,
    pub int8_bytes: u64,
    pub stats: RewriteStats,
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

    let mut inputs: Vec<Vec<TVec<TValue>>> = vec![Vec::new(); GRAPHS.len()];
    let mut calibration_images = 0;
    if opts.scheme.method().is_some() {
        steps.next("running the fp32 bundle on the calibration images");
        let samples = images::load_dir(&opts.calibration)?;
        calibration_images = samples.len();
        for s in &samples {
            let per_graph = calibration_inputs(&model, &s.image)
                .with_context(|| format!("{}: calibration run failed", s.path.display()))?;
            for (all, one) in inputs.iter_mut().zip(per_graph) {
                all.push(one);
            }
        }
    } else {
        steps.next("dynamic scheme: no calibration");
    }

    let mut writer =
        BundleWriter::create(&opts.out).with_context(|| format!("{}: cannot create bundle", opts.out.display()))?;
    let write_err = || format!("{}: cannot write bundle", opts.out.display());
    let mut graphs = Vec::new();
    for ((role, label), graph_inputs) in GRAPHS.iter().zip(&inputs) {
        steps.next(&format!("quantizing the {label}"));
        let entry = bundle.manifest.file(*role).context("manifest checked at open")?;
        let bytes = std::fs::read(bundle.path(*role)).with_context(|| format!("{}: cannot read", entry.path))?;
        let fp32 = pb::ModelProto::decode(bytes.as_slice())
            .with_context(|| format!("{}: not an ONNX model", bundle.path(*role).display()))?;
        let (int8, stats) = quantize_graph(&fp32, graph_inputs, opts, *role == FileRole::Decoder)
            .with_context(|| format!("{}: cannot quantize the {label}", bundle.path(*role).display()))?;
        let encoded = int8.encode_to_vec();
        writer.add(*role, &entry.path, &encoded).with_context(write_err)?;
        log::info!(
            "{label}: {} linear layers int8 in {} blocks, {} kept float, {:.1} MiB → {:.1} MiB",
            stats.sites,
            stats.blocks,
            stats.kept_float,
            mib(bytes.len() as u64),
            mib(encoded.len() as u64)
        );
        graphs.push(GraphReport {
            file: entry.path.clone(),
            fp32_bytes: bytes.len() as u64,
            int8_bytes: encoded.len() as u64,
            stats,
        });
    }

    steps.next("copying the other files and checking the new bundle");
    for role in [FileRole::TokenEmbeddings, FileRole::TokenizerVocab, FileRole::TokenizerMerges] {
        let entry = bundle.manifest.file(role).context("manifest checked at open")?;
        let bytes = std::fs::read(bundle.path(role)).with_context(|| format!("{}: cannot read", entry.path))?;
        writer.add(role, &entry.path, &bytes).with_context(write_err)?;
    }
    let mut manifest = bundle.manifest.clone();
    manifest.precision = Precision::Int8;
    manifest.source = format!("{}; int8 ({}) by host-tools quantize", manifest.source, opts.scheme.name());
    writer.finish(manifest)?;
    steps.finish();
    let int8 = CaptionModel::load(&opts.out)
        .with_context(|| format!("{}: the quantized bundle does not load", opts.out.display()))?;
    Ok(QuantizeReport {
        graphs,
        fp32_bundle_bytes: bundle.manifest.files.iter().map(|f| f.bytes).sum(),
        int8_bundle_bytes: int8.manifest.files.iter().map(|f| f.bytes).sum(),
        calibration_images,
    })
}

/// Calibrates (static schemes) and rewrites one graph.
fn quantize_graph(
    fp32: &pb::ModelProto,
    calibration: &[TVec<TValue>],
    opts: &QuantizeOptions,
    is_decoder: bool,
) -> Result<(pb::ModelProto, RewriteStats)> {
    let mut rewrite = RewriteOptions::default();
    if is_decoder && opts.float_lm_head {
        rewrite.keep_float.push("lm_head".into());
    }
    let ranges = match opts.scheme.method() {
        None => {
            rewrite.scheme = Scheme::Dynamic;
            HashMap::new()
        }
        Some(method) => calibrate_graph(fp32, calibration, &rewrite, method)?,
    };
    quantize_model(fp32, &ranges, &rewrite)
}

/// Activation ranges of every linear site's input and output over the calibration inputs.
pub fn calibrate_graph(
    fp32: &pb::ModelProto,
    calibration: &[TVec<TValue>],
    rewrite: &RewriteOptions,
    method: Method,
) -> Result<HashMap<String, Range>> {
    let names: BTreeSet<String> = linear_sites(fp32, rewrite)?.into_iter().flat_map(|s| [s.input, s.output]).collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let mut calibrator = Calibrator::new(fp32, names.into_iter().collect(), method)?;
    for inputs in calibration {
        calibrator.observe(inputs.clone())?;
    }
    Ok(calibrator.ranges)
}

/// The inputs each graph sees when the fp32 bundle captions `image`: pixels, embedding, and the
/// prefix followed by the greedy caption's tokens in one decoder call.
fn calibration_inputs(model: &CaptionModel, image: &image::RgbImage) -> Result<Vec<TVec<TValue>>> {
    let trace = model.trace(image, &model.default_options())?;
    let d = model.dims();
    let s = model.manifest.preprocess.image_size as usize;
    let pixels = Tensor::from_shape(&[1, 3, s, s], &trace.pixel_values)?;
    let embeds = Tensor::from_shape(&[1, d.embed_dim], &trace.image_embeds)?;

    // The last generated token is never fed back, so it is left out.
    let fed = &trace.caption.tokens[..trace.caption.tokens.len().saturating_sub(1)];
    let mut sequence = trace.prefix.clone();
    for &t in fed {
        sequence.extend_from_slice(model.token_embedding(t)?);
    }
    let total = d.prefix_length + fed.len();
    let positions: Vec<i64> = (0..total as i64).collect();
    let mut bias = vec![0f32; total * total];
    for i in 0..total {
        for j in i + 1..total {
            bias[i * total + j] = f32::NEG_INFINITY;
        }
    }
    let decoder = tvec!(
        Tensor::from_shape(&[1, total, d.hidden_size], &sequence)?.into_tvalue(),
        Tensor::from_shape(&[total], &positions)?.into_tvalue(),
        Tensor::from_shape(&[total, total], &bias)?.into_tvalue(),
        Tensor::zero::<f32>(&[d.num_layers, 2, 1, d.num_heads, 0, d.head_dim()])?.into_tvalue(),
    );
    Ok(vec![tvec!(pixels.into_tvalue()), tvec!(embeds.into_tvalue()), decoder])
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
