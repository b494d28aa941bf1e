//! What a scene shows and where: the description is drawn first, then its objects are placed by
//! rejection sampling so that the caption is unambiguously true of the picture.
//!
//! All geometry is in fractions of the image side, y downwards. Every object lies fully inside
//! the image, and the bounding squares of any two objects are at least [`GAP`] apart along x or
//! along y, so objects never touch and can be counted.

use super::{Colour, Description, Placed, Position, Relation, Shape, Size, Word, MAX_COUNT};
use crate::rng::Rng;

/// Share of group captions; the rest are relation captions.
const GROUP_SHARE: f32 = 0.65;
/// Tries to place one object before the layout attempt is abandoned.
const TRIES: usize = 200;
/// Smallest distance between two objects' bounding squares.
const GAP: f32 = 0.02;
/// Sizes vary by up to ±10% around their nominal radius.
const SIZE_JITTER: f32 = 0.1;
/// Relation geometry: the first object is at least this far from the second along the relation's
/// axis, and less than [`RELATION_ALIGNMENT`] away across it.
pub(super) const RELATION_DISTANCE: f32 = 0.3;
pub(super) const RELATION_ALIGNMENT: f32 = 0.2;
/// Per-channel colour jitter of an object, in RGB units.
const COLOUR_JITTER: i32 = 14;

/// An axis-aligned rectangle of possible centres.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: (f32, f32),
    y: (f32, f32),
}

impl Rect {
    const IMAGE: Rect = Rect { x: (0.0, 1.0), y: (0.0, 1.0) };

    fn contains(&self, x: f32, y: f32) -> bool {
        (self.x.0..=self.x.1).contains(&x) && (self.y.0..=self.y.1).contains(&y)
    }
}

/// The region holding every centre of a group at `position`.
fn region(position: Position) -> Rect {
    match position {
        Position::Left => Rect { x: (0.05, 0.40), y: (0.25, 0.75) },
        Position::Right => Rect { x: (0.60, 0.95), y: (0.25, 0.75) },
        Position::Top => Rect { x: (0.25, 0.75), y: (0.05, 0.40) },
        Position::Bottom => Rect { x: (0.25, 0.75), y: (0.60, 0.95) },
    }
}

/// Draws what a scene will show.
pub(super) fn describe(rng: &mut Rng) -> Description {
    if rng.uniform() < GROUP_SHARE {
        Description::Group {
            count: rng.range(1..MAX_COUNT + 1),
            size: *rng.choose(Size::ALL),
            colour: *rng.choose(Colour::ALL),
            shape: *rng.choose(Shape::ALL),
            position: *rng.choose(Position::ALL),
        }
    } else {
        let first = (*rng.choose(Colour::ALL), *rng.choose(Shape::ALL));
        let relation = *rng.choose(Relation::ALL);
        // Two identical objects could not be told apart, so the caption would be ambiguous.
        let second = loop {
            let candidate = (*rng.choose(Colour::ALL), *rng.choose(Shape::ALL));
            if candidate != first {
                break candidate;
            }
        };
        Description::Relation { first, relation, second }
    }
}

/// Places the objects of `description`, or `None` when this attempt's random choices leave no room.
pub(super) fn place(description: &Description, rng: &mut Rng) -> Option<Vec<Placed>> {
    match *description {
        Description::Group { count, size, colour, shape, position } => {
            place_group(count, (colour, shape, size), position, rng)
        }
        Description::Relation { first, relation, second } => place_relation(first, relation, second, rng),
    }
}

fn place_group(count: usize, kind: (Colour, Shape, Size), position: Position, rng: &mut Rng) -> Option<Vec<Placed>> {
    let (colour, shape, size) = kind;
    let area = region(position);
    let mut placed: Vec<Placed> = Vec::with_capacity(count);
    for _ in 0..count {
        let radius = radius(size, rng);
        let (x, y) = (0..TRIES)
            .map(|_| sample_centre(area, radius, rng))
            .find(|&(x, y)| placed.iter().all(|o| apart(o, x, y, radius)))?;
        placed.push(Placed { colour, shape, size, x, y, radius, rgb: jittered(colour, rng) });
    }
    // Left and top regions overlap near the corner: a group there would fit two captions.
    let ambiguous = Position::ALL.iter().any(|&p| p != position && placed.iter().all(|o| region(p).contains(o.x, o.y)));
    (!ambiguous).then_some(placed)
}

fn place_relation(
    first: (Colour, Shape),
    relation: Relation,
    second: (Colour, Shape),
    rng: &mut Rng,
) -> Option<Vec<Placed>> {
    let sizes = (*rng.choose(Size::ALL), *rng.choose(Size::ALL));
    let radii = (radius(sizes.0, rng), radius(sizes.1, rng));
    let (a, b) = (0..TRIES)
        .map(|_| (sample_centre(Rect::IMAGE, radii.0, rng), sample_centre(Rect::IMAGE, radii.1, rng)))
        .find(|&(a, b)| relation_holds(relation, a, b))?;
    let one = Placed {
        colour: first.0,
        shape: first.1,
        size: sizes.0,
        x: a.0,
        y: a.1,
        radius: radii.0,
        rgb: jittered(first.0, rng),
    };
    let other = Placed {
        colour: second.0,
        shape: second.1,
        size: sizes.1,
        x: b.0,
        y: b.1,
        radius: radii.1,
        rgb: jittered(second.0, rng),
    };
    // The relation's minimum distance exceeds two large radii plus the gap, so they never touch.
    debug_assert!(apart(&one, other.x, other.y, other.radius));
    Some(vec![one, other])
}

/// Whether the object centred at `first` is `relation` the one centred at `second`.
pub(super) fn relation_holds(relation: Relation, first: (f32, f32), second: (f32, f32)) -> bool {
    // Offsets from the first object to the second; y grows downwards.
    let (dx, dy) = (second.0 - first.0, second.1 - first.1);
    let (along, across) = match relation {
        Relation::Above => (dy, dx),
        Relation::Below => (-dy, dx),
        Relation::LeftOf => (dx, dy),
        Relation::RightOf => (-dx, dy),
    };
    along >= RELATION_DISTANCE && across.abs() < RELATION_ALIGNMENT
}

/// Nominal radius ± [`SIZE_JITTER`].
fn radius(size: Size, rng: &mut Rng) -> f32 {
    let nominal = match size {
        Size::Small => 0.07,
        Size::Large => 0.12,
    };
    nominal * (1.0 + SIZE_JITTER * (2.0 * rng.uniform() - 1.0))
}

/// A centre in `area` for an object of `radius` that stays inside the image.
fn sample_centre(area: Rect, radius: f32, rng: &mut Rng) -> (f32, f32) {
    let axis = |(lo, hi): (f32, f32), rng: &mut Rng| {
        let (lo, hi) = (lo.max(radius), hi.min(1.0 - radius));
        lo + (hi - lo) * rng.uniform()
    };
    let x = axis(area.x, rng);
    (x, axis(area.y, rng))
}

/// Whether an object of `radius` centred at (x, y) keeps [`GAP`] from `other`.
fn apart(other: &Placed, x: f32, y: f32, radius: f32) -> bool {
    let reach = other.radius + radius + GAP;
    (other.x - x).abs() >= reach || (other.y - y).abs() >= reach
}

/// The colour's base RGB, each channel moved by up to ±[`COLOUR_JITTER`].
fn jittered(colour: Colour, rng: &mut Rng) -> [u8; 3] {
    base_rgb(colour).map(|c| {
        let shift = rng.range(0..2 * COLOUR_JITTER as usize + 1) as i32 - COLOUR_JITTER;
        (i32::from(c) + shift).clamp(0, 255) as u8
    })
}

/// Saturated enough that no neutral background resembles them, and far apart from one another.
fn base_rgb(colour: Colour) -> [u8; 3] {
    match colour {
        Colour::Red => [214, 40, 40],
        Colour::Green => [40, 168, 64],
        Colour::Blue => [42, 84, 214],
        Colour::Yellow => [236, 204, 36],
        Colour::Purple => [142, 58, 186],
    }
}

#[cfg(test)]
mod tests {
    use super::super::generate;
    use super::*;

    fn inside_image(o: &Placed) -> bool {
        o.x - o.radius >= 0.0 && o.x + o.radius <= 1.0 && o.y - o.radius >= 0.0 && o.y + o.radius <= 1.0
    }

    #[test]
    fn relation_scenes_show_their_relation() {
        let mut relations = 0;
        for index in 0..400 {
            let scene = generate(11, index);
            let Description::Relation { first, relation, second } = scene.description else { continue };
            relations += 1;
            let [a, b] = scene.objects.as_slice() else { panic!("a relation scene has two objects") };
            assert_eq!(((a.colour, a.shape), (b.colour, b.shape)), (first, second));
            assert!(relation_holds(relation, (a.x, a.y), (b.x, b.y)), "scene {index}: {a:?} {relation:?} {b:?}");
            assert!(!relation_holds(relation.reversed(), (a.x, a.y), (b.x, b.y)));
            assert!(inside_image(a) && inside_image(b) && apart(a, b.x, b.y, b.radius));
        }
        assert!(relations > 100);
    }

    #[test]
    fn group_scenes_keep_their_region_size_and_spacing() {
        for index in 0..400 {
            let scene = generate(12, index);
            let Description::Group { count, size, colour, shape, position } = scene.description else { continue };
            assert_eq!(scene.objects.len(), count);
            for (i, o) in scene.objects.iter().enumerate() {
                assert_eq!((o.colour, o.shape, o.size), (colour, shape, size));
                assert!(region(position).contains(o.x, o.y), "scene {index}: {o:?} not {position:?}");
                assert!(inside_image(o), "scene {index}: {o:?} leaves the image");
                let nominal = if size == Size::Small { 0.07 } else { 0.12 };
                assert!((o.radius / nominal - 1.0).abs() <= SIZE_JITTER + 1e-6);
                for p in &scene.objects[i + 1..] {
                    assert!(apart(o, p.x, p.y, p.radius), "scene {index}: {o:?} touches {p:?}");
                }
            }
            let other_fits = Position::ALL
                .iter()
                .any(|&p| p != position && scene.objects.iter().all(|o| region(p).contains(o.x, o.y)));
            assert!(!other_fits, "scene {index}: the group also fits another position");
        }
    }

    #[test]
    fn relation_geometry_by_hand() {
        assert!(relation_holds(Relation::Above, (0.5, 0.2), (0.55, 0.6)));
        assert!(relation_holds(Relation::Below, (0.55, 0.6), (0.5, 0.2)));
        assert!(!relation_holds(Relation::Above, (0.5, 0.2), (0.8, 0.6)), "too far across");
        assert!(!relation_holds(Relation::Above, (0.5, 0.2), (0.5, 0.4)), "too close along");
        assert!(relation_holds(Relation::LeftOf, (0.2, 0.5), (0.7, 0.45)));
        assert!(relation_holds(Relation::RightOf, (0.7, 0.45), (0.2, 0.5)));
    }
}
