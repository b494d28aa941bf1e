//! The captioning loop: takes the newest frame no sooner than `interval` after the previous
//! caption started, skips frames that fail to decode (counted) or show the same scene (counted),
//! captions the rest and hands each record to every output.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgecap_engine::generate::GenerationOptions;
use edgecap_engine::image_load::decode_rgb;
use edgecap_engine::model::CaptionModel;
use image::RgbImage;

use super::config::Config;
use super::log_limit::LogLimit;
use super::output::Sink;
use super::record::{rfc3339, CaptionRecord};
use super::scene::SceneFilter;
use super::slot::{Frame, FrameData, Slot, Taken};
use super::stats::Stats;

/// How often a waiting loop looks at the stop flag.
const TICK: Duration = Duration::from_millis(100);

pub struct Scheduler<'a> {
    model: &'a CaptionModel,
    /// Held while captioning: the HTTP API beside the service (`run --http`) shares the model.
    engine: &'a Mutex<()>,
    opts: &'a GenerationOptions,
    model_name: &'a str,
    camera: String,
    interval: Duration,
    max_captions: u64,
    scene: SceneFilter,
    last_start: Option<Instant>,
    next_id: u64,
    /// Whether records carry the captioned frame (an output shows it).
    pictures: bool,
    /// Skipped frames, which a broken camera or stream can make every frame.
    skipped: LogLimit,
}

impl<'a> Scheduler<'a> {
    pub fn new(
        config: &Config,
        model: &'a CaptionModel,
        engine: &'a Mutex<()>,
        opts: &'a GenerationOptions,
        model_name: &'a str,
    ) -> Self {
        Scheduler {
            model,
            engine,
            opts,
            model_name,
            camera: config.camera.clone(),
            interval: Duration::from_secs_f64(config.interval),
            max_captions: config.max_captions,
            scene: SceneFilter::new(config.scene_threshold),
            last_start: None,
            next_id: 1,
            skipped: LogLimit::default(),
            pictures: config.mqtt.as_ref().is_some_and(|m| m.image),
        }
    }

    /// Runs until the source closes, a signal arrives, `max_captions` is reached, or the engine
    /// fails in a way no later frame can avoid (the error).
    pub fn run(&mut self, slot: &Slot, stats: &Stats, stop: &AtomicBool, sinks: &mut [Box<dyn Sink>]) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if !self.wait_for_turn(slot, stop) {
                break;
            }
            let frame = match slot.take(TICK) {
                Taken::Frame(f) => f,
                Taken::Empty => continue,
                Taken::Closed => break,
            };
            if let Some(record) = self.process(frame, stats)? {
                let record = Arc::new(record);
                for sink in sinks.iter_mut() {
                    sink.send(&record);
                }
                stats.captioned.inc();
                if self.max_captions > 0 && stats.captioned.get() >= self.max_captions {
                    log::info!("{} captions made; stopping (max_captions)", self.max_captions);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sleeps until the interval since the last caption has passed; false if stopped meanwhile
    /// or the source ended (`--once` need not wait out the interval after its last frame).
    fn wait_for_turn(&self, slot: &Slot, stop: &AtomicBool) -> bool {
        let Some(last) = self.last_start else { return true };
        loop {
            if stop.load(Ordering::Relaxed) || slot.drained() {
                return false;
            }
            let left = self.interval.saturating_sub(last.elapsed());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(TICK));
        }
    }

    /// Decodes, checks the scene and captions one frame. None when the frame was skipped.
    fn process(&mut self, frame: Frame, stats: &Stats) -> Result<Option<CaptionRecord>> {
        let started = Instant::now();
        let image = match decode(&frame) {
            Ok(image) => image,
            Err(e) => {
                stats.corrupt.inc();
                if let Some(note) = self.skipped.check() {
                    log::warn!("skipped frame: {e} ({} corrupt so far){note}", stats.corrupt.get());
                }
                return Ok(None);
            }
        };
        let Some(thumb) = self.scene.check(&image) else {
            stats.unchanged.inc();
            log::debug!("{}: scene unchanged, skipped", frame.name);
            return Ok(None);
        };
        self.last_start = Some(started);
        let engine = self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let caption = self.model.caption(&image, self.opts);
        drop(engine);
        let caption = match caption {
            Ok(c) => c,
            Err(e) if e.is_per_input() => {
                stats.corrupt.inc();
                if let Some(note) = self.skipped.check() {
                    log::warn!("skipped frame {}: {e}{note}", frame.name);
                }
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("captioning {}", frame.name)),
        };
        self.scene.accept(thumb);
        let id = self.next_id;
        self.next_id += 1;
        log::info!("{}: caption {id}: {}", frame.name, caption.text);
        let encoded = match &frame.data {
            FrameData::Encoded(bytes) => Some(bytes.as_slice()),
            FrameData::Pixels(_) => None,
        };
        let picture = if self.pictures { super::record::picture(&image, encoded).map(Arc::new) } else { None };
        Ok(Some(CaptionRecord {
            picture,
            id,
            camera: self.camera.clone(),
            caption: caption.text,
            tokens: caption.tokens,
            frame_time: rfc3339(frame.time),
            model: self.model_name.to_string(),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
        }))
    }
}

fn decode(frame: &Frame) -> Result<RgbImage, edgecap_engine::image_load::ImageError> {
    match &frame.data {
        FrameData::Encoded(bytes) => decode_rgb(bytes, &frame.name),
        FrameData::Pixels(image) => Ok(image.clone()),
    }
}
