//! Human durations in resources ("250ms", "5s", "1m30s"), the notation operators
//! know from Envoy and Kubernetes.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written as a sequence of `<number><unit>` parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }
    pub fn get(self) -> StdDuration {
        self.0
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"250ms\", \"5s\", \"1m30s\")")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDurationError { input: input.to_string(), reason };
        let s = input.trim();
        if s.is_empty() {
            return Err(fail("empty"));
        }
        if s == "0" {
            return Ok(Duration::default());
        }
        let mut total = StdDuration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| fail("missing unit"))?;
            if digits == 0 {
                return Err(fail("expected a number"));
            }
            let number: f64 = rest[..digits].parse().map_err(|_| fail("bad number"))?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(fail("unknown unit (use ns, us, ms, s, m or h)")),
            };
            rest = &rest[unit_len..];
            let secs = number * scale;
            if !secs.is_finite() || secs > 1e9 {
                return Err(fail("too large"));
            }
            total += StdDuration::from_secs_f64(secs);
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}us", self.0.as_micros())
        } else if !ms.is_multiple_of(1000) || ms == 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"250ms\" or \"5s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(format!("a bare number ({v}) has no unit: write \"{v}s\" or \"{v}ms\"")))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!("250ms".parse::<Duration>().unwrap().get(), StdDuration::from_millis(250));
        assert_eq!("1m30s".parse::<Duration>().unwrap().get(), StdDuration::from_secs(90));
        assert_eq!("1.5s".parse::<Duration>().unwrap().get(), StdDuration::from_millis(1500));
        assert_eq!("0".parse::<Duration>().unwrap().get(), StdDuration::ZERO);
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!("5".parse::<Duration>().is_err());
        assert!("5 parsecs".parse::<Duration>().is_err());
        assert!("ms".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..10_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = s.parse::<Duration>();
        }
    }
}
