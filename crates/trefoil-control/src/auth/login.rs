//! One-time login codes, as Jupyter prints its login link: an admin (or
//! `trefoil up` with the bootstrap token) mints a short-lived code bound to
//! a role; the portal exchanges it once, at `POST /api/v1/login`, for a
//! session token (a normal API token with an expiry). The link a terminal
//! shows then opens no door once it has been used, or after ten minutes.
//!
//! Codes live in memory only: they are meant to be used within minutes of
//! being printed, and a restart that forgets them forgets nothing a person
//! still needs (`trefoil portal login-link` mints another). Only the SHA-256
//! of a code is kept. A code used or expired is remembered for an hour more
//! so that its second use is told why it is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use ring::rand::{SecureRandom, SystemRandom};
use trefoil_api::Role;

/// A code's lifetime unless asked otherwise: ten minutes.
pub(crate) const DEFAULT_TTL_MS: u64 = 10 * 60 * 1000;
/// The longest lifetime a code may be given: one hour.
pub(crate) const MAX_TTL_MS: u64 = 60 * 60 * 1000;
/// The lifetime of the session token a code opens: twelve hours.
pub(crate) const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Codes not yet used nor expired, at most: a mint beyond is refused (429).
pub(crate) const MAX_OUTSTANDING: usize = 16;
/// How long a used or expired code is remembered, to explain a refusal.
const REMEMBER_MS: u64 = 60 * 60 * 1000;
/// Codes remembered at most (used or expired ones are forgotten oldest first).
const MAX_REMEMBERED: usize = 256;

const CODE_BYTES: usize = 24;

#[derive(Clone, Debug)]
struct Entry {
    id: String,
    role: Role,
    /// The token id of whoever minted it.
    creator: String,
    created_ms: u64,
    expires_ms: u64,
    used: bool,
}

/// A code that was redeemed: what the session token is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Redeemed {
    pub(crate) id: String,
    pub(crate) role: Role,
    pub(crate) creator: String,
}

/// Why a code is refused (each answered 401, except `TooMany`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodeError {
    #[error("this login link is not valid: the control plane never issued it, or forgot it when it restarted; ask for a new one (`trefoil portal login-link`)")]
    Unknown,
    #[error("this login link was already used (login code {0}); a link logs in once: ask for a new one (`trefoil portal login-link`)")]
    Used(String),
    #[error("this login link expired {ago_s}s ago (login code {id}); ask for a new one (`trefoil portal login-link`)")]
    Expired { id: String, ago_s: u64 },
    #[error("{0} login codes are outstanding, the most allowed; use one or wait for one to expire")]
    TooMany(usize),
    #[error("the system's random number generator failed")]
    Random,
}

/// The codes of one control plane.
pub(crate) struct LoginCodes {
    /// By the SHA-256 of the code.
    entries: Mutex<HashMap<String, Entry>>,
    random: SystemRandom,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(code: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, code.as_bytes()).as_ref())
}

impl LoginCodes {
    pub(crate) fn new() -> Self {
        LoginCodes { entries: Mutex::new(HashMap::new()), random: SystemRandom::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets what no answer needs any more, and the oldest used or
    /// expired codes beyond [`MAX_REMEMBERED`].
    fn prune(entries: &mut HashMap<String, Entry>, now_ms: u64) {
        entries.retain(|_, e| e.expires_ms.saturating_add(REMEMBER_MS) > now_ms);
        if entries.len() > MAX_REMEMBERED {
            let mut spent: Vec<(u64, String)> =
                entries.iter().filter(|(_, e)| e.used || e.expires_ms <= now_ms).map(|(k, e)| (e.created_ms, k.clone())).collect();
            spent.sort();
            for (_, key) in spent.into_iter().take(entries.len() - MAX_REMEMBERED) {
                entries.remove(&key);
            }
        }
    }

    /// A new code for a session of `role`, good until `now_ms + ttl_ms`:
    /// `(id, code, expires_ms)`.
    pub(crate) fn mint(&self, role: Role, ttl_ms: u64, creator: &str, now_ms: u64) -> Result<(String, String, u64), CodeError> {
        let mut entries = self.lock();
        Self::prune(&mut entries, now_ms);
        let outstanding = entries.values().filter(|e| !e.used && e.expires_ms > now_ms).count();
        if outstanding >= MAX_OUTSTANDING {
            return Err(CodeError::TooMany(outstanding));
        }
        let mut buf = [0u8; CODE_BYTES];
        self.random.fill(&mut buf).map_err(|_| CodeError::Random)?;
        let code = hex(&buf);
        let key = sha256(&code);
        // The id names the code without giving it away: a prefix of its hash.
        let id = key[..12].to_string();
        let expires_ms = now_ms.saturating_add(ttl_ms);
        let entry = Entry { id: id.clone(), role, creator: creator.to_string(), created_ms: now_ms, expires_ms, used: false };
        entries.insert(key, entry);
        Ok((id, code, expires_ms))
    }

    /// Uses a code up: the role and creator it was minted with, once.
    pub(crate) fn redeem(&self, code: &str, now_ms: u64) -> Result<Redeemed, CodeError> {
        let mut entries = self.lock();
        Self::prune(&mut entries, now_ms);
        // The map is keyed by the hash, so a lookup compares hashes, never codes.
        let entry = entries.get_mut(&sha256(code.trim())).ok_or(CodeError::Unknown)?;
        if entry.used {
            return Err(CodeError::Used(entry.id.clone()));
        }
        if entry.expires_ms <= now_ms {
            return Err(CodeError::Expired { id: entry.id.clone(), ago_s: (now_ms - entry.expires_ms) / 1000 });
        }
        entry.used = true;
        Ok(Redeemed { id: entry.id.clone(), role: entry.role, creator: entry.creator.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_logs_in_once_and_says_why_it_is_refused_after() {
        let codes = LoginCodes::new();
        let (id, code, expires) = codes.mint(Role::Viewer, DEFAULT_TTL_MS, "admin1", 1_000).unwrap();
        assert_eq!(expires, 1_000 + DEFAULT_TTL_MS);
        assert_eq!(code.len(), 2 * CODE_BYTES);
        assert_eq!(codes.redeem(&code, 2_000), Ok(Redeemed { id: id.clone(), role: Role::Viewer, creator: "admin1".into() }));
        assert_eq!(codes.redeem(&code, 3_000), Err(CodeError::Used(id)));
        assert_eq!(codes.redeem("0123", 3_000), Err(CodeError::Unknown));
    }

    #[test]
    fn an_expired_code_is_refused_with_its_age_then_forgotten() {
        let codes = LoginCodes::new();
        let (id, code, expires) = codes.mint(Role::Admin, 60_000, "admin1", 0).unwrap();
        assert_eq!(codes.redeem(&code, expires + 7_000), Err(CodeError::Expired { id, ago_s: 7 }));
        assert_eq!(codes.redeem(&code, expires + REMEMBER_MS + 1), Err(CodeError::Unknown));
    }

    #[test]
    fn outstanding_codes_are_bounded_and_a_used_one_frees_its_place() {
        let codes = LoginCodes::new();
        let minted: Vec<String> = (0..MAX_OUTSTANDING).map(|_| codes.mint(Role::Admin, DEFAULT_TTL_MS, "a", 0).unwrap().1).collect();
        assert_eq!(codes.mint(Role::Admin, DEFAULT_TTL_MS, "a", 0).err(), Some(CodeError::TooMany(MAX_OUTSTANDING)));
        codes.redeem(&minted[0], 1).unwrap();
        assert!(codes.mint(Role::Admin, DEFAULT_TTL_MS, "a", 1).is_ok());
        // Expired ones free theirs too.
        assert!(codes.mint(Role::Admin, DEFAULT_TTL_MS, "a", DEFAULT_TTL_MS + 1).is_ok());
    }
}
