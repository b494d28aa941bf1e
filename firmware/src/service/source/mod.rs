//! Frame sources. Each runs on its own thread and hands frames to the captioning loop through
//! the [`Slot`]; it closes the slot when it has nothing more to give (`--once`, end of stdin).

#[cfg(feature = "camera")]
mod camera;
mod dir;
mod pattern;
// Used by the camera backend only; built (and tested) without it too.
#[cfg_attr(not(feature = "camera"), allow(dead_code))]
mod pixels;
mod rtsp;
pub mod stream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::config::{redact_password, Config};
use super::log_limit::LogLimit;
use super::slot::{Frame, FrameData, Slot};
use super::stats::Stats;

/// A parsed `--source`.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Camera(u32),
    Dir(PathBuf),
    File(PathBuf),
    Stdin,
    TestPattern,
    /// `rtsp://` or `rtsps://`, credentials included.
    Rtsp(String),
}

impl SourceSpec {
    pub fn parse(text: &str) -> Result<SourceSpec> {
        let path = |p: &str| {
            if p.is_empty() {
                bail!("source {text:?}: missing path");
            }
            Ok(PathBuf::from(p))
        };
        Ok(match text {
            "-" => SourceSpec::Stdin,
            "test-pattern" => SourceSpec::TestPattern,
            "camera" => SourceSpec::Camera(0),
            _ if text.starts_with("rtsp://") || text.starts_with("rtsps://") => {
                if text.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with('/')) {
                    bail!("source {:?}: missing host", redact_password(text));
                }
                SourceSpec::Rtsp(text.to_string())
            }
            _ => match text.split_once(':') {
                Some(("dir", p)) => SourceSpec::Dir(path(p)?),
                Some(("file", p)) => SourceSpec::File(path(p)?),
                Some(("camera", i)) => SourceSpec::Camera(
                    i.parse().with_context(|| format!("source {text:?}: camera index must be a number"))?,
                ),
                _ => bail!(
                    "unknown source {:?} (expected camera[:INDEX], dir:PATH, file:PATH, rtsp://HOST/PATH, - or \
                     test-pattern)",
                    redact_password(text)
                ),
            },
        })
    }

    /// Whether every frame must reach the captioning loop (producers wait instead of overwriting).
    pub fn lossless(&self, config: &Config) -> bool {
        config.once || (*self == SourceSpec::TestPattern && config.fps == 0)
    }

    /// What the source needs outside edgecap, checked by `run` and `check-config` alike.
    pub fn preflight(&self) -> Result<()> {
        match self {
            SourceSpec::Rtsp(_) => rtsp::check_ffmpeg(),
            _ => Ok(()),
        }
    }
}

/// What a source thread needs.
pub struct SourceContext {
    pub slot: Arc<Slot>,
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
    pub once: bool,
}

impl SourceContext {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Hands a frame over; false when the service is stopping.
    fn put(&self, name: String, data: FrameData) -> bool {
        !self.stopped() && self.slot.put(Frame { name, time: SystemTime::now(), data }, &self.stats)
    }

    /// Counts bytes a stream held that were no image (as a corrupt frame), and says so at most
    /// as often as `limit` lets: a broken stream can do this for every frame.
    fn skip(&self, limit: &mut LogLimit, what: impl std::fmt::Display, bytes: usize, reason: &str) {
        self.stats.frames.inc();
        self.stats.corrupt.inc();
        if let Some(note) = limit.check() {
            log::warn!("{what}: skipped {bytes} bytes: {reason}{note}");
        }
    }

    /// Sleeps up to `d`, waking early when the service stops.
    fn sleep(&self, d: Duration) {
        let step = Duration::from_millis(50);
        let mut left = d;
        while !left.is_zero() && !self.stopped() {
            let s = left.min(step);
            std::thread::sleep(s);
            left -= s;
        }
    }
}

/// Checks that the source can start (folder exists, camera opens) and starts its thread.
pub fn spawn(spec: &SourceSpec, config: &Config, ctx: SourceContext) -> Result<JoinHandle<()>> {
    let name = format!("source {}", redact_password(&config.source));
    let builder = std::thread::Builder::new().name("source".into());
    let handle = match spec.clone() {
        SourceSpec::Dir(path) => {
            let mut watcher = dir::Watcher::new(&path)?;
            builder.spawn(move || finish(ctx, |c| watcher.run(c)))
        }
        SourceSpec::File(path) => {
            dir::check_file_source(&path).with_context(|| format!("{name}: cannot use {}", path.display()))?;
            builder.spawn(move || finish(ctx, |c| dir::watch_file(&path, c)))
        }
        SourceSpec::Stdin => builder.spawn(move || finish(ctx, read_stdin)),
        SourceSpec::TestPattern => {
            let (w, h) = (config.resolution.width, config.resolution.height);
            let fps = config.fps;
            builder.spawn(move || finish(ctx, |c| pattern::run(w, h, fps, c)))
        }
        SourceSpec::Camera(index) => return camera(index, config, ctx),
        SourceSpec::Rtsp(url) => {
            let spec = rtsp::RtspSpec {
                url,
                interval: config.interval,
                fps: config.fps,
                keyframes_only: config.rtsp_keyframes,
            };
            return rtsp::spawn(spec, ctx);
        }
    };
    handle.with_context(|| format!("{name}: cannot start thread"))
}

/// Runs a source body, then closes the slot so the captioning loop knows no more frames come.
fn finish(ctx: SourceContext, body: impl FnOnce(&SourceContext)) {
    body(&ctx);
    ctx.slot.close();
}

#[cfg(feature = "camera")]
fn camera(index: u32, config: &Config, ctx: SourceContext) -> Result<JoinHandle<()>> {
    let (w, h) = (config.resolution.width, config.resolution.height);
    let mut cam = camera::Capture::open(index, w, h, config.fps)?;
    std::thread::Builder::new()
        .name("camera".into())
        .spawn(move || finish(ctx, |c| cam.run(c)))
        .context("cannot start the camera thread")
}

#[cfg(not(feature = "camera"))]
fn camera(index: u32, _config: &Config, _ctx: SourceContext) -> Result<JoinHandle<()>> {
    bail!(
        "source camera:{index}: this edgecap was built without camera support (rebuild with \
         `cargo build --release -p edgecap --features camera`), or feed frames with dir:, file: or -"
    )
}

/// `-`: concatenated JPEG / PNG files on stdin (see [`stream`]).
fn read_stdin(ctx: &SourceContext) {
    let stdin = std::io::stdin();
    let mut reader = stream::FrameReader::new(stdin.lock());
    let mut n = 0u64;
    let mut garbage = LogLimit::default();
    loop {
        if ctx.stopped() {
            return;
        }
        match reader.next_chunk() {
            Ok(None) => {
                log::info!("stdin: end of stream after {n} frames");
                return;
            }
            Ok(Some(stream::Chunk::Image(bytes))) => {
                n += 1;
                if !ctx.put(format!("stdin#{n}"), FrameData::Encoded(bytes)) {
                    return;
                }
            }
            Ok(Some(stream::Chunk::Garbage { bytes, reason })) => {
                n += 1;
                ctx.skip(&mut garbage, format_args!("stdin#{n}"), bytes, &reason);
            }
            Err(e) => {
                log::error!("stdin: read error: {e}");
                return;
            }
        }
    }
}
