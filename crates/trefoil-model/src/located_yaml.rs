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

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parses every document of a YAML stream.
pub fn parse_documents(text: &str) -> Result<Vec<LocatedDocument>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| SyntaxError { position: (*e.marker()).into(), message: e.info().to_string() })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.documents)
}

enum Frame {
    /// `unplaced`: a list item whose position is taken from its first key,
    /// since the parser marks a block mapping's start after that key.
    Map { path: String, value: Map<String, Value>, key: Option<String>, anchor: usize, unplaced: bool },
    Seq { path: String, value: Vec<Value>, anchor: usize },
}

#[derive(Default)]
struct Builder {
    documents: Vec<LocatedDocument>,
    current: Option<LocatedDocument>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    error: Option<SyntaxError>,
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

    fn finish_node(&mut self, value: Value, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
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
                    *key = Some(text);
                    if let Some(doc) = self.current.as_mut() {
                        if std::mem::take(unplaced) {
                            doc.positions.insert(path.clone(), at);
                        }
                        doc.positions.insert(field, at);
                    }
                    return;
                }
                self.child_path(at);
                let value = scalar_value(&text, style);
                self.finish_node(value, anchor);
            }
            Event::Alias(id) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.fail(at, "an alias cannot be used as a mapping key".into());
                    return;
                }
                self.child_path(at);
                let value = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.finish_node(value, 0);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    self.fail(at, "a mapping key must be a plain scalar".into());
                }
                let in_list = matches!(self.stack.last(), Some(Frame::Seq { .. }));
                let path = self.child_path(at);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, value: Map::new(), key: None, anchor, unplaced: in_list }
                } else {
                    Frame::Seq { path, value: Vec::new(), anchor }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Map { value, anchor, .. }) => self.finish_node(Value::Object(value), anchor),
                Some(Frame::Seq { value, anchor, .. }) => self.finish_node(Value::Array(value), anchor),
                None => {}
            },
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// Resolves a scalar by the YAML 1.2 core schema; quoted scalars stay strings.
fn scalar_value(text: &str, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    match Yaml::from_str(text) {
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string())),
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
