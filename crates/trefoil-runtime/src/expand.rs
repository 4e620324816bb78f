//! `${VAR}` expansion in a workload's `args` and `env` values.

/// A `${...}` that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("`${{{0}}}` is not set (known here: the runtime's PORT, TREFOIL_* variables, the workload's env and the environment of `trefoil up`)")]
    Unset(String),
    #[error("unterminated `${{` in {0:?}")]
    Unterminated(String),
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)`; `$$` is a literal `$`.
/// A `$` followed by anything else is kept as it is, so shell-like text such as
/// `$1` passes through untouched.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| ExpandError::Unterminated(text.to_string()))?;
            let name = &tail[..end];
            out.push_str(&lookup(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_known_variables() {
        assert_eq!(expand("127.0.0.1:${PORT}", vars).unwrap(), "127.0.0.1:8080");
        assert_eq!(expand("${PORT}${PORT}", vars).unwrap(), "80808080");
        assert_eq!(expand("a${EMPTY}b", vars).unwrap(), "ab");
        assert_eq!(expand("no variables", vars).unwrap(), "no variables");
    }

    #[test]
    fn dollar_escapes_and_plain_dollars() {
        assert_eq!(expand("$${PORT}", vars).unwrap(), "${PORT}");
        assert_eq!(expand("cost $5 and $", vars).unwrap(), "cost $5 and $");
    }

    #[test]
    fn unknown_and_broken_references_are_errors() {
        assert_eq!(expand("${NOPE}", vars), Err(ExpandError::Unset("NOPE".into())));
        assert!(matches!(expand("x ${PORT", vars), Err(ExpandError::Unterminated(_))));
    }

    #[test]
    fn multibyte_text_is_kept() {
        assert_eq!(expand("héllo ${PORT} wörld", vars).unwrap(), "héllo 8080 wörld");
    }
}
