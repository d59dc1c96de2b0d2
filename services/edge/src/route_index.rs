//! The routes of one HTTP method indexed by their leading literal segments (a trie), so a lookup
//! checks only the templates that can match the request's path instead of every template of the
//! method.
//!
//! A template's literal prefix is its segments up to the first `*`, `**` or variable. A path can
//! match a template only if the path's first segments equal that prefix: a literal segment
//! matches a path segment equal to it or, when the path segment holds a `%`, equal to it once
//! percent-decoded ([`PathTemplate::is_match`]). So the lookup walks the trie along the path's
//! segments and checks the routes of every node on the way; at a segment with a `%` it checks
//! every route below that node instead (a decoded form may equal a literal the raw one does not).
//! Literals never hold a `:`, so the path's last segment is keyed without its `:verb`.
//!
//! Routes are held by their position in the method's list, sorted most specific first, and the
//! lookup answers the first position that matches: the same route the scan of the whole sorted
//! list finds.

use crate::path_template::{PathTemplate, Segment};

/// One node: the routes whose literal prefix ends here, every route at or below it, and the
/// children by their next literal segment.
#[derive(Debug, Default)]
struct Node {
    /// Positions of the routes whose literal prefix is this node's path, ascending.
    here: Vec<usize>,
    /// Positions of every route at or below this node, ascending.
    below: Vec<usize>,
    /// The children, sorted by their literal segment.
    children: Vec<(Box<str>, Node)>,
}

/// A trie over the literal prefixes of one method's templates (see the module docs).
#[derive(Debug, Default)]
pub struct RouteIndex {
    root: Node,
}

impl RouteIndex {
    /// Indexes `templates`, which are in lookup order (most specific first).
    pub fn build<'t>(templates: impl IntoIterator<Item = &'t PathTemplate>) -> Self {
        let mut root = Node::default();
        for (position, template) in templates.into_iter().enumerate() {
            let mut node = &mut root;
            node.below.push(position);
            for segment in &template.segments {
                let Segment::Literal(literal) = segment else {
                    break;
                };
                let at = match node
                    .children
                    .binary_search_by(|(k, _)| k.as_ref().cmp(literal.as_str()))
                {
                    Ok(at) => at,
                    Err(at) => {
                        node.children
                            .insert(at, (literal.as_str().into(), Node::default()));
                        at
                    }
                };
                node = &mut node.children[at].1;
                node.below.push(position);
            }
            node.here.push(position);
        }
        Self { root }
    }

    /// The first position (in lookup order) whose template `is_match` says matches `path`.
    pub fn first_match(&self, path: &str, is_match: impl Fn(usize, &str) -> bool) -> Option<usize> {
        // Every template starts with `/`; a path without one matches none.
        let rest = path.strip_prefix('/')?;
        let mut best: Option<usize> = None;
        let mut check = |positions: &[usize]| {
            for &p in positions {
                if best.is_some_and(|b| b <= p) {
                    return;
                }
                if is_match(p, path) {
                    best = Some(p);
                    return;
                }
            }
        };
        let mut node = &self.root;
        let mut parts = rest.split('/').peekable();
        loop {
            check(&node.here);
            let Some(part) = parts.next() else { break };
            // The last segment may end in the template's `:verb`; literals hold no `:`.
            let key = match parts.peek() {
                None => part.rfind(':').map_or(part, |i| &part[..i]),
                Some(_) => part,
            };
            if key.contains('%') {
                check(&node.below);
                break;
            }
            match node.children.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
                Ok(at) => node = &node.children[at].1,
                Err(_) => break,
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(templates: &[&str]) -> (Vec<PathTemplate>, RouteIndex) {
        let parsed: Vec<PathTemplate> = templates
            .iter()
            .map(|t| PathTemplate::parse(t).unwrap())
            .collect();
        let index = RouteIndex::build(&parsed);
        (parsed, index)
    }

    /// The first template of `templates` that matches, by the index and by a scan of all.
    fn both(
        templates: &[PathTemplate],
        index: &RouteIndex,
        path: &str,
    ) -> (Option<usize>, Option<usize>) {
        let indexed = index.first_match(path, |p, path| templates[p].is_match(path));
        let scanned = templates.iter().position(|t| t.is_match(path));
        (indexed, scanned)
    }

    #[test]
    fn finds_what_a_scan_finds() {
        let (templates, index) = index(&[
            "/v1/stores/{id}:restart",
            "/v1/stores/{id}",
            "/v1/stores",
            "/v1/{name=stores/*}/machines",
            "/v1/a@b",
            "/v1/{name=**}",
            "/{x}",
            "/**",
        ]);
        for path in [
            "/v1/stores/s1:restart",
            "/v1/stores/s1",
            "/v1/stores",
            "/v1/stores/s1/machines",
            "/v1/st%6Fres/s1",
            "/v1/stores%2Fs1",
            "/v1/a%20b",
            "/v1/a%2520b",
            "/v1/a%40b",
            "/v1/a@b",
            "/v1/x/y/z:get",
            "/v1",
            "/v2",
            "/",
            "",
            "v1/stores",
            "/v1/:restart",
            "/v1/stores/:restart",
            "/v1/stores/s1/",
            "//",
        ] {
            let (indexed, scanned) = both(&templates, &index, path);
            assert_eq!(indexed, scanned, "{path:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn the_index_agrees_with_a_scan(
                templates in proptest::collection::vec("(/([a-c]|b@|\\*|\\*\\*|\\{[xyz]\\})){1,4}(:[a-c]{1,2})?", 1..8),
                path in "(/([a-c:%0-9F]{0,4}|b%2561|b%61|b%6[01]|b%40|b@)){0,5}",
            ) {
                let parsed: Vec<PathTemplate> = templates
                    .iter()
                    .filter_map(|t| PathTemplate::parse(t).ok())
                    .collect();
                let index = RouteIndex::build(&parsed);
                let (indexed, scanned) = both(&parsed, &index, &path);
                prop_assert_eq!(indexed, scanned, "{:?} on {:?}", templates, path);
            }
        }
    }
}
