//! Entries to kernel rules: addresses as v4-mapped words with masks, ports in
//! host order, the listener and copy interface resolved, and a stable counter
//! slot per rule name so counters survive edits of other rules.
//!
//! A scanned array rather than LPM tries: a rule matches on source, destination,
//! ports and protocol at once and the first match in precedence order wins,
//! which one longest-prefix trie per field cannot express without combining
//! the answers. Scanning is bounded (1024 rules) and runs once per new flow,
//! not per packet: the flow table caches the answer.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::abi::{self, Rule, MAX_RULES};
use crate::entry::{Action, Entry, IpNet, Protocol};
use crate::error::Error;

/// FNV-1a: a stable 64-bit name for a rule, stored in the kernel so a
/// restarted agent can tell which counter slot belongs to which rule.
pub(crate) fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn words(bytes: [u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// The address as the program keys it: v4 as v4-mapped v6, in network order.
fn addr_words(addr: IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(v4) => words(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => words(v6.octets()),
    }
}

fn net_words(net: &IpNet) -> ([u32; 4], [u32; 4]) {
    let prefix = u32::from(net.prefix()) + if net.addr().is_ipv4() { 96 } else { 0 };
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    (addr_words(net.addr()), words(mask.to_be_bytes()))
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        4
    } else {
        6
    }
}

/// Counter slots by rule-name hash, and the names behind them.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    pub(crate) slots: HashMap<u64, u32>,
    pub(crate) names: HashMap<u64, String>,
}

impl Ids {
    /// Slots for the rules named in `entries`: a rule keeps the slot it had,
    /// a new one takes the lowest free slot. Returns the new table and the
    /// slots that are new (their counters must be zeroed before use).
    pub(crate) fn assign(&self, entries: &[Entry]) -> Result<(Ids, Vec<u32>), Error> {
        let mut next = Ids::default();
        let mut fresh = Vec::new();
        // Names in list order, so slots are handed out deterministically.
        let mut order = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let hash = name_hash(&entry.rule);
            if let Some(other) = next.names.get(&hash) {
                if *other != entry.rule {
                    return Err(Error::BadEntry {
                        index,
                        rule: entry.rule.clone(),
                        reason: format!("its name hashes like rule `{other}`'s; rename one"),
                    });
                }
                continue;
            }
            next.names.insert(hash, entry.rule.clone());
            order.push(hash);
            if let Some(&slot) = self.slots.get(&hash) {
                next.slots.insert(hash, slot);
            }
        }
        let used: BTreeSet<u32> = next.slots.values().copied().collect();
        let mut free = (0..MAX_RULES).filter(|slot| !used.contains(slot));
        for hash in order {
            if next.slots.contains_key(&hash) {
                continue;
            }
            // At most MAX_RULES entries, so at most MAX_RULES names: a slot is free.
            let slot = free.next().expect("no more rule names than slots");
            next.slots.insert(hash, slot);
            fresh.push(slot);
        }
        Ok((next, fresh))
    }
}

/// Compiles one entry; `ifindex` resolves a copy interface in the agent's namespace.
pub(crate) fn kernel_rule(index: usize, entry: &Entry, slot: u32, ifindex: &dyn Fn(&str) -> std::io::Result<u32>) -> Result<Rule, Error> {
    let bad = |reason: String| Error::BadEntry { index, rule: entry.rule.clone(), reason };
    if entry.src.addr().is_ipv4() != entry.dst.addr().is_ipv4() {
        return Err(bad(format!("source {} and destination {} are different address families", entry.src, entry.dst)));
    }
    if entry.ports.start() > entry.ports.end() {
        return Err(bad(format!("port range {}-{} is empty", entry.ports.start(), entry.ports.end())));
    }
    let (src, src_mask) = net_words(&entry.src);
    let (dst, dst_mask) = net_words(&entry.dst);
    let mut rule = Rule {
        src,
        src_mask,
        dst,
        dst_mask,
        name_hash: name_hash(&entry.rule),
        id: slot,
        port_lo: *entry.ports.start(),
        port_hi: *entry.ports.end(),
        protocol: entry.protocol.number(),
        family: family(entry.dst.addr()),
        ..Rule::default()
    };
    match &entry.action {
        Action::Redirect { listener } => {
            if entry.protocol != Protocol::Tcp {
                return Err(bad("redirect steers TCP connections only; use copy or drop for UDP".to_owned()));
            }
            if family(listener.ip()) != rule.family {
                return Err(bad(format!("listener {listener} is not in the matched traffic's address family")));
            }
            rule.action = abi::ACTION_REDIRECT;
            rule.listen_addr = addr_words(listener.ip());
            rule.listen_port = listener.port().to_be();
        }
        Action::Copy { interface } => {
            rule.action = abi::ACTION_COPY;
            rule.copy_ifindex = ifindex(interface).map_err(|e| bad(format!("copy interface `{interface}`: {e}")))?;
        }
        Action::Drop => rule.action = abi::ACTION_DROP,
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: &str, action: Action) -> Entry {
        Entry {
            rule: rule.to_owned(),
            priority: 0,
            src: IpNet::any_v4(),
            dst: "10.0.2.0/24".parse().unwrap(),
            ports: 80..=80,
            protocol: Protocol::Tcp,
            action,
        }
    }

    fn no_interfaces(name: &str) -> std::io::Result<u32> {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no interface {name}")))
    }

    #[test]
    fn v4_rules_are_v4_mapped_with_widened_masks() {
        let rule = kernel_rule(0, &entry("web", Action::Drop), 3, &no_interfaces).unwrap();
        assert_eq!(rule.family, 4);
        assert_eq!(rule.dst[2], u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        assert_eq!(rule.dst[3], u32::from_ne_bytes([10, 0, 2, 0]));
        assert_eq!(rule.dst_mask, [u32::MAX, u32::MAX, u32::MAX, u32::from_ne_bytes([255, 255, 255, 0])]);
        // "any v4" still pins the v4-mapped prefix, so it never matches v6.
        assert_eq!(rule.src_mask, [u32::MAX, u32::MAX, u32::MAX, 0]);
        assert_eq!((rule.port_lo, rule.port_hi, rule.id, rule.action), (80, 80, 3, abi::ACTION_DROP));
    }

    #[test]
    fn refuses_what_the_kernel_cannot_do() {
        let mut udp = entry("dns", Action::Redirect { listener: "127.0.0.1:15001".parse().unwrap() });
        udp.protocol = Protocol::Udp;
        let error = kernel_rule(4, &udp, 0, &no_interfaces).unwrap_err().to_string();
        assert_eq!(error, "datapath entry 4 (rule `dns`): redirect steers TCP connections only; use copy or drop for UDP");
        let copy = entry("tap", Action::Copy { interface: "nope0".to_owned() });
        let error = kernel_rule(1, &copy, 0, &no_interfaces).unwrap_err().to_string();
        assert!(error.contains("copy interface `nope0`: no interface nope0"), "{error}");
        let mut mixed = entry("mixed", Action::Drop);
        mixed.src = IpNet::any_v6();
        assert!(kernel_rule(0, &mixed, 0, &no_interfaces).unwrap_err().to_string().contains("different address families"));
    }

    #[test]
    fn rules_keep_their_counter_slots_across_edits() {
        let (first, fresh) =
            Ids::default().assign(&[entry("a", Action::Drop), entry("b", Action::Drop), entry("a", Action::Drop)]).unwrap();
        assert_eq!(fresh.len(), 2, "one slot per rule name, not per entry");
        let a = first.slots[&name_hash("a")];
        let (second, fresh) = first.assign(&[entry("c", Action::Drop), entry("a", Action::Drop)]).unwrap();
        assert_eq!(second.slots[&name_hash("a")], a);
        assert_eq!(fresh.len(), 1);
        assert!(!second.slots.contains_key(&name_hash("b")));
    }
}
