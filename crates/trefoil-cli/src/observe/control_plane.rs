//! The control plane as the observing commands read it: resources and the
//! status of its proxies.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trefoil_metrics::fetch::{FetchError, Fetcher};
use trefoil_model::Resource;

const WHAT: &str = "control plane";

/// A proxy as `GET /api/v1/status/proxies` reports it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProxyStatus {
    pub name: String,
    #[serde(default)]
    pub connected: bool,
    #[serde(default)]
    pub admin_address: Option<String>,
    /// Newest snapshot compiled for the proxy.
    #[serde(default)]
    pub latest_version: Option<Value>,
    /// Newest snapshot the proxy accepted.
    #[serde(default)]
    pub acked_version: Option<Value>,
    #[serde(default)]
    pub nack: Option<Nack>,
    #[serde(default)]
    pub last_seen: Option<Value>,
}

/// A snapshot the proxy refused, and why.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct Nack {
    #[serde(default)]
    pub version: Option<Value>,
    #[serde(default)]
    pub error: String,
}

/// A list answer: `{"items": [...]}` as the resource lists are, or a bare array.
#[derive(Deserialize)]
#[serde(untagged)]
enum List<T> {
    Wrapped {
        #[serde(default = "Vec::new")]
        items: Vec<T>,
    },
    Bare(Vec<T>),
}

impl<T> List<T> {
    fn items(self) -> Vec<T> {
        match self {
            List::Wrapped { items } | List::Bare(items) => items,
        }
    }
}

/// The control plane's REST API at `base`.
pub(crate) struct ControlPlane<'a> {
    pub fetcher: &'a Fetcher,
    pub base: &'a str,
}

impl ControlPlane<'_> {
    /// Answers when the API serves its description.
    pub(crate) async fn reachable(&self) -> Result<(), FetchError> {
        self.fetcher.get(WHAT, self.base, "/api/v1/openapi.json").await.and_then(|(status, body)| {
            if status == 200 {
                Ok(())
            } else {
                Err(FetchError::Status {
                    what: WHAT.into(),
                    base: self.base.into(),
                    path: "/api/v1/openapi.json".into(),
                    status,
                    message: String::from_utf8_lossy(&body).chars().take(200).collect(),
                })
            }
        })
    }

    /// Every resource of `kind`.
    pub(crate) async fn list(&self, kind: &str) -> Result<Vec<Resource>, FetchError> {
        Ok(self.fetcher.json::<List<Resource>>(WHAT, self.base, &format!("/api/v1/{kind}")).await?.items())
    }

    /// One resource as the API shows it; `None` when it does not exist.
    pub(crate) async fn get(&self, kind: &str, name: &str) -> Result<Option<Value>, FetchError> {
        match self.fetcher.json::<Value>(WHAT, self.base, &format!("/api/v1/{kind}/{name}")).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every proxy the control plane knows, connected or not.
    pub(crate) async fn proxies(&self) -> Result<Vec<ProxyStatus>, FetchError> {
        Ok(self.fetcher.json::<List<ProxyStatus>>(WHAT, self.base, "/api/v1/status/proxies").await?.items())
    }
}

/// A version field for display: `3` and `"3"` both print as `3`.
pub(crate) fn version_text(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_reads_wrapped_or_bare() {
        let wrapped: List<ProxyStatus> =
            serde_json::from_str(r#"{"items":[{"name":"gw","connected":true,"latestVersion":3,"ackedVersion":3,"nack":null}]}"#).unwrap();
        let bare: List<ProxyStatus> = serde_json::from_str(r#"[{"name":"gw"}]"#).unwrap();
        assert_eq!(wrapped.items()[0].name, "gw");
        assert_eq!(bare.items()[0].name, "gw");
    }

    #[test]
    fn versions_print_the_same_as_numbers_or_strings() {
        assert_eq!(version_text(&Some(serde_json::json!(3))), "3");
        assert_eq!(version_text(&Some(serde_json::json!("3"))), "3");
        assert_eq!(version_text(&None), "-");
    }
}
