//! Reads YAML into JSON values while remembering where every field was
//! written, so that any later error can point at a file, line and column.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Self {
        Position { line: m.line(), column: m.col() + 1 }
    }
}

/// One YAML document and the position of each field path in it.
#[derive(Clone, Debug, Default)]
pub struct LocatedDocument {
    pub value: Value,
    pub start: Position,
    positions: HashMap<String, Position>,
}

impl LocatedDocument {
    /// Where `path` (e.g. `spec.rules[0].backends`) was written, or the nearest
    /// enclosing field that was, for errors about missing fields.
    pub fn locate(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(cut) => p = &p[..cut],
                None => return self.start,
            }
        }
    }
}

/// A YAML syntax error, or a document beyond the loader's [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Bounds on what one YAML text may cost to load. YAML is read from
/// untrusted places (API bodies, files dropped into a watched directory), and
/// two small documents are enough to take a loader down without them: a
/// 700-byte "billion laughs" of nested aliases expands to gigabytes, and
/// 20,000 nested `- ` (40 KB) overflows a recursive loader's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The text's length in bytes.
    pub max_text_bytes: usize,
    /// Collections (mappings and sequences) nested inside each other.
    pub max_depth: usize,
    /// The loaded values' estimated size in memory, aliases expanded and
    /// field paths included.
    pub max_loaded_bytes: usize,
}

impl Limits {
    /// 8 MiB of text, 64 levels, 64 MiB loaded. A mesh of 10,000 routes is
    /// about 2 MiB of YAML and 12 levels deep at most.
    pub const DEFAULT: Limits = Limits { max_text_bytes: 8 << 20, max_depth: 64, max_loaded_bytes: 64 << 20 };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Parses every document of a YAML stream within the default [`Limits`].
pub fn parse_documents(text: &str) -> Result<Vec<LocatedDocument>, SyntaxError> {
    parse_documents_within(text, Limits::DEFAULT)
}

/// Parses every document of a YAML stream, refusing one beyond `limits`.
///
/// Drives the parser event by event rather than through its recursive
/// `load`, so nesting costs heap (bounded by `max_depth`), never stack, and
/// the first error stops the work.
pub fn parse_documents_within(text: &str, limits: Limits) -> Result<Vec<LocatedDocument>, SyntaxError> {
    if text.len() > limits.max_text_bytes {
        return Err(SyntaxError {
            position: Position { line: 1, column: 1 },
            message: format!("the text is {} bytes, more than the {} a YAML text may have", text.len(), limits.max_text_bytes),
        });
    }
    let mut builder = Builder { limits, ..Builder::default() };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) =
            parser.next_token().map_err(|e| SyntaxError { position: (*e.marker()).into(), message: e.info().to_string() })?;
        let end = event == Event::StreamEnd;
        builder.on_event(event, mark);
        if let Some(err) = builder.error.take() {
            return Err(err);
        }
        if end {
            return Ok(builder.documents);
        }
    }
}

enum Frame {
    /// `unplaced`: a list item whose position is taken from its first key,
    /// since the parser marks a block mapping's start after that key.
    Map {
        path: String,
        value: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        unplaced: bool,
    },
    Seq {
        path: String,
        value: Vec<Value>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    documents: Vec<LocatedDocument>,
    current: Option<LocatedDocument>,
    stack: Vec<Frame>,
    /// Each anchored value with its estimated size, so an alias is
    /// charged for what it copies before it copies it.
    anchors: HashMap<usize, (Value, usize)>,
    error: Option<SyntaxError>,
    limits: Limits,
    /// Estimated bytes loaded so far, over all documents.
    loaded: usize,
    /// Estimated bytes of each open collection's contents, for its anchor.
    sizes: Vec<usize>,
}

impl Builder {
    /// The path of the node about to start, recording its position when it
    /// names a field or a list item.
    fn child_path(&mut self, at: Position) -> String {
        let path = match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { path, key: Some(k), .. }) => join(path, k),
            Some(Frame::Map { .. }) => return String::new(),
            Some(Frame::Seq { path, value, .. }) => format!("{path}[{}]", value.len()),
        };
        if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
            if let Some(doc) = self.current.as_mut() {
                doc.positions.insert(path.clone(), at);
            }
        }
        path
    }

    /// Charges a value of `bytes` to the load and to the collection holding
    /// it; false once the load is over its limit.
    fn charge(&mut self, at: Position, bytes: usize) -> bool {
        if let Some(open) = self.sizes.last_mut() {
            *open = open.saturating_add(bytes);
        }
        self.charge_load(at, bytes)
    }

    fn charge_load(&mut self, at: Position, bytes: usize) -> bool {
        self.loaded = self.loaded.saturating_add(bytes);
        if self.loaded > self.limits.max_loaded_bytes {
            let limit = self.limits.max_loaded_bytes;
            self.fail(at, format!("the document expands to more than {limit} bytes in memory (aliases included)"));
            return false;
        }
        true
    }

    fn finish_node(&mut self, value: Value, anchor: usize, size: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (value.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if let Some(doc) = self.current.as_mut() {
                    doc.value = value;
                }
            }
            Some(Frame::Map { value: map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
            Some(Frame::Seq { value: seq, .. }) => seq.push(value),
        }
    }

    fn fail(&mut self, at: Position, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { position: at, message });
        }
    }
}

/// What a value costs besides its text: `serde_json::Value` and a map or
/// list slot, roughly.
const NODE_BYTES: usize = 64;

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = Position::from(mark);
        match ev {
            Event::DocumentStart => {
                self.current = Some(LocatedDocument { start: at, ..Default::default() });
                self.stack.clear();
                self.sizes.clear();
                self.anchors.clear();
            }
            Event::DocumentEnd => {
                if let Some(doc) = self.current.take() {
                    self.documents.push(doc);
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                // A scalar in key position names a field.
                if let Some(Frame::Map { path, key: key @ None, unplaced, .. }) = self.stack.last_mut() {
                    let field = join(path, &text);
                    let cost = NODE_BYTES + text.len() + 2 * field.len();
                    *key = Some(text);
                    if let Some(doc) = self.current.as_mut() {
                        if std::mem::take(unplaced) {
                            doc.positions.insert(path.clone(), at);
                        }
                        doc.positions.insert(field, at);
                    }
                    self.charge(at, cost);
                    return;
                }
                let path = self.child_path(at);
                let size = NODE_BYTES + text.len() + path.len();
                if !self.charge(at, size) {
                    return;
                }
                let value = scalar_value(&text, style);
                self.finish_node(value, anchor, size);
            }
            Event::Alias(id) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.fail(at, "an alias cannot be used as a mapping key".into());
                    return;
                }
                let Some(size) = self.anchors.get(&id).map(|(_, size)| *size) else {
                    self.fail(at, "an alias must name an anchor defined before it in the same document".into());
                    return;
                };
                // Charged before it is copied: a few nested aliases would otherwise
                // expand to gigabytes ("billion laughs").
                if !self.charge(at, size) {
                    return;
                }
                let value = self.anchors.get(&id).map(|(value, _)| value.clone()).unwrap_or_default();
                self.child_path(at);
                self.finish_node(value, 0, size);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.fail(at, "a mapping key must be a plain scalar".into());
                }
                if self.stack.len() >= self.limits.max_depth {
                    let depth = self.limits.max_depth;
                    self.fail(at, format!("the document nests more than {depth} levels deep"));
                    return;
                }
                let in_list = matches!(self.stack.last(), Some(Frame::Seq { .. }));
                let path = self.child_path(at);
                // Charged to the enclosing collection when this one ends, contents and all.
                if !self.charge_load(at, NODE_BYTES + path.len()) {
                    return;
                }
                self.sizes.push(NODE_BYTES + path.len());
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, value: Map::new(), key: None, anchor, unplaced: in_list }
                } else {
                    Frame::Seq { path, value: Vec::new(), anchor }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let size = self.sizes.pop().unwrap_or_default();
                if let Some(outer) = self.sizes.last_mut() {
                    *outer = outer.saturating_add(size);
                }
                match self.stack.pop() {
                    Some(Frame::Map { value, anchor, .. }) => self.finish_node(Value::Object(value), anchor, size),
                    Some(Frame::Seq { value, anchor, .. }) => self.finish_node(Value::Array(value), anchor, size),
                    None => {}
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// Writes a JSON value as a YAML document (without the leading `---`), for
/// `-o yaml`. Strings that would read back as something else are quoted.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&to_yaml(value));
    let body = out.strip_prefix("---\n").or_else(|| out.strip_prefix("---")).unwrap_or(&out).trim_start_matches(' ');
    format!("{body}\n")
}

fn to_yaml(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(map.iter().map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v))).collect()),
    }
}

/// Resolves a scalar by the YAML 1.2 core schema; quoted scalars stay strings.
fn scalar_value(text: &str, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match Yaml::from_str(text) {
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => {
            r.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number).unwrap_or_else(|| Value::String(text.to_string()))
        }
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Null => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "kind: Route\nspec:\n  rules:\n    - backends:\n        - service: web\n          weight: 10\n---\nkind: Service\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn builds_values_of_every_document() {
        let docs = parse_documents(TEXT).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["spec"]["rules"][0]["backends"][0]["weight"], 10);
        assert_eq!(docs[1].value["spec"]["ports"][0]["port"], 80);
    }

    #[test]
    fn locates_fields_and_falls_back_to_parents() {
        let docs = parse_documents(TEXT).unwrap();
        assert_eq!(docs[0].locate("spec.rules[0].backends[0].weight"), Position { line: 6, column: 11 });
        assert_eq!(docs[0].locate("spec.rules[0].backends[0]"), Position { line: 5, column: 11 });
        assert_eq!(docs[0].locate("spec.rules[0].backends[0].version"), Position { line: 5, column: 11 });
        assert_eq!(docs[1].locate("spec.ports[0].port").line, 9);
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let docs = parse_documents("a: '10'\nb: 10\nc: true\nd: ~\ne: 1.5\n").unwrap();
        let v = &docs[0].value;
        assert_eq!(v["a"], "10");
        assert_eq!(v["b"], 10);
        assert_eq!(v["c"], true);
        assert!(v["d"].is_null());
        assert_eq!(v["e"], 1.5);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_documents("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.position.line >= 1, "{err:?}");
    }

    /// `levels` levels of ten aliases each: 10^levels strings from 80 bytes a level.
    fn laughs(levels: usize) -> String {
        let mut text = String::from("a0: &a0 [\"lol\", \"lol\"]\n");
        for i in 1..levels {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        text
    }

    #[test]
    fn alias_expansion_is_bounded() {
        // The billion: refused long before it is built.
        let text = laughs(10);
        assert!(text.len() < 800, "{}", text.len());
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("expands to more than"), "{err:?}");
        // The line of the alias that went over, not the start of the text.
        assert!(err.position.line > 5, "{err:?}");
        // A hundred thousand under a 1 MiB limit: a loader without the limit
        // would build it (7 MB) and fail this test without taking the machine down.
        let small = Limits { max_loaded_bytes: 1 << 20, ..Limits::DEFAULT };
        let err = parse_documents_within(&laughs(6), small).unwrap_err();
        assert!(err.message.contains("expands to more than 1048576 bytes"), "{err:?}");
    }

    #[test]
    fn moderate_aliases_still_load() {
        let docs = parse_documents("base: &b {a: 1, b: [1, 2, 3]}\nx: [*b, *b, *b, *b]\n").unwrap();
        assert_eq!(docs[0].value["x"][3]["b"][2], 3);
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        // 20,000 nested block sequences: a recursive loader overflows its stack.
        let mut text = String::new();
        for _ in 0..20_000 {
            text.push_str("- ");
        }
        text.push_str("x\n");
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("nests more than 64 levels"), "{err:?}");
        assert_eq!(err.position.line, 1);
        let flow = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(parse_documents(&flow).is_err());
        let deep_maps: String = (0..100).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        assert!(parse_documents(&deep_maps).unwrap_err().message.contains("nests more than"));
        let ok: String = (0..60).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        assert!(parse_documents(&ok).is_ok());
    }

    #[test]
    fn text_size_is_bounded() {
        let limits = Limits { max_text_bytes: 10, ..Limits::DEFAULT };
        let err = parse_documents_within("a: 1234567890\n", limits).unwrap_err();
        assert!(err.message.contains("more than the 10"), "{err:?}");
    }

    #[test]
    fn aliases_do_not_cross_documents() {
        let err = parse_documents("a: &x 1\n---\nb: *x\n").unwrap_err();
        assert_eq!(err.position.line, 3, "{err:?}");
    }

    #[test]
    fn values_written_read_back_the_same() {
        let value = serde_json::json!({"name": "web", "port": 80, "ratio": 0.5, "on": true, "none": null, "text": "10", "yes": "true", "list": [1, "two", {"three": 3}], "empty": {}, "lines": "a\nb\n"});
        let text = to_string(&value);
        assert!(!text.starts_with("---"), "{text}");
        assert_eq!(parse_documents(&text).unwrap()[0].value, value, "{text}");
    }

    #[test]
    fn anchors_are_resolved() {
        let docs = parse_documents("x: &w {a: 1}\ny: *w\n").unwrap();
        assert_eq!(docs[0].value["y"]["a"], 1);
    }
}
#[cfg(test)]
mod flow_tests {
    use super::*;
    #[test]
    fn flow_mappings_in_lists() {
        let docs = parse_documents("a:\n  - {service: web, version: v9}\n  - {service: api}\n").unwrap();
        assert_eq!(docs[0].locate("a[0].version"), Position { line: 2, column: 20 });
        assert_eq!(docs[0].locate("a[1].service").line, 3);
        assert_eq!(docs[0].locate("a[1]"), Position { line: 3, column: 6 });
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// YAML arrives from API bodies and dropped-in files: any text loads
        /// or fails with a position, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,120}") {
            if let Err(e) = parse_documents(&text) {
                prop_assert!(e.position.line >= 1 || e.position == Position::default());
            }
        }

        /// Text made of YAML's own punctuation, where a parser's edge cases live.
        #[test]
        fn yaml_punctuation_never_panics(text in "[-:{}\\[\\],&*!|>'\" #?\n a0]{0,80}") {
            let _ = parse_documents(&text);
            let _ = crate::load_str(&"p.yaml".into(), &text);
        }
    }
}
