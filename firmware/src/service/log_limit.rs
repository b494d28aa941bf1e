//! A limit on warnings that can repeat for every item (a skipped frame, a dropped caption, a
//! failing poll of a folder): the first few in a window are logged, the rest counted, and the
//! count goes out with the next one logged. A stream of garbage or a vanished folder then costs a
//! few lines a minute, not megabytes of log.

use std::time::{Duration, Instant};

/// Warnings of one kind logged per window; the rest are counted.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct LogLimit {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(note)` when a warning may be logged now: `note` says how many like it were not
    /// (empty when none), to append to the message.
    pub fn check(&mut self) -> Option<String> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<String> {
        if self.window_start.is_none_or(|start| now.duration_since(start) >= WINDOW) {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged == BURST {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} more like it not logged)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_with_the_next() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        let logged: Vec<_> = (0..100).map(|i| limit.check_at(t0 + Duration::from_millis(i))).collect();
        assert_eq!(logged.iter().filter(|l| l.is_some()).count(), BURST as usize);
        assert!(logged[..BURST as usize].iter().all(|l| l.as_deref() == Some("")));
        let later = limit.check_at(t0 + WINDOW + Duration::from_secs(1));
        assert_eq!(later.as_deref(), Some(" (95 more like it not logged)"));
        assert_eq!(limit.check_at(t0 + WINDOW + Duration::from_secs(2)).as_deref(), Some(""));
    }
}
