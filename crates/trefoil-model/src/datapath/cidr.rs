//! Address blocks in datapath rules (`10.0.2.0/24`, `fd00::/64`, or a bare
//! address meaning one host), parsed when a rule is loaded so the precedence
//! code and the kernel compiler never see a string. No crate the workspace
//! already carries does this, and the type is thirty lines.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A network: an address with its host bits clear and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// The IP version of an address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

impl Cidr {
    /// The network of `addr` under a `prefix`-bit mask; `None` when the
    /// prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let network = match addr {
            IpAddr::V4(a) if prefix <= 32 => IpAddr::V4((u32::from(a) & mask32(prefix)).into()),
            IpAddr::V6(a) if prefix <= 128 => IpAddr::V6((u128::from(a) & mask128(prefix)).into()),
            _ => return None,
        };
        Some(Cidr { network, prefix })
    }

    /// One host: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        Cidr { network: addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// Bits of the prefix: the longer, the more specific.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        if self.network.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }

    /// Whether one host, not a network.
    pub fn is_host(&self) -> bool {
        self == &Cidr::host(self.network)
    }

    /// Whether `addr` lies in the block; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Why an address block was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseCidrError {
    #[error("{0:?} is not an IP address or network (e.g. 10.0.2.0/24, 10.0.2.5, fd00::/64)")]
    Syntax(String),
    #[error("{input:?}: a prefix of {prefix} bits is longer than the address ({max} bits)")]
    Prefix { input: String, prefix: String, max: u8 },
    #[error("{input:?} has host bits set: the network is {network}")]
    HostBits { input: String, network: Cidr },
}

impl FromStr for Cidr {
    type Err = ParseCidrError;

    fn from_str(input: &str) -> Result<Cidr, ParseCidrError> {
        let syntax = || ParseCidrError::Syntax(input.to_string());
        let (addr, prefix) = match input.split_once('/') {
            None => return input.parse::<IpAddr>().map(Cidr::host).map_err(|_| syntax()),
            Some((addr, prefix)) => (addr.parse::<IpAddr>().map_err(|_| syntax())?, prefix),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let too_long = || ParseCidrError::Prefix { input: input.to_string(), prefix: prefix.to_string(), max };
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let bits: u8 = prefix.parse().map_err(|_| too_long())?;
        let cidr = Cidr::new(addr, bits).ok_or_else(too_long)?;
        // A block written with host bits set is most often a typo for a host
        // or for another network: say which network it would be.
        if cidr.network != addr {
            return Err(ParseCidrError::HostBits { input: input.to_string(), network: cidr });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or network such as \"10.0.2.0/24\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_hosts_and_both_families() {
        let net: Cidr = "10.0.2.0/24".parse().unwrap();
        assert_eq!((net.prefix_len(), net.family()), (24, Family::Ipv4));
        assert!(net.contains(ip("10.0.2.5")) && !net.contains(ip("10.0.3.5")));
        assert!(net.contains(ip("::ffff:10.0.2.9")), "an IPv4-mapped address is the IPv4 one");
        assert!(!net.contains(ip("fd00::1")));
        let host: Cidr = "10.0.2.5".parse().unwrap();
        assert_eq!(host.to_string(), "10.0.2.5/32");
        assert!(host.is_host());
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert!(v6.contains(ip("fd00::1:2")) && !v6.contains(ip("fd01::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("192.0.2.1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        let err = "10.0.2.5/24".parse::<Cidr>().unwrap_err().to_string();
        assert!(err.contains("host bits set: the network is 10.0.2.0/24"), "{err}");
        assert!(matches!("10.0.2.0/33".parse::<Cidr>(), Err(ParseCidrError::Prefix { max: 32, .. })));
        assert!(matches!("fd00::/129".parse::<Cidr>(), Err(ParseCidrError::Prefix { max: 128, .. })));
        assert!(matches!("10.0.2/24".parse::<Cidr>(), Err(ParseCidrError::Syntax(_))));
        assert!(matches!("10.0.2.0/".parse::<Cidr>(), Err(ParseCidrError::Syntax(_))));
        assert!(matches!("10.0.2.0/+4".parse::<Cidr>(), Err(ParseCidrError::Syntax(_))));
    }

    proptest! {
        #[test]
        fn display_round_trips_and_contains_its_network(a in any::<u32>(), b in any::<u128>(), p4 in 0u8..=32, p6 in 0u8..=128) {
            for cidr in [Cidr::new(IpAddr::V4(a.into()), p4).unwrap(), Cidr::new(IpAddr::V6(b.into()), p6).unwrap()] {
                prop_assert_eq!(cidr.to_string().parse::<Cidr>().unwrap(), cidr);
                prop_assert!(cidr.contains(cidr.network()));
            }
            prop_assert!(Cidr::new(IpAddr::V4(a.into()), p4).unwrap().contains(IpAddr::V4(a.into())));
        }

        #[test]
        fn never_panics(s in "\\PC{0,48}") {
            let _ = s.parse::<Cidr>();
        }
    }
}
