//! The layouts shared with `bpf/datapath.c`: rules, flow keys, flow records,
//! counters and the packed config word. Field for field the same as the C
//! structs (no implicit padding on either side), so a map value read here is
//! exactly what the program wrote.

#![allow(unsafe_code, reason = "aya reads and writes map values as plain bytes through its unsafe `Pod` trait")]

/// Rules per bank; the program scans at most this many per new flow.
pub(crate) const MAX_RULES: u32 = 1024;
/// Must match `REDIRECT_MARK` in the program.
pub(crate) const REDIRECT_MARK: u32 = 0x7ef1_0000;
/// A flow that matched no rule.
pub(crate) const NO_RULE: u32 = u32::MAX;

pub(crate) const ACTION_REDIRECT: u8 = 1;
pub(crate) const ACTION_COPY: u8 = 2;
pub(crate) const ACTION_DROP: u8 = 3;

/// Map names, as the program declares them (and as they are pinned).
pub(crate) const RULES_MAP: &str = "trefoil_rules";
pub(crate) const CONFIG_MAP: &str = "trefoil_config";
pub(crate) const COUNTERS_MAP: &str = "trefoil_counters";
pub(crate) const FLOWS_MAP: &str = "trefoil_flows";
pub(crate) const MAPS: [&str; 4] = [RULES_MAP, CONFIG_MAP, COUNTERS_MAP, FLOWS_MAP];

/// Each map's key size, value size and capacity, as this build's program
/// declares them: a pinned map from another build must match to be reused.
pub(crate) fn map_shape(name: &str) -> Option<(u32, u32, u32)> {
    let size = |bytes: usize| u32::try_from(bytes).expect("ABI structs are small");
    match name {
        RULES_MAP => Some((4, size(size_of::<Rule>()), 2 * MAX_RULES)),
        CONFIG_MAP => Some((4, 8, 1)),
        COUNTERS_MAP => Some((4, size(size_of::<Counter>()), MAX_RULES)),
        FLOWS_MAP => Some((size(size_of::<FlowKey>()), size(size_of::<Flow>()), 65_536)),
        _ => None,
    }
}
/// The classifier's function name in the object, also the kernel's program name.
pub(crate) const PROGRAM: &str = "trefoil_ingress";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) src: [u32; 4],
    pub(crate) src_mask: [u32; 4],
    pub(crate) dst: [u32; 4],
    pub(crate) dst_mask: [u32; 4],
    pub(crate) listen_addr: [u32; 4],
    pub(crate) name_hash: u64,
    pub(crate) id: u32,
    pub(crate) copy_ifindex: u32,
    pub(crate) port_lo: u16,
    pub(crate) port_hi: u16,
    pub(crate) listen_port: u16,
    pub(crate) protocol: u8,
    pub(crate) family: u8,
    pub(crate) action: u8,
    pub(crate) pad: [u8; 7],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) src: [u32; 4],
    pub(crate) dst: [u32; 4],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) protocol: u8,
    pub(crate) family: u8,
    pub(crate) pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Flow {
    pub(crate) first_ns: u64,
    pub(crate) last_ns: u64,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) name_hash: u64,
    pub(crate) rule_id: u32,
    pub(crate) generation: u32,
    pub(crate) copy_ifindex: u32,
    pub(crate) action: u8,
    pub(crate) flags: u8,
    pub(crate) pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counter {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

// SAFETY: each type is `repr(C)`, made only of integers and integer arrays,
// with explicit padding fields, so every byte pattern is a valid value and no
// byte is uninitialised padding.
unsafe impl aya::Pod for Rule {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Flow {}
// SAFETY: as above.
unsafe impl aya::Pod for Counter {}

/// The config word: which bank is live, how many rules it holds, and the
/// generation that tells the program its cached classifications are stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) count: u16,
    pub(crate) bank: u8,
    pub(crate) generation: u32,
}

impl Config {
    pub(crate) fn pack(self) -> u64 {
        u64::from(self.count) | (u64::from(self.bank & 1) << 16) | (u64::from(self.generation) << 32)
    }

    pub(crate) fn unpack(word: u64) -> Self {
        Self { count: (word & 0xffff) as u16, bank: ((word >> 16) & 1) as u8, generation: (word >> 32) as u32 }
    }

    /// The first slot of this config's bank in the rules array.
    pub(crate) fn base(self) -> u32 {
        u32::from(self.bank) * MAX_RULES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        // The sizes the C compiler gives (`bpftool btf dump file` on the object).
        assert_eq!(size_of::<Rule>(), 112);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<Flow>(), 56);
        assert_eq!(size_of::<Counter>(), 16);
    }

    #[test]
    fn config_round_trips() {
        let config = Config { count: 1024, bank: 1, generation: 7 };
        assert_eq!(Config::unpack(config.pack()), config);
        assert_eq!(config.base(), 1024);
    }
}
