//! Port ranges in datapath rules: `80` or `8000-8100` in YAML (a number or a
//! string), one inclusive range in memory, so "narrower wins" is a width.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// An inclusive range of ports, never containing 0 and never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Every port: what a rule without `ports` matches.
    pub const ALL: PortRange = PortRange { first: 1, last: u16::MAX };

    /// `first..=last`; `None` when it is empty or holds port 0.
    pub fn new(first: u16, last: u16) -> Option<PortRange> {
        (first >= 1 && first <= last).then_some(PortRange { first, last })
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    /// How many ports: the fewer, the more specific.
    pub fn width(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Why a port or range was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePortError {
    #[error("{0:?} is not a port (1-65535) or a range such as 8000-8100")]
    Syntax(String),
    #[error("port 0 is not a port a connection can use")]
    Zero,
    #[error("{first}-{last} is empty: the first port is above the last")]
    Reversed { first: u16, last: u16 },
}

fn port(text: &str) -> Result<u16, ParsePortError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParsePortError::Syntax(text.to_string()));
    }
    match text.parse::<u16>() {
        Ok(0) => Err(ParsePortError::Zero),
        Ok(p) => Ok(p),
        Err(_) => Err(ParsePortError::Syntax(text.to_string())),
    }
}

impl FromStr for PortRange {
    type Err = ParsePortError;

    fn from_str(input: &str) -> Result<PortRange, ParsePortError> {
        let (first, last) = match input.split_once('-') {
            None => {
                let p = port(input)?;
                (p, p)
            }
            Some((a, b)) => (port(a)?, port(b)?),
        };
        PortRange::new(first, last).ok_or(ParsePortError::Reversed { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A single port as a number (as it was most likely written), a range as a string.
impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port such as 80 or a range such as \"8000-8100\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                Err(E::custom(ParsePortError::Syntax(v.to_string())))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn single_ports_and_ranges() {
        let one: PortRange = "80".parse().unwrap();
        assert_eq!((one.first(), one.last(), one.width()), (80, 80, 1));
        let range: PortRange = "8000-8100".parse().unwrap();
        assert!(range.contains(8050) && !range.contains(8101));
        assert_eq!(range.width(), 101);
        assert_eq!(PortRange::ALL.width(), 65535);
        assert_eq!(serde_json::to_value(one).unwrap(), serde_json::json!(80));
        assert_eq!(serde_json::to_value(range).unwrap(), serde_json::json!("8000-8100"));
        assert_eq!(serde_json::from_value::<PortRange>(serde_json::json!(443)).unwrap().first(), 443);
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        assert_eq!("0".parse::<PortRange>(), Err(ParsePortError::Zero));
        assert_eq!("90-80".parse::<PortRange>(), Err(ParsePortError::Reversed { first: 90, last: 80 }));
        assert!(matches!("65536".parse::<PortRange>(), Err(ParsePortError::Syntax(_))));
        assert!(matches!("80-".parse::<PortRange>(), Err(ParsePortError::Syntax(_))));
        assert!(matches!("+80".parse::<PortRange>(), Err(ParsePortError::Syntax(_))));
        assert!(serde_json::from_value::<PortRange>(serde_json::json!(-1)).is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(a in 1u16.., b in 1u16..) {
            let r = PortRange::new(a.min(b), a.max(b)).unwrap();
            prop_assert_eq!(r.to_string().parse::<PortRange>().unwrap(), r);
        }

        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = s.parse::<PortRange>();
        }
    }
}
