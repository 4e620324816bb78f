//! The seed's one-line form of a datapath rule, what operators type:
//!
//! ```text
//! [{] <destinations> <ports>[/tcp|/udp] : redirect|copy|drop [=> [label=value,...]] [}]
//! ```
//!
//! `10.0.2.0/24 80 : redirect => app=http-proxy`, `fd00::5 8000-8100/udp :
//! copy => [app=ids]`, `{10.0.9.9 * : drop}`. Lists are comma-separated, `*`
//! means any. A mistake is reported at its column, since the string is all
//! the user has to look at.

use std::fmt;

use super::{Cidr, PortRange};
use crate::spec::{valid_label, DatapathAction, DatapathRuleSpec, LabelSelector, Protocol, TrafficMatch};

/// A rule as the compact form gives it: everything but the source, the
/// node, the priority and the TTL, which the command line adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compact {
    pub destination: Vec<Cidr>,
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    pub action: DatapathAction,
    pub to: LabelSelector,
}

impl Compact {
    /// The rule with every other field at its default.
    pub fn into_spec(self) -> DatapathRuleSpec {
        DatapathRuleSpec {
            traffic: TrafficMatch { source: Vec::new(), destination: self.destination, ports: self.ports, protocol: self.protocol },
            action: self.action,
            to: self.to,
            node: None,
            priority: 0,
            ttl: None,
            origin: None,
        }
    }
}

/// A mistake in a compact rule, at a column (1-based, in characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct CompactError {
    pub column: usize,
    pub message: String,
}

impl CompactError {
    /// The error, the rule and a caret under the column, for a terminal.
    pub fn pointed(&self, input: &str) -> String {
        format!("{self}\n  {input}\n  {}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

/// The longest compact rule read: a line someone typed, not a file.
const MAX_LEN: usize = 4096;

/// Parses a compact rule.
pub fn parse(input: &str) -> Result<Compact, CompactError> {
    if input.len() > MAX_LEN {
        return Err(CompactError { column: 1, message: format!("{} bytes: a compact rule is at most {MAX_LEN}", input.len()) });
    }
    Parser { input, at: 0 }.rule()
}

/// A cursor over the input; `at` is a byte offset.
struct Parser<'a> {
    input: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn fail<T>(&self, at: usize, message: impl Into<String>) -> Result<T, CompactError> {
        Err(CompactError { column: self.input[..at.min(self.input.len())].chars().count() + 1, message: message.into() })
    }

    fn skip_space(&mut self, end: usize) {
        while self.at < end && self.input[self.at..].starts_with(char::is_whitespace) {
            self.at += self.input[self.at..].chars().next().map_or(1, char::len_utf8);
        }
    }

    /// The next run of characters up to whitespace or `stop`, and its offset.
    fn word(&mut self, end: usize, stop: impl Fn(char) -> bool) -> (usize, &'a str) {
        self.skip_space(end);
        let start = self.at;
        let len = self.input[start..end].find(|c: char| c.is_whitespace() || stop(c)).unwrap_or(end - start);
        self.at = start + len;
        (start, &self.input[start..start + len])
    }

    fn rule(&mut self) -> Result<Compact, CompactError> {
        let mut end = self.input.trim_end().len();
        self.skip_space(end);
        if self.input[self.at..end].starts_with('{') {
            if !self.input[..end].ends_with('}') {
                return self.fail(self.at, "this brace is never closed: end the rule with `}`");
            }
            self.at += 1;
            end -= 1;
        }
        let (at, blocks) = self.word(end, |_| false);
        if blocks.is_empty() {
            return self.fail(at, "expected a destination address or network (e.g. 10.0.2.0/24), or * for any");
        }
        let destination = self.list(at, blocks, |s| s.parse::<Cidr>().map_err(|e| e.to_string()))?;
        let (at, ports) = self.word(end, |c| c == ':');
        let (ports, protocol) = match ports.split_once('/') {
            None => (ports, Protocol::Tcp),
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some((ports, other)) => return self.fail(at + ports.len() + 1, format!("{other:?} is not a protocol: use /tcp or /udp")),
        };
        if ports.is_empty() {
            return self.fail(at, "expected a port (80), a range (8000-8100) or * for any, before `:`");
        }
        let ports = self.list(at, ports, |s| s.parse::<PortRange>().map_err(|e| e.to_string()))?;
        self.skip_space(end);
        if !self.input[self.at..end].starts_with(':') {
            return self.fail(self.at, "expected `:` and then the action (redirect, copy or drop)");
        }
        self.at += 1;
        let (at, word) = self.word(end, |c| !c.is_ascii_alphabetic());
        let action = match word {
            "redirect" => DatapathAction::Redirect,
            "copy" => DatapathAction::Copy,
            "drop" => DatapathAction::Drop,
            "" => return self.fail(at, "expected the action: redirect, copy or drop"),
            other => return self.fail(at, format!("{other:?} is not an action: use redirect, copy or drop")),
        };
        self.skip_space(end);
        let to = if self.at == end {
            LabelSelector::default()
        } else if self.input[self.at..end].starts_with("=>") {
            let arrow = self.at;
            self.at += 2;
            if !action.needs_target() {
                return self.fail(arrow, "a drop rule sends nothing anywhere: leave out `=> ...`");
            }
            self.labels(end)?
        } else {
            return self.fail(self.at, "expected `=>` and the labels to send to (e.g. => app=http-proxy), or the end");
        };
        if action.needs_target() && to.is_empty() {
            return self.fail(end, format!("a {} rule needs `=> label=value` naming where to send", action.as_str()));
        }
        Ok(Compact { destination, ports, protocol, action, to })
    }

    /// A comma-separated list starting at byte `at`, or `*` for the empty (any) list.
    fn list<T>(&self, at: usize, text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, CompactError> {
        if text == "*" {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut offset = at;
        for item in text.split(',') {
            match parse(item) {
                Ok(v) => out.push(v),
                Err(_) if item.is_empty() => return self.fail(offset, "an empty item: remove the extra comma"),
                Err(e) => return self.fail(offset, e),
            }
            offset += item.len() + 1;
        }
        Ok(out)
    }

    /// `[k=v, ...]` or `k=v,...` up to `end`.
    fn labels(&mut self, end: usize) -> Result<LabelSelector, CompactError> {
        self.skip_space(end);
        let mut stop = end;
        if self.input[self.at..end].starts_with('[') {
            if !self.input[..end].trim_end().ends_with(']') {
                return self.fail(self.at, "this bracket is never closed: end the labels with `]`");
            }
            self.at += 1;
            stop = self.input[..end].trim_end().len() - 1;
        }
        let mut selector = LabelSelector::default();
        let mut offset = self.at;
        for item in self.input[self.at..stop].split(',') {
            let lead = item.len() - item.trim_start().len();
            let at = offset + lead;
            let pair = item.trim();
            let Some((key, value)) = pair.split_once('=') else {
                return self.fail(at, format!("{pair:?} is not a label: write label=value"));
            };
            for (part, shift) in [(key, 0), (value, key.len() + 1)] {
                if !valid_label(part) {
                    return self.fail(at + shift, format!("{part:?} is not a label key or value: letters, digits, '-', '_', '.', '/'"));
                }
            }
            if selector.0.insert(key.to_string(), value.to_string()).is_some() {
                return self.fail(at, format!("the label {key:?} is given twice"));
            }
            offset += item.len() + 1;
        }
        Ok(selector)
    }
}

/// A rule in the compact form (its source, node, priority and TTL left
/// out); what `parse` reads back to the same match, action and targets.
pub fn format(spec: &DatapathRuleSpec) -> String {
    Display(spec).to_string()
}

struct Display<'a>(&'a DatapathRuleSpec);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0.traffic;
        let blocks: Vec<String> = m.destination.iter().map(|c| if c.is_host() { c.network().to_string() } else { c.to_string() }).collect();
        let ports: Vec<String> = m.ports.iter().map(PortRange::to_string).collect();
        let join = |items: Vec<String>| if items.is_empty() { "*".to_string() } else { items.join(",") };
        write!(f, "{} {}", join(blocks), join(ports))?;
        if m.protocol == Protocol::Udp {
            f.write_str("/udp")?;
        }
        write!(f, " : {}", self.0.action.as_str())?;
        if !self.0.to.is_empty() {
            write!(f, " => {}", self.0.to)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_seed_form_and_its_variants() {
        let c = parse("10.0.2.0/24 80 : redirect => app=http-proxy").unwrap();
        assert_eq!(c.destination, ["10.0.2.0/24".parse().unwrap()]);
        assert_eq!(c.ports, ["80".parse().unwrap()]);
        assert_eq!((c.protocol, c.action), (Protocol::Tcp, DatapathAction::Redirect));
        assert_eq!(c.to.0, BTreeMap::from([("app".to_string(), "http-proxy".to_string())]));
        let braced = parse("{10.0.2.0/24 80 : redirect => [app=http-proxy]}").unwrap();
        assert_eq!(braced, c);
        let tight = parse("  { 10.0.2.0/24 80: redirect =>[ app=http-proxy ] }  ").unwrap();
        assert_eq!(tight, c);
        let v6 = parse("fd00::5,10.0.2.9 8000-8100,9000/udp : copy => [app=ids, tier=edge]").unwrap();
        assert_eq!((v6.destination.len(), v6.ports.len(), v6.protocol, v6.to.0.len()), (2, 2, Protocol::Udp, 2));
        let drop = parse("10.0.9.9 * : drop").unwrap();
        assert!(drop.ports.is_empty() && drop.to.is_empty());
    }

    fn column(input: &str) -> (usize, String) {
        let e = parse(input).unwrap_err();
        (e.column, e.message)
    }

    #[test]
    fn mistakes_are_pointed_at() {
        assert_eq!(column("10.0.2.0/24 80x : redirect => app=a").0, 13);
        assert_eq!(column("10.0.2.0/24,10.0.3.5/24 80 : redirect => app=a").0, 13, "the second block of the list");
        assert!(column("10.0.2.0/24,10.0.3.5/24 80 : redirect => app=a").1.contains("host bits"));
        assert_eq!(column("10.0.2.0/24 80 : forward => app=a"), (18, "\"forward\" is not an action: use redirect, copy or drop".into()));
        assert_eq!(column("10.0.2.0/24 80 redirect => app=a").0, 16);
        assert_eq!(column("10.0.2.0/24 : redirect => app=a").0, 13);
        assert_eq!(column("10.0.2.0/24 80/sctp : drop").0, 16);
        assert_eq!(column("10.0.2.0/24 80 : drop => app=a").0, 23);
        assert_eq!(column("10.0.2.0/24 80 : redirect").0, 26, "at the end, where the labels go");
        assert_eq!(column("10.0.2.0/24 80 : redirect => app=a, tier").0, 37);
        assert_eq!(column("10.0.2.0/24 80 : redirect => app=a, t=b c").0, 39, "at the value");
        assert_eq!(column("{10.0.2.0/24 80 : drop").0, 1);
        assert_eq!(column("10.0.2.0/24 80 : redirect => [app=a").0, 30);
        assert_eq!(column("").0, 1);
        let shown = parse("10.0.2.0/24 80x : drop").unwrap_err().pointed("10.0.2.0/24 80x : drop");
        assert!(shown.ends_with("\n  10.0.2.0/24 80x : drop\n              ^"), "{shown}");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_eq!(column("10.0.2.0/24 80 : redirect => é=1").0, 30);
    }

    fn block() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Cidr::new(std::net::IpAddr::V4(a.into()), p).unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| Cidr::new(std::net::IpAddr::V6(a.into()), p).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn format_reads_back(
            destination in proptest::collection::vec(block(), 1..4),
            ports in proptest::collection::vec((1u16.., 1u16..).prop_map(|(a, b)| PortRange::new(a.min(b), a.max(b)).unwrap()), 0..3),
            udp in any::<bool>(),
            action in prop_oneof![Just(DatapathAction::Redirect), Just(DatapathAction::Copy), Just(DatapathAction::Drop)],
            labels in proptest::collection::btree_map("[a-z][a-z0-9./_-]{0,8}", "[a-z0-9][a-z0-9._-]{0,8}", 1..3),
        ) {
            let to = if action.needs_target() { LabelSelector(labels) } else { LabelSelector::default() };
            let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
            let c = Compact { destination, ports, protocol, action, to };
            let text = format(&c.clone().into_spec());
            prop_assert_eq!(parse(&text).unwrap(), c, "{}", text);
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_near_the_grammar(s in "[{} ]{0,2}[0-9a-f:./,*]{0,12} [0-9,*/a-z-]{0,8} ?:? ?[a-z]{0,8} ?(=>)? ?\\[?[a-z=, é]{0,12}\\]?[} ]{0,2}") {
            if let Err(e) = parse(&s) {
                prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{} in {:?}", e, s);
            }
        }
    }
}
