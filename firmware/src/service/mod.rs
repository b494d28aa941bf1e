//! `edgecap run`: frames from a source → the newest one, at most once per interval, when the
//! scene changed → a caption → every output. The pieces, one module each: configuration
//! ([`config`]), sources ([`source`]), the newest-frame slot ([`slot`]), scheduling
//! ([`scheduler`], [`scene`]), outputs ([`output`]).

pub mod config;
mod log_limit;
pub mod output;
mod queue;
mod record;
mod scene;
mod scheduler;
mod slot;
pub mod source;
mod stats;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::model::CaptionModel;

use crate::exit;
use crate::model::Loaded;
use config::{Config, RunArgs};
use output::Sink;
use slot::Slot;
use source::{SourceContext, SourceSpec};
use stats::Stats;

/// `edgecap run`.
pub fn run(args: &RunArgs) -> u8 {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("error: cannot install the signal handler: {e}");
            return exit::FATAL;
        }
    }
    let service = match Service::start(args, Arc::clone(&stop)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
            return exit::FATAL;
        }
    };
    service.run()
}

/// `run`'s configuration from the file and flags, checked, with what the source and the MQTT
/// output make of it, each resolved once: the source parsed; the broker's URL parsed, its TLS
/// files read and every topic one a broker accepts. (Here rather than in `config`, which the
/// source and outputs build on.)
struct Resolved {
    config: Config,
    source: SourceSpec,
    broker: Option<output::mqtt::Broker>,
}

fn resolve(args: &RunArgs) -> Result<Resolved> {
    let config = args.resolve()?;
    let source = SourceSpec::parse(&config.source)?;
    let broker = config.mqtt.as_ref().map(output::mqtt::check_config).transpose()?;
    Ok(Resolved { config, source, broker })
}

/// `edgecap check-config`: everything `run` checks before it starts, without starting.
pub fn check(args: &RunArgs) -> u8 {
    let result = resolve(args).and_then(|Resolved { config, source, .. }| {
        source.preflight()?;
        drop(load_model(&config)?);
        Ok(config)
    });
    match result {
        Ok(mut config) => {
            if let Some(m) = &mut config.mqtt {
                m.url = config::redact_password(&m.url);
            }
            config.source = config::redact_password(&config.source);
            if let Some(t) = config.http.as_mut().and_then(|h| h.token.as_mut()) {
                *t = "***".into();
            }
            match toml::to_string(&config) {
                Ok(text) => print!("{text}"),
                Err(e) => log::warn!("cannot print the configuration: {e}"),
            }
            eprintln!("configuration OK");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
            exit::FATAL
        }
    }
}

struct Service {
    config: Config,
    model: Arc<CaptionModel>,
    /// One caption at a time between the service and its HTTP API.
    engine: Arc<Mutex<()>>,
    http: Option<crate::http::Server>,
    opts: GenerationOptions,
    model_name: String,
    slot: Arc<Slot>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    sinks: Vec<Box<dyn Sink>>,
    source: std::thread::JoinHandle<()>,
}

impl Service {
    fn start(args: &RunArgs, stop: Arc<AtomicBool>) -> Result<Service> {
        let Resolved { config, source: spec, broker } = resolve(args)?;
        spec.preflight()?;
        let Loaded { model, opts, bundle } = load_model(&config)?;
        let model_name = Loaded::name_of(&bundle);
        let stats = Arc::new(Stats::default());
        let sinks = start_sinks(&config, broker, &stats)?;
        let slot = Arc::new(Slot::new(spec.lossless(&config)));
        let ctx = SourceContext {
            slot: Arc::clone(&slot),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            once: config.once,
        };
        let (model, engine) = (Arc::new(model), Arc::new(Mutex::new(())));
        let http = match &config.http {
            Some(options) => {
                let shared = crate::http::Shared {
                    model: Arc::clone(&model),
                    opts: opts.clone(),
                    model_name: model_name.clone(),
                    engine: Arc::clone(&engine),
                    service: Some(service_counters(Arc::clone(&stats))),
                };
                let server = crate::http::Server::start(&options.clone().resolve()?, shared, Arc::clone(&stop))?;
                eprintln!("edgecap: serving the HTTP API on http://{}", server.addr);
                Some(server)
            }
            None => None,
        };
        let source = source::spawn(&spec, &config, ctx)?;
        let source_shown = config::redact_password(&config.source);
        log::info!("running: source {source_shown}, interval {}s, model {model_name}", config.interval);
        log::info!("cpu {}", edgecap_engine::platform::CpuFeatures::detect());
        Ok(Service { config, model, engine, http, opts, model_name, slot, stats, stop, sinks, source })
    }

    fn run(mut self) -> u8 {
        let mut scheduler =
            scheduler::Scheduler::new(&self.config, &self.model, &self.engine, &self.opts, &self.model_name);
        let outcome = scheduler.run(&self.slot, &self.stats, &self.stop, &mut self.sinks);
        // Unblock a source waiting on the slot; a source blocked reading stdin ends with the process.
        self.slot.close();
        if self.stop.load(Ordering::Relaxed) {
            log::info!("stopping on signal");
        }
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs_f64(self.config.flush_timeout);
        let undelivered: u64 = self.sinks.into_iter().map(|s| s.finish(deadline)).sum();
        if let Some(server) = self.http {
            server.finish(deadline);
        }
        if self.source.is_finished() {
            let _ = self.source.join();
        }
        eprintln!("edgecap: stopped: {}", self.stats);
        match outcome {
            Err(e) => {
                eprintln!("error: {}", edgecap_engine::error::one_line(e.as_ref()));
                exit::RUNTIME
            }
            Ok(()) if undelivered > 0 => exit::SOME_FAILED,
            Ok(()) => exit::OK,
        }
    }
}

fn load_model(config: &Config) -> Result<Loaded> {
    crate::model::load(config.bundle.as_deref(), &config.decoding())
}

/// The service's counters as `/metrics` shows them beside the API's.
fn service_counters(stats: Arc<Stats>) -> crate::http::ServiceCounters {
    Box::new(move || {
        [
            ("frames", &stats.frames),
            ("captioned", &stats.captioned),
            ("unchanged", &stats.unchanged),
            ("corrupt", &stats.corrupt),
            ("serial_delivered", &stats.serial_delivered),
            ("serial_dropped", &stats.serial_dropped),
            ("mqtt_delivered", &stats.mqtt_delivered),
            ("mqtt_dropped", &stats.mqtt_dropped),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.get()))
        .collect()
    })
}

fn start_sinks(
    config: &Config,
    broker: Option<output::mqtt::Broker>,
    stats: &Arc<Stats>,
) -> Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if config.stdout {
        sinks.push(Box::new(output::Stdout::default()));
    }
    if let Some(serial) = &config.serial {
        let s = output::serial::Serial::start(serial, Arc::clone(stats))
            .with_context(|| format!("serial {}", Path::new(&serial.device).display()))?;
        sinks.push(Box::new(s));
    }
    if let (Some(mqtt), Some(broker)) = (&config.mqtt, broker) {
        sinks.push(Box::new(output::mqtt::Mqtt::start(mqtt, broker, &config.camera, Arc::clone(stats))?));
    }
    Ok(sinks)
}
