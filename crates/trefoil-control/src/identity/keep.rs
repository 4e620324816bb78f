//! The authority's root on disk, beside the store: made on first start,
//! read back on every later one, so proxies keep trusting the same root
//! across restarts of the control plane.
//!
//! One directory per trust domain (`ca/<trust-domain>/`), so changing the
//! domain makes a new root instead of misreading the old one. The key file
//! is created with mode 0600 and refused if anyone but its owner can read
//! it; only the certificate is ever sent anywhere. Both files are written
//! under temporary names and renamed certificate first, key last: a crash
//! leaves either a complete pair or no key, and no key means "not made yet".
//!
//! A rotation (decision 0023) makes a new root in place of the old one and
//! records the old root's certificate, with the end of its overlap, in
//! `retiring.json` first; `bundle.pem` is the trust bundle in force (every
//! root proxies trust now), rewritten whenever it changes, for processes
//! that need it before they can ask the control plane (`trefoil up`'s proxies).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::authority::{Authority, AuthorityError};
use super::spiffe::TrustDomain;

const KEY_FILE: &str = "root.key";
const CERT_FILE: &str = "root.pem";
const RETIRING_FILE: &str = "retiring.json";
const BUNDLE_FILE: &str = "bundle.pem";
/// More retiring roots than this is not an overlap any more.
pub const MAX_RETIRING: usize = 16;
/// The retiring roots' file holds a few certificates.
const MAX_RETIRING_BYTES: u64 = 256 * 1024;

/// A root rotated out, trusted until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retiring {
    pub root_pem: String,
    pub until: SystemTime,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetiringRecord {
    root_pem: String,
    until_unix_ms: u64,
}

/// Why the root could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: mode {mode:o} lets others read the CA key; it must be 0600 (chmod 600 {path})")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Authority { path: PathBuf, source: AuthorityError },
    #[error("{path}: {message}")]
    Retiring { path: PathBuf, message: String },
}

/// The directory holding the root of `trust_domain` under the data directory.
pub fn root_dir(data_dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    data_dir.join("ca").join(trust_domain.as_str())
}

/// The trust bundle's file (public): every root proxies trust now, which
/// processes started beside the control plane verify its stream with.
pub fn bundle_path(data_dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    root_dir(data_dir, trust_domain).join(BUNDLE_FILE)
}

/// Writes the trust bundle in force to [`bundle_path`].
pub fn write_bundle(data_dir: &Path, trust_domain: &TrustDomain, pem: &str) -> Result<(), KeepError> {
    let dir = root_dir(data_dir, trust_domain);
    let path = dir.join(BUNDLE_FILE);
    if !dir.exists() {
        create_private_dir(&dir).map_err(|source| KeepError::Io { path: dir.clone(), source })?;
    }
    write_then_rename(&path, pem.as_bytes(), 0o644).map_err(|source| KeepError::Io { path, source })
}

/// The roots rotated out of `trust_domain`'s whose overlap has not ended at `now`.
pub fn load_retiring(data_dir: &Path, trust_domain: &TrustDomain, now: SystemTime) -> Result<Vec<Retiring>, KeepError> {
    use std::io::Read;
    let path = root_dir(data_dir, trust_domain).join(RETIRING_FILE);
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(KeepError::Io { path, source }),
    };
    let mut text = Vec::new();
    file.take(MAX_RETIRING_BYTES + 1).read_to_end(&mut text).map_err(|source| KeepError::Io { path: path.clone(), source })?;
    if text.len() as u64 > MAX_RETIRING_BYTES {
        return Err(KeepError::Retiring { path, message: "more than 256 KiB: not a list of a few roots".into() });
    }
    let records: Vec<RetiringRecord> =
        serde_json::from_slice(&text).map_err(|e| KeepError::Retiring { path: path.clone(), message: e.to_string() })?;
    Ok(records
        .into_iter()
        .map(|r| Retiring { root_pem: r.root_pem, until: std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.until_unix_ms) })
        .filter(|r| r.until > now)
        .collect())
}

/// A new root for `trust_domain` in place of the kept one; `retiring` (the
/// old root among them) is recorded first, so a crash part way leaves the
/// old root either in force or trusted.
pub fn rotate(data_dir: &Path, trust_domain: TrustDomain, retiring: &[Retiring], now: SystemTime) -> Result<Authority, KeepError> {
    let dir = root_dir(data_dir, &trust_domain);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeepError::Io { path, source }
    };
    let path = dir.join(RETIRING_FILE);
    if retiring.len() > MAX_RETIRING {
        return Err(KeepError::Retiring { path, message: format!("more than {MAX_RETIRING} roots in their overlap; wait for one to end") });
    }
    let records: Vec<RetiringRecord> = retiring
        .iter()
        .map(|r| RetiringRecord {
            root_pem: r.root_pem.clone(),
            until_unix_ms: r.until.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        })
        .collect();
    let json = serde_json::to_vec_pretty(&records).unwrap_or_default();
    let authority = Authority::generate(trust_domain, now).map_err(|source| KeepError::Authority { path: dir.clone(), source })?;
    write_then_rename(&path, &json, 0o644).map_err(io(&path))?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    write_then_rename(&cert_path, authority.root_pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
    write_then_rename(&key_path, authority.key_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
    Ok(authority)
}

/// The root of `trust_domain` under `data_dir`, made and saved if there is none.
pub fn load_or_create(data_dir: &Path, trust_domain: TrustDomain, now: SystemTime) -> Result<Authority, KeepError> {
    let dir = root_dir(data_dir, &trust_domain);
    let key_path = dir.join(KEY_FILE);
    let cert_path = dir.join(CERT_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeepError::Io { path, source }
    };
    match fs::metadata(&key_path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeepError::Mode { path: key_path, mode });
            }
            let key = fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let authority =
                Authority::from_pem(trust_domain, &key, &cert).map_err(|source| KeepError::Authority { path: dir.clone(), source })?;
            tracing::info!(trust_domain = %authority.trust_domain(), root = %cert_path.display(), "loaded the mesh CA root");
            Ok(authority)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let authority = Authority::generate(trust_domain, now).map_err(|source| KeepError::Authority { path: dir.clone(), source })?;
            create_private_dir(&dir).map_err(io(&dir))?;
            write_then_rename(&cert_path, authority.root_pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
            write_then_rename(&key_path, authority.key_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
            tracing::info!(trust_domain = %authority.trust_domain(), root = %cert_path.display(), "made a new mesh CA root");
            Ok(authority)
        }
        Err(e) => Err(io(&key_path)(e)),
    }
}

/// `dir` and its parents, the last one readable by its owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to a temporary file created with `mode`, syncs it and
/// renames it to `path`, so `path` is either absent or whole.
fn write_then_rename(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trefoil-keep-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_root_is_made_once_with_a_private_key_and_reloaded_after() {
        let data = temp("reload");
        let first = load_or_create(&data, TrustDomain::default(), SystemTime::now()).unwrap();
        let dir = root_dir(&data, &TrustDomain::default());
        assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let again = load_or_create(&data, TrustDomain::default(), SystemTime::now()).unwrap();
        assert_eq!(again.root_pem(), first.root_pem(), "a restart keeps the root");
        // Another trust domain is another root.
        let other = load_or_create(&data, "example.org".parse().unwrap(), SystemTime::now()).unwrap();
        assert_ne!(other.root_pem(), first.root_pem());
        fs::remove_dir_all(&data).unwrap();
    }

    #[test]
    fn a_key_others_can_read_is_refused_naming_the_file() {
        let data = temp("mode");
        load_or_create(&data, TrustDomain::default(), SystemTime::now()).unwrap();
        let key = root_dir(&data, &TrustDomain::default()).join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&data, TrustDomain::default(), SystemTime::now()).err().expect("refused");
        assert!(err.to_string().contains("root.key: mode 644") && err.to_string().contains("0600"), "{err}");
        fs::remove_dir_all(&data).unwrap();
    }
}
