//! The caption record every output sends: `{id, camera, caption, tokens, frame_time, model,
//! latency_ms}`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CaptionRecord {
    /// 1, 2, 3... in the order captions were made by this run.
    pub id: u64,
    pub camera: String,
    pub caption: String,
    /// Generated token ids, the stop token included.
    pub tokens: Vec<u32>,
    /// When the source got the frame, RFC 3339 UTC with milliseconds.
    pub frame_time: String,
    /// The bundle's directory name.
    pub model: String,
    /// Decoding the frame + captioning it.
    pub latency_ms: f64,
}

impl CaptionRecord {
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a record always serialises")
    }
}

/// `2026-11-22T19:30:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, since.subsec_millis())
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951825845` = Tue Feb 29 12:04:05 UTC 2000 (a leap day).
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_825_845_250)), "2000-02-29T12:04:05.250Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }
}
