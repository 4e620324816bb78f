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
    let files = yaml_files(path)
        .map_err(|message| Diagnostics(vec![Diagnostic::new(&Arc::from(path.display().to_string()), Position::default(), "", message)]))?;
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let name: Arc<str> = Arc::from(file.display().to_string());
        // Checked before reading: a huge file must not be read into memory to be refused.
        let limit = Limits::DEFAULT.max_text_bytes;
        if let Some(meta) = std::fs::metadata(&file).ok().filter(|m| m.len() > limit as u64) {
            problems.push(Diagnostic::new(
                &name,
                Position::default(),
                "",
                format!("the file is {} bytes, more than the {limit} a YAML text may have", meta.len()),
            ));
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(text) => match load_str(&name, &text) {
                Ok(mut r) => resources.append(&mut r),
                Err(mut d) => problems.append(&mut d.0),
            },
            Err(e) => problems.push(Diagnostic::new(&name, Position::default(), "", format!("cannot read file: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(Diagnostics(problems))
    }
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
    let documents = parse_documents(text)
        .map_err(|e| Diagnostics(vec![Diagnostic::new(file, e.position, "", format!("YAML syntax error: {}", e.message))]))?;
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    for document in documents {
        if document.value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let document = Arc::new(document);
        match decode(file, &document) {
            Ok(resource) => resources.push(SourcedResource { resource, file: file.clone(), document }),
            Err(mut d) => problems.append(&mut d),
        }
    }
    if problems.is_empty() {
        Ok(resources)
    } else {
        Err(Diagnostics(problems))
    }
}

fn decode(file: &Arc<str>, doc: &LocatedDocument) -> Result<Resource, Vec<Diagnostic>> {
    let at = |field: &str| doc.locate(field);
    let problem = |field: &str, message: String| vec![Diagnostic::new(file, at(field), field, message)];
    let Value::Object(top) = &doc.value else {
        return Err(problem("", "a resource must be a mapping with apiVersion, kind, metadata and spec".into()));
    };
    let mut problems = Vec::new();
    for key in top.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "spec" | "status") {
            problems.push(Diagnostic::new(
                file,
                at(key),
                key.as_str(),
                format!("unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`"),
            ));
        }
    }
    match top.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => problems.extend(problem("apiVersion", format!("unsupported apiVersion {v}, expected `{API_VERSION}`"))),
        None => problems.extend(problem("apiVersion", format!("missing field `apiVersion` (expected `{API_VERSION}`)"))),
    }
    let metadata = typed::<Metadata>(file, doc, "metadata", top.get("metadata"));
    let kind = match top.get("kind") {
        Some(Value::String(k)) if KINDS.contains(&k.as_str()) => Some(k.as_str()),
        Some(k) => {
            problems.extend(problem("kind", format!("unknown kind {k}, expected one of {}", KINDS.join(", "))));
            None
        }
        None => {
            problems.extend(problem("kind", format!("missing field `kind` (one of {})", KINDS.join(", "))));
            None
        }
    };
    let spec_value = top.get("spec");
    let spec = kind.map(|kind| match kind {
        "Proxy" => typed(file, doc, "spec", spec_value.or(Some(&Value::Object(Default::default())))).map(Spec::Proxy),
        "Listener" => typed(file, doc, "spec", spec_value).map(Spec::Listener),
        "Service" => typed(file, doc, "spec", spec_value.or(Some(&Value::Object(Default::default())))).map(Spec::Service),
        "Route" => typed(file, doc, "spec", spec_value).map(Spec::Route),
        "Workload" => typed(file, doc, "spec", spec_value).map(Spec::Workload),
        "Endpoints" => typed(file, doc, "spec", spec_value.or(Some(&Value::Object(Default::default())))).map(Spec::Endpoints),
        "NetworkFunction" => typed(file, doc, "spec", spec_value).map(Spec::NetworkFunction),
        "CNF" => typed(file, doc, "spec", spec_value).map(Spec::Cnf),
        "Rollout" => typed(file, doc, "spec", spec_value).map(Spec::Rollout),
        "RolloutStatus" => typed(file, doc, "spec", spec_value).map(Spec::RolloutStatus),
        "Event" => typed(file, doc, "spec", spec_value).map(Spec::Event),
        _ => typed(file, doc, "spec", spec_value).map(Spec::TrafficPolicy),
    });
    match (metadata, spec) {
        (Ok(metadata), Some(Ok(spec))) if problems.is_empty() => Ok(Resource { api_version: API_VERSION.to_string(), metadata, spec }),
        (metadata, spec) => {
            problems.extend(metadata.err());
            problems.extend(spec.and_then(Result::err));
            Err(problems)
        }
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
    typed(file, &document, "", Some(&value))
}

/// Deserializes one part of a document, reporting the exact failing field.
fn typed<T: DeserializeOwned>(file: &Arc<str>, doc: &LocatedDocument, base: &str, value: Option<&Value>) -> Result<T, Diagnostic> {
    let Some(value) = value else {
        return Err(Diagnostic::new(file, doc.start, base, format!("missing field `{base}`")));
    };
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut field = base.to_string();
        let inner = e.path().to_string();
        if inner != "." {
            field = if base.is_empty() { inner } else { format!("{base}.{inner}").replace(".[", "[") };
        }
        let message = e.into_inner().to_string();
        // Serde reports an unknown field at its parent; point at the field itself.
        if let Some(name) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
            if field.is_empty() {
                field = name.to_string();
            } else if field != name && !field.ends_with(&format!(".{name}")) {
                field = format!("{field}.{name}");
            }
        }
        Diagnostic::new(file, doc.locate(&field), field.clone(), message)
    })
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
        assert_eq!(p.load_balancer, crate::spec::LoadBalancer::RingHash(crate::spec::HashOn::Header("x-user".into())));
        let r = load("apiVersion: trefoil.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  service: web\n  loadBalancer: leastRequest\n").unwrap();
        let Spec::TrafficPolicy(p) = &r[0].resource.spec else { panic!() };
        assert_eq!(p.load_balancer, crate::spec::LoadBalancer::LeastRequest);
    }
}
