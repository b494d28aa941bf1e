#!/usr/bin/env python3
"""Side-by-side ClipCap benchmark: edgecap (tract) against PyTorch and ONNX Runtime.

    pip install torch transformers onnxruntime onnx pillow numpy
    python bench/compare.py --fp32 FP32_BUNDLE --int8 INT8_BUNDLE --fixtures FULL_FIXTURES \
        --host-tools target/release/host-tools [--edgecap target/release/edgecap] \
        [--rounds 5] [--threads N] [--images-limit K] [--update-readme README.md]

(scripts/bench-compare.sh builds, exports and quantizes everything and then runs this.)

One model, five runtimes, the same images and thread count, measured in one run:

* edgecap fp32 and edgecap int8: the two bundles, each run as one `host-tools bench` process per
  round (load, one warm-up caption, then every image once; per-caption samples as JSON);
* PyTorch: transformers' CLIPImageProcessor and CLIPModel.get_image_features, the ClipCap MLP
  mapper as a torch module and GPT2LMHeadModel decoding with its KV cache, the way a user of the
  reference ClipCap code would run the checkpoint;
* ONNX Runtime fp32: the fp32 bundle's own image_encoder/mapper/decoder graphs, with PIL+numpy
  CLIP preprocessing and the same decoder loop edgecap runs;
* ONNX Runtime int8: onnxruntime.quantization.quantize_dynamic (QInt8 weights) of those graphs.

Every caption is exactly --tokens (20) greedy tokens with no early stop, so every runtime does the
same work. The Python runtimes are loaded once (timed) and warmed up with one caption; then each of
--rounds rounds runs every runtime over all images, the order rotating from round to round.
Images are decoded once beforehand (edgecap's bench also decodes before timing); "preprocess" is
resize + crop + normalise.

Reported per runtime and stage (preprocess, image encoder, mapper, first token = the prefix fed and
the first token chosen, per next token = mean of tokens 2..N within a caption, per caption): median
and p90 over all captions; edgecap's per-caption median over each peer's; load time; start-up (a
whole process minus its caption); peak RSS (VmHWM; for Python a separate probe process per runtime
that loads and captions one image: interpreter and framework included); model size on disk.
Before timing, one image checks that PyTorch, ORT fp32 and edgecap fp32 pick the same first token.

`--probe torch|ort|ort-int8` is the internal mode for those probe processes.

Writes the Markdown table to stdout and bench/results.md, every measured number to
bench/results.json, and with --update-readme the lines between `<!-- bench:compare:start -->` and
`<!-- bench:compare:end -->` of that file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
README_START = "<!-- bench:compare:start -->"
README_END = "<!-- bench:compare:end -->"

EDGECAP_FP32, EDGECAP_INT8 = "edgecap fp32", "edgecap int8"
TORCH, ORT_FP32, ORT_INT8 = "PyTorch", "ORT fp32", "ORT int8"
RUNTIME_ORDER = (EDGECAP_FP32, EDGECAP_INT8, TORCH, ORT_FP32, ORT_INT8)
PROBE_KINDS = {"torch": TORCH, "ort": ORT_FP32, "ort-int8": ORT_INT8}

# Stage keys of one caption's timings (milliseconds), as `host-tools bench --samples` names them.
STAGES = (
    ("preprocess_ms", "preprocess"),
    ("image_encoder_ms", "image encoder"),
    ("mapper_ms", "mapper"),
    ("first_token_ms", "first token"),
    ("next_token_ms", "per next token"),
    ("total_ms", "per caption"),
)
GRAPHS = ("image_encoder", "mapper", "decoder")


class BenchError(Exception):
    """A problem to report in one line (missing path, failed subprocess, bad output)."""


def log(msg: str) -> None:
    print(f"compare: {msg}", file=sys.stderr, flush=True)


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise BenchError(f"{what} not found: {path}")
    return path


def now() -> float:
    return time.perf_counter()


def ms(seconds: float) -> float:
    return seconds * 1e3


# --------------------------------------------------------------------------------------------
# Images and bundles
# --------------------------------------------------------------------------------------------

def load_rgb(path: Path) -> Image.Image:
    """Decodes like edgecap and the fixture reference: EXIF orientation applied, alpha dropped,
    16-bit grey scaled with round(v / 257)."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            wide = np.asarray(img).astype(np.int64)
            return Image.fromarray(((wide + 128) // 257).clip(0, 255).astype(np.uint8)).convert("RGB")
        return img.convert("RGB")


@dataclass
class ImageSet:
    """The decoded benchmark images, and a directory holding exactly them (for host-tools)."""

    paths: list[Path]
    rgbs: list[Image.Image]
    dir: Path

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]


def load_images(directory: Path, limit: int | None, link_dir: Path) -> ImageSet:
    """Every decodable file of `directory` in name order (as host-tools lists them), the first
    `limit` of them; symlinked into `link_dir` so that edgecap sees the same set."""
    require(directory, "image directory")
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    paths, rgbs = [], []
    for p in candidates:
        if limit is not None and len(paths) >= limit:
            break
        try:
            rgbs.append(load_rgb(p))
            paths.append(p)
        except Exception as e:  # noqa: BLE001 - an undecodable file is skipped, as host-tools does
            log(f"skipping {p}: {e}")
    if not paths:
        raise BenchError(f"no readable images in {directory}")
    link_dir.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (link_dir / p.name).symlink_to(p.resolve())
    return ImageSet(paths, rgbs, link_dir)


@dataclass
class Bundle:
    """An edgecap bundle directory and its bundle.toml."""

    dir: Path
    manifest: dict

    @classmethod
    def open(cls, directory: Path, what: str) -> "Bundle":
        manifest_path = require(directory / "bundle.toml", f"{what} bundle manifest")
        manifest = tomllib.loads(manifest_path.read_text())
        bundle = cls(directory, manifest)
        for role in (*GRAPHS, "token_embeddings"):
            require(bundle.file(role), f"{what} bundle file ({role})")
        return bundle

    def file(self, role: str) -> Path:
        for f in self.manifest.get("files", []):
            if f.get("role") == role:
                return self.dir / f["path"]
        raise BenchError(f"{self.dir / 'bundle.toml'}: no file with role {role!r}")

    def sha256(self, role: str) -> str:
        return next(f.get("sha256", "") for f in self.manifest["files"] if f.get("role") == role)

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_rss_mib() -> float | None:
    """VmHWM of this process from /proc/self/status, in MiB."""
    return process_memory_mib("VmHWM")


def process_memory_mib(field: str) -> float | None:
    """A memory figure (VmHWM, VmRSS...) of this process from /proc/self/status, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------

def greedy_timed(first, step, n_tokens: int) -> tuple[list[int], float, list[float]]:
    """Greedy decoding of exactly `n_tokens`, timed per token.

    `first()` feeds the prefix and returns the logits of the first token; `step(token)` feeds one
    token and returns the next logits. The argmax is inside each token's time, as in edgecap.
    Returns the tokens, the first token's seconds and the seconds of each later token.
    """
    t = now()
    tokens = [int(first().argmax())]
    first_s, later = now() - t, []
    for _ in range(n_tokens - 1):
        t = now()
        tokens.append(int(step(tokens[-1]).argmax()))
        later.append(now() - t)
    return tokens, first_s, later


def caption_record(pre: float, enc: float, mapper: float, tokens: list[int], first: float,
                   later: list[float]) -> dict:
    """One caption's timings in the shape of a `host-tools bench --samples` sample."""
    decoder = first + sum(later)
    return {
        "preprocess_ms": ms(pre),
        "image_encoder_ms": ms(enc),
        "mapper_ms": ms(mapper),
        "first_token_ms": ms(first),
        "next_token_ms": ms(sum(later) / len(later)) if later else 0.0,
        "decoder_ms": ms(decoder),
        "total_ms": ms(pre + enc + mapper + decoder),
        "tokens": len(tokens),
        "token_ids": tokens,
    }


# --------------------------------------------------------------------------------------------
# Runtimes: load(), then run_round(images) -> [per-caption timings dict]; the Python ones
# caption in this process (caption(rgb)), edgecap in one host-tools process per round
# --------------------------------------------------------------------------------------------

class PythonRuntime:
    """A runtime inside this process: load() once, then caption(rgb) per image."""

    name = ""

    def load(self) -> float:
        """Imports and thread settings (untimed: start-up, not load), then the timed load."""
        self._setup()
        t = now()
        self._load()
        return ms(now() - t)

    def _setup(self) -> None:
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def caption(self, rgb: Image.Image) -> dict:
        raise NotImplementedError

    def run_round(self, images: ImageSet) -> list[dict]:
        return [{"image": name, **self.caption(rgb)} for name, rgb in zip(images.names, images.rgbs)]


class TorchClipCap(PythonRuntime):
    """transformers CLIPModel + ClipCap MLP mapper + GPT2LMHeadModel with a KV cache. (torch is
    imported in _setup only, so that the ORT probes' peak RSS holds no torch.)"""

    name = TORCH

    def __init__(self, fixtures: Path, threads: int, n_tokens: int):
        self.clip_dir = require(fixtures / "models" / "clip-tiny", "CLIP model directory")
        self.checkpoint = require(fixtures / "models" / "clipcap-mlp.pt", "ClipCap MLP checkpoint")
        self.gpt_config = require(fixtures / "models" / "gpt2-tiny" / "config.json", "GPT-2 config")
        self.threads, self.n_tokens = threads, n_tokens
        self.info: dict = {}

    def _setup(self) -> None:
        import torch
        import transformers
        transformers.utils.logging.disable_progress_bar()
        # transformers imports lazily: pull the model code in now, outside the timed load.
        from transformers import CLIPImageProcessor, CLIPModel, GPT2Config, GPT2LMHeadModel  # noqa: F401

        torch.set_num_threads(self.threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError as e:  # only settable before the first parallel work
            log(f"torch.set_num_interop_threads(1): {e}")
        self.torch, self.tf = torch, transformers

    def _load(self) -> None:
        torch, tf = self.torch, self.tf
        self.processor = tf.CLIPImageProcessor()
        self.clip = tf.CLIPModel.from_pretrained(self.clip_dir).eval()
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        config = tf.GPT2Config.from_json_file(str(self.gpt_config))
        prefix_length = state["clip_project.model.2.weight"].shape[0] // config.n_embd
        clip_dim = state["clip_project.model.0.weight"].shape[1]
        self.mapper = clipcap_mlp_mapper(torch.nn, clip_dim, config.n_embd, prefix_length).eval()
        self.mapper.load_state_dict(strip_prefix(state, "clip_project."), strict=True)
        self.gpt = tf.GPT2LMHeadModel(config).eval()
        result = self.gpt.load_state_dict(strip_prefix(state, "gpt."), strict=False)
        check_stale_buffers_only(result.missing_keys, result.unexpected_keys)
        self.prefix_shape = (1, prefix_length, config.n_embd)
        # transformers 5.2x names the KV cache argument `cache`; earlier versions `past_key_values`.
        params = inspect.signature(self.gpt.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.info = {"image_processor": type(self.processor).__name__,
                     "attn_implementation": self.gpt.config._attn_implementation}

    @staticmethod
    def _cache(out):
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _pixels(self, rgb: Image.Image):
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def _encode(self, pixel_values):
        out = self.clip.get_image_features(pixel_values=pixel_values)
        # transformers 5: a ModelOutput whose pooler_output is the projected embedding.
        return out if isinstance(out, self.torch.Tensor) else out.pooler_output

    def image_embeds(self, rgb: Image.Image) -> np.ndarray:
        with self.torch.inference_mode():
            return self._encode(self._pixels(rgb)).numpy()

    def caption(self, rgb: Image.Image) -> dict:
        torch = self.torch
        with torch.inference_mode():
            t0 = now()
            pixel_values = self._pixels(rgb)
            t1 = now()
            embeds = self._encode(pixel_values)
            t2 = now()
            prefix = self.mapper.model(embeds).view(self.prefix_shape)
            t3 = now()
            state = {}

            def first():
                # logits_to_keep=1: only the last position's logits, as generate() asks for.
                out = self.gpt(inputs_embeds=prefix, use_cache=True, logits_to_keep=1)
                state["cache"] = self._cache(out)
                return out.logits[0, -1]

            def step(token: int):
                out = self.gpt(input_ids=torch.tensor([[token]]), use_cache=True,
                               **{self.cache_arg: state["cache"]})
                state["cache"] = self._cache(out)
                return out.logits[0, -1]

            tokens, first_s, later = greedy_timed(first, step, self.n_tokens)
        return caption_record(t1 - t0, t2 - t1, t3 - t2, tokens, first_s, later)


def clipcap_mlp_mapper(nn, clip_dim: int, hidden: int, prefix_length: int):
    """The reference ClipCap MLP mapper: Linear(clip -> P*D/2), Tanh, Linear(-> P*D), as `.model`
    (state keys model.0.*, model.2.*, stored under clip_project. in the checkpoint)."""
    mapper = nn.Module()
    out = hidden * prefix_length
    mapper.model = nn.Sequential(nn.Linear(clip_dim, out // 2), nn.Tanh(), nn.Linear(out // 2, out))
    return mapper


def strip_prefix(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_stale_buffers_only(missing: list[str], unexpected: list[str]) -> None:
    """The checkpoint's GPT-2 is in an old transformers layout: only the causal-mask buffers
    (`attn.bias`, `attn.masked_bias`) may differ from today's GPT2LMHeadModel."""
    stale = lambda k: k.endswith((".attn.bias", ".attn.masked_bias"))  # noqa: E731
    bad = [k for k in missing + unexpected if not stale(k)]
    if bad:
        raise BenchError(f"ClipCap checkpoint does not fit GPT2LMHeadModel: {', '.join(bad[:5])}")


def clip_preprocess(rgb: Image.Image, pp: dict) -> np.ndarray:
    """bundle.toml [preprocess] with PIL + numpy: shortest edge to `shortest_edge` (bicubic, long
    side truncated like transformers), centre crop `image_size`, rescale, normalise -> [1,3,S,S]."""
    if pp.get("resample", "bicubic") != "bicubic" or pp.get("crop", "center") != "center":
        raise BenchError(f"unsupported preprocessing {pp}: only bicubic + center crop")
    size, short_target = int(pp["image_size"]), int(pp["shortest_edge"])
    w, h = rgb.size
    long_side = int(short_target * max(w, h) / min(w, h))
    new_w, new_h = (short_target, long_side) if w <= h else (long_side, short_target)
    resized = np.asarray(rgb.resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size].astype(np.float32)
    mean, std = np.asarray(pp["mean"], np.float32), np.asarray(pp["std"], np.float32)
    x = (crop * np.float32(pp["rescale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class OrtClipCap(PythonRuntime):
    """ONNX Runtime running bundle-layout graphs with edgecap's decoder loop."""

    def __init__(self, name: str, graphs: dict[str, Path], bundle: Bundle, threads: int, n_tokens: int):
        self.name, self.graphs, self.bundle = name, graphs, bundle
        self.threads, self.n_tokens = threads, n_tokens
        for role, path in graphs.items():
            require(path, f"{name} graph ({role})")

    def _setup(self) -> None:
        import onnxruntime

        self.ort = onnxruntime

    def _load(self) -> None:
        ort = self.ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {role: ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                         for role, path in self.graphs.items()}
        self.token_embeddings = np.load(self.bundle.file("token_embeddings"))
        m = self.bundle.model
        self.empty_past = np.zeros((m["num_layers"], 2, 1, m["num_heads"], 0, m["hidden_size"] // m["num_heads"]),
                                   np.float32)

    def _encode(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.sessions["image_encoder"].run(["image_embeds"], {"pixel_values": pixel_values})[0]

    def image_embeds(self, rgb: Image.Image) -> np.ndarray:
        return self._encode(clip_preprocess(rgb, self.bundle.preprocess))

    def caption(self, rgb: Image.Image) -> dict:
        t0 = now()
        pixel_values = clip_preprocess(rgb, self.bundle.preprocess)
        t1 = now()
        embeds = self._encode(pixel_values)
        t2 = now()
        prefix = self.sessions["mapper"].run(["prefix"], {"image_embeds": embeds})[0]
        t3 = now()
        decoder, state = self.sessions["decoder"], {}

        def run(inputs_embeds: np.ndarray, start: int, bias: np.ndarray, past: np.ndarray) -> np.ndarray:
            seq = inputs_embeds.shape[1]
            logits, state["past"] = decoder.run(["logits", "present"], {
                "inputs_embeds": inputs_embeds,
                "position_ids": np.arange(start, start + seq, dtype=np.int64),
                "attention_bias": bias,
                "past": past,
            })
            return logits[0]

        def first():
            seq = prefix.shape[1]
            causal = np.triu(np.full((seq, seq), -np.inf, np.float32), k=1)
            return run(prefix, 0, causal, self.empty_past)

        def step(token: int):
            past = state["past"]
            length = past.shape[4]
            return run(self.token_embeddings[token][None, None], length, np.zeros((1, length + 1), np.float32), past)

        tokens, first_s, later = greedy_timed(first, step, self.n_tokens)
        return caption_record(t1 - t0, t2 - t1, t3 - t2, tokens, first_s, later)


class EdgecapRuntime:
    """An edgecap bundle, run by `host-tools bench` as one process per round: that process
    loads the bundle (timed), captions one warm-up image, then each image once."""

    def __init__(self, name: str, host_tools: Path, bundle: Bundle, threads: int, n_tokens: int):
        self.name, self.host_tools, self.bundle = name, host_tools, bundle
        self.threads, self.n_tokens = threads, n_tokens
        self.loads_ms: list[float] = []
        self.peak_rss: list[float] = []
        self.loaded_rss: list[float] = []

    def load(self) -> None:
        """Checks that host-tools can produce per-caption samples of a fixed length (edgecap's
        own load is timed inside each round's process)."""
        help_text = run_command([str(self.host_tools), "bench", "--help"], "host-tools bench --help").stdout
        missing = [f for f in ("--tokens", "--samples") if f not in help_text]
        if missing:
            raise BenchError(f"{self.host_tools} bench lacks {' and '.join(missing)}: rebuild host-tools")

    def run_round(self, images: ImageSet) -> list[dict]:
        cmd = [str(self.host_tools), "--threads", str(self.threads), "bench", str(self.bundle.dir),
               "--images", str(images.dir), "--runs", "1", "--tokens", str(self.n_tokens), "--json", "--samples"]
        report = parse_json_output(run_command(cmd, f"host-tools bench {self.bundle.dir}").stdout, cmd)
        samples = report.get("samples")
        if not isinstance(samples, list) or len(samples) != len(images.paths):
            raise BenchError(f"host-tools bench {self.bundle.dir}: expected {len(images.paths)} samples, "
                             f"got {len(samples) if isinstance(samples, list) else 'none'}")
        for s in samples:
            if s.get("tokens") != self.n_tokens:
                raise BenchError(f"host-tools bench {self.bundle.dir}: a caption of {s.get('tokens')} tokens, "
                                 f"not {self.n_tokens}")
            s["image"] = Path(str(s.get("image", ""))).name
        self.loads_ms.append(float(report["load_ms"]))
        if report.get("peak_rss_mib") is not None:
            self.peak_rss.append(float(report["peak_rss_mib"]))
        if report.get("loaded_rss_mib") is not None:
            self.loaded_rss.append(float(report["loaded_rss_mib"]))
        return samples


def run_command(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BenchError(f"{what}: cannot run {cmd[0]}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"{what} failed (exit {proc.returncode}): {last}")
    return proc


def parse_json_output(stdout: str, cmd: list[str]) -> dict:
    """The last line of `stdout` that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise BenchError(f"{' '.join(cmd[:4])}...: no JSON object on stdout")


# --------------------------------------------------------------------------------------------
# ORT int8: quantize_dynamic of the fp32 graphs, cached
# --------------------------------------------------------------------------------------------

class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def ort_int8_graphs(fp32: Bundle, cache: Path) -> tuple[dict[str, Path], list[str]]:
    """quantize_dynamic(weight_type=QInt8) of the fp32 bundle's graphs into `cache`, redone when
    the fp32 graphs or onnxruntime change. Returns the graph paths and the warnings it logged."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graphs = {role: cache / f"{role}.int8.onnx" for role in GRAPHS}
    stamp = {"onnxruntime": onnxruntime.__version__, "weight_type": "QInt8",
             "sources": {role: fp32.sha256(role) or file_sha256(fp32.file(role)) for role in GRAPHS}}
    stamp_path = cache / "stamp.json"
    if stamp_path.is_file() and all(p.is_file() for p in graphs.values()):
        previous = json.loads(stamp_path.read_text())
        if {k: v for k, v in previous.items() if k != "warnings"} == stamp:
            log(f"ORT int8: reusing {cache}")
            return graphs, previous.get("warnings", [])
    cache.mkdir(parents=True, exist_ok=True)
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for role, out in graphs.items():
                log(f"ORT int8: quantize_dynamic {fp32.file(role)} -> {out}")
                quantize_dynamic(fp32.file(role), out, weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().removeHandler(collect)
    messages = sorted(set(collect.messages + [str(w.message) for w in caught]))
    for m in messages:
        log(f"ORT int8 quantization warning: {m}")
    stamp_path.write_text(json.dumps({**stamp, "warnings": messages}, indent=1) + "\n")
    return graphs, messages


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Probes, start-up, sanity check
# --------------------------------------------------------------------------------------------

def python_runtime(kind: str, args, fp32: Bundle | None, int8_graphs: dict[str, Path]) -> PythonRuntime:
    if kind == TORCH:
        return TorchClipCap(args.fixtures, args.threads, args.tokens)
    if kind == ORT_FP32:
        return OrtClipCap(ORT_FP32, {r: fp32.file(r) for r in GRAPHS}, fp32, args.threads, args.tokens)
    return OrtClipCap(ORT_INT8, int8_graphs, fp32, args.threads, args.tokens)


def probe_main(args) -> int:
    """`--probe KIND`: load, caption one image, print load/caption time and VmHWM as JSON."""
    kind = PROBE_KINDS[args.probe]
    fp32 = Bundle.open(args.fp32, "fp32") if kind != TORCH else None
    int8_graphs = {role: args.ort_cache / f"{role}.int8.onnx" for role in GRAPHS}
    rt = python_runtime(kind, args, fp32, int8_graphs)
    load_ms = rt.load()
    loaded_rss = process_memory_mib("VmRSS")
    t = now()
    rt.caption(load_rgb(args.probe_image))
    caption_ms = ms(now() - t)
    print(json.dumps({"load_ms": load_ms, "caption_ms": caption_ms, "peak_rss_mib": peak_rss_mib(),
                      "loaded_rss_mib": loaded_rss}))
    return 0


def run_probe(kind: str, args, image: Path) -> dict:
    """Runs `--probe` in a fresh interpreter; its wall time minus its caption is the start-up."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind, "--fp32", str(args.fp32),
           "--fixtures", str(args.fixtures), "--ort-cache", str(args.ort_cache), "--threads", str(args.threads),
           "--tokens", str(args.tokens), "--probe-image", str(image)]
    t = now()
    proc = run_command(cmd, f"{kind} probe")
    wall_ms = ms(now() - t)
    result = parse_json_output(proc.stdout, cmd)
    result["wall_ms"] = wall_ms
    result["startup_ms"] = wall_ms - result["caption_ms"]
    return result


def edgecap_startup(edgecap: Path | None, bundle: Bundle, image: Path, args) -> dict | None:
    """`edgecap caption` as a whole process, --startup-runs times: wall time minus the caption's
    own latency_ms = process start + bundle load + exit."""
    if edgecap is None or not edgecap.is_file():
        return None
    cmd = [str(edgecap), "caption", "--bundle", str(bundle.dir), "--max-tokens", str(args.tokens),
           "--threads", str(args.threads), "--json", str(image)]
    runs = []
    for _ in range(args.startup_runs):
        t = now()
        proc = run_command(cmd, f"edgecap caption --bundle {bundle.dir}")
        wall_ms = ms(now() - t)
        line = parse_json_output(proc.stdout, cmd)
        runs.append({"wall_ms": wall_ms, "latency_ms": line["latency_ms"], "startup_ms": wall_ms - line["latency_ms"]})
    return {"runs": runs, "median_ms": median([r["startup_ms"] for r in runs])}


def edgecap_trace(host_tools: Path, bundle: Bundle, image: Path, threads: int) -> dict:
    """Tokens (the bundle's own stop rule), pixel values and image embedding of one edgecap
    caption, from `host-tools trace`."""
    with tempfile.TemporaryDirectory(prefix="edgecap-trace-") as out:
        cmd = [str(host_tools), "--threads", str(threads), "trace", "--bundle", str(bundle.dir),
               "--image", str(image), "--out", out]
        run_command(cmd, f"host-tools trace {bundle.dir}")
        caption = json.loads((Path(out) / "caption.json").read_text())
        return {"tokens": caption["tokens"],
                "pixel_values": np.load(Path(out) / "pixel_values.npy"),
                "image_embeds": np.load(Path(out) / "image_embeds.npy")}


def max_abs_diff(a, b) -> float:
    return float(np.abs(np.asarray(a).reshape(-1) - np.asarray(b).reshape(-1)).max())


def sanity_check(peers: dict[str, PythonRuntime], images: ImageSet, args, bundles: dict[str, Bundle]) -> dict:
    """On the first image: do PyTorch, ORT fp32 and edgecap fp32 pick the same first token (the
    int8 ones are reported too), and how far apart are pixel values and image embeddings?
    Warns, never fails."""
    rgb, path = images.rgbs[0], images.paths[0]
    edge = {name: edgecap_trace(args.host_tools, bundle, path, args.threads) for name, bundle in bundles.items()}
    tokens = {name: rt.caption(rgb)["token_ids"] for name, rt in peers.items()}
    tokens.update({name: e["tokens"] for name, e in edge.items()})
    firsts = {name: (t[0] if t else None) for name, t in tokens.items()}
    torch_pixels = peers[TORCH].processor(images=rgb, return_tensors="np")["pixel_values"]
    torch_embeds = peers[TORCH].image_embeds(rgb)
    fp32 = bundles[EDGECAP_FP32]
    result = {
        "image": path.name,
        "first_token": firsts,
        "first_token_agree": len({firsts[TORCH], firsts[ORT_FP32], firsts[EDGECAP_FP32]}) == 1,
        "tokens": tokens,
        "pixel_values_max_abs_diff_torch_vs_numpy": max_abs_diff(torch_pixels, clip_preprocess(rgb, fp32.preprocess)),
        "pixel_values_max_abs_diff_torch_vs_edgecap": max_abs_diff(torch_pixels, edge[EDGECAP_FP32]["pixel_values"]),
        "image_embeds_max_abs_diff_torch_vs_ort": max_abs_diff(torch_embeds, peers[ORT_FP32].image_embeds(rgb)),
        "image_embeds_max_abs_diff_torch_vs_edgecap": max_abs_diff(torch_embeds, edge[EDGECAP_FP32]["image_embeds"]),
        "image_embeds_max_abs": float(np.abs(torch_embeds).max()),
    }
    log(f"sanity ({path.name}): first tokens {firsts}; max abs differences from PyTorch: pixel values "
        f"numpy {result['pixel_values_max_abs_diff_torch_vs_numpy']:.1e}, edgecap "
        f"{result['pixel_values_max_abs_diff_torch_vs_edgecap']:.1e}; image embeds ORT fp32 "
        f"{result['image_embeds_max_abs_diff_torch_vs_ort']:.1e}, edgecap fp32 "
        f"{result['image_embeds_max_abs_diff_torch_vs_edgecap']:.1e} "
        f"(largest |embed| {result['image_embeds_max_abs']:.2f})")
    if not result["first_token_agree"]:
        log(f"WARNING: first tokens differ between PyTorch, ORT fp32 and edgecap fp32 on {path.name}: "
            f"{firsts[TORCH]}, {firsts[ORT_FP32]}, {firsts[EDGECAP_FP32]}")
    return result


# --------------------------------------------------------------------------------------------
# Statistics and report
# --------------------------------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, as host-tools computes it."""
    if not values:
        return float("nan")
    v = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(v)))
    return v[min(rank, len(v)) - 1]


def median(values: list[float]) -> float:
    return percentile(values, 50)


def stage_stats(samples: list[dict]) -> dict:
    return {key: {"median_ms": median([s[key] for s in samples]), "p90_ms": percentile([s[key] for s in samples], 90)}
            for key, _ in STAGES}


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:.0f}"


def fmt_mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b:.0f}" if b >= 100 else f"{b:.1f}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_model(fixtures: Path, fp32: Bundle) -> str:
    """The model's shape in words, from the CLIP config and the bundle manifest."""
    vision = json.loads((fixtures / "models" / "clip-tiny" / "config.json").read_text()).get("vision_config", {})
    width, layers, patch = (vision.get(k) for k in ("hidden_size", "num_hidden_layers", "patch_size"))
    m = fp32.model
    clip = "CLIP ViT-B/32" if (width, layers, patch) == (768, 12, 32) else "CLIP ViT"
    gpt = " (distilgpt2 shape)" if (m["num_layers"], m["hidden_size"], m["num_heads"]) == (6, 768, 12) else ""
    return (f"{clip} image tower ({layers} layers, width {width}, patch {patch}) → ClipCap MLP mapper → "
            f"{m['prefix_length']}×{m['hidden_size']} prefix → GPT-2{gpt}: {m['num_layers']} layers, width "
            f"{m['hidden_size']}, {m['num_heads']} heads, vocabulary {m['vocab_size']}")


def plural(n: int, word: str) -> str:
    suffix = "" if n == 1 else ("es" if word.endswith("s") else "s")
    return f"{n} {word}{suffix}"


def render_header(meta: dict) -> str:
    v = meta["versions"]
    return (f"Measured {meta['date']} on {meta['cpu']} ({plural(meta['cores'], 'core')}), "
            f"{plural(meta['threads'], 'thread')}, {plural(meta['rounds'], 'round')} × "
            f"{plural(meta['images'], 'image')} = {meta['captions_per_runtime']} captions per runtime, "
            f"{meta['tokens']} greedy tokens each (no early stop); torch {v['torch']}, transformers "
            f"{v['transformers']}, onnxruntime {v['onnxruntime']}, {v['host_tools']}. "
            f"Model (random weights): {meta['model']}.")


def render_latency_table(rts: dict) -> list[str]:
    lines = ["| runtime | " + " | ".join(label for _, label in STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for name in RUNTIME_ORDER:
        st = rts[name]["stats"]
        cells = [f"{fmt_ms(st[k]['median_ms'])} / {fmt_ms(st[k]['p90_ms'])}" for k, _ in STAGES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_resource_table(rts: dict) -> list[str]:
    lines = ["| runtime | caption median (ms) | edgecap fp32 ÷ this | edgecap int8 ÷ this | load (ms) "
             "| start-up (ms) | RSS after load (MiB) | peak RSS (MiB) | size on disk (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in RUNTIME_ORDER:
        r = rts[name]
        lines.append(
            f"| {name} | {fmt_ms(r['stats']['total_ms']['median_ms'])} | {r['ratio_edgecap_fp32']:.2f} "
            f"| {r['ratio_edgecap_int8']:.2f} | {fmt_ms(r['load_ms'])} | {fmt_ms(r['startup_ms'])} "
            f"| {fmt_mib(r['loaded_rss_mib'])} | {fmt_mib(r['peak_rss_mib'])} | {fmt_mib(r['size_bytes'] / 2**20)} |")
    return lines


def render_notes(report: dict) -> list[str]:
    meta, sanity, torch_info = report["meta"], report["sanity"], report["torch_info"]
    first = sanity["first_token"]
    edgecap_startup = (f"`edgecap caption` (median of {meta['startup_runs']}: process start + bundle load + exit)"
                       if report["runtimes"][EDGECAP_FP32]["startup_ms"] is not None
                       else "edgecap n/a (no edgecap binary)")
    return [
        "* Stages: preprocess = resize + crop + normalise of an already decoded image; first token = the "
        f"{meta['prefix_length']} prefix embeddings fed and the first token chosen; per next token = mean over "
        f"tokens 2..{meta['tokens']} of each caption; per caption = all stages, {meta['tokens']} tokens.",
        "* `edgecap … ÷ this` = edgecap's per-caption median over this runtime's (below 1: edgecap is faster).",
        f"* Load: edgecap = median bundle load of its {plural(meta['rounds'], '`host-tools bench` process')}; "
        "Python = one load in the benchmark process (PyTorch: CLIPModel.from_pretrained, GPT2LMHeadModel built "
        "then load_state_dict; ORT: three InferenceSessions + token embeddings). Start-up = a whole process's "
        f"wall time minus its one caption: {edgecap_startup}; Python = one probe process (interpreter start, "
        "imports, load).",
        "* RSS after load = VmRSS once the model is loaded (edgecap: the largest of its rounds), what stays "
        "resident while captioning; peak RSS = VmHWM, loading included. The Python figures come from a probe "
        "process per runtime that loads and captions one image, so they include the interpreter and the framework.",
        "* Size: edgecap = the bundle directory; PyTorch = CLIP directory (text tower included, unused) + "
        "clipcap-mlp.pt + GPT-2 config; ORT = the three graphs + token_embeddings.npy.",
        f"* PyTorch: {torch_info.get('image_processor')}, GPT-2 attention `{torch_info.get('attn_implementation')}`, "
        "KV cache, logits of the last position only. ORT: intra-op threads as above, inter-op 1, graph "
        "optimisation ALL; int8 = `quantize_dynamic(weight_type=QInt8)` of the fp32 bundle's graphs. edgecap "
        f"int8: {meta['edgecap_int8_source']}.",
        f"* Check on {sanity['image']}: first token PyTorch {first[TORCH]}, ORT fp32 {first[ORT_FP32]}, edgecap fp32 "
        f"{first[EDGECAP_FP32]} ({'agree' if sanity['first_token_agree'] else 'DIFFER'}); ORT int8 {first[ORT_INT8]}, "
        f"edgecap int8 {first[EDGECAP_INT8]}. Max abs difference from PyTorch: pixel values PIL+numpy "
        f"{sanity['pixel_values_max_abs_diff_torch_vs_numpy']:.1e}, edgecap "
        f"{sanity['pixel_values_max_abs_diff_torch_vs_edgecap']:.1e}; image embedding ORT fp32 "
        f"{sanity['image_embeds_max_abs_diff_torch_vs_ort']:.1e}, edgecap fp32 "
        f"{sanity['image_embeds_max_abs_diff_torch_vs_edgecap']:.1e} (largest |value| "
        f"{sanity['image_embeds_max_abs']:.2f}).",
    ]


def render_markdown(report: dict) -> str:
    lines = [render_header(report["meta"]), "", "Latency in ms, median / p90 over all captions:", "",
             *render_latency_table(report["runtimes"]), "", *render_resource_table(report["runtimes"]), "",
             *render_notes(report)]
    return "\n".join(lines) + "\n"


def readme_markers(path: Path) -> tuple[list[str], int, int]:
    """The lines of `path` and the indices of its start and end marker lines."""
    require(path, "README to update")
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == README_START]
    ends = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise BenchError(f"{path}: needs one line `{README_START}` and, after it, one line `{README_END}`")
    return lines, starts[0], ends[0]


def update_readme(path: Path, markdown: str) -> None:
    """Replaces the lines strictly between the start and end markers with `markdown`."""
    lines, start, end = readme_markers(path)
    path.write_text("".join(lines[:start + 1]) + markdown + "".join(lines[end:]))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def versions(host_tools: Path) -> dict:
    import onnxruntime
    import torch
    import transformers

    host = run_command([str(host_tools), "--version"], "host-tools --version").stdout.strip()
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "host_tools": host}


def run_rounds(runtimes: dict, images: ImageSet, rounds: int) -> tuple[dict[str, list[dict]], list[list[str]]]:
    """Every runtime over every image once per round, the runtime order rotated each round."""
    samples: dict[str, list[dict]] = {name: [] for name in runtimes}
    orders = []
    names = list(runtimes)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        orders.append(order)
        for name in order:
            t = now()
            got = runtimes[name].run_round(images)
            for s in got:
                s["round"] = r
            samples[name] += got
            log(f"round {r + 1}/{rounds}: {name}: {len(got)} captions, median "
                f"{fmt_ms(median([s['total_ms'] for s in got]))} ms ({now() - t:.1f} s)")
    return samples, orders


def summarise(args, fp32: Bundle, int8: Bundle, int8_graphs: dict[str, Path], samples: dict, loads: dict,
              probes: dict, startups: dict, edgecaps: dict) -> dict[str, dict]:
    sizes = {
        EDGECAP_FP32: tree_bytes(fp32.dir),
        EDGECAP_INT8: tree_bytes(int8.dir),
        TORCH: sum(tree_bytes(args.fixtures / "models" / p)
                   for p in ("clip-tiny", "clipcap-mlp.pt", "gpt2-tiny/config.json")),
        ORT_FP32: sum(tree_bytes(fp32.file(r)) for r in (*GRAPHS, "token_embeddings")),
        ORT_INT8: sum(tree_bytes(p) for p in int8_graphs.values()) + tree_bytes(fp32.file("token_embeddings")),
    }
    out = {}
    for name in RUNTIME_ORDER:
        stats = stage_stats(samples[name])
        if name in edgecaps:
            e = edgecaps[name]
            load_ms = median(e.loads_ms)
            rss = max(e.peak_rss) if e.peak_rss else None
            loaded_rss = max(e.loaded_rss) if e.loaded_rss else None
            startup = startups.get(name)
            extra = {"load_ms_runs": e.loads_ms, "peak_rss_mib_runs": e.peak_rss, "startup": startup}
            startup_ms = startup["median_ms"] if startup else None
        else:
            probe = probes[name]
            load_ms, rss, startup_ms = loads[name], probe["peak_rss_mib"], probe["startup_ms"]
            loaded_rss = probe.get("loaded_rss_mib")
            extra = {"probe": probe}
        out[name] = {"stats": stats, "load_ms": load_ms, "peak_rss_mib": rss, "loaded_rss_mib": loaded_rss,
                     "startup_ms": startup_ms,
                     "size_bytes": sizes[name], "samples": samples[name], **extra}
    for name in RUNTIME_ORDER:
        total = out[name]["stats"]["total_ms"]["median_ms"]
        out[name]["ratio_edgecap_fp32"] = out[EDGECAP_FP32]["stats"]["total_ms"]["median_ms"] / total
        out[name]["ratio_edgecap_int8"] = out[EDGECAP_INT8]["stats"]["total_ms"]["median_ms"] / total
    return out


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, help="edgecap fp32 bundle directory")
    p.add_argument("--int8", type=Path, help="edgecap int8 bundle directory")
    p.add_argument("--fixtures", type=Path, required=True,
                   help="full fixtures (models/clip-tiny, models/clipcap-mlp.pt, models/gpt2-tiny, images/)")
    p.add_argument("--images", type=Path, help="image directory (default: FIXTURES/images)")
    p.add_argument("--images-limit", type=int, help="use only the first K images (by name)")
    p.add_argument("--host-tools", type=Path, help="host-tools binary")
    p.add_argument("--edgecap", type=Path, help="edgecap binary, for the start-up time (skipped if missing)")
    p.add_argument("--rounds", type=int, default=5)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p.add_argument("--threads", type=int, default=cores, help=f"threads for every runtime (default: {cores})")
    p.add_argument("--tokens", type=int, default=20, help="generated tokens per caption (no early stop)")
    p.add_argument("--startup-runs", type=int, default=5, help="edgecap caption processes timed for start-up")
    p.add_argument("--ort-cache", type=Path, help="where the ORT int8 graphs go (default: FP32/../ort-int8)")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results.md and results.json go")
    p.add_argument("--update-readme", type=Path, metavar="FILE",
                   help=f"replace the lines between {README_START} and {README_END} in FILE")
    p.add_argument("--probe", choices=sorted(PROBE_KINDS), help=argparse.SUPPRESS)
    p.add_argument("--probe-image", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ort_cache = args.ort_cache or args.fp32.resolve().parent / "ort-int8"
    if args.threads < 1 or args.rounds < 1 or args.tokens < 2:
        p.error("--threads and --rounds must be at least 1, --tokens at least 2")
    if not args.probe:
        for opt in ("int8", "host_tools"):
            if getattr(args, opt) is None:
                p.error(f"--{opt.replace('_', '-')} is required")
    return args


def run_probes(args, image: Path) -> dict[str, dict]:
    """One fresh process per Python runtime (honest peak RSS); run before the in-process loads,
    they also warm the page cache for those, as edgecap's later rounds find it warm too."""
    probes = {}
    for kind, name in PROBE_KINDS.items():
        log(f"probe: {name}")
        probes[name] = run_probe(kind, args, image)
    return probes


def load_peers(peers: dict[str, PythonRuntime], images: ImageSet) -> dict[str, float]:
    """Loads each Python runtime (timed) and warms it up with one caption."""
    loads = {}
    for name, rt in peers.items():
        loads[name] = rt.load()
        rt.caption(images.rgbs[0])
        log(f"loaded {name} in {fmt_ms(loads[name])} ms")
    return loads


def edgecap_startups(args, bundles: dict[str, Bundle], image: Path) -> dict[str, dict | None]:
    if args.edgecap is None or not args.edgecap.is_file():
        log(f"edgecap binary not found ({args.edgecap}): no start-up time for edgecap")
        return {name: None for name in bundles}
    return {name: edgecap_startup(args.edgecap, bundle, image, args) for name, bundle in bundles.items()}


def bench_main(args) -> int:
    fp32, int8 = Bundle.open(args.fp32, "fp32"), Bundle.open(args.int8, "int8")
    require(args.host_tools, "host-tools binary")
    if args.update_readme:
        readme_markers(args.update_readme)  # fail now, not after the benchmark
    vers = versions(args.host_tools)
    edgecaps = {name: EdgecapRuntime(name, args.host_tools, bundle, args.threads, args.tokens)
                for name, bundle in ((EDGECAP_FP32, fp32), (EDGECAP_INT8, int8))}
    for e in edgecaps.values():
        e.load()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        images = load_images(args.images or args.fixtures / "images", args.images_limit, Path(tmp) / "images")
        log(f"{len(images.paths)} images, {args.threads} threads, {args.rounds} rounds, {args.tokens} tokens")
        int8_graphs, quant_warnings = ort_int8_graphs(fp32, args.ort_cache)
        peers = {name: python_runtime(name, args, fp32, int8_graphs) for name in (TORCH, ORT_FP32, ORT_INT8)}
        probes = run_probes(args, images.paths[0])
        loads = load_peers(peers, images)
        sanity = sanity_check(peers, images, args, {EDGECAP_FP32: fp32, EDGECAP_INT8: int8})
        startups = edgecap_startups(args, {EDGECAP_FP32: fp32, EDGECAP_INT8: int8}, images.paths[0])
        runtimes = {name: (edgecaps.get(name) or peers[name]) for name in RUNTIME_ORDER}
        samples, orders = run_rounds(runtimes, images, args.rounds)

    report = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "rounds": args.rounds,
            "images": len(images.paths), "image_names": images.names, "tokens": args.tokens,
            "captions_per_runtime": args.rounds * len(images.paths), "startup_runs": args.startup_runs,
            "prefix_length": fp32.model["prefix_length"], "versions": vers, "round_orders": orders,
            "edgecap_int8_source": int8.manifest.get("source", "?").split("; ", 1)[-1],
            "model": describe_model(args.fixtures, fp32),
            "bundles": {"fp32": str(fp32.dir), "int8": str(int8.dir)}, "ort_int8_dir": str(args.ort_cache),
            "command": sys.argv,
        },
        "torch_info": peers[TORCH].info,
        "ort_int8_quantization_warnings": quant_warnings,
        "sanity": sanity,
        "runtimes": summarise(args, fp32, int8, int8_graphs, samples, loads, probes, startups, edgecaps),
    }
    write_outputs(args, report)
    return 0


def write_outputs(args, report: dict) -> None:
    markdown = render_markdown(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.md").write_text(markdown)
    (args.out_dir / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(markdown, end="")
    log(f"wrote {args.out_dir / 'results.md'} and {args.out_dir / 'results.json'}")
    if args.update_readme:
        update_readme(args.update_readme, markdown)
        log(f"updated {args.update_readme}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return probe_main(args) if args.probe else bench_main(args)
    except BenchError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
