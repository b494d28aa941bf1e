//! Painting a scene: a neutral background (flat, or a vertical or horizontal gradient between two
//! neutrals, sometimes with light grain), then each object, anti-aliased by 4×4 supersampling.
//!
//! Backgrounds are greys, beige, slate, near-white or near-black with little saturation, so that
//! no background could be read as one of the shape colours. Only integer and basic float
//! arithmetic is used (no transcendental functions), so the pixels are the same on every platform.

use image::{Rgb, RgbImage};

use super::{Placed, Shape, SIDE};
use crate::rng::Rng;

/// Supersamples per pixel along each axis.
const SUBSAMPLES: u32 = 4;

pub(super) fn render(objects: &[Placed], rng: &mut Rng) -> RgbImage {
    let mut image = background(SIDE, rng);
    paint_objects(&mut image, objects);
    image
}

/// Paints `objects` over `image` (square, any side: coordinates are fractions of it).
pub(super) fn paint_objects(image: &mut RgbImage, objects: &[Placed]) {
    for object in objects {
        paint(image, object);
    }
}

/// A neutral colour: one of five families, lightly varied.
pub(super) fn neutral(rng: &mut Rng) -> [f32; 3] {
    let base = match rng.range(0..5) {
        0 => {
            let v = 70.0 + 130.0 * rng.uniform();
            [v, v, v] // grey
        }
        1 => [222.0, 212.0, 188.0], // beige
        2 => [92.0, 102.0, 118.0],  // slate
        3 => [242.0, 241.0, 236.0], // near-white
        _ => [34.0, 35.0, 40.0],    // dark
    };
    vary(base, 20.0, rng)
}

/// `base` with a shared brightness shift within ±`brightness`/2, which keeps the hue, and a small
/// per-channel tint, which keeps saturation low.
pub(super) fn vary(base: [f32; 3], brightness: f32, rng: &mut Rng) -> [f32; 3] {
    let shift = brightness * (rng.uniform() - 0.5);
    base.map(|c| c + shift + 8.0 * (rng.uniform() - 0.5))
}

fn background(side: u32, rng: &mut Rng) -> RgbImage {
    let (from, to) = (neutral(rng), neutral(rng));
    let kind = rng.range(0..3);
    let grain = if rng.uniform() < 0.5 { 3.0 + 7.0 * rng.uniform() } else { 0.0 };
    let last = (side - 1) as f32;
    RgbImage::from_fn(side, side, |x, y| {
        let t = match kind {
            0 => 0.0,
            1 => y as f32 / last,
            _ => x as f32 / last,
        };
        // Triangular noise in [-grain, grain], the same on every channel so it stays neutral.
        let noise = if grain > 0.0 { grain * (rng.uniform() + rng.uniform() - 1.0) } else { 0.0 };
        Rgb(std::array::from_fn(|c| to_u8(from[c] + (to[c] - from[c]) * t + noise)))
    })
}

pub(super) fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Blends the object into the pixels its bounding square touches, by the share of covered samples.
fn paint(image: &mut RgbImage, object: &Placed) {
    let side = image.width() as f32;
    let pixel_range = |centre: f32| {
        let lo = ((centre - object.radius) * side).floor().max(0.0) as u32;
        let hi = ((centre + object.radius) * side).ceil().min(side) as u32;
        lo..hi
    };
    for py in pixel_range(object.y) {
        for px in pixel_range(object.x) {
            let coverage = coverage(object, px, py, side);
            if coverage > 0.0 {
                let pixel = image.get_pixel_mut(px, py);
                for (c, &paint) in pixel.0.iter_mut().zip(&object.rgb) {
                    *c = to_u8(f32::from(*c) * (1.0 - coverage) + f32::from(paint) * coverage);
                }
            }
        }
    }
}

/// Share of pixel (px, py)'s samples that fall inside the object.
fn coverage(object: &Placed, px: u32, py: u32, side: f32) -> f32 {
    let mut inside = 0;
    for sy in 0..SUBSAMPLES {
        for sx in 0..SUBSAMPLES {
            let x = (px as f32 + (sx as f32 + 0.5) / SUBSAMPLES as f32) / side;
            let y = (py as f32 + (sy as f32 + 0.5) / SUBSAMPLES as f32) / side;
            if contains(object, x, y) {
                inside += 1;
            }
        }
    }
    inside as f32 / (SUBSAMPLES * SUBSAMPLES) as f32
}

/// Whether the point (x, y) (fractions of the side) is inside the filled shape.
fn contains(object: &Placed, x: f32, y: f32) -> bool {
    let (dx, dy, r) = (x - object.x, y - object.y, object.radius);
    match object.shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r && dy.abs() <= r,
        // Apex at the top of the bounding square, base along its bottom: the half-width grows
        // from 0 at the apex to r at the base.
        Shape::Triangle => dy <= r && dx.abs() <= (dy + r) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{generate, Colour, Size};
    use super::*;

    /// Channels close together (beige, the most coloured neutral, spreads ~40; shape colours 120+).
    fn is_neutral(p: &Rgb<u8>) -> bool {
        let (max, min) = (p.0.iter().max().copied().unwrap_or(0), p.0.iter().min().copied().unwrap_or(0));
        max - min <= 45
    }

    #[test]
    fn backgrounds_are_neutral_and_vary() {
        let mut corners = std::collections::HashSet::new();
        for index in 0..200 {
            let scene = generate(5, index);
            // Corners are never covered: objects are centred well inside.
            let corner = scene.image.get_pixel(0, 0);
            assert!(is_neutral(corner), "scene {index}: corner {corner:?} is not neutral");
            corners.insert(corner.0);
        }
        assert!(corners.len() > 100, "backgrounds should vary: {} distinct corners", corners.len());
    }

    #[test]
    fn objects_are_painted_in_their_colour() {
        let mut rng = Rng::new(0);
        let object = Placed {
            colour: Colour::Red,
            shape: Shape::Triangle,
            size: Size::Large,
            x: 0.5,
            y: 0.5,
            radius: 0.12,
            rgb: [214, 40, 40],
        };
        let image = render(&[object], &mut rng);
        let centre = (0.5 * SIDE as f32) as u32;
        assert_eq!(image.get_pixel(centre, centre + 5).0, [214, 40, 40], "inside the triangle");
        assert!(is_neutral(image.get_pixel(centre - 12, centre - 12)), "beside the apex is background");
        // Pixels at least half covered: red exceeds green by more than half of red's 174.
        let painted = image.pixels().filter(|p| i32::from(p.0[0]) - i32::from(p.0[1]) > 87).count() as f32;
        let expected = 2.0 * (0.12 * SIDE as f32).powi(2); // a triangle is half its bounding square
        assert!((painted / expected - 1.0).abs() < 0.1, "{painted} pixels painted, ~{expected} expected");
    }
}
