//! Reading a caption back into a [`Description`]: the inverse of [`Description::caption`].
//!
//! Case, runs of whitespace and a final full stop are ignored; everything else must follow the
//! grammar exactly (a count word agreeing with the noun, known words only), because the scorer
//! must not give credit for text the scenes never use.

use super::{count_of_word, Colour, Description, Position, Relation, Shape, Size, Word};

/// The description a caption states, or `None` when it is not a scene caption.
pub fn parse_caption(text: &str) -> Option<Description> {
    let lower = text.trim().to_lowercase();
    let body = lower.strip_suffix('.').unwrap_or(&lower);
    let words: Vec<&str> = body.split_whitespace().collect();
    parse_group(&words).or_else(|| parse_relation(&words))
}

/// `{count} {size} {colour} {shape}[s] {position}`.
fn parse_group(words: &[&str]) -> Option<Description> {
    let [count, size, colour, noun, position @ ..] = words else { return None };
    let count = count_of_word(count)?;
    Some(Description::Group {
        count,
        size: Size::from_word(size)?,
        colour: Colour::from_word(colour)?,
        shape: shape_of_noun(noun, count)?,
        position: Position::from_word(&position.join(" "))?,
    })
}

/// `a {colour} {shape} {relation} a {colour} {shape}`.
fn parse_relation(words: &[&str]) -> Option<Description> {
    let ["a", colour1, shape1, relation @ .., "a", colour2, shape2] = words else { return None };
    Some(Description::Relation {
        first: (Colour::from_word(colour1)?, shape_of_noun(shape1, 1)?),
        relation: Relation::from_word(&relation.join(" "))?,
        second: (Colour::from_word(colour2)?, shape_of_noun(shape2, 1)?),
    })
}

/// The shape a noun names, when its number agrees with `count`.
fn shape_of_noun(noun: &str, count: usize) -> Option<Shape> {
    Shape::ALL.iter().copied().find(|s| s.noun(count) == noun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_case_space_and_full_stop_only() {
        let expected = Some(Description::Group {
            count: 2,
            size: Size::Small,
            colour: Colour::Purple,
            shape: Shape::Triangle,
            position: Position::Bottom,
        });
        assert_eq!(parse_caption("two small purple triangles at the bottom"), expected);
        assert_eq!(parse_caption("  Two SMALL purple\ttriangles at  the bottom. "), expected);
        assert_eq!(parse_caption("two small purple triangles at the bottom ."), expected);
        for wrong in [
            "two small purple triangle at the bottom", // number disagrees
            "a small purple triangles at the bottom",
            "two small purple triangles at the bottom..",
            "two small purple triangles at bottom",
            "2 small purple triangles at the bottom",
            "two tiny purple triangles at the bottom",
            "a red circle above",
            "a red circle near a blue square",
            "",
            "the the the the the",
        ] {
            assert_eq!(parse_caption(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn reads_relations() {
        assert_eq!(
            parse_caption("a blue square to the right of a red square."),
            Some(Description::Relation {
                first: (Colour::Blue, Shape::Square),
                relation: Relation::RightOf,
                second: (Colour::Red, Shape::Square),
            })
        );
        assert_eq!(parse_caption("a blue squares above a red circle"), None);
    }
}
