//! A scene as a camera might take it: the same objects at the same places, rendered at another
//! size, on other neutral backgrounds (textured, vignetted), exposed a little differently,
//! slightly blurred and noisy, and saved as a JPEG of varying quality.
//!
//! The built-in model must not know only the generator's clean PNGs: this rendering trains it
//! (a share of the training split) and tests it (the held-out scenes re-rendered). Like the plain
//! rendering it uses no transcendental functions, so the pixels before JPEG are the same on every
//! platform.

use image::{Rgb, RgbImage};

use super::render::{neutral, paint_objects, to_u8, vary};
use super::Placed;
use crate::rng::Rng;

/// Sides a camera picture may have, in pixels (the plain scenes are 128).
pub const CAMERA_SIDES: std::ops::RangeInclusive<u32> = 160..=320;
/// JPEG qualities a camera picture may be saved at.
pub const CAMERA_QUALITIES: std::ops::RangeInclusive<u8> = 35..=90;

/// How one picture is taken, drawn per scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    pub side: u32,
    /// Background: two neutrals and how they blend (flat, vertical, horizontal, blotches).
    from: [f32; 3],
    to: [f32; 3],
    kind: usize,
    /// Darkening of the corners, 0..0.3.
    vignette: f32,
    /// Exposure factor, 0.85..1.15.
    exposure: f32,
    /// Passes of a [1 2 1]/4 blur in each direction, 0..=2.
    blur: u32,
    /// Per-channel noise amplitude (triangular), 0..8.
    noise: f32,
    pub quality: u8,
}

impl Look {
    pub fn draw(rng: &mut Rng) -> Look {
        let side = CAMERA_SIDES.start() + rng.range(0..(CAMERA_SIDES.end() - CAMERA_SIDES.start() + 1) as usize) as u32;
        let (from, to) = (camera_neutral(rng), camera_neutral(rng));
        let span = usize::from(CAMERA_QUALITIES.end() - CAMERA_QUALITIES.start()) + 1;
        Look {
            side,
            from,
            to,
            kind: rng.range(0..4),
            vignette: 0.3 * rng.uniform(),
            exposure: 0.85 + 0.3 * rng.uniform(),
            blur: rng.range(0..3) as u32,
            noise: 8.0 * rng.uniform(),
            quality: CAMERA_QUALITIES.start() + rng.range(0..span) as u8,
        }
    }
}

/// A neutral of the plain scenes' families, or one of three they never use: warm paper, cool
/// concrete, a muted wooden table top (all with channels within ~40 of each other).
fn camera_neutral(rng: &mut Rng) -> [f32; 3] {
    let base = match rng.range(0..8) {
        0 => [206.0, 196.0, 176.0],
        1 => [148.0, 154.0, 162.0],
        2 => [128.0, 108.0, 92.0],
        _ => return neutral(rng),
    };
    vary(base, 24.0, rng)
}

/// The picture of `objects` taken with `look`, before JPEG encoding.
pub fn render_camera(objects: &[Placed], look: &Look, rng: &mut Rng) -> RgbImage {
    let mut image = background(look, rng);
    paint_objects(&mut image, objects);
    expose(&mut image, look);
    for _ in 0..look.blur {
        blur(&mut image);
    }
    add_noise(&mut image, look.noise, rng);
    image
}

/// Coarse grid of blotch offsets for the textured background, bilinearly interpolated.
const BLOTCH_GRID: usize = 5;

fn background(look: &Look, rng: &mut Rng) -> RgbImage {
    let grid: Vec<f32> = (0..BLOTCH_GRID * BLOTCH_GRID).map(|_| 30.0 * (rng.uniform() - 0.5)).collect();
    let last = (look.side - 1) as f32;
    RgbImage::from_fn(look.side, look.side, |x, y| {
        let (u, v) = (x as f32 / last, y as f32 / last);
        let (t, offset) = match look.kind {
            0 => (0.0, 0.0),
            1 => (v, 0.0),
            2 => (u, 0.0),
            _ => (0.5, bilinear(&grid, u, v)),
        };
        // The vignette darkens by the squared distance from the centre (1 at the corners).
        let d2 = 2.0 * ((u - 0.5) * (u - 0.5) + (v - 0.5) * (v - 0.5));
        let shade = 1.0 - look.vignette * d2;
        Rgb(std::array::from_fn(|c| to_u8((look.from[c] + (look.to[c] - look.from[c]) * t + offset) * shade)))
    })
}

fn bilinear(grid: &[f32], u: f32, v: f32) -> f32 {
    let scale = (BLOTCH_GRID - 1) as f32;
    let (gx, gy) = (u * scale, v * scale);
    let (x0, y0) = ((gx as usize).min(BLOTCH_GRID - 2), (gy as usize).min(BLOTCH_GRID - 2));
    let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
    let at = |x: usize, y: usize| grid[y * BLOTCH_GRID + x];
    let top = at(x0, y0) + (at(x0 + 1, y0) - at(x0, y0)) * fx;
    let bottom = at(x0, y0 + 1) + (at(x0 + 1, y0 + 1) - at(x0, y0 + 1)) * fx;
    top + (bottom - top) * fy
}

fn expose(image: &mut RgbImage, look: &Look) {
    for p in image.pixels_mut() {
        p.0 = p.0.map(|c| to_u8(f32::from(c) * look.exposure));
    }
}

/// One pass of the separable [1 2 1]/4 kernel (edges repeated), integer arithmetic.
fn blur(image: &mut RgbImage) {
    let (w, h) = image.dimensions();
    for horizontal in [true, false] {
        let source = image.clone();
        for y in 0..h {
            for x in 0..w {
                let (a, b) = if horizontal {
                    ((x.saturating_sub(1), y), ((x + 1).min(w - 1), y))
                } else {
                    ((x, y.saturating_sub(1)), (x, (y + 1).min(h - 1)))
                };
                let (pa, pm, pb) = (source.get_pixel(a.0, a.1), source.get_pixel(x, y), source.get_pixel(b.0, b.1));
                let out = std::array::from_fn(|c| {
                    ((u16::from(pa.0[c]) + 2 * u16::from(pm.0[c]) + u16::from(pb.0[c]) + 2) / 4) as u8
                });
                image.put_pixel(x, y, Rgb(out));
            }
        }
    }
}

/// Independent triangular noise in [-amplitude, amplitude] on every channel (sensor noise is
/// not neutral, unlike the plain scenes' grain).
fn add_noise(image: &mut RgbImage, amplitude: f32, rng: &mut Rng) {
    if amplitude <= 0.0 {
        return;
    }
    for p in image.pixels_mut() {
        p.0 = p.0.map(|c| to_u8(f32::from(c) + amplitude * (rng.uniform() + rng.uniform() - 1.0)));
    }
}

/// `image` as a JPEG of `quality`.
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(image)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{generate, generate_camera};
    use super::*;

    #[test]
    fn a_camera_picture_shows_the_plain_scene_otherwise_rendered() {
        let mut sides = std::collections::HashSet::new();
        for index in 0..40 {
            let (plain, camera) = (generate(4, index), generate_camera(4, index));
            assert_eq!(plain.description, camera.description);
            assert_eq!(plain.objects, camera.objects);
            let look = camera.look.expect("a camera scene has a look");
            assert!(CAMERA_SIDES.contains(&camera.image.width()) && camera.image.height() == camera.image.width());
            assert_eq!(look.side, camera.image.width());
            assert!(CAMERA_QUALITIES.contains(&look.quality));
            sides.insert(look.side);
            // Every object's centre pixel is still (roughly) its colour: the dominant channel of
            // its paint stays dominant through exposure, blur and noise.
            for object in &camera.objects {
                let (x, y) = ((object.x * look.side as f32) as u32, (object.y * look.side as f32) as u32);
                let seen = camera.image.get_pixel(x, y).0;
                let strongest = |p: [u8; 3]| (0..3).max_by_key(|&c| p[c]).unwrap();
                let paint = object.rgb;
                if paint.iter().filter(|&&c| c == paint[strongest(paint)]).count() == 1 {
                    assert_eq!(strongest(seen), strongest(paint), "scene {index}: {seen:?} for {paint:?}");
                }
            }
        }
        assert!(sides.len() > 20, "sides should vary: {sides:?}");
        assert_eq!(generate_camera(4, 3).image, generate_camera(4, 3).image, "deterministic");
    }

    #[test]
    fn blur_keeps_flat_areas_and_softens_edges() {
        let mut image = RgbImage::from_fn(8, 8, |x, _| if x < 4 { Rgb([0, 0, 0]) } else { Rgb([200, 200, 200]) });
        blur(&mut image);
        assert_eq!(image.get_pixel(0, 3).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(7, 3).0, [200, 200, 200]);
        assert_eq!(image.get_pixel(3, 3).0, [50, 50, 50], "(0 + 2·0 + 200) / 4");
        assert_eq!(image.get_pixel(4, 3).0, [150, 150, 150]);
    }

    #[test]
    fn jpeg_bytes_decode_to_the_picture_approximately() {
        let scene = generate_camera(4, 0);
        let look = scene.look.unwrap();
        let bytes = encode_jpeg(&scene.image, look.quality).unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), scene.image.dimensions());
        let mean_error = back
            .as_raw()
            .iter()
            .zip(scene.image.as_raw())
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .sum::<i32>() as f32
            / back.as_raw().len() as f32;
        assert!(mean_error < 8.0, "{mean_error}");
    }
}
