//! The on-disk record: length, checksum, JSON payload; and reading a log
//! back, including finding the intact records beyond a damaged stretch.
//!
//! Finding a record boundary after damage is reliable because a payload
//! never holds a NUL byte (serde_json writes control characters as `\u0000`
//! escapes), while the length field of any record under 16 MiB does: inside
//! a payload no offset even looks like a header, and one that does must
//! also carry the CRC-32 of the bytes after it and parse as a record.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Op {
    Put,
    Delete,
    /// Carries the revision counter through a compaction.
    Revision,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    pub op: Op,
    pub revision: u64,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

const HEADER: usize = 8;

pub(super) fn encode(r: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(r).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The intact record starting at `at`, and its length with the header.
fn decode_at(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    // Every payload is a JSON object: a cheap test before the checksum,
    // which matters when scanning damaged bytes offset by offset.
    if payload.first() != Some(&b'{') || crc32fast::hash(payload) != crc {
        return None;
    }
    let record = serde_json::from_slice::<Record>(payload).ok()?;
    Some((record, HEADER + len))
}

/// The first offset at or after `from` where an intact record starts.
fn next_intact(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(HEADER - 1)).find(|&at| decode_at(bytes, at).is_some())
}

/// What opening a log finds.
pub(super) enum Prefix {
    /// Every byte belongs to an intact record.
    Whole(Vec<Record>),
    /// The records before `good`; the bytes after hold no intact record:
    /// the last write was torn by a crash.
    TornTail { records: Vec<Record>, good: usize },
    /// No intact record starts at `bad`, but one starts at `next`: the
    /// damage is not a torn write, and cutting the log at `bad` would throw
    /// acknowledged writes away.
    Damaged { bad: usize, next: usize },
}

/// Reads the records from the start of `bytes`, as opening the store does.
pub(super) fn read_prefix(bytes: &[u8]) -> Prefix {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some((record, len)) = decode_at(bytes, at) else {
            return match next_intact(bytes, at + 1) {
                Some(next) => Prefix::Damaged { bad: at, next },
                None => Prefix::TornTail { records, good: at },
            };
        };
        records.push(record);
        at += len;
    }
    Prefix::Whole(records)
}

/// Every intact record of a damaged log, found by skipping each damaged
/// stretch up to the next intact record.
pub(super) struct Salvage {
    /// Each intact record and where its bytes are.
    pub records: Vec<(Record, Range<usize>)>,
    /// The stretches of bytes that hold no intact record.
    pub gaps: Vec<Range<usize>>,
}

pub(super) fn salvage(bytes: &[u8]) -> Salvage {
    let mut out = Salvage { records: Vec::new(), gaps: Vec::new() };
    let mut at = 0;
    while at < bytes.len() {
        match decode_at(bytes, at) {
            Some((record, len)) => {
                out.records.push((record, at..at + len));
                at += len;
            }
            None => {
                let next = next_intact(bytes, at + 1).unwrap_or(bytes.len());
                out.gaps.push(at..next);
                at = next;
            }
        }
    }
    out
}

/// The writes a damaged stretch still names, as `Kind/name (op, revision N)`:
/// a hint of what to re-apply. Best effort: damage inside a record's first
/// fields hides it.
pub(super) fn named_in(damaged: &[u8]) -> Vec<String> {
    const START: &str = "{\"op\":\"";
    let text = String::from_utf8_lossy(damaged);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find(START) {
        rest = &rest[i + START.len()..];
        if let Some(named) = parse_named(rest) {
            out.push(named);
        }
    }
    out
}

/// `put","revision":12,"kind":"Route","name":"web"` -> `Route/web (put, revision 12)`.
fn parse_named(s: &str) -> Option<String> {
    let (op, s) = s.split_once('"')?;
    let s = s.strip_prefix(",\"revision\":")?;
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (revision, s) = s.split_at(digits);
    let s = s.strip_prefix(",\"kind\":\"")?;
    let (kind, s) = s.split_once('"')?;
    let s = s.strip_prefix(",\"name\":\"")?;
    let (name, _) = s.split_once('"')?;
    let plain = |t: &str| !t.is_empty() && t.len() <= 253 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (plain(op) && !revision.is_empty() && plain(kind) && plain(name)).then(|| format!("{kind}/{name} ({op}, revision {revision})"))
}
