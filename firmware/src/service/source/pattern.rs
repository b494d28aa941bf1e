//! `test-pattern`: synthetic frames that change every time (a moving square on a shifting
//! gradient), for trying outputs without a camera and for soak tests.

use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};

use super::SourceContext;
use crate::service::slot::FrameData;

pub fn run(width: u32, height: u32, fps: u32, ctx: &SourceContext) {
    let period = if fps == 0 { Duration::ZERO } else { Duration::from_secs_f64(1.0 / f64::from(fps)) };
    let mut n: u64 = 0;
    while !ctx.stopped() {
        let started = Instant::now();
        if !ctx.put(format!("test-pattern#{n}"), FrameData::Pixels(frame(width, height, n))) {
            return;
        }
        n += 1;
        if ctx.once {
            return;
        }
        ctx.sleep(period.saturating_sub(started.elapsed()));
    }
}

/// Frame `n`: the gradient's phase and the square's position both move with `n`.
pub fn frame(width: u32, height: u32, n: u64) -> RgbImage {
    let shift = (n * 37 % 256) as u32;
    let side = (width.min(height) / 4).max(1);
    let sx = (n * 13 % u64::from(width.saturating_sub(side).max(1))) as u32;
    let sy = (n * 7 % u64::from(height.saturating_sub(side).max(1))) as u32;
    RgbImage::from_fn(width, height, |x, y| {
        if (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y) {
            return Rgb([255, 255, 255]);
        }
        let r = (x * 255 / width.max(1) + shift) % 256;
        let g = (y * 255 / height.max(1) + 2 * shift) % 256;
        Rgb([r as u8, g as u8, ((shift + 128) % 256) as u8])
    })
}
