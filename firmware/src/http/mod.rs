//! The HTTP API (docs/http.md): `POST /v1/caption`, OpenAI-compatible
//! `POST /v1/chat/completions` and `GET /v1/models` (what Frigate and Home Assistant call),
//! `GET /healthz`, `GET /metrics`. Served by `edgecap serve` and, beside the camera service, by
//! `edgecap run --http`.
//!
//! axum on tokio: rumqttc already brings tokio, so the server adds little to the binary, and it
//! gives what a server facing a LAN needs without hand-written parsing: body limits, multipart,
//! server-sent events, a deadline over the whole request (slow senders included), graceful
//! shutdown. The captions themselves run on one worker thread ([`worker`]).

mod metrics;
mod openai;
mod routes;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::model::CaptionModel;
use serde::{Deserialize, Serialize};

use crate::exit;
use crate::model::{Decoding, Loaded};
use metrics::Metrics;
use routes::Api;
use worker::Queue;

/// The bearer token's environment variable: a token on the command line is visible to every
/// user of the board through `ps`.
pub const TOKEN_ENV: &str = "EDGECAP_HTTP_TOKEN";

/// `[http]` in the configuration, `--http*` on the command line.
#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// Serve the HTTP API on this address and port, e.g. 0.0.0.0:8080 (port 0: any free one).
    #[arg(long = "http", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Require `Authorization: Bearer TOKEN` on the /v1/ routes (default: $EDGECAP_HTTP_TOKEN; none).
    #[arg(long = "http-token", value_name = "TOKEN")]
    #[serde(default)]
    pub token: Option<String>,
    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long = "http-max-body", value_name = "BYTES", default_value_t = defaults::MAX_BODY)]
    #[serde(default = "defaults::max_body")]
    pub max_body: usize,
    /// Captions that may wait for the engine (429 with Retry-After beyond).
    #[arg(long = "http-queue", value_name = "N", default_value_t = defaults::QUEUE)]
    #[serde(default = "defaults::queue")]
    pub queue: usize,
    /// Seconds a request may take in all (reading, waiting, captioning; 504 after).
    #[arg(long = "http-timeout", value_name = "SECONDS", default_value_t = defaults::TIMEOUT_S)]
    #[serde(default = "defaults::timeout")]
    pub timeout: f64,
}

mod defaults {
    pub const MAX_BODY: usize = 16 << 20;
    pub const QUEUE: usize = 4;
    pub const TIMEOUT_S: f64 = 30.0;
    pub fn max_body() -> usize {
        MAX_BODY
    }
    pub fn queue() -> usize {
        QUEUE
    }
    pub fn timeout() -> f64 {
        TIMEOUT_S
    }
}

impl HttpOptions {
    /// Listening on `listen`, every other setting its default.
    pub fn new(listen: &str) -> HttpOptions {
        HttpOptions {
            listen: listen.into(),
            token: None,
            max_body: defaults::MAX_BODY,
            queue: defaults::QUEUE,
            timeout: defaults::TIMEOUT_S,
        }
    }

    /// The listening address and the limits checked; the token from the environment if none was
    /// given.
    pub fn resolve(mut self) -> Result<HttpOptions> {
        self.listen
            .parse::<SocketAddr>()
            .with_context(|| format!("http listen address {:?}: expected ADDR:PORT, e.g. 0.0.0.0:8080", self.listen))?;
        if !(1024..=(512 << 20)).contains(&self.max_body) {
            bail!("http max body must be from 1024 to {} bytes, got {}", 512 << 20, self.max_body);
        }
        if !(1..=1024).contains(&self.queue) {
            bail!("http queue must be from 1 to 1024, got {}", self.queue);
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            bail!("http timeout must be more than 0 and at most 3600 seconds, got {}", self.timeout);
        }
        if self.token.is_none() {
            self.token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        }
        if let Some(t) = &self.token {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("http token must be non-empty printable ASCII without spaces");
            }
        }
        Ok(self)
    }
}

/// Reads the camera service's counters (frames, captions, drops per output) for `/metrics`.
pub type ServiceCounters = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// The running server: its address, and the thread that serves until stopped.
pub struct Server {
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

/// What the server shares with a service beside it.
pub struct Shared {
    pub model: Arc<CaptionModel>,
    pub opts: GenerationOptions,
    pub model_name: String,
    /// Held while captioning: one caption at a time between the API and the service.
    pub engine: Arc<Mutex<()>>,
    pub service: Option<ServiceCounters>,
}

impl Server {
    /// Binds `options.listen` (an error now, not later, if it cannot), then serves on a thread
    /// of its own until `stop` is set.
    pub fn start(options: &HttpOptions, shared: Shared, stop: Arc<AtomicBool>) -> Result<Server> {
        let listener = std::net::TcpListener::bind(&options.listen)
            .with_context(|| format!("cannot listen on {} for the HTTP API", options.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let queue = Queue::start(Arc::clone(&shared.model), shared.engine, options.queue, Arc::clone(&metrics))?;
        let api = Arc::new(Api {
            queue,
            metrics,
            model: shared.model,
            opts: shared.opts,
            model_name: shared.model_name,
            token: options.token.clone(),
            timeout: Duration::from_secs_f64(options.timeout),
            service: shared.service,
            next_id: AtomicU64::new(1),
        });
        let app = routes::router(api, options.max_body);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return log::error!("http: {e}"),
                };
                let stopped = async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    log::error!("http: {e}");
                }
            })
        })?;
        Ok(Server { addr, thread })
    }

    /// Waits for the server to finish the requests it has (it stops taking new ones once `stop`
    /// is set), at most until `deadline`.
    pub fn finish(self, deadline: std::time::Instant) {
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

/// `edgecap serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model bundle directory (default: the built-in model, as `caption`).
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    decoding: Decoding,
    #[command(flatten)]
    http: HttpOptions,
}

pub fn serve(args: &ServeArgs) -> u8 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: cannot install the signal handler: {e}");
            return exit::FATAL;
        }
    }
    let server = match start_serving(args, Arc::clone(&stop)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
            return exit::FATAL;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("edgecap: stopping");
    server.finish(std::time::Instant::now() + Duration::from_secs_f64(args.http.timeout));
    exit::OK
}

fn start_serving(args: &ServeArgs, stop: Arc<AtomicBool>) -> Result<Server> {
    let options = args.http.clone().resolve()?;
    let loaded = crate::model::load(args.bundle.as_deref(), &args.decoding)?;
    let model_name = loaded.name();
    let Loaded { model, opts, .. } = loaded;
    let shared = Shared { model: Arc::new(model), opts, model_name, engine: Arc::new(Mutex::new(())), service: None };
    let server = Server::start(&options, shared, stop)?;
    // On stderr whatever the log level: with port 0 this is how a caller learns the port.
    eprintln!("edgecap: serving the HTTP API on http://{}", server.addr);
    Ok(server)
}
