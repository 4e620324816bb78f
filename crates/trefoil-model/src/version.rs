//! `ResourceVersion`: one type for every point in the store's history a
//! client sees. The store numbers each write; that number is an object's
//! `metadata.resourceVersion`, a list's `resourceVersion`, a proxy snapshot's
//! version (a snapshot is compiled from the store at a revision) and the
//! status list's `compiledRevision`. Before this type the clients read those
//! as strings in one place, integers in another, and compared them as
//! `serde_json::Value`s.
//!
//! The wire keeps the spellings it has always had: a string where the field
//! is named `resourceVersion` (the default serde form, as Kubernetes writes
//! it), an integer for snapshot versions (`as_number`). Reading accepts
//! either spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A store revision: the number of the write that made an object what it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceVersion(u64);

impl ResourceVersion {
    pub const fn new(revision: u64) -> Self {
        ResourceVersion(revision)
    }

    /// The revision as the store counts it.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for ResourceVersion {
    fn from(revision: u64) -> Self {
        ResourceVersion(revision)
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A `resourceVersion` a client sent that no server issued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a resourceVersion (a decimal store revision)")]
pub struct NotAVersion(pub String);

impl FromStr for ResourceVersion {
    type Err = NotAVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ResourceVersion).map_err(|_| NotAVersion(s.to_string()))
    }
}

impl Serialize for ResourceVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ResourceVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelled {
            Number(u64),
            Text(String),
        }
        match Spelled::deserialize(d)? {
            Spelled::Number(n) => Ok(ResourceVersion(n)),
            Spelled::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `#[serde(with = "as_number")]`: a version written as a JSON integer, as
/// snapshot versions are.
pub mod as_number {
    use super::*;

    pub fn serialize<S: Serializer>(v: &ResourceVersion, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ResourceVersion, D::Error> {
        ResourceVersion::deserialize(d)
    }
}

/// `#[serde(with = "option_as_number")]`: an optional version as a JSON
/// integer or `null`.
pub mod option_as_number {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<ResourceVersion>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.0),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResourceVersion>, D::Error> {
        Option::<ResourceVersion>::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Both {
        #[serde(rename = "resourceVersion")]
        text: ResourceVersion,
        #[serde(with = "as_number")]
        number: ResourceVersion,
        #[serde(with = "option_as_number")]
        maybe: Option<ResourceVersion>,
    }

    #[test]
    fn each_field_keeps_its_wire_spelling() {
        let both = Both { text: 7.into(), number: 8.into(), maybe: None };
        assert_eq!(serde_json::to_value(&both).unwrap(), json!({"resourceVersion": "7", "number": 8, "maybe": null}));
        let read: Both = serde_json::from_value(json!({"resourceVersion": 7, "number": "8", "maybe": 9})).unwrap();
        assert_eq!(read, Both { text: 7.into(), number: 8.into(), maybe: Some(9.into()) });
    }

    #[test]
    fn only_a_decimal_u64_is_a_version() {
        assert_eq!("42".parse(), Ok(ResourceVersion::new(42)));
        for bad in ["", "-1", "1.0", "abc", "99999999999999999999"] {
            assert!(bad.parse::<ResourceVersion>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_value::<ResourceVersion>(json!("x")).is_err());
    }
}
