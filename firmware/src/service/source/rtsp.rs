//! `rtsp://[user:pass@]host[:port]/path`: an IP camera's stream (or Frigate's / go2rtc's
//! restream), read through an `ffmpeg` child process that hands over JPEG frames on a pipe.
//!
//! Why ffmpeg and not a Rust RTSP client: it is what Frigate runs, so whatever a user's camera
//! sends (H.264, H.265, MJPEG, odd SDP, RTSP over TCP through NAT) is already proven against it;
//! it decodes in hardware where the board has a decoder; and the decoding runs in another process,
//! so a malformed stream cannot take the service down. A pure-Rust path (retina + openh264) would
//! add a software H.264 decoder to every build for this one source and cover fewer cameras.
//!
//! What ffmpeg does per frame: decodes every frame (H.264's predicted frames need the ones before
//! them), keeps one per `--interval` (the `select` filter), scales it to at most 640 px on its long
//! side (CLIP sees 224 px; the picture sent to Home Assistant is 640) and encodes only that one as
//! JPEG. `--rtsp-keyframes` decodes key frames only: a fraction of the CPU, frames at the
//! camera's key-frame interval.
//!
//! The stream dropping (camera rebooting, Wi-Fi) ends or stalls ffmpeg: it is killed if no frame
//! came for [`STALL`] and started again after a backoff of 1 s doubling to 30 s, for as long as
//! the service runs. At start-up a refusal that every retry would meet again (401: bad
//! credentials; 404: no such path) stops edgecap with exit 2 instead.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::stream::{Chunk, FrameReader};
use super::SourceContext;
use crate::service::config::redact_password;
use crate::service::log_limit::LogLimit;
use crate::service::slot::FrameData;

/// No frame for this long (beyond the frame period) and ffmpeg is restarted.
const STALL: Duration = Duration::from_secs(10);
/// ffmpeg's own socket timeout, so a silent camera ends it even before [`STALL`].
const SOCKET_TIMEOUT_US: u64 = 5_000_000;
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long start-up waits for the first frame (or a refusal) before going on without it.
const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// The long side frames are scaled down to.
const MAX_SIDE: u32 = 640;
/// ffmpeg's error lines kept to explain a failure, each cut to this many characters.
const MAX_ERROR_CHARS: usize = 300;

/// The ffmpeg to run: `EDGECAP_FFMPEG`, else `ffmpeg` on the PATH.
fn ffmpeg() -> String {
    std::env::var("EDGECAP_FFMPEG").unwrap_or_else(|_| "ffmpeg".into())
}

/// What an RTSP source needs, resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RtspSpec {
    pub url: String,
    /// One frame per this many seconds (0: every frame, or `fps` a second if set).
    pub interval: f64,
    pub fps: u32,
    pub keyframes_only: bool,
}

impl RtspSpec {
    /// The URL as logs may show it.
    pub fn shown(&self) -> String {
        redact_password(&self.url)
    }

    /// Seconds between the frames asked of ffmpeg: `interval`, else `1 / fps`, else none (all).
    fn spacing(&self) -> Option<f64> {
        if self.interval > 0.0 {
            Some(self.interval)
        } else {
            (self.fps > 0).then(|| 1.0 / self.fps as f64)
        }
    }

    /// ffmpeg's arguments: RTSP over TCP (UDP through Wi-Fi or NAT loses packets: smeared
    /// frames), corrupt frames dropped, 1 s of probing (the default 5 s delays the first
    /// frame by 3 s), the first frame and then one per [`Self::spacing`] (the `select` filter;
    /// `fps` would hold the first back half a period), scaled, as JPEGs on stdout.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rtsp_transport",
            "tcp",
            "-fflags",
            "+discardcorrupt",
            "-analyzeduration",
            "1000000",
            "-probesize",
            "1000000",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["-timeout".into(), SOCKET_TIMEOUT_US.to_string()]);
        if self.keyframes_only {
            args.extend(["-skip_frame".into(), "nokey".into()]);
        }
        args.extend(["-i".into(), self.url.clone(), "-an".into(), "-sn".into(), "-dn".into()]);
        let mut filters = Vec::new();
        if let Some(spacing) = self.spacing() {
            filters.push(format!("select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{spacing:.6})'"));
        }
        let m = MAX_SIDE;
        filters.push(format!("scale='if(gte(iw,ih),min(iw,{m}),-2)':'if(gte(iw,ih),-2,min(ih,{m}))'"));
        // `-vsync vfr`: the frames selected, not a constant rate padded with duplicates (the
        // older spelling, which ffmpeg 4 of Debian 11 also understands).
        args.extend(["-vf".into(), filters.join(","), "-vsync".into(), "vfr".into()]);
        // Quality 3 as `-qmin`/`-qmax`: `-q:v 3` holds each frame back until the next one is
        // selected (a whole interval; measured with ffmpeg 5.1).
        args.extend(["-f", "image2pipe", "-c:v", "mjpeg", "-qmin", "3", "-qmax", "3", "-"].map(String::from));
        args
    }

    /// The longest a healthy stream may go without a frame.
    fn stall_after(&self) -> Duration {
        STALL + Duration::from_secs_f64(self.interval.max(0.0))
    }
}

/// Refuses to start without a runnable ffmpeg, with one line saying how to get it.
pub fn check_ffmpeg() -> Result<()> {
    let ffmpeg = ffmpeg();
    let status = Command::new(&ffmpeg)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| {
            format!("RTSP sources need ffmpeg: cannot run {ffmpeg:?} (apt install ffmpeg, or set EDGECAP_FFMPEG)")
        })?;
    if !status.success() {
        bail!("RTSP sources need ffmpeg: `{ffmpeg} -version` failed ({status})");
    }
    Ok(())
}

/// How one ffmpeg run ended.
struct Session {
    frames: u64,
    /// ffmpeg's last error lines, the password hidden.
    error: String,
}

impl Session {
    /// A refusal every retry would meet again: wrong credentials, no such stream.
    fn permanent(&self) -> bool {
        self.frames == 0
            && ["401 Unauthorized", "404 Not Found", "403 Forbidden"].iter().any(|s| self.error.contains(s))
    }
}

/// What start-up waits for.
enum Started {
    Streaming,
    Refused(String),
}

/// Starts the source thread (ffmpeg checked by `SourceSpec::preflight` first) and waits (up
/// to [`STARTUP_WAIT`]) for its first frame; a permanent refusal fails start-up, anything else is
/// retried in the background.
pub fn spawn(spec: RtspSpec, ctx: SourceContext) -> Result<JoinHandle<()>> {
    let shown = spec.shown();
    let (started, outcome) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("rtsp".into())
        .spawn(move || {
            run(&spec, &ctx, started);
            ctx.slot.close();
        })
        .context("cannot start the RTSP source thread")?;
    match outcome.recv_timeout(STARTUP_WAIT) {
        Ok(Started::Refused(why)) => bail!("source {shown}: {why}"),
        Ok(Started::Streaming) => log::info!("source {shown}: streaming"),
        Err(_) => log::warn!("source {shown}: no frame yet after {} s; still trying", STARTUP_WAIT.as_secs()),
    }
    Ok(handle)
}

/// Runs ffmpeg again and again until the service stops (or, with `--once`, a frame went).
fn run(spec: &RtspSpec, ctx: &SourceContext, started: Sender<Started>) {
    let shown = spec.shown();
    let mut started = Some(started);
    let mut backoff = BACKOFF_MIN;
    let mut failures = LogLimit::default();
    let mut n = 0u64;
    while !ctx.stopped() {
        let session = match stream_once(spec, ctx, &mut n, &mut started) {
            Ok(session) => session,
            Err(e) => Session { frames: 0, error: format!("{e:#}") },
        };
        if ctx.stopped() || (ctx.once && session.frames > 0) {
            return;
        }
        // Refused before start-up gave up waiting: edgecap stops. Later, the camera may be
        // rebooting into a state that refuses for a while: keep trying.
        if session.permanent() {
            if let Some(tx) = started.take() {
                if tx.send(Started::Refused(session.error.clone())).is_ok() {
                    return;
                }
            }
        }
        if session.frames > 0 {
            backoff = BACKOFF_MIN;
        }
        if let Some(note) = failures.check() {
            let why = if session.error.is_empty() { "the stream ended".to_string() } else { session.error.clone() };
            log::warn!("source {shown}: {why}; reconnecting in {:.0} s{note}", backoff.as_secs_f64());
        }
        ctx.sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One ffmpeg run: frames into the slot until it ends, stalls or the service stops.
fn stream_once(
    spec: &RtspSpec,
    ctx: &SourceContext,
    n: &mut u64,
    started: &mut Option<Sender<Started>>,
) -> Result<Session> {
    let mut child = Command::new(ffmpeg())
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", ffmpeg()))?;
    let (stdout, stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let errors = collect_errors(stderr, spec.url.clone(), spec.shown());
    let last_frame = Arc::new(Mutex::new(Instant::now()));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = watch(child, spec.stall_after(), Arc::clone(&last_frame), Arc::clone(&done), Arc::clone(&ctx.stop));
    let mut reader = FrameReader::new(BufReader::new(stdout));
    let mut frames = 0u64;
    let mut garbage = LogLimit::default();
    loop {
        match reader.next_chunk() {
            Ok(Some(Chunk::Image(bytes))) => {
                *last_frame.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                frames += 1;
                *n += 1;
                if let Some(tx) = started.take() {
                    let _ = tx.send(Started::Streaming);
                }
                if !ctx.put(format!("rtsp#{n}"), FrameData::Encoded(bytes)) || ctx.once {
                    break;
                }
            }
            Ok(Some(Chunk::Garbage { bytes, reason })) => {
                ctx.skip(&mut garbage, format_args!("source {} (ffmpeg's output)", spec.shown()), bytes, &reason);
            }
            Ok(None) | Err(_) => break,
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let error = errors.join().unwrap_or_default();
    Ok(Session { frames, error })
}

/// Kills ffmpeg when the service stops, the reader is done, or no frame came for `stall`; then
/// reaps it. Owning the child here lets the reader block on the pipe, which the kill ends.
fn watch(
    mut child: Child,
    stall: Duration,
    last_frame: Arc<Mutex<Instant>>,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let stalled = last_frame.lock().unwrap_or_else(|e| e.into_inner()).elapsed() > stall;
        if stalled || done.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
            if stalled {
                log::warn!("rtsp: no frame for {} s; restarting ffmpeg", stall.as_secs());
            }
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    })
}

/// Reads ffmpeg's stderr on its own thread (a full pipe would block it), logs each line at debug
/// level and returns the last few, with the URL's password hidden.
fn collect_errors(stderr: impl Read + Send + 'static, url: String, shown: String) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut last: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // "[rtsp @ 0x55f0b0d69a00] method DESCRIBE failed": the address says nothing to a user.
            let line = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
                Some((_, rest)) => rest.to_string(),
                None => line,
            };
            let line: String = line.replace(&url, &shown).chars().take(MAX_ERROR_CHARS).collect();
            log::debug!("ffmpeg: {line}");
            last.push(line);
            if last.len() > 2 {
                last.remove(0);
            }
        }
        last.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::RtspSpec;

    fn spec(interval: f64, fps: u32) -> RtspSpec {
        RtspSpec { url: "rtsp://u:p@cam/stream".into(), interval, fps, keyframes_only: false }
    }

    #[test]
    fn frames_are_asked_once_per_interval_else_at_fps_else_all() {
        let filter = |s: &RtspSpec| {
            let args = s.args();
            args[args.iter().position(|a| a == "-vf").unwrap() + 1].clone()
        };
        let select = |t: &str| format!("select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{t})',scale=");
        assert!(filter(&spec(5.0, 5)).starts_with(&select("5.000000")));
        assert!(filter(&spec(0.0, 4)).starts_with(&select("0.250000")));
        assert!(filter(&spec(0.0, 0)).starts_with("scale="));
        assert_eq!(spec(1.0, 0).shown(), "rtsp://u:***@cam/stream");
        let keyframes = RtspSpec { keyframes_only: true, ..spec(1.0, 0) }.args();
        let at = keyframes.iter().position(|a| a == "-skip_frame").unwrap();
        assert!(keyframes[at + 1] == "nokey" && at < keyframes.iter().position(|a| a == "-i").unwrap());
    }
}
