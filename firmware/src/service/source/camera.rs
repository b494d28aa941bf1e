//! `camera[:INDEX]` (cargo feature `camera`): V4L2 capture through nokhwa. MJPEG frames are kept
//! encoded (decoded by the engine's loader only if captioned); YUYV, NV12 and GRAY are converted
//! here, so nokhwa's own decoders (mozjpeg) are not needed. The camera is opened on the capture
//! thread itself (a nokhwa camera is not `Send`); opening errors come back before `run` starts.

use std::sync::mpsc;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution};
use nokhwa::Camera;

use super::SourceContext;
use crate::service::slot::FrameData;

/// Consecutive capture errors after which the camera is reopened.
const MAX_ERRORS: u32 = 10;

#[derive(Clone, Copy)]
pub struct Capture {
    index: u32,
    width: u32,
    height: u32,
    fps: u32,
}

impl Capture {
    /// Checks that the camera opens (then closes it again; the capture thread reopens it).
    pub fn open(index: u32, width: u32, height: u32, fps: u32) -> Result<Capture> {
        let capture = Capture { index, width, height, fps };
        let (tx, rx) = mpsc::channel();
        let probe = capture;
        std::thread::spawn(move || {
            let _ = tx.send(probe.camera().map(|c| describe(&c)));
        });
        let granted = rx.recv().map_err(|_| anyhow!("camera:{index}: probe thread failed"))??;
        log::info!("camera:{index}: asked {width}x{height} @ {fps} fps MJPEG, granted {granted}");
        Ok(capture)
    }

    fn camera(&self) -> Result<Camera> {
        let wanted = CameraFormat::new(Resolution::new(self.width, self.height), FrameFormat::MJPEG, self.fps.max(1));
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted));
        let mut camera = Camera::new(CameraIndex::Index(self.index), request)
            .with_context(|| format!("camera:{}: cannot open", self.index))?;
        camera.open_stream().with_context(|| format!("camera:{}: cannot start streaming", self.index))?;
        Ok(camera)
    }

    pub fn run(&mut self, ctx: &SourceContext) {
        let mut n = 0u64;
        while !ctx.stopped() {
            let mut camera = match self.camera() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("{e:#}; retrying in 2 s");
                    ctx.sleep(std::time::Duration::from_secs(2));
                    continue;
                }
            };
            let mut errors = 0;
            while !ctx.stopped() && errors < MAX_ERRORS {
                let frame = match camera.frame() {
                    Ok(f) => f,
                    Err(e) => {
                        errors += 1;
                        log::warn!("camera:{}: capture failed: {e}", self.index);
                        continue;
                    }
                };
                errors = 0;
                n += 1;
                let name = format!("camera:{}#{n}", self.index);
                let res = frame.resolution();
                let data = match convert(frame.source_frame_format(), res.width(), res.height(), frame.buffer()) {
                    Ok(d) => d,
                    Err(e) => {
                        ctx.stats.frames.inc();
                        ctx.stats.corrupt.inc();
                        log::warn!("{name}: {e}");
                        continue;
                    }
                };
                if !ctx.put(name, data) || ctx.once {
                    return;
                }
            }
            let _ = camera.stop_stream();
        }
    }
}

fn describe(camera: &Camera) -> String {
    let f = camera.camera_format();
    format!("{}x{} @ {} fps {}", f.width(), f.height(), f.frame_rate(), f.format())
}

/// A raw V4L2 buffer → a frame.
fn convert(format: FrameFormat, w: u32, h: u32, buf: &[u8]) -> Result<FrameData> {
    let (wu, hu) = (w as usize, h as usize);
    let need = |n: usize| {
        if buf.len() < n {
            bail!("short {format} buffer: {} bytes for {w}x{h}", buf.len());
        }
        Ok(())
    };
    let pixels: Vec<u8> = match format {
        FrameFormat::MJPEG => return Ok(FrameData::Encoded(buf.to_vec())),
        FrameFormat::RAWRGB => {
            need(wu * hu * 3)?;
            buf[..wu * hu * 3].to_vec()
        }
        FrameFormat::RAWBGR => {
            need(wu * hu * 3)?;
            buf[..wu * hu * 3].chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect()
        }
        FrameFormat::GRAY => {
            need(wu * hu)?;
            buf[..wu * hu].iter().flat_map(|&g| [g, g, g]).collect()
        }
        FrameFormat::YUYV => {
            need(wu * hu * 2)?;
            buf[..wu * hu * 2]
                .chunks_exact(4)
                .flat_map(|q| {
                    let (a, b) = (yuv(q[0], q[1], q[3]), yuv(q[2], q[1], q[3]));
                    [a[0], a[1], a[2], b[0], b[1], b[2]]
                })
                .collect()
        }
        FrameFormat::NV12 => {
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
    RgbImage::from_raw(w, h, pixels).map(FrameData::Pixels).ok_or_else(|| anyhow!("{format}: bad frame size {w}x{h}"))
}

/// BT.601 limited-range YCbCr → RGB.
fn yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
}
