//! `camera[:INDEX]` (cargo feature `camera`): V4L2 capture through nokhwa. MJPEG frames are kept
//! encoded (decoded by the engine's loader only if captioned); YUYV, NV12 and GRAY are converted
//! by [`super::pixels`], so nokhwa's own decoders (mozjpeg) are not needed. The camera is opened on the capture
//! thread itself (a nokhwa camera is not `Send`); opening errors come back before `run` starts.

use std::sync::mpsc;

use anyhow::{anyhow, Context, Result};
use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution};
use nokhwa::Camera;

use super::pixels::{convert, PixelFormat};
use super::SourceContext;

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
                let data =
                    match convert(pixel_format(frame.source_frame_format()), res.width(), res.height(), frame.buffer())
                    {
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

/// nokhwa's name for a V4L2 pixel format → ours.
fn pixel_format(format: FrameFormat) -> PixelFormat {
    match format {
        FrameFormat::MJPEG => PixelFormat::Mjpeg,
        FrameFormat::RAWRGB => PixelFormat::Rgb,
        FrameFormat::RAWBGR => PixelFormat::Bgr,
        FrameFormat::GRAY => PixelFormat::Gray,
        FrameFormat::YUYV => PixelFormat::Yuyv,
        FrameFormat::NV12 => PixelFormat::Nv12,
    }
}
