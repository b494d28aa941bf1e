//! The hand-over between a source thread and the captioning loop: a capacity-1 slot that always
//! holds the newest frame. A live source (camera, test pattern) overwrites a frame nobody took
//! (counted as stale); a source whose every frame matters (`--once`) waits instead.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

use super::stats::Stats;

/// One frame from a source: still encoded (files, stdin: decoded only if it gets captioned) or
/// already pixels (camera, test pattern).
pub struct Frame {
    /// Where it came from, for messages (a file name, `stdin#3`, `camera:0#120`).
    pub name: String,
    /// When the source got it.
    pub time: SystemTime,
    pub data: FrameData,
}

#[derive(Debug)]
pub enum FrameData {
    Encoded(Vec<u8>),
    Pixels(RgbImage),
}

/// What `take` saw.
pub enum Taken {
    Frame(Frame),
    /// Nothing arrived within the timeout.
    Empty,
    /// The source has finished and the slot is empty.
    Closed,
}

#[derive(Default)]
struct Inner {
    frame: Option<Frame>,
    closed: bool,
}

pub struct Slot {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Producers wait for the slot to empty instead of overwriting.
    lossless: bool,
}

impl Slot {
    pub fn new(lossless: bool) -> Slot {
        Slot { inner: Mutex::new(Inner::default()), changed: Condvar::new(), lossless }
    }

    /// Offers a frame. Returns false once the slot is closed (the consumer has stopped).
    pub fn put(&self, frame: Frame, stats: &Stats) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        stats.frames.inc();
        while self.lossless && inner.frame.is_some() && !inner.closed {
            inner = self.changed.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        if inner.closed {
            return false;
        }
        if inner.frame.replace(frame).is_some() {
            stats.stale.inc();
        }
        self.changed.notify_all();
        true
    }

    /// Marks the end of the source (or, from the consumer, that nobody will take frames).
    pub fn close(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.changed.notify_all();
    }

    /// Closed with no frame left: nothing more will come.
    pub fn drained(&self) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.closed && inner.frame.is_none()
    }

    /// The newest frame, waiting up to `timeout` for one.
    pub fn take(&self, timeout: Duration) -> Taken {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(frame) = inner.frame.take() {
                self.changed.notify_all();
                return Taken::Frame(frame);
            }
            if inner.closed {
                return Taken::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Taken::Empty;
            }
            inner = self.changed.wait_timeout(inner, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}
