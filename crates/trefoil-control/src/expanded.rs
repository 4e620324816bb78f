//! How large a YAML request body becomes once its aliases are expanded,
//! measured before anything is built from it.
//!
//! An alias is a copy of the node its anchor names, so ten lines of anchors
//! of ten aliases each make 10^9 nodes from one kilobyte: a 1 KiB body took
//! the control plane to 23 GiB and the kernel's OOM killer after a minute.
//! The loader builds every copy; this pass only adds up sizes, one event at
//! a time with its own stack (no recursion), and stops at the first node
//! past the bound. Aliases may share structure, not grow a body past what a
//! body without them could be.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Largest expanded size, in the units of [`measure`]: twice the body
/// limit, as a body without aliases measures about its length.
pub const MAX_EXPANDED: u64 = 2 * crate::server::MAX_BODY_BYTES as u64;

/// A body that would expand past the bound.
#[derive(Debug, thiserror::Error)]
#[error("the body's YAML aliases expand it past {limit} bytes (at line {line}); write the repeated parts out, or share less")]
pub struct TooLarge {
    pub limit: u64,
    pub line: usize,
}

/// Checks that `text` expands to at most `limit`: each scalar counts its
/// length plus one, each collection one plus its entries, each alias what
/// its anchor's node counts. Text that does not parse passes: the loader
/// then says where and why.
pub fn measure(text: &str, limit: u64) -> Result<(), TooLarge> {
    let mut parser = Parser::new_from_str(text);
    // Collections being read: their size so far and their anchor.
    let mut open: Vec<(u64, usize)> = Vec::new();
    let mut anchored: HashMap<usize, u64> = HashMap::new();
    let mut documents = 0u64;
    loop {
        let Ok((event, at)) = parser.next_token() else { return Ok(()) };
        let finished = match event {
            Event::StreamEnd => return Ok(()),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((1, anchor));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((size, anchor)) = open.pop() else { return Ok(()) };
                if anchor != 0 {
                    anchored.insert(anchor, size);
                }
                size
            }
            Event::Scalar(value, _, anchor, _) => {
                let size = value.len() as u64 + 1;
                if anchor != 0 {
                    anchored.insert(anchor, size);
                }
                size
            }
            Event::Alias(id) => anchored.get(&id).copied().unwrap_or(1),
            _ => continue,
        };
        // Sizes only grow outward: the innermost open node, or the stream's
        // total, is the first to pass the bound.
        let total = match open.last_mut() {
            Some((size, _)) => size,
            None => &mut documents,
        };
        *total = total.saturating_add(finished);
        if *total > limit {
            return Err(TooLarge { limit, line: at.line() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anchors of ten aliases each, `levels` deep: 10^levels strings.
    fn laughs(levels: usize) -> String {
        let mut text = String::from("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: lol}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..levels {
            text.push_str(&format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
        }
        text
    }

    #[test]
    fn bodies_without_aliases_measure_about_their_length() {
        let body = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [a, b]\n  rules:\n  - backends: [{service: web, weight: 1}]\n";
        measure(body, body.len() as u64).unwrap();
        let flat = format!("[{}]", vec!["1"; 100_000].join(","));
        measure(&flat, flat.len() as u64 + 1).unwrap();
        assert!(measure(&flat, 100_000).is_err());
    }

    #[test]
    fn aliases_count_as_the_copies_they_make() {
        measure(&laughs(3), 10_000).unwrap();
        // `a5` copies "lol" 10^6 times, 4.1 MB: with what came before it the
        // document passes the bound where `a5` ends, on line 9.
        let e = measure(&laughs(9), MAX_EXPANDED).unwrap_err();
        assert_eq!(e.line, 9, "{e}");
        // A large scalar copied many times is as large as the copies.
        let big = format!("a: &big \"{}\"\nb: [{}]\n", "x".repeat(100_000), vec!["*big"; 50].join(", "));
        assert!(measure(&big, 1_000_000).is_err());
        measure(&big, 6_000_000).unwrap();
    }

    #[test]
    fn nesting_costs_no_recursion_and_text_that_does_not_parse_is_left_to_the_loader() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let _ = measure(&deep, MAX_EXPANDED);
        measure("a: [unclosed", MAX_EXPANDED).unwrap();
        measure("*nowhere", MAX_EXPANDED).unwrap();
    }
}
