//! Judging predicted captions against the scenes' true descriptions, attribute by attribute.
//!
//! * Group scenes: colour, shape, count, size and position are each right when the predicted
//!   group caption states the true value.
//! * Relation scenes: colour is right when both colours are, shape when both shapes are, position
//!   when the relation is. "a red circle above a blue square" and "a blue square below a red
//!   circle" state the same thing, so both are compared in one canonical order (above, left of).
//!   Count and size are judged on group scenes only.
//! * A caption that does not parse, or has the other form (a relation caption for a group scene),
//!   is wrong for every attribute judged on that scene.
//! * Correct caption: every attribute right, i.e. the caption states what the scene shows (a
//!   relation in either order). This is what "describes the scene correctly" means.
//! * Exact match: the predicted caption, read back, is the scene's own caption (same order too).

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::{parse_caption, Description};

/// Right answers out of judged scenes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
}

impl Accuracy {
    /// Share right, 0 when nothing was judged.
    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    fn judge(&mut self, right: bool) {
        self.total += 1;
        self.correct += usize::from(right);
    }
}

/// `{"correct", "total", "rate"}`, so JSON readers need not divide.
impl Serialize for Accuracy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Accuracy", 3)?;
        s.serialize_field("correct", &self.correct)?;
        s.serialize_field("total", &self.total)?;
        s.serialize_field("rate", &self.rate())?;
        s.end()
    }
}

/// Per-attribute accuracy of predicted captions (see the module docs for what counts as right).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttributeScores {
    pub scenes: usize,
    pub group_scenes: usize,
    pub relation_scenes: usize,
    pub colour: Accuracy,
    pub shape: Accuracy,
    /// Group scenes only.
    pub count: Accuracy,
    /// Group scenes only.
    pub size: Accuracy,
    /// A group's position, or a relation.
    pub position: Accuracy,
    /// Every attribute right (a relation may be stated in either order).
    pub correct: Accuracy,
    /// `correct` over group scenes only, and over relation scenes only: the two kinds fail in
    /// different ways, and a model can be good at one and poor at the other.
    pub correct_group: Accuracy,
    pub correct_relation: Accuracy,
    pub exact: Accuracy,
    /// Predicted captions that are not scene captions at all.
    pub unparseable: usize,
}

impl AttributeScores {
    /// Scores of (true description, predicted caption) pairs.
    pub fn of_pairs(pairs: &[(Description, String)]) -> AttributeScores {
        let mut scores = AttributeScores::default();
        for (truth, predicted) in pairs {
            scores.add(truth, predicted);
        }
        scores
    }

    /// Judges one more scene.
    pub fn add(&mut self, truth: &Description, predicted: &str) {
        let guess = parse_caption(predicted);
        self.scenes += 1;
        self.unparseable += usize::from(guess.is_none());
        self.exact.judge(guess.as_ref() == Some(truth));
        let (truth, guess) = (canonical(truth), guess.map(|g| canonical(&g)));
        match (truth, guess) {
            (
                Description::Group { count, size, colour, shape, position },
                Some(Description::Group { count: c, size: s, colour: k, shape: h, position: p }),
            ) => self.judge_group([colour == k, shape == h, count == c, size == s, position == p]),
            (Description::Group { .. }, _) => self.judge_group([false; 5]),
            (
                Description::Relation { first, relation, second },
                Some(Description::Relation { first: f, relation: r, second: s }),
            ) => self.judge_relation([
                first.0 == f.0 && second.0 == s.0,
                first.1 == f.1 && second.1 == s.1,
                relation == r,
            ]),
            (Description::Relation { .. }, _) => self.judge_relation([false; 3]),
        }
    }

    /// A caption is correct when every attribute judged on its scene is right: in canonical
    /// form, that is the same as stating the same description.
    fn judge_group(&mut self, [colour, shape, count, size, position]: [bool; 5]) {
        self.group_scenes += 1;
        let right = colour && shape && count && size && position;
        self.correct.judge(right);
        self.correct_group.judge(right);
        self.colour.judge(colour);
        self.shape.judge(shape);
        self.count.judge(count);
        self.size.judge(size);
        self.position.judge(position);
    }

    fn judge_relation(&mut self, [colours, shapes, relation]: [bool; 3]) {
        self.relation_scenes += 1;
        let right = colours && shapes && relation;
        self.correct.judge(right);
        self.correct_relation.judge(right);
        self.colour.judge(colours);
        self.shape.judge(shapes);
        self.position.judge(relation);
    }
}

/// A relation stated from the side of whichever object makes it "above" or "to the left of".
fn canonical(description: &Description) -> Description {
    match *description {
        Description::Relation { first, relation, second }
            if matches!(relation, super::Relation::Below | super::Relation::RightOf) =>
        {
            Description::Relation { first: second, relation: relation.reversed(), second: first }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Colour, Position, Relation, Shape, Size};
    use super::*;

    fn group() -> Description {
        Description::Group {
            count: 2,
            size: Size::Large,
            colour: Colour::Red,
            shape: Shape::Circle,
            position: Position::Left,
        }
    }

    fn relation() -> Description {
        Description::Relation {
            first: (Colour::Green, Shape::Square),
            relation: Relation::Above,
            second: (Colour::Yellow, Shape::Triangle),
        }
    }

    fn acc(correct: usize, total: usize) -> Accuracy {
        Accuracy { correct, total }
    }

    #[test]
    fn counts_hand_made_pairs() {
        let pairs: Vec<(Description, String)> = [
            (group(), "two large red circles on the left."),  // all right, exact
            (group(), "three large red squares on the left"), // count and shape wrong
            (group(), "the quick brown fox"),                 // unparseable: all wrong
            (group(), "a red circle above a blue square"),    // other form: all wrong
            (relation(), "a yellow triangle below a green square"), // same meaning, not exact
            (relation(), "a green square above a yellow circle"), // shapes wrong
            (relation(), "a green square to the left of a yellow triangle"), // relation wrong
            (relation(), ""),                                 // unparseable
        ]
        .into_iter()
        .map(|(d, c)| (d, c.to_string()))
        .collect();
        let s = AttributeScores::of_pairs(&pairs);
        assert_eq!((s.scenes, s.group_scenes, s.relation_scenes, s.unparseable), (8, 4, 4, 2));
        assert_eq!(s.colour, acc(2 + 3, 8));
        assert_eq!(s.shape, acc(1 + 2, 8));
        assert_eq!(s.count, acc(1, 4));
        assert_eq!(s.size, acc(2, 4));
        assert_eq!(s.position, acc(2 + 2, 8));
        assert_eq!(s.correct, acc(2, 8), "the exact one and the same relation stated the other way");
        assert_eq!((s.correct_group, s.correct_relation), (acc(1, 4), acc(1, 4)));
        assert_eq!(s.exact, acc(1, 8));
        assert_eq!(s.exact.rate(), 0.125);
        assert_eq!(AttributeScores::default().colour.rate(), 0.0);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["count"], serde_json::json!({"correct": 1, "total": 4, "rate": 0.25}));
    }
}
