//! Service configuration: a TOML file (`--config`, default `/etc/edgecap/edgecap.toml` when
//! present) with command-line flags layered on top. Plain data only; nothing here opens devices.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use edgecap_engine::error::excerpt;
use serde::{Deserialize, Serialize};

use crate::http::HttpOptions;
use crate::model::Decoding;

/// Used when `--config` is not given and this file exists.
pub const DEFAULT_CONFIG: &str = "/etc/edgecap/edgecap.toml";

/// Everything `edgecap run` needs, as the TOML file spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model bundle directory; none = the built-in default model.
    pub bundle: Option<PathBuf>,
    /// `camera[:INDEX]`, `dir:PATH`, `file:PATH`, `rtsp://[USER:PASS@]HOST[:PORT]/PATH`, `-`
    /// (stdin) or `test-pattern`.
    pub source: String,
    /// Name of this camera in MQTT topics and records.
    pub camera: String,
    /// At most one caption per this many seconds (0 = as fast as the model goes).
    pub interval: f64,
    /// Mean absolute grayscale difference (0..1) below which a frame counts as the same scene
    /// and is skipped; 0 turns the check off.
    pub scene_threshold: f64,
    /// Frames per second asked of the camera, or made by `test-pattern` (0 = as fast as possible).
    pub fps: u32,
    /// Resolution asked of the camera, `WIDTHxHEIGHT`.
    pub resolution: Resolution,
    /// RTSP: decode key frames only (a fraction of the CPU; frames at the camera's key-frame
    /// interval, whatever `interval` asks).
    pub rtsp_keyframes: bool,
    /// Process what the source has now, then exit.
    pub once: bool,
    /// Stop after this many captions (0 = no limit).
    pub max_captions: u64,
    pub max_tokens: Option<usize>,
    pub beam: Option<usize>,
    /// Threads for the matrix products; none = every core of the board.
    pub threads: Option<usize>,
    /// One JSON object per caption on stdout.
    pub stdout: bool,
    /// Seconds to wait at shutdown for outputs to deliver what they hold.
    pub flush_timeout: f64,
    pub serial: Option<SerialConfig>,
    pub mqtt: Option<MqttConfig>,
    /// The HTTP API beside the service, on the same model (docs/http.md).
    pub http: Option<HttpOptions>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Captions held while the port is away (oldest dropped first).
    #[serde(default = "default_serial_queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host[:port]`.
    pub url: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Captions held while the broker is away (oldest dropped first).
    #[serde(default = "default_mqtt_buffer")]
    pub buffer: usize,
    /// Home Assistant discovery prefix; empty turns discovery off.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// MQTT client id and Home Assistant node id; default `edgecap_<camera>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u64,
    /// CA certificates (PEM) to trust for `mqtts://`; none = the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for brokers that ask for one; with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Publish the captioned frame (JPEG, 640 px) with each caption, and Home Assistant's image
    /// entity for it; off for bandwidth-limited links.
    #[serde(default = "default_true")]
    pub image: bool,
}

fn default_true() -> bool {
    true
}

fn default_baud() -> u32 {
    115_200
}
fn default_serial_queue() -> usize {
    64
}
fn default_prefix() -> String {
    "edgecap".into()
}
fn default_mqtt_buffer() -> usize {
    256
}
fn default_discovery_prefix() -> String {
    "homeassistant".into()
}
fn default_keep_alive() -> u64 {
    30
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bundle: None,
            source: "camera:0".into(),
            camera: "camera".into(),
            interval: 5.0,
            scene_threshold: 0.02,
            fps: 5,
            resolution: Resolution { width: 640, height: 480 },
            rtsp_keyframes: false,
            once: false,
            max_captions: 0,
            max_tokens: None,
            beam: None,
            threads: None,
            stdout: true,
            flush_timeout: 10.0,
            serial: None,
            mqtt: None,
            http: None,
        }
    }
}

/// Command-line flags of `edgecap run` / `edgecap check-config`; each one given overrides the file.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML configuration file (default: /etc/edgecap/edgecap.toml when present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model bundle directory.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Frame source: camera[:INDEX], dir:PATH, file:PATH, rtsp://[USER:PASS@]HOST[:PORT]/PATH,
    /// - (images on stdin), test-pattern.
    #[arg(long)]
    pub source: Option<String>,
    /// Camera name used in MQTT topics and records.
    #[arg(long)]
    pub camera: Option<String>,
    /// At most one caption per this many seconds.
    #[arg(long)]
    pub interval: Option<f64>,
    /// Scene-change threshold (0..1 mean grayscale difference); 0 = caption every frame.
    #[arg(long)]
    pub scene_threshold: Option<f64>,
    /// Camera / test-pattern frames per second (0 = as fast as possible).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Camera resolution, WIDTHxHEIGHT.
    #[arg(long)]
    pub resolution: Option<Resolution>,
    /// RTSP: decode key frames only (a fraction of the CPU; frames at the camera's key-frame
    /// interval).
    #[arg(long)]
    pub rtsp_keyframes: bool,
    /// Process what the source has now, then exit 0.
    #[arg(long)]
    pub once: bool,
    /// Stop after this many captions.
    #[arg(long)]
    pub max_captions: Option<u64>,
    #[command(flatten)]
    pub decoding: Decoding,
    /// No JSON lines on stdout.
    #[arg(long)]
    pub no_stdout: bool,
    /// Seconds to wait at shutdown for the outputs to deliver.
    #[arg(long)]
    pub flush_timeout: Option<f64>,
    /// Serial device for JSON lines (e.g. /dev/ttyUSB0, /dev/ttyGS0).
    #[arg(long)]
    pub serial: Option<PathBuf>,
    #[arg(long)]
    pub baud: Option<u32>,
    /// MQTT broker: mqtt://[user:pass@]host[:port], or mqtts:// for TLS (port 8883).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// CA certificates (PEM) for mqtts:// (default: the system's).
    #[arg(long)]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate (PEM) for brokers that require one; with --mqtt-key.
    #[arg(long)]
    pub mqtt_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long)]
    pub mqtt_key: Option<PathBuf>,
    /// MQTT topic prefix (default edgecap).
    #[arg(long)]
    pub mqtt_prefix: Option<String>,
    /// Captions buffered while the broker is away.
    #[arg(long)]
    pub mqtt_buffer: Option<usize>,
    /// No captioned frame on MQTT (P/<camera>/image), no image entity in Home Assistant.
    #[arg(long)]
    pub mqtt_no_image: bool,
    /// Also serve the HTTP API on ADDR:PORT, sharing the model (docs/http.md).
    #[arg(long = "http", value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// Bearer token the HTTP API requires (default: $EDGECAP_HTTP_TOKEN; none).
    #[arg(long, value_name = "TOKEN")]
    pub http_token: Option<String>,
    /// Largest HTTP request body, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub http_max_body: Option<usize>,
    /// HTTP captions that may wait for the engine.
    #[arg(long, value_name = "N")]
    pub http_queue: Option<usize>,
    /// Seconds an HTTP request may take in all.
    #[arg(long, value_name = "SECONDS")]
    pub http_timeout: Option<f64>,
}

impl RunArgs {
    /// The file (if any), then the flags, then validation.
    pub fn resolve(&self) -> Result<Config> {
        let mut config = match self.config_path() {
            Some(path) => load_file(&path)?,
            None => Config::default(),
        };
        self.apply(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.is_file()))
    }

    fn apply(&self, c: &mut Config) -> Result<()> {
        set(&mut c.bundle, self.bundle.clone().map(Some));
        set(&mut c.source, self.source.clone());
        set(&mut c.camera, self.camera.clone());
        set(&mut c.interval, self.interval);
        set(&mut c.scene_threshold, self.scene_threshold);
        set(&mut c.fps, self.fps);
        set(&mut c.resolution, self.resolution);
        c.once |= self.once;
        c.rtsp_keyframes |= self.rtsp_keyframes;
        set(&mut c.max_captions, self.max_captions);
        set(&mut c.max_tokens, self.decoding.max_tokens.map(Some));
        set(&mut c.beam, self.decoding.beam.map(Some));
        set(&mut c.threads, self.decoding.threads.map(Some));
        c.stdout &= !self.no_stdout;
        set(&mut c.flush_timeout, self.flush_timeout);
        if let Some(device) = &self.serial {
            let baud = c.serial.as_ref().map_or_else(default_baud, |s| s.baud);
            let queue = c.serial.as_ref().map_or_else(default_serial_queue, |s| s.queue);
            c.serial = Some(SerialConfig { device: device.clone(), baud, queue });
        }
        if let Some(baud) = self.baud {
            c.serial.as_mut().context("--baud needs --serial (or [serial] in the config)")?.baud = baud;
        }
        if let Some(url) = &self.mqtt {
            match &mut c.mqtt {
                Some(m) => m.url = url.clone(),
                None => c.mqtt = Some(MqttConfig::new(url)),
            }
        }
        if let Some(prefix) = &self.mqtt_prefix {
            c.mqtt.as_mut().context("--mqtt-prefix needs --mqtt (or [mqtt] in the config)")?.prefix = prefix.clone();
        }
        if self.mqtt_no_image {
            c.mqtt.as_mut().context("--mqtt-no-image needs --mqtt (or [mqtt] in the config)")?.image = false;
        }
        if let Some(n) = self.mqtt_buffer {
            c.mqtt.as_mut().context("--mqtt-buffer needs --mqtt (or [mqtt] in the config)")?.buffer = n;
        }
        self.apply_http(c)?;
        for (flag, value, slot) in [
            (
                "--mqtt-ca",
                &self.mqtt_ca,
                (|m: &mut MqttConfig| &mut m.ca) as fn(&mut MqttConfig) -> &mut Option<PathBuf>,
            ),
            ("--mqtt-cert", &self.mqtt_cert, |m| &mut m.cert),
            ("--mqtt-key", &self.mqtt_key, |m| &mut m.key),
        ] {
            if let Some(path) = value {
                let m = c.mqtt.as_mut().with_context(|| format!("{flag} needs --mqtt (or [mqtt] in the config)"))?;
                *slot(m) = Some(path.clone());
            }
        }
        Ok(())
    }
}

impl RunArgs {
    fn apply_http(&self, c: &mut Config) -> Result<()> {
        if let Some(listen) = &self.http {
            match &mut c.http {
                Some(h) => h.listen = listen.clone(),
                None => c.http = Some(HttpOptions::new(listen)),
            }
        }
        let needs = |flag: &str| format!("{flag} needs --http (or [http] in the config)");
        if let Some(t) = &self.http_token {
            c.http.as_mut().with_context(|| needs("--http-token"))?.token = Some(t.clone());
        }
        if let Some(n) = self.http_max_body {
            c.http.as_mut().with_context(|| needs("--http-max-body"))?.max_body = n;
        }
        if let Some(n) = self.http_queue {
            c.http.as_mut().with_context(|| needs("--http-queue"))?.queue = n;
        }
        if let Some(s) = self.http_timeout {
            c.http.as_mut().with_context(|| needs("--http-timeout"))?.timeout = s;
        }
        Ok(())
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn load_file(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let detail = edgecap_engine::error::collapse_whitespace(e.message());
        let at = e.span().map(|s| line_of(&text, s.start)).map(|l| format!(" (line {l})")).unwrap_or_default();
        anyhow::anyhow!("{}: invalid config{at}: {detail}", path.display())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl MqttConfig {
    pub fn new(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.into(),
            prefix: default_prefix(),
            buffer: default_mqtt_buffer(),
            discovery_prefix: default_discovery_prefix(),
            client_id: None,
            keep_alive: default_keep_alive(),
            ca: None,
            cert: None,
            key: None,
            image: true,
        }
    }
}

impl Config {
    /// The decoding and thread settings, as `edgecap caption` takes them.
    pub fn decoding(&self) -> Decoding {
        Decoding { max_tokens: self.max_tokens, beam: self.beam, threads: self.threads }
    }

    /// Checks every value that can be checked without opening anything: `run` and
    /// `check-config` both call it, so a configuration `check-config` passes starts.
    pub fn validate(&self) -> Result<()> {
        if let Some(h) = &self.http {
            h.clone().resolve()?;
        }
        // threads: checked once, by `platform::thread_count` when the model loads (check-config
        // loads it too).
        seconds("interval", self.interval, limits::MAX_INTERVAL_S)?;
        if !(0.0..=1.0).contains(&self.scene_threshold) {
            bail!("scene_threshold must be between 0 and 1, got {}", self.scene_threshold);
        }
        seconds("flush_timeout", self.flush_timeout, limits::MAX_FLUSH_TIMEOUT_S)?;
        if self.fps > limits::MAX_FPS {
            bail!("fps must be at most {}, got {}", limits::MAX_FPS, self.fps);
        }
        if self.camera.is_empty()
            || self.camera.contains(['/', '+', '#', '\0'])
            || self.camera.len() > limits::MAX_NAME_BYTES
        {
            bail!(
                "camera name {:?} must be 1 to {} bytes and free of '/', '+', '#' and NUL (it is an MQTT topic level)",
                excerpt(&self.camera, 64),
                limits::MAX_NAME_BYTES
            );
        }
        if let Some(s) = &self.serial {
            if s.baud == 0 {
                bail!("serial: baud must be > 0");
            }
            count("serial queue", s.queue, limits::MAX_QUEUE)?;
        }
        if let Some(m) = &self.mqtt {
            count("mqtt buffer", m.buffer, limits::MAX_QUEUE)?;
        }
        Ok(())
    }
}

/// A frame size, `WIDTHxHEIGHT` in the file and on the command line, each side 1 to
/// [`limits::MAX_SIDE`]: checked once, where it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl std::str::FromStr for Resolution {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Resolution, String> {
        let bad = || {
            format!(
                "resolution {:?} is not WIDTHxHEIGHT with sides from 1 to {} (e.g. 640x480)",
                excerpt(text, 64),
                limits::MAX_SIDE
            )
        };
        let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
        let side = |v: &str| v.trim().parse::<u32>().ok().filter(|v| (1..=limits::MAX_SIDE).contains(v));
        match (side(w), side(h)) {
            (Some(width), Some(height)) => Ok(Resolution { width, height }),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Resolution {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Resolution, String> {
        text.parse()
    }
}

impl From<Resolution> for String {
    fn from(r: Resolution) -> String {
        format!("{}x{}", r.width, r.height)
    }
}

/// The ranges the numbers of a configuration must lie in. Each bound is far above any useful
/// value and far below where it would overflow a `Duration`, an `Instant` or a frame buffer.
pub mod limits {
    /// A day: one caption a day is the slowest schedule anyone asked for.
    pub const MAX_INTERVAL_S: f64 = 86_400.0;
    /// An hour to deliver what is buffered at shutdown.
    pub const MAX_FLUSH_TIMEOUT_S: f64 = 3_600.0;
    pub const MAX_FPS: u32 = 1_000;
    /// A side of a camera or test-pattern frame (8192 x 8192 RGB: 192 MiB, the largest frame
    /// the service will allocate).
    pub const MAX_SIDE: u32 = 8_192;
    /// Captions held by an output while its peer is away (each a few hundred bytes).
    pub const MAX_QUEUE: usize = 1_000_000;
    /// A camera name, an MQTT prefix or a client id.
    pub const MAX_NAME_BYTES: usize = 256;
}

/// A number of seconds from 0 to `max`.
fn seconds(name: &str, value: f64, max: f64) -> Result<()> {
    if !(value.is_finite() && (0.0..=max).contains(&value)) {
        bail!("{name} must be a number of seconds from 0 to {max}, got {value:?}");
    }
    Ok(())
}

/// A count from 1 to `max`.
fn count(name: &str, value: usize, max: usize) -> Result<()> {
    if !(1..=max).contains(&value) {
        bail!("{name} must be from 1 to {max}, got {value}");
    }
    Ok(())
}

/// `url` with the password in `user:password@` replaced by `***`, for logs and printed
/// configurations.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    // The user information ends at the authority's last '@'; the path may hold '@' too.
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rsplit_once('@').and_then(|(userinfo, _)| Some((userinfo.split_once(':')?.0, userinfo.len()))) {
        Some((user, end)) => format!("{scheme}://{user}:***{}", &rest[end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{limits, redact_password, Resolution};

    #[test]
    fn resolutions_parse_once_with_their_limits() {
        assert_eq!("640x480".parse(), Ok(Resolution { width: 640, height: 480 }));
        assert_eq!(" 64 X 48 ".trim().parse(), Ok(Resolution { width: 64, height: 48 }));
        let max = format!("{0}x{0}", limits::MAX_SIDE);
        assert!(max.parse::<Resolution>().is_ok());
        for bad in ["640", "0x480", "640x", "x", "640x480x3", "-1x5", "8193x1", "axb", ""] {
            let e = bad.parse::<Resolution>().unwrap_err();
            assert!(e.starts_with("resolution ") && e.contains("WIDTHxHEIGHT"), "{bad}: {e}");
        }
        assert_eq!(String::from(Resolution { width: 3, height: 2 }), "3x2");
    }

    #[test]
    fn passwords_are_hidden_wherever_the_userinfo_ends() {
        assert_eq!(redact_password("rtsp://a:b@c@cam:554/x@y?z"), "rtsp://a:***@cam:554/x@y?z");
        assert_eq!(redact_password("rtsp://cam:554/live@1"), "rtsp://cam:554/live@1");
        assert_eq!(redact_password("rtsp://user@cam/s"), "rtsp://user@cam/s");
    }
}
