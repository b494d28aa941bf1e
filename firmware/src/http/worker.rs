//! The caption queue behind the HTTP API: requests wait in a bounded queue, one thread decodes
//! and captions them in turn. One at a time because a caption already uses every core through
//! the matrix products; two at once would each take twice as long.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::image_load::decode_rgb;
use edgecap_engine::model::CaptionModel;
use edgecap_engine::Caption;
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// One caption to make.
pub struct Job {
    /// The encoded image, as sent.
    pub image: Vec<u8>,
    pub opts: GenerationOptions,
    /// Past this the requester has given up: the job is skipped if not yet started.
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Done, Failure>>,
}

/// A caption made, and how long the worker spent on it (decode + caption).
pub struct Done {
    pub caption: Caption,
    pub elapsed: Duration,
}

/// Why a job gave no caption.
#[derive(Debug)]
pub enum Failure {
    /// The image could not be decoded or is not acceptable (size, format): the client's fault.
    BadImage(String),
    /// The engine failed for a reason no other image would avoid.
    Engine(String),
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds its maximum of pending captions.
    Full,
    /// The worker thread has stopped.
    Stopped,
}

/// The submitting side, shared by the request handlers.
pub struct Queue {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
}

/// Clears the flag when the worker thread ends, by return or panic.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Queue {
    /// Starts the worker thread on `model`; at most `capacity` jobs wait. `engine` is held while
    /// captioning, so that a service sharing the model (`run --http`) never runs two at once.
    pub fn start(
        model: Arc<CaptionModel>,
        engine: Arc<Mutex<()>>,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Queue> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let (worker_depth, guard) = (Arc::clone(&depth), Alive(Arc::clone(&alive)));
        std::thread::Builder::new().name("http-captions".into()).spawn(move || {
            let _alive = guard;
            work(&model, &engine, &rx, &worker_depth, &metrics)
        })?;
        Ok(Queue { tx, depth, alive })
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.depth.fetch_add(1, Ordering::SeqCst);
        self.tx.try_send(job).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => Refused::Full,
                TrySendError::Disconnected(_) => Refused::Stopped,
            }
        })
    }

    /// Whether the worker thread is still there to take jobs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Jobs queued and not yet started.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }
}

fn work(model: &CaptionModel, engine: &Mutex<()>, rx: &Receiver<Job>, depth: &AtomicUsize, metrics: &Metrics) {
    while let Ok(job) = rx.recv() {
        depth.fetch_sub(1, Ordering::SeqCst);
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            // The requester timed out while the job waited (and counted it): nobody would read
            // the caption.
            continue;
        }
        let started = Instant::now();
        let result = caption(model, engine, &job);
        let elapsed = started.elapsed();
        if result.is_ok() {
            metrics.observe_caption(elapsed);
        }
        // The requester may have gone meanwhile; the caption is then dropped with it.
        let _ = job.reply.send(result.map(|caption| Done { caption, elapsed }));
    }
}

fn caption(model: &CaptionModel, engine: &Mutex<()>, job: &Job) -> Result<Caption, Failure> {
    let rgb = decode_rgb(&job.image, "request body").map_err(|e| Failure::BadImage(e.to_string()))?;
    // A panic elsewhere while holding the lock leaves no state behind that a caption depends on.
    let _engine = engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    model.caption(&rgb, &job.opts).map_err(|e| {
        if e.is_per_input() {
            Failure::BadImage(e.to_string())
        } else {
            Failure::Engine(e.to_string())
        }
    })
}
