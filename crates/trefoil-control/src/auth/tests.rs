//! Tokens, roles, expiry and the audit log, on a real store in a scratch directory.

use std::os::unix::fs::PermissionsExt;

use super::audit::{AuditLog, AUDIT_KIND, CAPACITY};
use super::tokens::{Bootstrapped, Refused, Tokens, TOKEN_KIND};
use super::*;

fn store(test: &str) -> (std::path::PathBuf, Arc<Store>) {
    let dir = std::env::temp_dir().join(format!("trefoil-auth-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
    (dir, store)
}

#[test]
fn a_minted_token_is_checked_by_its_hash_and_never_stored() {
    let (_dir, store) = store("mint");
    let tokens = Tokens::new(store.clone());
    let (info, token) = tokens.mint(Role::Editor, None, "someone").unwrap();
    // 256 bits of secret after the 64-bit id.
    assert!(token.starts_with(&format!("trf_{}_", info.id)) && token.len() == 4 + 16 + 1 + 64, "{token}");
    assert_eq!(tokens.check(&token, 0), Ok(Caller { token_id: info.id.clone(), role: Role::Editor }));
    let stored = store.get(TOKEN_KIND, &info.id).unwrap().value.to_string();
    let secret = token.rsplit('_').next().unwrap();
    assert!(!stored.contains(secret) && stored.contains("\"sha256\""), "{stored}");

    // One character off, anywhere in the secret: the same answer as an unknown id.
    let mut wrong = token.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    assert_eq!(tokens.check(&wrong, 0), Err(Refused::Unknown(info.id)));
    assert_eq!(tokens.check("trf_0123456789abcdef_00", 0), Err(Refused::Unknown("0123456789abcdef".into())));
    for malformed in ["", "Bearer x", "trf_", "trf_short_x", "trf_0123456789abcdeg_x"] {
        assert_eq!(tokens.check(malformed, 0), Err(Refused::Malformed), "{malformed:?}");
    }
}

#[test]
fn an_expired_or_revoked_token_is_refused() {
    let (_dir, store) = store("expiry");
    let tokens = Tokens::new(store);
    let (info, token) = tokens.mint(Role::Viewer, Some(60_000), "someone").unwrap();
    let expires = info.expires_ms.unwrap();
    assert!(tokens.check(&token, expires - 1).is_ok());
    assert_eq!(tokens.check(&token, expires + 5_000), Err(Refused::Expired { id: info.id.clone(), ago_s: 5 }));
    assert_eq!(tokens.list(), vec![info.clone()]);
    tokens.revoke(&info.id).unwrap();
    assert_eq!(tokens.check(&token, expires - 1), Err(Refused::Unknown(info.id)));
    assert!(tokens.list().is_empty());
}

#[test]
fn each_request_needs_the_role_its_method_and_path_say() {
    let read = Need::Role(Role::Viewer);
    let write = Need::Role(Role::Editor);
    let admin = Need::Role(Role::Admin);
    for (method, path, needed) in [
        (Method::GET, "/api/v1/openapi.json", Need::Nothing),
        (Method::POST, "/v1/traces", Need::Nothing),
        (Method::GET, "/v1/traces", read),
        (Method::GET, "/api/v1/routes", read),
        (Method::GET, "/api/v1/watch/routes", read),
        (Method::GET, "/api/v1/status/proxies", read),
        (Method::GET, "/api/v1/live", read),
        (Method::GET, "/api/v1/graph", read),
        (Method::GET, "/api/v1/whoami", read),
        (Method::PUT, "/api/v1/routes/web", write),
        (Method::POST, "/api/v1/routes", write),
        (Method::DELETE, "/api/v1/routes/web", write),
        (Method::POST, "/api/v1/rollouts/web/promote", write),
        (Method::GET, "/api/v1/tokens", admin),
        (Method::DELETE, "/api/v1/tokens/0123", admin),
        (Method::GET, "/api/v1/audit", admin),
        (Method::POST, "/api/v1/login-codes", admin),
        (Method::POST, "/api/v1/login", Need::Nothing),
        (Method::GET, "/api/v1/login", read),
    ] {
        assert_eq!(need(&method, path), needed, "{method} {path}");
    }
}

#[test]
fn anonymous_access_is_refused_beyond_loopback() {
    let (_dir, store) = store("insecure");
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(Auth::new(store.clone(), true, at("127.0.0.1:7070")).is_ok_and(|a| a.anonymous == Some(Role::Admin)));
    assert!(Auth::new(store.clone(), true, at("[::1]:7070")).is_ok());
    assert!(Auth::new(store.clone(), false, at("0.0.0.0:7070")).is_ok_and(|a| a.anonymous.is_none()));
    let refused = Auth::new(store, true, at("0.0.0.0:7070")).err().unwrap().to_string();
    assert!(refused.contains("0.0.0.0:7070 is not a loopback address"), "{refused}");
}

#[test]
fn the_bootstrap_token_is_written_owner_only_and_kept_while_it_is_live() {
    let (dir, store) = store("bootstrap");
    let tokens = Tokens::new(store);
    let Bootstrapped::Minted { path, id } = tokens.bootstrap(&dir).unwrap() else { panic!("a first start mints") };
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(tokens.check(token.trim(), 0).unwrap().role, Role::Admin);
    assert_eq!(tokens.bootstrap(&dir).unwrap(), Bootstrapped::Kept(path.clone()));
    // Revoked: the next start mints another, so the data directory's owner is never locked out.
    tokens.revoke(&id).unwrap();
    assert!(matches!(tokens.bootstrap(&dir).unwrap(), Bootstrapped::Minted { id: again, .. } if again != id));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_audit_log_keeps_the_newest_entries_in_order_and_survives_a_restart() {
    let (dir, store) = store("audit");
    let caller = Caller { token_id: "0123456789abcdef".into(), role: Role::Editor };
    let log = AuditLog::new(store.clone());
    for i in 0..CAPACITY + 5 {
        log.record(&caller, "apply", "Route/web", Some(i), Some(i + 1));
    }
    let entries = log.entries();
    assert_eq!(entries.len() as u64, CAPACITY);
    assert_eq!(entries.first().unwrap().seq, 6);
    assert_eq!(entries.last().unwrap().seq, CAPACITY + 5);
    assert_eq!(store.list(AUDIT_KIND).len() as u64, CAPACITY);
    drop((log, store));
    let store = Arc::new(Store::open(dir.join("store.db")).unwrap());
    let log = AuditLog::new(store);
    log.record(&caller, "delete", "Route/web", Some(7), None);
    assert_eq!(log.entries().last().unwrap().seq, CAPACITY + 6);
}
