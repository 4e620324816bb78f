//! What the resource endpoints (`/api/v1/<kind>[/<name>]`, `/api/v1/watch/<kind>`)
//! answer besides a resource itself: lists, watch lines, deletions, and
//! what a write did.
//!
//! The server fills these with the stored JSON (`T = serde_json::Value`);
//! clients read them as `trefoil_model::Resource`s.

use serde::{Deserialize, Serialize};
use trefoil_model::{Resource, ResourceVersion};

/// `GET /api/v1/<kind>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T = Resource> {
    /// `<Kind>List`.
    pub kind: String,
    /// The store's revision when listed: every write up to it is in `items`.
    pub resource_version: ResourceVersion,
    pub items: Vec<T>,
}

/// One line of a watch stream (`application/x-ndjson`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WatchEvent<T = Resource> {
    /// An object that existed when the watch began.
    Added {
        object: T,
    },
    Modified {
        object: T,
    },
    Deleted {
        object: T,
    },
    /// The watcher fell behind and missed changes; the stream ends after
    /// this line, and the watcher lists again.
    Error {
        error: String,
    },
}

/// `DELETE /api/v1/<kind>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    /// `Kind/name`.
    pub deleted: String,
    /// The store revision of the deletion.
    pub resource_version: ResourceVersion,
}

/// What `PUT /api/v1/<kind>/<name>` did: the answer's status says which
/// (201 or 200), its body is the stored resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub created: bool,
    /// `None` when another write replaced it before the answer was made
    /// (the server then answers `null`).
    pub resource: Option<Resource>,
}

impl Written {
    /// The stored object's version, when the server sent the object.
    pub fn resource_version(&self) -> Option<ResourceVersion> {
        self.resource.as_ref()?.metadata.resource_version.as_deref()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn watch_lines_read_as_the_server_writes_them() {
        let added: WatchEvent<Value> = serde_json::from_str(r#"{"type":"ADDED","object":{"a":1}}"#).unwrap();
        assert_eq!(added, WatchEvent::Added { object: json!({"a": 1}) });
        let error = WatchEvent::<Value>::Error { error: "watch fell behind; list again".into() };
        assert_eq!(serde_json::to_value(&error).unwrap(), json!({"type": "ERROR", "error": "watch fell behind; list again"}));
    }

    #[test]
    fn a_list_keeps_its_string_resource_version() {
        let list = List::<Value> { kind: "RouteList".into(), resource_version: 12.into(), items: vec![] };
        assert_eq!(serde_json::to_value(&list).unwrap(), json!({"kind": "RouteList", "resourceVersion": "12", "items": []}));
    }
}
