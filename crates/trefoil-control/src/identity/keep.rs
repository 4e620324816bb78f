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

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::authority::{Authority, AuthorityError};
use super::spiffe::TrustDomain;

const KEY_FILE: &str = "root.key";
const CERT_FILE: &str = "root.pem";

/// Why the root could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: mode {mode:o} lets others read the CA key; it must be 0600 (chmod 600 {path})")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Authority { path: PathBuf, source: AuthorityError },
}

/// The directory holding the root of `trust_domain` under the data directory.
pub fn root_dir(data_dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    data_dir.join("ca").join(trust_domain.as_str())
}

/// The root certificate's file (public: the trust bundle proxies are given).
pub fn root_cert_path(data_dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    root_dir(data_dir, trust_domain).join(CERT_FILE)
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
