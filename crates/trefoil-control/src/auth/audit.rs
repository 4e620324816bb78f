//! The audit log: one entry per write through the API, kept in the store
//! (so it survives restarts and goes wherever the store goes) and bounded:
//! entry `seq` lives in slot `seq % CAPACITY`, so the newest entries replace
//! the oldest and a write costs one store record, never a delete as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use trefoil_api::AuditEntry;
use trefoil_model::ResourceVersion;

use super::tokens::Caller;
use crate::rollout::now_ms;
use crate::store::Store;

/// The store kind of audit entries (internal: see `tokens::TOKEN_KIND`).
pub(crate) const AUDIT_KIND: &str = "_Audit";
/// Entries kept.
pub(crate) const CAPACITY: u64 = 1000;

/// The log of one store.
pub(crate) struct AuditLog {
    store: Arc<Store>,
    /// The last sequence number given out.
    last: AtomicU64,
}

fn read(stored: crate::store::Stored) -> Option<AuditEntry> {
    serde_json::from_value(stored.value).ok()
}

impl AuditLog {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        let last = store.list(AUDIT_KIND).into_iter().filter_map(read).map(|e| e.seq).max().unwrap_or(0);
        AuditLog { store, last: AtomicU64::new(last) }
    }

    /// Records a write. A failure to record is logged, not returned: the
    /// write it describes is already done and acknowledged.
    pub(crate) fn record(&self, caller: &Caller, verb: &str, resource: &str, before: Option<u64>, after: Option<u64>) {
        let seq = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = AuditEntry {
            seq,
            time_ms: now_ms(),
            token_id: caller.token_id.clone(),
            role: caller.role,
            verb: verb.to_string(),
            resource: resource.to_string(),
            before: before.map(ResourceVersion::new),
            after: after.map(ResourceVersion::new),
        };
        let value = serde_json::to_value(&entry).unwrap_or_default();
        if let Err(e) = self.store.put(AUDIT_KIND, &format!("{:04}", seq % CAPACITY), value, None) {
            tracing::error!(error = %e, seq, verb, resource, token = %caller.token_id, "cannot record a write in the audit log");
        }
    }

    /// The entries kept, oldest first.
    pub(crate) fn entries(&self) -> Vec<AuditEntry> {
        let mut all: Vec<AuditEntry> = self.store.list(AUDIT_KIND).into_iter().filter_map(read).collect();
        all.sort_by_key(|e| e.seq);
        all
    }
}
