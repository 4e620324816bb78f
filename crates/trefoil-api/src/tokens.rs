//! Who may call the API: bearer tokens with a role, and the audit log of
//! every write (`/api/v1/tokens`, `/api/v1/audit`). The server keeps only a
//! token's hash; the secret is in [`CreatedToken`] once, never in a list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use trefoil_model::ResourceVersion;

/// What a token may do. Each role may do everything the one before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read resources, status, traces.
    Viewer,
    /// Read, and write resources (create, apply, delete, rollout actions).
    Editor,
    /// Everything, tokens and the audit log included.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| format!("unknown role {s:?}; roles: viewer, editor, admin"))
    }
}

/// `POST /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    pub role: Role,
    /// Lifetime in seconds; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// A token as lists show it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    /// The token id of whoever created it (`bootstrap` for the first admin token).
    pub creator: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds; none: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// `POST /api/v1/tokens` answer: the only time the secret is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer secret (`Authorization: Bearer <token>`).
    pub token: String,
}

/// `POST /api/v1/login-codes`: a one-time login code for the portal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateLoginCode {
    /// The role of the session the code opens; none: admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// How long the code may be used, in seconds; none: ten minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `POST /api/v1/login-codes` answer: the only time the code is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginCode {
    /// Names the code in the audit log; not the code.
    pub id: String,
    pub role: Role,
    /// Unix milliseconds.
    pub expires_ms: u64,
    /// The code itself: good for one `POST /api/v1/login`.
    pub code: String,
}

/// `POST /api/v1/login`: exchanges a login code for a session token (a
/// [`CreatedToken`] with an expiry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub code: String,
}

/// `GET /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

/// `DELETE /api/v1/tokens/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: String,
}

/// One write as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Order of the writes, from 1; gaps mean older entries were dropped.
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The caller's token id (`anonymous` under `--insecure-local`), or the
    /// SPIFFE id of a proxy that wrote through the Datapath service.
    pub token_id: String,
    pub role: Role,
    /// `create`, `apply`, `delete`, `promote`..., `token-create`, `token-revoke`.
    pub verb: String,
    /// `Kind/name`, or `Token/<id>`.
    pub resource: String,
    /// The object's version before the write; none: it did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<ResourceVersion>,
    /// Its version after; none: it is gone (or has no version, as tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ResourceVersion>,
}

/// `GET /api/v1/audit`: oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
}

/// Writes a token (or a file holding one, like the CLI's config) to `path`,
/// readable by its owner only from the first byte on: a new file made 0600,
/// synced, then renamed over the old one, so no reader sees half of it.
pub fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_and_print_in_lower_case_and_are_ordered_by_power() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert!("root".parse::<Role>().unwrap_err().contains("viewer, editor, admin"));
    }
}
