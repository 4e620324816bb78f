//! The Prometheus text exposition format (0.0.4), read into samples.
//!
//! Only what rates need: sample lines with labels and a value.
//! Comment lines (`# HELP`, `# TYPE`, `# EOF`) carry nothing a rate needs,
//! so they are skipped rather than checked.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of `label`, empty when absent (as PromQL treats it).
    pub fn label(&self, label: &str) -> &str {
        self.labels.get(label).map(String::as_str).unwrap_or("")
    }
}

/// A line that is not a sample, with its 1-based line number.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Every sample of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_line(line).map_err(|reason| ParseError { line: i + 1, reason })?);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("{name:?} is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name} has no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?;
    // A timestamp may follow; a rate over our own two scrapes uses our clock instead.
    Ok(Sample { name: name.to_string(), labels, value })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads `label="value",...}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let key = s[..eq].trim();
        if !valid_name(key) {
            return Err(format!("{key:?} is not a label name"));
        }
        let quoted = s[eq + 1..].trim_start().strip_prefix('"').ok_or_else(|| format!("label {key}: value is not quoted"))?;
        let (value, rest) = unescape_until_quote(quoted).ok_or_else(|| format!("label {key}: unterminated value"))?;
        labels.insert(key.to_string(), value);
        s = rest.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
        if s.is_empty() {
            return Err("labels without a closing '}'".to_string());
        }
    }
}

/// The label value up to its closing quote (with `\\`, `\"` and `\n`
/// unescaped) and what follows that quote.
fn unescape_until_quote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_labels_and_skips_comments() {
        let text = "# HELP trefoil_requests_total HTTP requests\n# TYPE trefoil_requests_total counter\n\
            trefoil_requests_total{direction=\"inbound\",route=\"web\",service=\"web\",version=\"v1\",status_code=\"200\",cnf=\"\"} 12\n\
            \n\
            trefoil_config_version 3\n\
            # EOF\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "trefoil_requests_total");
        assert_eq!(samples[0].label("service"), "web");
        assert_eq!(samples[0].label("status_code"), "200");
        assert_eq!(samples[0].label("cnf"), "");
        assert_eq!(samples[0].label("absent"), "");
        assert_eq!(samples[0].value, 12.0);
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[1].value, 3.0);
    }

    #[test]
    fn reads_special_values_timestamps_and_escapes() {
        let text = "h_bucket{le=\"+Inf\"} 7 1700000000000\nx{a=\"q\\\"uo,te}\\\\\\n\", b = \"2\",} -Inf\ny NaN\nz 1.5e-3\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples[0].label("le"), "+Inf");
        assert_eq!(samples[0].value, 7.0);
        assert_eq!(samples[1].label("a"), "q\"uo,te}\\\n");
        assert_eq!(samples[1].label("b"), "2");
        assert_eq!(samples[1].value, f64::NEG_INFINITY);
        assert!(samples[2].value.is_nan());
        assert_eq!(samples[3].value, 0.0015);
    }

    /// Writes a sample as the exposition format escapes it.
    fn render(name: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
        let escaped: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))).collect();
        format!("{name}{{{}}} {value}", escaped.join(","))
    }

    proptest::proptest! {
        #[test]
        fn what_is_written_reads_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", "(\\PC|\n){0,12}", 0..5),
            value in proptest::num::f64::NORMAL | proptest::num::f64::ZERO,
        ) {
            let samples = parse(&render(&name, &labels, value)).unwrap();
            proptest::prop_assert_eq!(samples, vec![Sample { name, labels, value }]);
        }

        #[test]
        fn never_panics(text in "\\PC{0,80}") {
            let _ = parse(&text);
        }
    }

    #[test]
    fn names_the_line_of_a_broken_sample() {
        assert_eq!(parse("ok 1\nbad{a=\"1\" 2\n").unwrap_err().line, 2);
        assert_eq!(parse("novalue\n").unwrap_err(), ParseError { line: 1, reason: "novalue has no value".into() });
        assert!(parse("x{a=1} 2").unwrap_err().reason.contains("not quoted"));
        assert!(parse("x{a=\"1} 2").unwrap_err().reason.contains("unterminated"));
        assert!(parse("x abc").unwrap_err().reason.contains("not a number"));
        assert!(parse("9x 1").unwrap_err().reason.contains("not a metric name"));
    }
}
