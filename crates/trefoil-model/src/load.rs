//! Turns YAML files into typed resources, or into every error they contain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::located_yaml::{parse_documents, Limits, LocatedDocument, Position};
use crate::resource::{Metadata, Resource, Spec, API_VERSION, KINDS};

/// A resource with the document it came from, so later checks can point into it.
#[derive(Clone, Debug)]
pub struct SourcedResource {
    pub resource: Resource,
    pub file: Arc<str>,
    pub document: Arc<LocatedDocument>,
}

impl SourcedResource {
    /// A diagnostic about `field` (a path inside this document).
    pub fn diagnostic(&self, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.file, self.document.locate(field), field, message)
    }
}

/// Loads a YAML file, or every `*.yaml`/`*.yml` file under a directory in name order.
pub fn load_path(path: &Path) -> Result<Vec<SourcedResource>, Diagnostics> {
    load_all_path(path).into_result()
}

/// Reads every resource under `path` that can be read, with every problem.
pub fn load_all_path(path: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    let files = match yaml_files(path) {
        Ok(files) => files,
        Err(message) => {
            loaded.problems.push(Diagnostic::new(&Arc::from(path.display().to_string()), Position::default(), "", message));
            return loaded;
        }
    };
    for file in files {
        let name: Arc<str> = Arc::from(file.display().to_string());
        // Checked before reading: a huge file must not be read into memory to be refused.
        let limit = Limits::DEFAULT.max_text_bytes;
        if let Some(meta) = std::fs::metadata(&file).ok().filter(|m| m.len() > limit as u64) {
            let message = format!("the file is {} bytes, more than the {limit} a YAML text may have", meta.len());
            loaded.problems.push(Diagnostic::new(&name, Position::default(), "", message));
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => loaded.append(load_all_str(&name, &text)),
            Err(e) => loaded.problems.push(Diagnostic::new(&name, Position::default(), "", format!("cannot read file: {e}"))),
        }
    }
    loaded
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list directory: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err("directory holds no .yaml or .yml files".into());
    }
    Ok(files)
}

/// Parses the resources of one YAML text; `file` names it in errors.
pub fn load_str(file: &Arc<str>, text: &str) -> Result<Vec<SourcedResource>, Diagnostics> {
    load_all_str(file, text).into_result()
}

/// A configuration's resources as far as they could be read, and every
/// problem found reading them.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Resources read whole, and those read with wrong fields set aside.
    pub resources: Vec<SourcedResource>,
    /// For each of `resources`, the fields set aside (empty when it read whole).
    pub set_aside: Vec<Vec<String>>,
    pub problems: Vec<Diagnostic>,
    /// Names of the resources that could not be read at all.
    pub unread: Vec<String>,
}

impl Loaded {
    /// The resources when nothing was wrong, else every problem.
    pub fn into_result(self) -> Result<Vec<SourcedResource>, Diagnostics> {
        if self.problems.is_empty() {
            Ok(self.resources)
        } else {
            Err(Diagnostics(self.problems))
        }
    }

    fn append(&mut self, mut other: Loaded) {
        self.resources.append(&mut other.resources);
        self.set_aside.append(&mut other.set_aside);
        self.problems.append(&mut other.problems);
        self.unread.append(&mut other.unread);
    }
}

/// Reads every resource of one YAML text that can be read, with every problem.
pub fn load_all_str(file: &Arc<str>, text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    let documents = match parse_documents(text) {
        Ok(documents) => documents,
        Err(e) => {
            loaded.problems.push(Diagnostic::new(file, e.position, "", format!("YAML syntax error: {}", e.message)));
            return loaded;
        }
    };
    for document in documents {
        if document.value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let document = Arc::new(document);
        let decoded = decode(file, &document);
        loaded.problems.extend(decoded.problems);
        match decoded.resource {
            Some(resource) => {
                loaded.resources.push(SourcedResource { resource, file: file.clone(), document });
                loaded.set_aside.push(decoded.set_aside);
            }
            None => loaded.unread.extend(document.value["metadata"]["name"].as_str().map(str::to_string)),
        }
    }
    loaded
}

/// One document read as a resource: the resource, if it could be read (with
/// the fields in `set_aside` left out when there were problems), and every
/// problem found.
struct Decoded {
    resource: Option<Resource>,
    problems: Vec<Diagnostic>,
    set_aside: Vec<String>,
}

fn decode(file: &Arc<str>, doc: &LocatedDocument) -> Decoded {
    let at = |field: &str| doc.locate(field);
    let problem = |field: &str, message: String| Diagnostic::new(file, at(field), field, message);
    let Value::Object(top) = &doc.value else {
        let message = "a resource must be a mapping with apiVersion, kind, metadata and spec".to_string();
        return Decoded { resource: None, problems: vec![problem("", message)], set_aside: Vec::new() };
    };
    let mut problems = Vec::new();
    for key in top.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            problems.push(problem(key, format!("unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`")));
        }
    }
    match top.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => problems.push(problem("apiVersion", format!("unsupported apiVersion {v}, expected `{API_VERSION}`"))),
        None => problems.push(problem("apiVersion", format!("missing field `apiVersion` (expected `{API_VERSION}`)"))),
    }
    let metadata = typed::<Metadata>(file, doc, "metadata", top.get("metadata"));
    let kind = match top.get("kind") {
        Some(Value::String(k)) if KINDS.contains(&k.as_str()) => Some(k.as_str()),
        Some(k) => {
            problems.push(problem("kind", format!("unknown kind {k}, expected one of {}", KINDS.join(", "))));
            None
        }
        None => {
            problems.push(problem("kind", format!("missing field `kind` (one of {})", KINDS.join(", "))));
            None
        }
    };
    let spec_value = top.get("spec");
    let empty = Value::Object(Default::default());
    let or_empty = spec_value.or(Some(&empty));
    let spec: Option<Typed<Spec>> = kind.map(|kind| match kind {
        "Proxy" => typed(file, doc, "spec", or_empty).map(Spec::Proxy),
        "Listener" => typed(file, doc, "spec", spec_value).map(Spec::Listener),
        "Service" => typed(file, doc, "spec", or_empty).map(Spec::Service),
        "Route" => typed(file, doc, "spec", spec_value).map(Spec::Route),
        "Workload" => typed(file, doc, "spec", spec_value).map(Spec::Workload),
        "Endpoints" => typed(file, doc, "spec", or_empty).map(Spec::Endpoints),
        "NetworkFunction" => typed(file, doc, "spec", spec_value).map(Spec::NetworkFunction),
        "CNF" => typed(file, doc, "spec", spec_value).map(Spec::Cnf),
        "Rollout" => typed(file, doc, "spec", spec_value).map(Spec::Rollout),
        "RolloutStatus" => typed(file, doc, "spec", spec_value).map(Spec::RolloutStatus),
        "Event" => typed(file, doc, "spec", spec_value).map(Spec::Event),
        "DatapathRule" => typed(file, doc, "spec", spec_value).map(Spec::DatapathRule),
        "DatapathRuleStatus" => typed(file, doc, "spec", spec_value).map(Spec::DatapathRuleStatus),
        "AuthorizationPolicy" => typed(file, doc, "spec", spec_value).map(Spec::AuthorizationPolicy),
        _ => typed(file, doc, "spec", spec_value).map(Spec::TrafficPolicy),
    });
    let readable = problems.is_empty();
    problems.extend(metadata.problems);
    let mut set_aside = metadata.set_aside;
    let resource = match (metadata.value, spec) {
        (Some(metadata), Some(spec)) => {
            problems.extend(spec.problems);
            set_aside.extend(spec.set_aside);
            spec.value.filter(|_| readable).map(|spec| Resource { api_version: API_VERSION.to_string(), metadata, spec })
        }
        (_, spec) => {
            problems.extend(spec.into_iter().flat_map(|s| s.problems));
            None
        }
    };
    Decoded { resource, problems, set_aside }
}

impl<T> Typed<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Typed<U> {
        Typed { value: self.value.map(f), problems: self.problems, set_aside: self.set_aside }
    }
}

/// Reads a YAML text holding one document into `T` (a function's own config
/// file, say), with the loader's limits and located errors.
pub fn from_yaml<T: DeserializeOwned>(file: &Arc<str>, text: &str) -> Result<T, Diagnostic> {
    let documents =
        parse_documents(text).map_err(|e| Diagnostic::new(file, e.position, "", format!("YAML syntax error: {}", e.message)))?;
    let document = match documents.len() {
        0 => LocatedDocument::default(),
        1 => documents.into_iter().next().unwrap_or_default(),
        n => return Err(Diagnostic::new(file, documents[1].start, "", format!("expected one YAML document, found {n}"))),
    };
    // An empty file is an empty mapping: every field takes its default.
    let value = if document.value.is_null() { Value::Object(Default::default()) } else { document.value.clone() };
    let typed = typed(file, &document, "", Some(&value));
    match (typed.value, typed.problems.into_iter().next()) {
        (Some(value), None) => Ok(value),
        (_, Some(first)) => Err(first),
        (None, None) => Err(Diagnostic::new(file, document.start, "", "cannot be read")),
    }
}

/// What deserializing one part of a document found: the value, if it could
/// be read, every problem on the way, and the fields set aside to read it.
struct Typed<T> {
    value: Option<T>,
    problems: Vec<Diagnostic>,
    /// Field paths (as in diagnostics) whose values were wrong and left out.
    set_aside: Vec<String>,
}

/// At most this many shape errors are reported for one part of a document.
const MAX_SHAPE_ERRORS: usize = 64;

/// Deserializes one part of a document, reporting the exact failing field,
/// and every other one: serde stops at the first error, so the failing field
/// is set aside (removed, leaving its default) and the rest read again, until
/// the part reads or a required field is missing. A route with six mistakes
/// is then corrected in one round, not one per mistake.
fn typed<T: DeserializeOwned>(file: &Arc<str>, doc: &LocatedDocument, base: &str, value: Option<&Value>) -> Typed<T> {
    let Some(value) = value else {
        let problem = Diagnostic::new(file, doc.start, base, format!("missing field `{base}`"));
        return Typed { value: None, problems: vec![problem], set_aside: Vec::new() };
    };
    let mut value = value.clone();
    let mut typed = Typed { value: None, problems: Vec::new(), set_aside: Vec::new() };
    while typed.problems.len() < MAX_SHAPE_ERRORS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(v) => {
                typed.value = Some(v);
                return typed;
            }
            Err(error) => error,
        };
        let mut segments: Vec<Segment> = error.path().iter().filter_map(Segment::of).collect();
        let message = error.into_inner().to_string();
        // Serde reports an unknown field at its parent; point at the field itself.
        let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
        if let Some(name) = unknown {
            if segments.last() != Some(&Segment::Key(name.to_string())) {
                segments.push(Segment::Key(name.to_string()));
            }
        }
        let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()).map(str::to_string);
        if let Some(name) = &missing {
            // A required field set aside earlier is missing now: already
            // reported; what holds it is set aside in its turn.
            let path = field_path(base, &[segments.as_slice(), &[Segment::Key(name.clone())]].concat());
            if typed.set_aside.contains(&path) {
                if !set_aside_holder(&mut value, base, &segments, &mut typed.set_aside) {
                    return typed;
                }
                continue;
            }
        }
        let field = field_path(base, &segments);
        // An enum whose one value was set aside is left empty, and refused
        // again in its turn: that is the same mistake, so it is not reported twice.
        let emptied = typed.set_aside.iter().any(|f| f.strip_prefix(field.as_str()).is_some_and(|rest| rest.starts_with(['.', '['])));
        if !emptied {
            typed.problems.push(Diagnostic::new(file, doc.locate(&field), field.clone(), message));
        }
        // A missing field is in the object that lacks it: that object goes.
        let held = if missing.is_some() { segments.as_slice() } else { segments.split_last().map_or(&[][..], |(_, parents)| parents) };
        let gone = match segments.last() {
            Some(Segment::Key(_)) if missing.is_none() => set_aside(&mut value, &segments).then(|| typed.set_aside.push(field)).is_some(),
            _ => set_aside_holder(&mut value, base, held, &mut typed.set_aside),
        };
        if !gone {
            return typed;
        }
    }
    typed
}

/// One step of a path into a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Segment {
    fn of(segment: &serde_path_to_error::Segment) -> Option<Segment> {
        match segment {
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Unknown => None,
        }
    }
}

/// The path as diagnostics write it: `spec.rules[0].backends`.
fn field_path(base: &str, segments: &[Segment]) -> String {
    let mut path = base.to_string();
    for segment in segments {
        match segment {
            Segment::Key(key) if path.is_empty() => path.push_str(key),
            Segment::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
            Segment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// Sets aside the field nearest `segments` (itself or above) that is not a
/// list element: the object or list holding something that could not be
/// read. False when that is the whole value.
fn set_aside_holder(value: &mut Value, base: &str, segments: &[Segment], set_aside_fields: &mut Vec<String>) -> bool {
    let keyed = segments.iter().rposition(|s| matches!(s, Segment::Key(_))).map_or(&[][..], |i| &segments[..=i]);
    if !set_aside(value, keyed) {
        return false;
    }
    set_aside_fields.push(field_path(base, keyed));
    true
}

/// Removes the field at `segments`, so that the rest can be read. A list
/// element is not removed (the indices after it would shift and every later
/// error would point at the wrong item): its list is set aside instead by
/// [`set_aside_holder`]; the whole value cannot be.
fn set_aside(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((Segment::Key(last), parents)) = segments.split_last() else { return false };
    let mut at = value;
    for segment in parents {
        at = match (segment, at) {
            (Segment::Key(k), Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Array(items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Object(map) => map.remove(last).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Vec<SourcedResource>, Diagnostics> {
        load_str(&Arc::from("test.yaml"), text)
    }

    #[test]
    fn other_files_read_with_locations() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            #[serde(default)]
            rules: Vec<u32>,
        }
        let file: Arc<str> = Arc::from("policy.yaml");
        assert_eq!(from_yaml::<Config>(&file, "rules: [1, 2]\n").unwrap().rules, [1, 2]);
        assert!(from_yaml::<Config>(&file, "").unwrap().rules.is_empty());
        let err = from_yaml::<Config>(&file, "rules:\n  - 1\n  - lots\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (3, "rules[1]"), "{err}");
        let err = from_yaml::<Config>(&file, "\nrulez: []\n").unwrap_err();
        assert_eq!((err.line, err.field.as_str()), (2, "rulez"), "{err}");
        assert!(from_yaml::<Config>(&file, "a: &a [*a]\n").is_err());
    }

    #[test]
    fn files_too_large_are_refused_unread() {
        let dir = std::env::temp_dir().join(format!("trefoil-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("huge.yaml");
        // Sparse: 9 MiB long, nothing written.
        std::fs::File::create(&file).unwrap().set_len(9 << 20).unwrap();
        let err = load_path(&file).unwrap_err();
        assert!(err.0[0].message.contains("more than the 8388608"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loads_a_route() {
        let r = load(
            "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web.local]\n  rules:\n  - backends: [{service: web, version: v1, weight: 3}]\n    timeout: 2s\n",
        )
        .unwrap();
        let Spec::Route(route) = &r[0].resource.spec else { panic!() };
        assert_eq!(route.rules[0].backends[0].weight, 3);
        assert_eq!(route.rules[0].timeout.unwrap().get().as_secs(), 2);
    }

    #[test]
    fn type_errors_name_line_and_field() {
        let err = load("apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  rules:\n  - backends:\n    - service: web\n      weight: lots\n").unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.field, "spec.rules[0].backends[0].weight");
        assert_eq!((d.line, d.column), (8, 7));
        assert!(d.to_string().starts_with("test.yaml:8:7: spec.rules[0].backends[0].weight: invalid type"), "{d}");
    }

    /// Each value the proxy once parsed again, and dropped when that failed,
    /// is refused where it is written, with every other problem.
    #[test]
    fn values_with_a_grammar_are_refused_where_written() {
        let text = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - matches:\n    - method: get\n      headers: [{name: 'x user'}]\n      queryParams: [{name: v, regex: '(['}]\n    filters:\n      requestHeaderModifier: {set: {x-a: \"a\\x01\"}, remove: ['b c']}\n    backends: [{service: web}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata: {name: edge}\nspec:\n  chain:\n  - function: acl\n    when: {path: {regex: 'a)|(b'}}\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: 'web:80'}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Listener\nmetadata: {name: public}\nspec: {address: '127.0.0.1'}\n";
        let err = load(text).unwrap_err();
        let mut found: Vec<(&str, usize, usize)> = err.0.iter().map(|d| (d.field.as_str(), d.line, d.column)).collect();
        found.sort_by_key(|&(_, line, column)| (line, column));
        let found: Vec<(&str, usize)> = found.into_iter().map(|(field, line, _)| (field, line)).collect();
        assert_eq!(
            found,
            [
                ("spec.rules[0].matches[0].method", 8),
                ("spec.rules[0].matches[0].headers[0].name", 9),
                ("spec.rules[0].matches[0].queryParams[0].regex", 10),
                ("spec.rules[0].filters.requestHeaderModifier.set.x-a", 12),
                ("spec.rules[0].filters.requestHeaderModifier.remove[0]", 12),
                ("spec.chain[0].when.path.regex", 21),
                ("spec.endpoints[0].address", 27),
                ("spec.address", 32),
            ],
            "{err}"
        );
        let text = err.to_string();
        for said in [
            "\"get\" is not an HTTP method",
            "\"x user\" is not a valid header name",
            "cannot be a header value",
            "invalid regular expression",
            "\"web:80\" is not an ip:port address",
        ] {
            assert!(text.contains(said), "{said}: {text}");
        }
    }

    #[test]
    fn parsed_values_serialise_as_written() {
        let text = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  rules:\n  - matches: [{method: PURGE, path: {regex: '/a/[0-9]+'}, headers: [{name: x-user, regex: 'a|b'}]}]\n    filters: {responseHeaderModifier: {add: {x-b: 'two words'}, remove: [x-c]}}\n    backends: [{service: web}]\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {endpoints: [{address: '[::1]:8080'}]}\n";
        let read = load(text).unwrap();
        for r in &read {
            let json = serde_json::to_value(&r.resource).unwrap();
            let again: Resource = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(again, r.resource, "{json}");
        }
        let json = serde_json::to_value(&read[0].resource).unwrap();
        assert_eq!(json["spec"]["rules"][0]["matches"][0]["path"]["regex"], "/a/[0-9]+");
        assert_eq!(json["spec"]["rules"][0]["matches"][0]["method"], "PURGE");
        assert_eq!(serde_json::to_value(&read[1].resource).unwrap()["spec"]["endpoints"][0]["address"], "[::1]:8080");
    }

    #[test]
    fn unknown_fields_point_at_themselves() {
        let err = load("apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints:\n  - address: 127.0.0.1:1\n    verison: v1\n").unwrap_err();
        assert_eq!(err.0[0].field, "spec.endpoints[0].verison");
        assert_eq!(err.0[0].line, 7);
    }

    #[test]
    fn every_document_is_checked() {
        let err = load("kind: Nope\nmetadata: {name: a}\n---\napiVersion: v0\nkind: Service\nmetadata: {name: b}\n").unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn workloads_and_endpoints_decode_as_themselves() {
        let r = load("apiVersion: trefoil.dev/v1alpha1\nkind: Workload\nmetadata: {name: web}\nspec:\n  service: web\n  command: srv\n---\napiVersion: trefoil.dev/v1alpha1\nkind: Endpoints\nmetadata: {name: web}\nspec:\n  endpoints: [{address: 127.0.0.1:1, version: v1, ready: true}]\n").unwrap();
        assert!(matches!(&r[0].resource.spec, Spec::Workload(w) if w.command == "srv" && w.replicas == 1));
        assert!(matches!(&r[1].resource.spec, Spec::Endpoints(e) if e.endpoints.len() == 1));
    }

    #[test]
    fn load_balancer_forms() {
        let r = load("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  service: web\n  loadBalancer: {ringHash: {header: x-user}}\n").unwrap();
        let Spec::TrafficPolicy(p) = &r[0].resource.spec else { panic!() };
        assert_eq!(p.load_balancer, crate::spec::LoadBalancer::RingHash(crate::spec::HashOn::Header("x-user".parse().unwrap())));
        let r = load("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  service: web\n  loadBalancer: leastRequest\n").unwrap();
        let Spec::TrafficPolicy(p) = &r[0].resource.spec else { panic!() };
        assert_eq!(p.load_balancer, crate::spec::LoadBalancer::LeastRequest);
    }
}
