//! Raw camera buffers → frames. Kept apart from the camera backend (a cargo feature) so that the
//! conversions are built and tested everywhere.

use anyhow::{anyhow, bail, Result};
use image::RgbImage;

use crate::service::slot::FrameData;

/// The V4L2 pixel formats cameras deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Motion JPEG: each buffer is a JPEG file.
    Mjpeg,
    Rgb,
    Bgr,
    Gray,
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// Planar 4:2:0: the Y plane, then interleaved U V at half resolution.
    Nv12,
}

/// A raw buffer of `format` at `w`×`h` → a frame. MJPEG stays encoded: it is decoded only if
/// the frame is captioned.
pub fn convert(format: PixelFormat, w: u32, h: u32, buf: &[u8]) -> Result<FrameData> {
    let (wu, hu) = (w as usize, h as usize);
    let need = |n: usize| {
        if buf.len() < n {
            bail!("short {format:?} buffer: {} bytes for {w}x{h}", buf.len());
        }
        Ok(())
    };
    let pixels: Vec<u8> = match format {
        PixelFormat::Mjpeg => return Ok(FrameData::Encoded(buf.to_vec())),
        PixelFormat::Rgb => {
            need(wu * hu * 3)?;
            buf[..wu * hu * 3].to_vec()
        }
        PixelFormat::Bgr => {
            need(wu * hu * 3)?;
            buf[..wu * hu * 3].chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect()
        }
        PixelFormat::Gray => {
            need(wu * hu)?;
            buf[..wu * hu].iter().flat_map(|&g| [g, g, g]).collect()
        }
        PixelFormat::Yuyv => {
            if !w.is_multiple_of(2) {
                bail!("YUYV frame of odd width {w}");
            }
            need(wu * hu * 2)?;
            buf[..wu * hu * 2]
                .chunks_exact(4)
                .flat_map(|q| {
                    let (a, b) = (yuv(q[0], q[1], q[3]), yuv(q[2], q[1], q[3]));
                    [a[0], a[1], a[2], b[0], b[1], b[2]]
                })
                .collect()
        }
        PixelFormat::Nv12 => {
            if !w.is_multiple_of(2) || !h.is_multiple_of(2) {
                bail!("NV12 frame of odd size {w}x{h}");
            }
            need(wu * hu * 3 / 2)?;
            let (luma, chroma) = buf.split_at(wu * hu);
            let mut out = Vec::with_capacity(wu * hu * 3);
            for y in 0..hu {
                for x in 0..wu {
                    let c = (y / 2) * wu + (x / 2) * 2;
                    out.extend_from_slice(&yuv(luma[y * wu + x], chroma[c], chroma[c + 1]));
                }
            }
            out
        }
    };
    RgbImage::from_raw(w, h, pixels).map(FrameData::Pixels).ok_or_else(|| anyhow!("{format:?}: bad frame size {w}x{h}"))
}

/// BT.601 limited-range YCbCr → RGB (what V4L2 webcams send), in 8.8 fixed point.
fn yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(frame: FrameData) -> Vec<u8> {
        match frame {
            FrameData::Pixels(img) => img.into_raw(),
            FrameData::Encoded(_) => panic!("expected pixels"),
        }
    }

    /// BT.601 studio-swing colour bars (ITU-R BT.601 / SMPTE EG 1): black Y=16, white Y=235,
    /// red (81, 90, 240), green (145, 54, 34), blue (41, 240, 110).
    #[test]
    fn yuv_colour_bars_give_the_bt601_colours() {
        let cases = [
            ((16, 128, 128), [0, 0, 0]),
            ((235, 128, 128), [255, 255, 255]),
            ((81, 90, 240), [255, 0, 0]),
            ((145, 54, 34), [0, 255, 0]),
            ((41, 240, 110), [0, 0, 255]),
        ];
        for ((y, u, v), want) in cases {
            let got = yuv(y, u, v);
            for c in 0..3 {
                assert!((i32::from(got[c]) - want[c]).abs() <= 2, "YUV ({y},{u},{v}) → {got:?}, want {want:?}");
            }
        }
    }

    #[test]
    fn yuyv_pairs_share_their_chroma() {
        // Two pixels, black then white, neutral chroma.
        let out = pixels(convert(PixelFormat::Yuyv, 2, 1, &[16, 128, 235, 128]).unwrap());
        assert_eq!(out, vec![0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn nv12_chroma_covers_two_by_two_blocks() {
        // 2x2 luma, one U V pair: red everywhere, at four brightnesses of the same chroma.
        let buf = [81, 81, 81, 81, 90, 240];
        let out = pixels(convert(PixelFormat::Nv12, 2, 2, &buf).unwrap());
        assert_eq!(out.len(), 12);
        assert!(out.chunks(3).all(|p| p[0] >= 253 && p[1] <= 2 && p[2] <= 2), "{out:?}");
    }

    #[test]
    fn gray_and_bgr_and_mjpeg() {
        assert_eq!(pixels(convert(PixelFormat::Gray, 2, 1, &[7, 9]).unwrap()), vec![7, 7, 7, 9, 9, 9]);
        assert_eq!(pixels(convert(PixelFormat::Bgr, 1, 1, &[1, 2, 3]).unwrap()), vec![3, 2, 1]);
        assert!(matches!(convert(PixelFormat::Mjpeg, 640, 480, b"\xff\xd8").unwrap(), FrameData::Encoded(_)));
    }

    #[test]
    fn short_and_odd_buffers_are_errors_naming_the_format() {
        let e = convert(PixelFormat::Yuyv, 4, 2, &[0; 10]).unwrap_err().to_string();
        assert!(e.contains("Yuyv") && e.contains("10 bytes") && e.contains("4x2"), "{e}");
        assert!(convert(PixelFormat::Nv12, 3, 2, &[0; 9]).unwrap_err().to_string().contains("odd"));
        assert!(convert(PixelFormat::Rgb, 2, 2, &[0; 11]).is_err());
    }
}
