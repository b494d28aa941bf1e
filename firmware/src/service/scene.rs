//! Scene-change detection: a frame is captioned only if it differs enough from the last
//! captioned one. The comparison is a mean absolute difference of 32×24 grayscale thumbnails
//! (box-averaged, so sensor noise mostly cancels), which costs far less than a caption.

use image::RgbImage;

const THUMB_W: u32 = 32;
const THUMB_H: u32 = 24;

pub type Thumbnail = [u8; (THUMB_W * THUMB_H) as usize];

pub fn thumbnail(image: &RgbImage) -> Thumbnail {
    let (w, h) = image.dimensions();
    let mut sums = [0u64; (THUMB_W * THUMB_H) as usize];
    let mut counts = [0u64; (THUMB_W * THUMB_H) as usize];
    for (x, y, p) in image.enumerate_pixels() {
        let cell = ((y * THUMB_H / h) * THUMB_W + x * THUMB_W / w) as usize;
        // ITU-R BT.601 luma in integer arithmetic.
        sums[cell] += (299 * u64::from(p[0]) + 587 * u64::from(p[1]) + 114 * u64::from(p[2])) / 1000;
        counts[cell] += 1;
    }
    let mut thumb = [0u8; (THUMB_W * THUMB_H) as usize];
    for (t, (s, c)) in thumb.iter_mut().zip(sums.iter().zip(&counts)) {
        *t = if *c == 0 { 0 } else { (s / c) as u8 };
    }
    thumb
}

/// Mean absolute difference in 0..=1.
pub fn difference(a: &Thumbnail, b: &Thumbnail) -> f64 {
    let total: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    total as f64 / (a.len() as f64 * 255.0)
}

/// Remembers the last captioned scene.
pub struct SceneFilter {
    threshold: f64,
    last: Option<Thumbnail>,
}

impl SceneFilter {
    pub fn new(threshold: f64) -> Self {
        SceneFilter { threshold, last: None }
    }

    /// The thumbnail when the frame shows a new scene (to pass to `accept` once captioned),
    /// None when it is the same scene.
    pub fn check(&self, image: &RgbImage) -> Option<Thumbnail> {
        if self.threshold <= 0.0 {
            return Some([0; (THUMB_W * THUMB_H) as usize]);
        }
        let thumb = thumbnail(image);
        match &self.last {
            Some(last) if difference(last, &thumb) < self.threshold => None,
            _ => Some(thumb),
        }
    }

    pub fn accept(&mut self, thumb: Thumbnail) {
        self.last = Some(thumb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn same_scene_with_noise_is_skipped_and_a_change_is_not() {
        let base = RgbImage::from_fn(160, 120, |x, y| Rgb([(x % 256) as u8, (y * 2 % 256) as u8, 90]));
        // ±3 levels of pseudo-random noise: a static scene seen by a real sensor.
        let noisy = RgbImage::from_fn(160, 120, |x, y| {
            let p = base.get_pixel(x, y);
            let n = ((x * 7 + y * 13) % 7) as i32 - 3;
            Rgb(p.0.map(|c| (i32::from(c) + n).clamp(0, 255) as u8))
        });
        let mut changed = base.clone();
        for y in 30..90 {
            for x in 40..120 {
                changed.put_pixel(x, y, Rgb([250, 250, 250]));
            }
        }
        let mut filter = SceneFilter::new(0.02);
        let first = filter.check(&base).expect("the first frame is always new");
        filter.accept(first);
        assert!(filter.check(&noisy).is_none(), "noise alone is not a new scene");
        assert!(filter.check(&changed).is_some(), "a bright object covering a quarter of the view is");
        assert!(SceneFilter::new(0.0).check(&base).is_some(), "threshold 0 turns the check off");
    }
}
