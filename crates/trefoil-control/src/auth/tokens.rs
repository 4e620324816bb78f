//! Bearer tokens kept in the store as hashes: minting, checking, listing,
//! revoking, and the bootstrap admin token file.
//!
//! A token reads `trf_<id>_<secret>`: the id (64 random bits) finds its
//! record without a scan and names it in lists and the audit log; the secret
//! (256 random bits) is never stored, only the SHA-256 of the whole token,
//! compared in constant time. A store file that leaks gives no usable token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use trefoil_api::tokens::write_secret;
use trefoil_api::{Role, TokenInfo};

use crate::rollout::now_ms;
use crate::store::{Store, StoreError};

/// The store kind of token records. A leading `_` keeps it out of the
/// compiler's view; the API never names it as a resource kind.
pub(crate) const TOKEN_KIND: &str = "_Token";
/// The creator named on the token the control plane mints for itself.
pub(crate) const BOOTSTRAP: &str = "bootstrap";
/// The bootstrap admin token's file in the data directory.
pub const BOOTSTRAP_FILE: &str = "admin.token";

const PREFIX: &str = "trf_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A token's record in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    role: Role,
    /// Lower-case hex SHA-256 of the whole token.
    sha256: String,
    creator: String,
    created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
}

/// Why a presented token is refused (each answered 401).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("the bearer token is not a Trefoil token (trf_<id>_<secret>)")]
    Malformed,
    #[error("token {0} is unknown or was revoked")]
    Unknown(String),
    #[error("token {id} expired {ago_s}s ago")]
    Expired { id: String, ago_s: u64 },
}

/// Who made a request: the token's id and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
}

/// The tokens of one store.
pub(crate) struct Tokens {
    store: Arc<Store>,
    random: SystemRandom,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn info(id: String, r: Record) -> TokenInfo {
    TokenInfo { id, role: r.role, creator: r.creator, created_ms: r.created_ms, expires_ms: r.expires_ms }
}

impl Tokens {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Tokens { store, random: SystemRandom::new() }
    }

    fn random_hex(&self, bytes: usize) -> Result<String, StoreError> {
        let mut buf = vec![0u8; bytes];
        self.random.fill(&mut buf).map_err(|_| StoreError::Io {
            path: PathBuf::from("/dev/urandom"),
            source: std::io::Error::other("the system's random number generator failed"),
        })?;
        Ok(hex(&buf))
    }

    /// A new token; its secret is in the returned string only.
    pub(crate) fn mint(&self, role: Role, ttl_ms: Option<u64>, creator: &str) -> Result<(TokenInfo, String), StoreError> {
        let id = self.random_hex(ID_BYTES)?;
        let token = format!("{PREFIX}{id}_{}", self.random_hex(SECRET_BYTES)?);
        let now = now_ms();
        let record = Record {
            role,
            sha256: sha256(&token),
            creator: creator.to_string(),
            created_ms: now,
            expires_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
        };
        // Serialising plain data cannot fail.
        let value = serde_json::to_value(&record).unwrap_or_default();
        self.store.put(TOKEN_KIND, &id, value, Some(0))?;
        Ok((info(id, record), token))
    }

    /// The caller a presented token stands for, at time `now_ms`.
    pub(crate) fn check(&self, token: &str, now_ms: u64) -> Result<Caller, Refused> {
        let id = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .filter(|id| id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(Refused::Malformed)?;
        let record = self.record(id).ok_or_else(|| Refused::Unknown(id.to_string()))?;
        if !bool::from(record.sha256.as_bytes().ct_eq(sha256(token).as_bytes())) {
            // Same answer as an unknown id: a wrong secret says nothing more.
            return Err(Refused::Unknown(id.to_string()));
        }
        if let Some(expires) = record.expires_ms.filter(|e| *e <= now_ms) {
            return Err(Refused::Expired { id: id.to_string(), ago_s: (now_ms - expires) / 1000 });
        }
        Ok(Caller { token_id: id.to_string(), role: record.role })
    }

    fn record(&self, id: &str) -> Option<Record> {
        serde_json::from_value(self.store.get(TOKEN_KIND, id)?.value).ok()
    }

    /// Every token not revoked, expired ones included (until revoked), by id.
    pub(crate) fn list(&self) -> Vec<TokenInfo> {
        self.store.list(TOKEN_KIND).into_iter().filter_map(|s| Some(info(s.name, serde_json::from_value(s.value).ok()?))).collect()
    }

    /// Forgets a token; its next request is refused.
    pub(crate) fn revoke(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete(TOKEN_KIND, id, None).map(drop)
    }

    /// Makes sure `<data>/admin.token` holds a live admin token: on first
    /// start, or when the one there was revoked or lost, mints one and
    /// writes it (mode 0600). Whoever can read the data directory can read
    /// the store and rewrite it anyway; the file gives them nothing more.
    pub(crate) fn bootstrap(&self, data_dir: &Path) -> Result<Bootstrapped, StoreError> {
        let path = data_dir.join(BOOTSTRAP_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if self.check(text.trim(), now_ms()).is_ok_and(|c| c.role == Role::Admin) {
                return Ok(Bootstrapped::Kept(path));
            }
        }
        let (info, token) = self.mint(Role::Admin, None, BOOTSTRAP)?;
        write_secret(&path, &token).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        Ok(Bootstrapped::Minted { path, id: info.id })
    }
}

/// What [`Tokens::bootstrap`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bootstrapped {
    Kept(PathBuf),
    Minted { path: PathBuf, id: String },
}
