//! Counters the service keeps for its log and its exit summary.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Shared by every thread of the service.
#[derive(Default)]
pub struct Stats {
    /// Frames the source delivered (corrupt ones included).
    pub frames: Counter,
    /// Frames replaced in the slot before the captioning loop took them.
    pub stale: Counter,
    /// Frames skipped because the scene had not changed.
    pub unchanged: Counter,
    /// Frames that could not be decoded (corrupt, truncated, not an image).
    pub corrupt: Counter,
    pub captioned: Counter,
    /// Captions an output had to drop (its buffer was full, or it was still down at shutdown).
    pub serial_dropped: Counter,
    pub mqtt_dropped: Counter,
    /// Captions an output delivered: lines written to the port, records the broker acknowledged
    /// (`/metrics` only; the stop summary keeps its fields).
    pub serial_delivered: Counter,
    pub mqtt_delivered: Counter,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frames={} captioned={} stale={} unchanged={} corrupt={} serial_dropped={} mqtt_dropped={}",
            self.frames.get(),
            self.captioned.get(),
            self.stale.get(),
            self.unchanged.get(),
            self.corrupt.get(),
            self.serial_dropped.get(),
            self.mqtt_dropped.get()
        )
    }
}
