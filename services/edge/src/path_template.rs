//! Path templates of `google.api.http` rules: parsing and matching.
//!
//! The grammar (from `google/api/http.proto`):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//! `{x}` is `{x=*}`; `**` matches zero or more segments and must be the last segment. A literal
//! holds no percent-escape (it matches a request segment written as it is or percent-encoded). A
//! single-segment variable's value is fully percent-decoded; a multi-segment one keeps `%2F`
//! encoded (the spec's reserved expansion) so that its `/` separators stay meaningful.

use std::fmt;

use percent_encoding::percent_decode_str;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `*`: any one non-empty segment.
    Single,
    /// `**`: zero or more segments (last only).
    Multi,
}

/// A variable of a template: which field it binds and which segments it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, e.g. `["order", "id"]` for `{order.id}`.
    pub field_path: Vec<String>,
    /// Index of its first segment.
    pub start: usize,
    /// Index one past its last segment (for `**`, the end of the path).
    pub end: usize,
}

impl Variable {
    /// The field path joined with dots, as written in the template.
    pub fn name(&self) -> String {
        self.field_path.join(".")
    }
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The segments, variables expanded to their patterns.
    pub segments: Vec<Segment>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
    /// The custom verb (`:cancel` -> `cancel`), if any.
    pub verb: Option<String>,
    /// The template as written.
    pub text: String,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}, at byte {position}: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What is wrong.
    pub reason: String,
}

/// A variable's value taken from a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Index of the variable in [`PathTemplate::variables`].
    pub variable: usize,
    /// Its decoded value.
    pub value: String,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn error(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError {
            template: self.text.to_string(),
            position: self.pos,
            reason: reason.into(),
        }
    }

    /// Reads one segment (not a variable) up to `/`, `}`, `:` or the end.
    fn segment(&mut self, in_variable: bool) -> Result<Segment, TemplateError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b'/' || c == b'}' || (c == b':' && !in_variable) {
                break;
            }
            // A literal is compared with the request's segment as written or percent-decoded;
            // an escape in the literal itself would have two spellings to compare, and the
            // contracts never need one.
            if c == b'%' {
                return Err(self.error(
                    "a percent-escape is not allowed in a template literal; write the character itself",
                ));
            }
            if c == b'{' {
                return Err(self.error(if in_variable {
                    "variables cannot be nested"
                } else {
                    "a variable must be a whole segment"
                }));
            }
            if !is_literal_char(c) && c != b'*' {
                return Err(self.error(format!(
                    "character {:?} is not allowed in a path template",
                    c as char
                )));
            }
            self.pos += 1;
        }
        let text = &self.text[start..self.pos];
        match text {
            "" => Err(self.error("empty segment (`//`, or `/` at the end)")),
            "*" => Ok(Segment::Single),
            "**" => Ok(Segment::Multi),
            t if t.contains('*') => Err(TemplateError {
                template: self.text.to_string(),
                position: start,
                reason: format!("`*` must be a whole segment, not part of {t:?}"),
            }),
            t => Ok(Segment::Literal(t.to_string())),
        }
    }

    fn field_path(&mut self) -> Result<Vec<String>, TemplateError> {
        let mut path = Vec::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek() {
                if c.is_ascii_alphanumeric() || c == b'_' {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            let ident = &self.text[start..self.pos];
            if ident.is_empty() || ident.as_bytes()[0].is_ascii_digit() {
                return Err(self.error("expected a field name (letters, digits, `_`)"));
            }
            path.push(ident.to_string());
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                return Ok(path);
            }
        }
    }
}

fn is_literal_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'@'
        )
}

impl PathTemplate {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut p = Parser { text, pos: 0 };
        if p.peek() != Some(b'/') {
            return Err(p.error("a path template must start with `/`"));
        }
        p.pos += 1;
        let mut segments = Vec::new();
        let mut variables: Vec<Variable> = Vec::new();
        let mut verb = None;
        loop {
            if p.peek() == Some(b'{') {
                p.pos += 1;
                let field_path = p.field_path()?;
                let start = segments.len();
                if p.peek() == Some(b'=') {
                    p.pos += 1;
                    loop {
                        segments.push(p.segment(true)?);
                        match p.peek() {
                            Some(b'/') => p.pos += 1,
                            Some(b'}') => break,
                            _ => return Err(p.error("unclosed variable: expected `}`")),
                        }
                    }
                } else {
                    segments.push(Segment::Single);
                }
                if p.peek() != Some(b'}') {
                    return Err(p.error("expected `}` or `=` after the field path"));
                }
                p.pos += 1;
                let name = field_path.join(".");
                if variables.iter().any(|v| v.name() == name) {
                    return Err(p.error(format!("variable {name:?} is bound twice")));
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
            } else {
                segments.push(p.segment(false)?);
            }
            match p.peek() {
                None => break,
                Some(b'/') => p.pos += 1,
                Some(b':') => {
                    p.pos += 1;
                    let start = p.pos;
                    while p.peek().is_some_and(is_literal_char) {
                        p.pos += 1;
                    }
                    if p.pos == start {
                        return Err(p.error("expected a verb after `:`"));
                    }
                    if p.peek().is_some() {
                        return Err(p.error("the verb must end the template"));
                    }
                    verb = Some(text[start..].to_string());
                    break;
                }
                Some(_) => return Err(p.error("expected `/`, `:` or the end")),
            }
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::Multi)
            && i + 1 != segments.len()
        {
            return Err(TemplateError {
                template: text.to_string(),
                position: 0,
                reason: "`**` must be the last segment".into(),
            });
        }
        Ok(Self {
            segments,
            variables,
            verb,
            text: text.to_string(),
        })
    }

    /// The shape used to find conflicts and order routes: segment kinds (literals kept),
    /// variable names dropped, and the verb.
    pub fn shape(&self) -> (Vec<Segment>, Option<String>) {
        (self.segments.clone(), self.verb.clone())
    }

    /// Sort key: more specific templates first (literal before `*` before `**` at the first
    /// difference; a verb before none).
    pub fn specificity(&self) -> (Vec<u8>, bool) {
        let kinds = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => 0,
                Segment::Single => 1,
                Segment::Multi => 2,
            })
            .collect();
        (kinds, self.verb.is_none())
    }

    /// Matches the raw (still percent-encoded) request `path`; the variables' values on success.
    ///
    /// A route lookup checks its candidates with [`is_match`](Self::is_match), which allocates
    /// nothing; only the route found reads the variables' values here.
    pub fn matches(&self, path: &str) -> Option<Vec<Binding>> {
        let rest = self.strip_verb(path)?;
        if !self.fits(rest) {
            return None;
        }
        Some(self.bindings(rest))
    }

    /// Whether [`matches`](Self::matches) matches `path`, without reading the values (nothing
    /// allocated).
    pub fn is_match(&self, path: &str) -> bool {
        self.strip_verb(path).is_some_and(|rest| self.fits(rest))
    }

    /// The variables' values of `rest` (the path less `/` and verb), which fits the template.
    fn bindings(&self, rest: &str) -> Vec<Binding> {
        let parts: Vec<&str> = rest.split('/').collect();
        // The parts segment `k` consumed (`**` is always last and takes the rest).
        let span = |k: usize| -> (usize, usize) {
            if self.segments[k] == Segment::Multi {
                if parts.get(k..) == Some(&[""][..]) {
                    (k, k)
                } else {
                    (k, parts.len().max(k))
                }
            } else {
                (k, k + 1)
            }
        };
        self.variables
            .iter()
            .enumerate()
            .map(|(n, v)| {
                let (from, _) = span(v.start);
                let (_, to) = span(v.end - 1);
                let raw = parts.get(from..to).unwrap_or_default();
                let single = v.end - v.start == 1 && self.segments[v.start] != Segment::Multi;
                let value = if single {
                    decode(raw.first().copied().unwrap_or_default())
                } else {
                    raw.iter()
                        .map(|p| decode_keep_slash(p))
                        .collect::<Vec<_>>()
                        .join("/")
                };
                Binding { variable: n, value }
            })
            .collect()
    }

    /// The path without its leading `/` and this template's verb (`None`: no such verb).
    fn strip_verb<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix('/')?;
        match &self.verb {
            Some(verb) => {
                let stripped = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
                // The verb must follow a segment (`/v1/x:verb`).
                if stripped.is_empty() || stripped.ends_with('/') {
                    return None;
                }
                Some(stripped)
            }
            None => Some(rest),
        }
    }

    /// Whether the segments of `rest` (the path less `/` and verb) fit the template.
    fn fits(&self, rest: &str) -> bool {
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Literal(lit) => match parts.next() {
                    // A part differs from its decoded form only if it has a `%`.
                    Some(part) if part == lit || (part.contains('%') && decode(part) == *lit) => {}
                    _ => return false,
                },
                Segment::Single => match parts.next() {
                    Some(part) if !part.is_empty() => {}
                    _ => return false,
                },
                Segment::Multi => {
                    // Zero or more non-empty parts; a lone empty part (a trailing `/`) is zero.
                    let (mut count, mut empty) = (0usize, false);
                    for part in parts.by_ref() {
                        count += 1;
                        empty |= part.is_empty();
                    }
                    if empty && count > 1 {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Percent-decodes `s` (invalid UTF-8 is replaced, never a panic).
pub fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Percent-decodes `s` except `%2F` (either case), which stays encoded as `%2F` (reserved
/// expansion).
fn decode_keep_slash(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    // The first encoded slash of either case: taking `%2F` before an earlier `%2f` decoded
    // that one into a separator.
    while let Some(i) = rest
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
    {
        out.push_str(&decode(&rest[..i]));
        out.push_str("%2F");
        rest = &rest[i + 3..];
    }
    out.push_str(&decode(rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = PathTemplate::parse(t).unwrap();
        t.matches(path).map(|b| {
            b.into_iter()
                .map(|b| (t.variables[b.variable].name(), b.value))
                .collect()
        })
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_every_form() {
        let t = PathTemplate::parse("/v1/{name=shops/*/machines/*}:restart").unwrap();
        assert_eq!(t.segments.len(), 5);
        assert_eq!(t.verb.as_deref(), Some("restart"));
        assert_eq!(t.variables[0].start, 1);
        assert_eq!(t.variables[0].end, 5);
        let t = PathTemplate::parse("/v1/{order.id}/lines/**").unwrap();
        assert_eq!(t.variables[0].field_path, ["order", "id"]);
        assert_eq!(t.segments[3], Segment::Multi);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "v1/x",
            "/v1//x",
            "/v1/x/",
            "/v1/{id",
            "/v1/{id=a/{b}}",
            "/v1/**/x",
            "/v1/a*b",
            "/v1/{1x}",
            "/v1/{id}/{id}",
            "/v1/x:",
            "/v1/x:a/b",
            "/v1/x?y",
            "/v1/{}",
            "/v1/a%41/x",
            "/v1/{name=m%1ach/*}",
        ] {
            assert!(
                PathTemplate::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn matches_simple_nested_and_verbs() {
        assert_eq!(
            vars("/v1/messages/{message_id}", "/v1/messages/123456"),
            pairs(&[("message_id", "123456")])
        );
        assert_eq!(
            vars("/v1/users/{user.id}", "/v1/users/a%20b"),
            pairs(&[("user.id", "a b")])
        );
        assert_eq!(
            vars("/v1/orders/{id}:cancel", "/v1/orders/o-1:cancel"),
            pairs(&[("id", "o-1")])
        );
        assert_eq!(vars("/v1/auth:login", "/v1/auth:login"), pairs(&[]));
        assert_eq!(vars("/v1/auth:login", "/v1/auth:logout"), None);
        assert_eq!(vars("/v1/orders/{id}", "/v1/orders/a/b"), None);
        assert_eq!(vars("/v1/orders/{id}", "/v1/orders/"), None);
        assert_eq!(vars("/v1/orders/{id}", "/v2/orders/x"), None);
    }

    #[test]
    fn matches_multi_segment_captures() {
        assert_eq!(
            vars(
                "/v1/{name=shops/*/machines/*}",
                "/v1/shops/s1/machines/m%2F2"
            ),
            pairs(&[("name", "shops/s1/machines/m%2F2")])
        );
        assert_eq!(vars("/v1/{name=shops/*/machines/*}", "/v1/shops/s1"), None);
        assert_eq!(
            vars("/v1/{name=messages/**}", "/v1/messages/a/b/c"),
            pairs(&[("name", "messages/a/b/c")])
        );
        assert_eq!(
            vars("/v1/{name=**}:get", "/v1/a/b:get"),
            pairs(&[("name", "a/b")])
        );
        assert_eq!(
            vars(
                "/v1/{parent=stores/*}/machines",
                "/v1/stores/s%2F1/machines"
            ),
            pairs(&[("parent", "stores/s%2F1")])
        );
    }

    #[test]
    fn an_encoded_slash_of_either_case_stays_encoded_in_a_multi_segment_value() {
        // A lowercase `%2f` before an uppercase `%2F` was decoded into a `/`, so the value had
        // one segment more than the path.
        assert_eq!(
            vars("/v1/{name=messages/**}", "/v1/messages/x%2fy%2Fz"),
            pairs(&[("name", "messages/x%2Fy%2Fz")])
        );
        assert_eq!(
            vars("/v1/{name=messages/*}", "/v1/messages/%2f%2F%2f"),
            pairs(&[("name", "messages/%2F%2F%2F")])
        );
    }

    #[test]
    fn specificity_orders_literals_first() {
        let a = PathTemplate::parse("/v1/stores/{id}").unwrap();
        let b = PathTemplate::parse("/v1/{name=**}").unwrap();
        assert!(a.specificity() < b.specificity());
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_never_panics(s in "\\PC{0,40}") {
                // A template parses only from a path: anything accepted starts with `/`.
                if PathTemplate::parse(&s).is_ok() {
                    prop_assert!(s.starts_with('/'), "{s:?}");
                }
            }

            #[test]
            fn parse_never_panics_on_template_alphabet(s in "[/{}*=:.a-c_0-9%]{0,30}") {
                if let Ok(t) = PathTemplate::parse(&s) {
                    for path in [s.as_str(), "/a/b/c:d"] {
                        if let Some(bindings) = t.matches(path) {
                            prop_assert!(bindings.len() <= t.variables.len(), "{s:?} on {path:?}");
                            prop_assert!(bindings.iter().all(|b| b.variable < t.variables.len()));
                        }
                    }
                }
            }

            #[test]
            fn a_template_of_literals_matches_itself(t in "(/[a-c0-9._-]{1,6}){1,4}(:[a-z]{1,3})?") {
                let template = PathTemplate::parse(&t);
                prop_assert!(template.is_ok(), "{t:?}: {template:?}");
                let template = template.unwrap();
                prop_assert_eq!(template.matches(&t), Some(Vec::new()));
                let other = format!("{t}x/y");
                prop_assert_eq!(template.matches(&other), None);
            }

            #[test]
            fn match_never_panics(t in "/[a-c*{}=/.]{0,20}(:[a-z]{1,3})?", p in "[/a-c:%0-9F]{0,24}") {
                if let Ok(t) = PathTemplate::parse(&t)
                    && let Some(bindings) = t.matches(&p)
                {
                    prop_assert!(bindings.iter().all(|b| b.variable < t.variables.len()));
                }
            }
        }
    }
}
