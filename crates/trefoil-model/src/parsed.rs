//! Values of resources that have a grammar (HTTP methods, header names and
//! values, regular expressions, socket addresses), parsed when a resource is
//! read. A mistake is then a located load error at `trefoil validate` and
//! `trefoil apply`, and the proxy uses the parsed value as it is: it once
//! parsed these strings again and dropped the ones that failed, so a bad
//! method matched every method and a bad `when` ran its step always.
//!
//! Each type serialises back to the text it was read from (header names in
//! their canonical lower case), so resources round-trip through the store
//! and the API.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Serialises through `Display` and deserialises through `FromStr`, whose
/// error becomes the located message.
macro_rules! text_form {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_text(d)
            }
        }
    )*};
}

text_form!(Method, HeaderName, HeaderValue, Regex);

fn parse_text<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error>
where
    T::Err: fmt::Display,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// Why a value was refused; the text names the value and the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParseError(String);

/// An HTTP method as routes match it: upper-case letters (`GET`, `PURGE`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Method(http::Method);

impl Method {
    /// The method as the `http` crate holds it, to compare with a request's.
    pub fn as_http(&self) -> &http::Method {
        &self.0
    }
}

impl FromStr for Method {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refused = || ParseError(format!("{s:?} is not an HTTP method (upper case, e.g. GET)"));
        // Methods are case-sensitive: `get` would be a method no client sends.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(refused());
        }
        http::Method::from_bytes(s.as_bytes()).map(Method).map_err(|_| refused())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// An HTTP header name, held in the lower case HTTP/2 sends it in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderName(http::HeaderName);

impl HeaderName {
    /// The name as the `http` crate holds it, to edit a header map with.
    pub fn as_http(&self) -> &http::HeaderName {
        &self.0
    }

    /// The name in lower case.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<http::HeaderName> for HeaderName {
    fn from(name: http::HeaderName) -> Self {
        HeaderName(name)
    }
}

impl FromStr for HeaderName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        http::HeaderName::from_bytes(s.as_bytes()).map(HeaderName).map_err(|_| ParseError(format!("{s:?} is not a valid header name")))
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Ordered by name, so header edits keep one order in maps and on the wire.
impl Ord for HeaderName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for HeaderName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A header value a proxy may send: no control characters but tabs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderValue(http::HeaderValue);

impl HeaderValue {
    /// The value as the `http` crate holds it, to put in a header map.
    pub fn as_http(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl FromStr for HeaderValue {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        http::HeaderValue::from_str(s)
            .map(HeaderValue)
            .map_err(|_| ParseError(format!("{s:?} cannot be a header value: it holds control characters")))
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only built from a `&str`: never lossy.
        f.write_str(&String::from_utf8_lossy(self.0.as_bytes()))
    }
}

/// A regular expression that must match a whole value (a path, a header),
/// as Gateway API's `RegularExpression` matches do.
#[derive(Clone)]
pub struct Regex {
    source: String,
    whole: regex::Regex,
}

impl Regex {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the expression matches all of `value`.
    pub fn is_match(&self, value: &str) -> bool {
        self.whole.is_match(value)
    }
}

impl FromStr for Regex {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refused = |e: regex::Error| ParseError(format!("invalid regular expression: {e}"));
        // Checked alone first: `a)|(b` is refused, not anchored into `^(?:a)|(b)$`.
        regex::Regex::new(s).map_err(refused)?;
        let whole = regex::Regex::new(&format!("^(?:{s})$")).map_err(refused)?;
        Ok(Regex { source: s.to_string(), whole })
    }
}

impl fmt::Display for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Regex {}

/// Reads an `ip:port` socket address with a message saying what is expected
/// (serde's own says only "invalid socket address syntax").
struct Address(SocketAddr);

impl FromStr for Address {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Address).map_err(|_| ParseError(format!("{s:?} is not an ip:port address (e.g. 127.0.0.1:8080 or [::1]:8080)")))
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_text(d)
    }
}

/// `#[serde(deserialize_with = "socket_addr")]` for a `SocketAddr` field.
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    Address::deserialize(d).map(|a| a.0)
}

/// `#[serde(deserialize_with = "socket_addrs")]` for a map of names to `SocketAddr`s.
pub(crate) fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<std::collections::BTreeMap<String, SocketAddr>, D::Error> {
    let map = std::collections::BTreeMap::<String, Address>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, a)| (k, a.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(text: &str) -> T {
        let value: T = serde_json::from_value(serde_json::json!(text)).unwrap();
        let again: T = serde_json::from_value(serde_json::to_value(&value).unwrap()).unwrap();
        assert_eq!(again, value);
        value
    }

    #[test]
    fn methods_are_upper_case_tokens() {
        assert_eq!(round_trip::<Method>("PURGE").as_http().as_str(), "PURGE");
        assert_eq!(round_trip::<Method>("GET").as_http(), http::Method::GET);
        for bad in ["", "get", "GE T", "G\u{e9}T"] {
            let err = bad.parse::<Method>().unwrap_err().to_string();
            assert!(err.contains("is not an HTTP method"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn header_names_are_tokens_in_lower_case() {
        assert_eq!(round_trip::<HeaderName>("X-User").as_str(), "x-user");
        assert!("x user".parse::<HeaderName>().is_err());
        assert!("".parse::<HeaderName>().is_err());
    }

    #[test]
    fn header_values_refuse_control_characters() {
        assert_eq!(round_trip::<HeaderValue>("a b\tc").to_string(), "a b\tc");
        assert!("a\nb".parse::<HeaderValue>().is_err());
        assert!("\u{7f}".parse::<HeaderValue>().is_err());
        // Bytes above ASCII pass through, as HTTP's obs-text allows.
        assert_eq!(round_trip::<HeaderValue>("caf\u{e9}").to_string(), "caf\u{e9}");
    }

    #[test]
    fn regexes_match_whole_values_and_keep_their_source() {
        let re = round_trip::<Regex>("/users/[0-9]+");
        assert_eq!(re.as_str(), "/users/[0-9]+");
        assert!(re.is_match("/users/42") && !re.is_match("/users/42/x"));
        assert!("([".parse::<Regex>().unwrap_err().to_string().starts_with("invalid regular expression"));
        assert!("a)|(b".parse::<Regex>().is_err(), "a group closed early cannot escape the anchors");
    }

    #[test]
    fn addresses_say_what_is_expected() {
        #[derive(Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "socket_addr")]
            at: SocketAddr,
        }
        let ok: Holder = serde_json::from_value(serde_json::json!({"at": "[::1]:80"})).unwrap();
        assert_eq!(ok.at, "[::1]:80".parse().unwrap());
        let err = serde_json::from_value::<Holder>(serde_json::json!({"at": "nowhere"})).err().unwrap().to_string();
        assert!(err.contains("\"nowhere\" is not an ip:port address"), "{err}");
    }

    proptest! {
        #[test]
        fn never_panic(s in "\\PC{0,16}") {
            let _ = s.parse::<Method>();
            let _ = s.parse::<HeaderName>();
            let _ = s.parse::<HeaderValue>();
            let _ = s.parse::<Regex>();
            let _ = s.parse::<Address>();
        }
    }
}
