//! Where captions go: stdout, a serial line, an MQTT broker — any combination at once. Serial
//! and MQTT each run on their own thread behind a bounded drop-oldest buffer, so a slow or
//! absent peer never stalls captioning.

pub mod mqtt;
pub mod serial;
mod tls;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use super::record::CaptionRecord;

pub trait Sink {
    fn send(&mut self, record: &Arc<CaptionRecord>);
    /// Delivers what is buffered until `deadline`, then stops. Returns how many captions were
    /// still undelivered.
    fn finish(self: Box<Self>, deadline: Instant) -> u64;
}

/// One JSON object per line on stdout.
#[derive(Default)]
pub struct Stdout {
    /// Set once stdout fails (closed pipe); later captions skip it.
    broken: bool,
}

impl Sink for Stdout {
    fn send(&mut self, record: &Arc<CaptionRecord>) {
        if self.broken {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{}", record.json()).and_then(|_| out.flush()) {
            // Nobody reads stdout any more (a closed pipe); the other outputs go on.
            log::warn!("stdout: {e}; no more captions on stdout");
            self.broken = true;
        }
    }

    fn finish(self: Box<Self>, _deadline: Instant) -> u64 {
        0
    }
}
