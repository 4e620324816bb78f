//! Every problem of a configuration in one pass: `trefoil validate` and
//! `trefoil apply` once stopped at the first shape error of each resource, so
//! a route with six mistakes took four rounds to put right.
//!
//! The loader reads each resource with its wrong fields set aside
//! ([`crate::Loaded`]); the checks across fields and resources then run on
//! what could be read. A check about a field that was set aside (or about
//! what holds it), or about a resource that could not be read at all, would
//! only repeat a problem already reported (or report one that is not there),
//! so it is left out.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::load::Loaded;
use crate::validate::{validate, validate_each};

/// Every problem in `loaded`: how it was read, then the checks; with
/// `references`, that what resources name exists among them.
pub fn check_all(loaded: &Loaded, references: bool) -> Vec<Diagnostic> {
    let mut problems = loaded.problems.clone();
    let checked = if references { validate(&loaded.resources) } else { validate_each(&loaded.resources) };
    if let Err(Diagnostics(found)) = checked {
        problems.extend(found.into_iter().filter(|d| !repeats(loaded, d)));
    }
    problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    problems.dedup();
    problems
}

/// Whether `d` is about a field set aside in reading, or names a resource
/// that could not be read.
fn repeats(loaded: &Loaded, d: &Diagnostic) -> bool {
    let unread = loaded.unread.iter().any(|name| d.message.ends_with(&format!(" named {name:?}")));
    // Whose document the line lies in is asked last: it looks at every
    // resource, and a configuration of thousands with a problem each would
    // take minutes were it asked of each pair.
    let set_aside = loaded.resources.iter().zip(&loaded.set_aside).any(|(r, fields)| {
        *r.file == *d.file
            && fields.iter().any(|f| d.field == *f || within(&d.field, f) || within(f, &d.field))
            && owns_line(loaded, r, d.line)
    });
    unread || set_aside
}

/// Whether field path `inner` lies inside `outer`. A check about what holds
/// a field set aside (a list left empty, say) is about what was read without
/// it, so it is left out too.
fn within(inner: &str, outer: &str) -> bool {
    inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with(['.', '[']))
}

/// Whether `line` lies in `r`'s document: at or after its start, before the
/// next document of the same file.
fn owns_line(loaded: &Loaded, r: &crate::SourcedResource, line: usize) -> bool {
    let start = r.document.start.line;
    let next = loaded.resources.iter().filter(|o| o.file == r.file && o.document.start.line > start).map(|o| o.document.start.line).min();
    line >= start && next.is_none_or(|n| line < n)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::load::load_all_str;

    const SERVICE: &str = "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  endpoints: [{address: \"127.0.0.1:9\", version: v1}]\n---\n";

    #[test]
    fn a_route_with_six_mistakes_is_corrected_in_one_round() {
        let route = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: web}\nspec:\n  hosts: [web.local]\n  rules:\n  - matches: [{path: {regex: \"([\"}}]\n    backends:\n    - service: web\n      weight: lots\n    - service: nowhere\n    timeout: soon\n    retry: {attempts: 20}\n    retires: 2\n";
        let loaded = load_all_str(&Arc::from("c.yaml"), &format!("{SERVICE}{route}"));
        let problems = check_all(&loaded, true);
        let fields: Vec<&str> = problems.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.rules[0].matches[0].path.regex",
                "spec.rules[0].backends[0].weight",
                "spec.rules[0].backends[1].service",
                "spec.rules[0].timeout",
                "spec.rules[0].retry.attempts",
                "spec.rules[0].retires",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn a_resource_that_cannot_be_read_is_not_reported_missing() {
        let broken = "apiVersion: trefoil.dev/v1alpha1\nkind: Service\nmetadata: {name: api}\nspec:\n  endpoints: [{address: 9}]\n---\n";
        let route = "apiVersion: trefoil.dev/v1alpha1\nkind: Route\nmetadata: {name: api}\nspec:\n  hosts: [api.local]\n  rules: [{backends: [{service: api}]}]\n";
        let loaded = load_all_str(&Arc::from("c.yaml"), &format!("{broken}{route}"));
        let problems = check_all(&loaded, true);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].field, "spec.endpoints[0].address");
    }
}
