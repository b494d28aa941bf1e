//! The caption record every output sends: `{id, camera, caption, tokens, frame_time, model,
//! latency_ms}`, and the captioned frame for outputs that show it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::Serialize;

/// The long side of the picture sent with a caption: a dashboard card's size, ~30–60 KB.
pub const PICTURE_SIDE: u32 = 640;
/// Pictures stay under this (MQTT's packets are capped at 256 KiB): a frame of noise that
/// encodes larger is sent at a lower quality.
pub const MAX_PICTURE_BYTES: usize = 192 * 1024;

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
    /// The captioned frame as a JPEG at most [`PICTURE_SIDE`] on its long side, when an output
    /// wants it (MQTT's image entity); never in the JSON.
    #[serde(skip)]
    pub picture: Option<Arc<Vec<u8>>>,
}

/// `frame` scaled down to at most [`PICTURE_SIDE`] on its long side (never up), as a JPEG of
/// quality 80 (lower if that is over [`MAX_PICTURE_BYTES`]); none if encoding fails: the
/// caption still goes, without its picture. `encoded`, the bytes `frame` was decoded from, is
/// the picture itself when it is already a JPEG that small (an RTSP frame always is: ffmpeg
/// scales and encodes it), so it is not encoded a second time.
pub fn picture(frame: &RgbImage, encoded: Option<&[u8]>) -> Option<Vec<u8>> {
    let (w, h) = frame.dimensions();
    let small_jpeg = |b: &&[u8]| b.starts_with(&[0xff, 0xd8, 0xff]) && b.len() <= MAX_PICTURE_BYTES;
    if let Some(jpeg) = encoded.filter(small_jpeg).filter(|_| w.max(h) <= PICTURE_SIDE) {
        return Some(jpeg.to_vec());
    }
    let scale = (PICTURE_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (tw, th) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small;
    let shown = if (tw, th) == (w, h) {
        frame
    } else {
        small = image::imageops::thumbnail(frame, tw, th);
        &small
    };
    [80, 50, 25].into_iter().find_map(|quality| {
        let mut out = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
        shown.write_with_encoder(encoder).ok()?;
        (out.len() <= MAX_PICTURE_BYTES).then_some(out)
    })
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
    use super::{picture, rfc3339, MAX_PICTURE_BYTES, PICTURE_SIDE};

    #[test]
    fn pictures_are_jpegs_no_larger_than_the_side() {
        for (w, h) in [(1920, 1080), (480, 2000), (320, 240), (1, 1)] {
            let frame = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
            let jpeg = picture(&frame, None).unwrap();
            assert!(jpeg.len() <= MAX_PICTURE_BYTES);
            let back = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap();
            let (bw, bh) = (back.width(), back.height());
            assert!(bw.max(bh) <= PICTURE_SIDE, "{w}x{h} -> {bw}x{bh}");
            if w.max(h) > PICTURE_SIDE {
                assert_eq!(bw.max(bh), PICTURE_SIDE, "{w}x{h} -> {bw}x{bh}");
                // The aspect ratio kept, to a pixel.
                assert!(
                    ((bw as f64 / bh as f64) - (w as f64 / h as f64)).abs()
                        < 0.01 * (w as f64 / h as f64) + 2.0 / bh as f64
                );
            } else {
                assert_eq!((bw, bh), (w, h));
            }
        }
    }
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_small_jpeg_frame_is_its_own_picture_anything_else_is_encoded() {
        let frame = |w, h| image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 9]));
        let small = frame(320, 240);
        let jpeg = picture(&small, None).unwrap();
        assert_eq!(picture(&small, Some(&jpeg)).unwrap(), jpeg, "passed through as it came");
        // A PNG, or a JPEG of a frame over the side, is encoded (and scaled) anew.
        let mut png = Vec::new();
        small.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let from_png = picture(&small, Some(&png)).unwrap();
        assert!(from_png.starts_with(&[0xff, 0xd8, 0xff]) && from_png != png);
        let large = frame(1280, 720);
        let large_jpeg = picture(&large, None).unwrap();
        let again = picture(&large, Some(&large_jpeg)).unwrap();
        let back = image::load_from_memory(&again).unwrap();
        assert_eq!((back.width(), back.height()), (PICTURE_SIDE, 360));
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // `date -u -d @951825845` = Tue Feb 29 12:04:05 UTC 2000 (a leap day).
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_825_845_250)), "2000-02-29T12:04:05.250Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59.000Z");
    }
}
