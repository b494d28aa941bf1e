//! Synthetic captioned scenes: the project's own offline dataset, which trains the default model
//! and measures it.
//!
//! A scene is a 128×128 picture of one to three filled shapes on a neutral background, with a
//! compositional caption in one of two forms:
//!
//! * group (≈ 65%): `{count} {size} {colour} {shape}[s] {position}`, e.g.
//!   "three large blue squares at the top";
//! * relation (≈ 35%): `a {colour} {shape} {relation} a {colour} {shape}`, e.g.
//!   "a green triangle to the left of a yellow circle" (the two objects differ in colour or shape).
//!
//! Scene `i` of seed `s` depends only on `(s, i)` (see [`generate`]), so a split of 100 scenes is
//! the prefix of one of 1000. By convention seed 1 is the training split and seed 2 the held-out
//! split.
//!
//! Modules: `layout` chooses what a scene shows and where, `render` paints it, `parse` reads
//! captions back, `score` judges predicted captions attribute by attribute, `split` writes and
//! reads scene directories, `evaluate` captions a directory with a bundle.

mod camera;
mod evaluate;
mod layout;
mod parse;
mod render;
mod score;
mod split;

pub use camera::{encode_jpeg, Look, CAMERA_QUALITIES, CAMERA_SIDES};
pub use evaluate::{evaluate, render_table, Evaluation};
pub use parse::parse_caption;
pub use score::{Accuracy, AttributeScores};
pub use split::{read_split, scene_file_name, write_split, Rendering, CAPTIONS_FILE, SCENES_FILE};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Width and height of every scene, in pixels.
pub const SIDE: u32 = 128;

/// A closed set of caption words (or phrases), each variant written one way.
pub trait Word: Copy + Eq + 'static {
    const ALL: &'static [Self];

    /// How a caption writes it.
    fn word(self) -> &'static str;

    /// The variant a caption's word (or phrase) names.
    fn from_word(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.word() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
}

impl Word for Colour {
    const ALL: &'static [Colour] = &[Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple];

    fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Word for Shape {
    const ALL: &'static [Shape] = &[Shape::Circle, Shape::Square, Shape::Triangle];

    fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

impl Shape {
    /// The noun for `count` of them: "circle", "circles".
    pub fn noun(self, count: usize) -> String {
        if count == 1 {
            self.word().to_string()
        } else {
            format!("{}s", self.word())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Large,
}

impl Word for Size {
    const ALL: &'static [Size] = &[Size::Small, Size::Large];

    fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// Where a group is: the region of the image holding every centre (see `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    Left,
    Right,
    Top,
    Bottom,
}

impl Word for Position {
    const ALL: &'static [Position] = &[Position::Left, Position::Right, Position::Top, Position::Bottom];

    fn word(self) -> &'static str {
        match self {
            Position::Left => "on the left",
            Position::Right => "on the right",
            Position::Top => "at the top",
            Position::Bottom => "at the bottom",
        }
    }
}

/// Where the first object of a relation caption is, relative to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

impl Word for Relation {
    const ALL: &'static [Relation] = &[Relation::Above, Relation::Below, Relation::LeftOf, Relation::RightOf];

    fn word(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }
}

impl Relation {
    /// The relation seen from the second object ("above" ↔ "below").
    pub fn reversed(self) -> Relation {
        match self {
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
        }
    }
}

/// Count words; a group has 1..=[`MAX_COUNT`] objects.
const COUNT_WORDS: [&str; 3] = ["a", "two", "three"];
pub const MAX_COUNT: usize = COUNT_WORDS.len();

/// "a", "two", "three"; a count the scenes never use is written in digits.
pub fn count_word(count: usize) -> String {
    match count.checked_sub(1).and_then(|i| COUNT_WORDS.get(i)) {
        Some(word) => word.to_string(),
        None => count.to_string(),
    }
}

/// The count a count word names.
pub fn count_of_word(word: &str) -> Option<usize> {
    COUNT_WORDS.iter().position(|&w| w == word).map(|i| i + 1)
}

/// What a scene shows, in the terms of its caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Description {
    /// `count` objects alike in size, colour and shape, all in one region.
    Group { count: usize, size: Size, colour: Colour, shape: Shape, position: Position },
    /// Two single objects, differing in colour or shape; their sizes are random and unmentioned.
    Relation { first: (Colour, Shape), relation: Relation, second: (Colour, Shape) },
}

impl Description {
    /// The caption: lower case, single spaces, no final full stop.
    pub fn caption(&self) -> String {
        match *self {
            Description::Group { count, size, colour, shape, position } => format!(
                "{} {} {} {} {}",
                count_word(count),
                size.word(),
                colour.word(),
                shape.noun(count),
                position.word()
            ),
            Description::Relation { first: (c1, s1), relation, second: (c2, s2) } => {
                format!("a {} {} {} a {} {}", c1.word(), s1.word(), relation.word(), c2.word(), s2.word())
            }
        }
    }
}

impl Description {
    /// One description per scene meaning: a relation is stated from the side whose
    /// (first, relation, second) orders first, so "a red circle above a blue square" and "a blue
    /// square below a red circle" have one canonical form (the first of the two). Groups are
    /// their own.
    pub fn canonical(self) -> Description {
        match self {
            Description::Relation { first, relation, second }
                if (second, relation.reversed(), first) < (first, relation, second) =>
            {
                Description::Relation { first: second, relation: relation.reversed(), second: first }
            }
            other => other,
        }
    }
}

/// One object as painted. Coordinates are fractions of the image side, y downwards.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    /// Centre.
    pub x: f32,
    pub y: f32,
    /// Half the side of the object's bounding square (a circle's radius).
    pub radius: f32,
    /// The colour painted: the colour's base RGB with this object's jitter.
    pub rgb: [u8; 3],
}

/// A generated scene: the picture, what its caption says, and where each object is (a relation
/// scene lists the caption's first object first).
#[derive(Debug, Clone)]
pub struct Scene {
    pub image: RgbImage,
    pub description: Description,
    pub objects: Vec<Placed>,
    /// How a camera rendering was taken (it is saved as a JPEG); `None` for the plain PNG.
    pub look: Option<Look>,
}

/// Separates the camera renderings' draws from the plain rendering's.
const CAMERA_STREAM: u64 = 0x6361_6d65_7261;

/// Scene `index` of `seed`. The description is drawn from stream `index` of `seed`; the layout and
/// picture from that stream's sub-stream 0, or, when the objects cannot be placed within a bounded
/// number of tries, sub-stream 1, 2, … (deterministically, and without changing the description,
/// so hard layouts such as three large squares keep their share of the data).
pub fn generate(seed: u64, index: u64) -> Scene {
    let (description, objects, _, mut rng) = lay_out(seed, index);
    let image = render::render(&objects, &mut rng);
    Scene { image, description, objects, look: None }
}

/// Scene `index` of `seed` as [`generate`] describes and places it, taken by a camera
/// (see `camera`): another size, background, exposure, blur, noise and JPEG quality, drawn from
/// a stream of their own.
pub fn generate_camera(seed: u64, index: u64) -> Scene {
    let (description, objects, layout_seed, _) = lay_out(seed, index);
    let mut rng = Rng::derive(layout_seed ^ CAMERA_STREAM, index);
    let look = Look::draw(&mut rng);
    let image = camera::render_camera(&objects, &look, &mut rng);
    Scene { image, description, objects, look: Some(look) }
}

/// The description and placed objects of scene `index` of `seed`, the layout seed, and the
/// stream the plain rendering continues.
fn lay_out(seed: u64, index: u64) -> (Description, Vec<Placed>, u64, Rng) {
    let mut rng = Rng::derive(seed, index);
    let description = layout::describe(&mut rng);
    let layout_seed = rng.next_u64();
    let mut attempt = 0;
    loop {
        let mut rng = Rng::derive(layout_seed, attempt);
        if let Some(objects) = layout::place(&description, &mut rng) {
            return (description, objects, layout_seed, rng);
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn scenes_depend_only_on_seed_and_index() {
        for index in [0, 1, 17, 999] {
            let (a, b) = (generate(1, index), generate(1, index));
            assert_eq!(a.image, b.image);
            assert_eq!(a.description, b.description);
            assert_eq!(a.objects, b.objects);
        }
        // A split is a prefix of a longer one: nothing carries over from one scene to the next.
        let later_first = generate(1, 5);
        let _ = generate(1, 4);
        assert_eq!(generate(1, 5).image, later_first.image);
        assert_ne!(generate(1, 0).image, generate(2, 0).image);
        assert_ne!(generate(1, 0).image, generate(1, 1).image);
        assert_eq!(generate(3, 0).image.dimensions(), (SIDE, SIDE));
    }

    #[test]
    fn captions_parse_back_to_their_descriptions() {
        for index in 0..400 {
            let scene = generate(7, index);
            let caption = scene.description.caption();
            assert_eq!(parse_caption(&caption), Some(scene.description), "{caption:?}");
            let shouted = format!("  {}. ", caption.to_uppercase().replace(' ', "   "));
            assert_eq!(parse_caption(&shouted), Some(scene.description), "{shouted:?}");
        }
    }

    #[test]
    fn a_relation_and_its_reverse_share_one_canonical_form() {
        let forward = Description::Relation {
            first: (Colour::Red, Shape::Circle),
            relation: Relation::Above,
            second: (Colour::Blue, Shape::Square),
        };
        let backward = Description::Relation {
            first: (Colour::Blue, Shape::Square),
            relation: Relation::Below,
            second: (Colour::Red, Shape::Circle),
        };
        assert_eq!(forward.canonical(), forward, "red (first colour) leads");
        assert_eq!(backward.canonical(), forward);
        let swapped = Description::Relation {
            first: (Colour::Red, Shape::Circle),
            relation: Relation::Below,
            second: (Colour::Blue, Shape::Square),
        };
        assert_ne!(swapped.canonical(), forward.canonical(), "another scene stays another");
        for index in 0..200 {
            let d = generate(7, index).description;
            assert_eq!(d.canonical().canonical(), d.canonical());
            if let Description::Group { .. } = d {
                assert_eq!(d.canonical(), d);
            }
        }
    }

    #[test]
    fn examples_read_as_specified() {
        let group = Description::Group {
            count: 3,
            size: Size::Large,
            colour: Colour::Blue,
            shape: Shape::Square,
            position: Position::Top,
        };
        assert_eq!(group.caption(), "three large blue squares at the top");
        let relation = Description::Relation {
            first: (Colour::Green, Shape::Triangle),
            relation: Relation::LeftOf,
            second: (Colour::Yellow, Shape::Circle),
        };
        assert_eq!(relation.caption(), "a green triangle to the left of a yellow circle");
        let one = Description::Group {
            count: 1,
            size: Size::Small,
            position: Position::Left,
            colour: Colour::Red,
            shape: Shape::Circle,
        };
        assert_eq!(one.caption(), "a small red circle on the left");
    }

    #[test]
    fn five_hundred_scenes_cover_every_attribute() {
        let (mut colours, mut shapes, mut counts, mut sizes) =
            (HashSet::new(), HashSet::new(), HashSet::new(), HashSet::new());
        let (mut positions, mut relations) = (HashSet::new(), HashSet::new());
        let mut groups = 0;
        for index in 0..500 {
            match generate(1, index).description {
                Description::Group { count, size, colour, shape, position } => {
                    groups += 1;
                    colours.insert(colour);
                    shapes.insert(shape);
                    counts.insert(count);
                    sizes.insert(size);
                    positions.insert(position);
                }
                Description::Relation { first, relation, second } => {
                    assert_ne!(first, second, "a relation's objects must be told apart");
                    colours.extend([first.0, second.0]);
                    shapes.extend([first.1, second.1]);
                    relations.insert(relation);
                }
            }
        }
        assert_eq!(colours.len(), Colour::ALL.len());
        assert_eq!(shapes.len(), Shape::ALL.len());
        assert_eq!(counts, (1..=MAX_COUNT).collect());
        assert_eq!(sizes.len(), Size::ALL.len());
        assert_eq!(positions.len(), Position::ALL.len());
        assert_eq!(relations.len(), Relation::ALL.len());
        assert!((280..370).contains(&groups), "{groups} group scenes of 500, expected about 65%");
    }
}
