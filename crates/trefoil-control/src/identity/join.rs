//! Join tokens: how a proxy that has no certificate yet proves which
//! workload it fronts. `trefoil up` mints one per proxy start, bound to
//! that workload's identity; the proxy hands it in with its first CSR.
//!
//! A token is 32 random bytes, used once, valid for minutes. Only its
//! SHA-256 is kept, as a file name in `join-tokens/` beside the store, so
//! the directory can be read without learning a usable token. The runtime
//! mints into the same directory the control plane redeems from: both run
//! on the one machine `trefoil up` manages, and a file system rename is the
//! one-use guarantee across the two processes (two redeemers race for the
//! rename; one wins).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

/// How long a minted token may wait to be redeemed by default: a proxy
/// redeems it within seconds of its start.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// Tokens are `tj1.` and 64 hex digits; anything longer is not one.
const PREFIX: &str = "tj1.";
const TOKEN_LEN: usize = PREFIX.len() + 64;

/// Why a token was not minted or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the join token is malformed (expected {TOKEN_LEN} characters starting with {PREFIX})")]
    Malformed,
    #[error("the join token is unknown")]
    Unknown,
    #[error("the join token was already used; a proxy needs a new one for each start")]
    Used,
    #[error("the join token expired {0:?} ago")]
    Expired(Duration),
    #[error("cannot draw random bytes")]
    Random,
}

/// The workload a token proves: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinIdentity {
    pub namespace: String,
    pub workload: String,
}

/// What is kept per minted token, under the token's hash.
#[derive(Serialize, Deserialize)]
struct Record {
    identity: JoinIdentity,
    expires_unix_ms: u64,
}

/// The minted, unredeemed tokens of one control plane.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    dir: PathBuf,
}

impl JoinTokens {
    /// The tokens kept under the data directory `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        JoinTokens { dir: data_dir.join("join-tokens") }
    }

    /// A new token for `identity`, redeemable once until `now + ttl`.
    pub fn mint(&self, identity: &JoinIdentity, ttl: Duration, now: SystemTime) -> Result<String, JoinError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JoinError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))?;
        self.sweep(now);
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| JoinError::Random)?;
        let token = format!("{PREFIX}{}", hex(&bytes));
        let record = Record { identity: identity.clone(), expires_unix_ms: unix_ms(now + ttl) };
        let path = self.pending(&token);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io(&path))?;
        // A record of two short strings and a number always serialises.
        file.write_all(&serde_json::to_vec(&record).unwrap_or_default()).map_err(io(&path))?;
        Ok(token)
    }

    /// The identity `token` was minted for; the token is spent whatever the outcome.
    pub fn redeem(&self, token: &str, now: SystemTime) -> Result<JoinIdentity, JoinError> {
        if token.len() != TOKEN_LEN || !token.starts_with(PREFIX) || !token[PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JoinError::Malformed);
        }
        let pending = self.pending(token);
        let used = pending.with_extension("used");
        // The rename is the one use: of two redeemers, one finds the file gone.
        if let Err(e) = fs::rename(&pending, &used) {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound if used.exists() => JoinError::Used,
                std::io::ErrorKind::NotFound => JoinError::Unknown,
                _ => JoinError::Io { path: pending, source: e },
            });
        }
        let text = fs::read(&used).map_err(|source| JoinError::Io { path: used.clone(), source })?;
        let record: Record = serde_json::from_slice(&text)
            .map_err(|e| JoinError::Io { path: used.clone(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, e) })?;
        let expires = UNIX_EPOCH + Duration::from_millis(record.expires_unix_ms);
        if let Ok(late) = now.duration_since(expires) {
            return Err(JoinError::Expired(late));
        }
        Ok(record.identity)
    }

    /// The file of an unredeemed token: named by its hash, never the token.
    fn pending(&self, token: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        self.dir.join(format!("{}.json", hex(digest.as_ref())))
    }

    /// Forgets tokens past their expiry, used or not: a used one is kept
    /// until then only so that its reuse is reported as such.
    fn sweep(&self, now: SystemTime) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = fs::read(&path)
                .ok()
                .and_then(|text| serde_json::from_slice::<Record>(&text).ok())
                .is_some_and(|r| unix_ms(now) > r.expires_unix_ms);
            if expired {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(test: &str) -> (JoinTokens, PathBuf) {
        let dir = std::env::temp_dir().join(format!("trefoil-join-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (JoinTokens::new(&dir), dir)
    }

    fn web() -> JoinIdentity {
        JoinIdentity { namespace: "default".into(), workload: "web".into() }
    }

    #[test]
    fn a_token_proves_its_identity_once_and_only_its_hash_is_kept() {
        let (tokens, dir) = tokens("once");
        let now = SystemTime::now();
        let token = tokens.mint(&web(), DEFAULT_TTL, now).unwrap();
        let files: Vec<String> =
            fs::read_dir(dir.join("join-tokens")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(files.len(), 1);
        let secret = &token[PREFIX.len()..];
        assert!(!files[0].contains(secret), "the file name is not the token");
        let content = fs::read_to_string(dir.join("join-tokens").join(&files[0])).unwrap();
        assert!(!content.contains(secret), "the record holds no token: {content}");
        assert_eq!(fs::metadata(dir.join("join-tokens").join(&files[0])).unwrap().permissions().mode() & 0o777, 0o600);

        assert_eq!(tokens.redeem(&token, now).unwrap(), web());
        assert!(matches!(tokens.redeem(&token, now), Err(JoinError::Used)));
        let forged = format!("{PREFIX}{}", "0".repeat(64));
        assert!(matches!(tokens.redeem(&forged, now), Err(JoinError::Unknown)));
        assert!(matches!(tokens.redeem("tj1.xyz", now), Err(JoinError::Malformed)));
        assert!(matches!(tokens.redeem(&format!("{token}0"), now), Err(JoinError::Malformed)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_expired_token_is_refused_and_swept() {
        let (tokens, dir) = tokens("expired");
        let then = SystemTime::now();
        let token = tokens.mint(&web(), Duration::from_secs(1), then).unwrap();
        assert!(matches!(tokens.redeem(&token, then + Duration::from_secs(5)), Err(JoinError::Expired(_))));
        let stale = tokens.mint(&web(), Duration::from_secs(1), then).unwrap();
        tokens.mint(&web(), DEFAULT_TTL, then + Duration::from_secs(5)).unwrap();
        assert!(matches!(tokens.redeem(&stale, then), Err(JoinError::Unknown)), "swept at the next mint");
        fs::remove_dir_all(&dir).unwrap();
    }
}
