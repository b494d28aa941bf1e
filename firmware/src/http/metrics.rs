//! Counters for `GET /metrics`, in Prometheus' text format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds: a Pi 5 captions in ~0.4 s, a
/// Pi 4 on the 32-bit OS in ~1.3 s.
const BUCKETS_S: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// What the API has done since it started.
#[derive(Default)]
pub struct Metrics {
    captions: AtomicU64,
    /// Requests answered, by (route, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Failed or refused captions, by kind (`bad_image`, `bad_request`, `too_large`,
    /// `queue_full`, `timeout`, `unauthorized`, `engine`).
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Counts per bucket of [`BUCKETS_S`], then above the last.
    latency: Mutex<([u64; BUCKETS_S.len() + 1], f64)>,
}

impl Metrics {
    pub fn observe_caption(&self, elapsed: Duration) {
        self.captions.fetch_add(1, Ordering::Relaxed);
        let s = elapsed.as_secs_f64();
        let bucket = BUCKETS_S.iter().position(|&b| s <= b).unwrap_or(BUCKETS_S.len());
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        latency.0[bucket] += 1;
        latency.1 += s;
    }

    /// The mean time of the captions made so far (none yet: 1 s).
    pub fn mean_latency(&self) -> Duration {
        let (counts, sum) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let n: u64 = counts.iter().sum();
        if n == 0 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(sum / n as f64)
        }
    }

    pub fn count_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default() += 1;
    }

    pub fn count_request(&self, route: &'static str, status: u16) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route, status)).or_default() += 1;
    }

    /// The text of `GET /metrics`; `queue_depth` and `service` (the camera service's counters
    /// when the API runs beside it) are read by the caller at that moment.
    pub fn render(&self, queue_depth: usize, service: &[(&str, u64)]) -> String {
        let mut out = String::new();
        let captions = self.captions.load(Ordering::Relaxed);
        metric(&mut out, "edgecap_http_captions_total", "counter", "Captions made for API requests.");
        let _ = writeln!(out, "edgecap_http_captions_total {captions}");
        metric(&mut out, "edgecap_http_requests_total", "counter", "HTTP requests answered, by route and status.");
        for ((route, code), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "edgecap_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}");
        }
        metric(&mut out, "edgecap_http_errors_total", "counter", "Requests that gave no caption, by kind.");
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (kind, n) in &errors {
            let _ = writeln!(out, "edgecap_http_errors_total{{kind=\"{kind}\"}} {n}");
        }
        metric(
            &mut out,
            "edgecap_http_dropped_total",
            "counter",
            "Requests refused or abandoned unanswered: queue full or timed out.",
        );
        let dropped = errors.get("queue_full").unwrap_or(&0) + errors.get("timeout").unwrap_or(&0);
        let _ = writeln!(out, "edgecap_http_dropped_total {dropped}");
        metric(&mut out, "edgecap_http_queue_depth", "gauge", "Captions waiting for the engine.");
        let _ = writeln!(out, "edgecap_http_queue_depth {queue_depth}");
        self.render_latency(&mut out);
        if !service.is_empty() {
            let help = "The camera service's counts: frames, captions, frames skipped, captions an output dropped.";
            metric(&mut out, "edgecap_service_total", "counter", help);
            for (counter, n) in service {
                let _ = writeln!(out, "edgecap_service_total{{counter=\"{counter}\"}} {n}");
            }
        }
        out
    }

    fn render_latency(&self, out: &mut String) {
        let (counts, sum) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let name = "edgecap_http_caption_seconds";
        metric(out, name, "histogram", "Time to decode and caption a request's image.");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_S.iter().zip(counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[BUCKETS_S.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_every_caption() {
        let m = Metrics::default();
        for ms in [30, 70, 70, 400, 90_000] {
            m.observe_caption(Duration::from_millis(ms));
        }
        m.count_error("queue_full");
        m.count_error("timeout");
        m.count_error("timeout");
        let text = m.render(3, &[("mqtt_delivered", 12), ("mqtt_dropped", 7)]);
        assert!(text.contains("edgecap_http_caption_seconds_bucket{le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("edgecap_http_caption_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("edgecap_http_caption_seconds_bucket{le=\"0.5\"} 4\n"), "{text}");
        assert!(text.contains("edgecap_http_caption_seconds_bucket{le=\"60\"} 4\n"), "{text}");
        assert!(text.contains("edgecap_http_caption_seconds_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("edgecap_http_caption_seconds_count 5\n"), "{text}");
        assert!(text.contains("edgecap_http_captions_total 5\n"), "{text}");
        assert!(text.contains("edgecap_http_dropped_total 3\n"), "{text}");
        assert!(text.contains("edgecap_http_queue_depth 3\n"), "{text}");
        assert!(text.contains("edgecap_service_total{counter=\"mqtt_dropped\"} 7\n"), "{text}");
        assert!(text.contains("edgecap_service_total{counter=\"mqtt_delivered\"} 12\n"), "{text}");
    }
}
