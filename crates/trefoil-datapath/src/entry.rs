//! The agent's input: a flat list of compiled entries, already sorted by
//! precedence (first match wins). The control plane turns `DatapathRule`
//! resources into these; the agent only checks what the kernel needs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;

/// One match-and-action line of the kernel's rule table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The rule this entry came from; counters and flow records name it.
    pub rule: String,
    /// The rule's priority, kept for reports (the order of the list decides).
    pub priority: u32,
    /// Source addresses matched.
    pub src: IpNet,
    /// Destination addresses matched.
    pub dst: IpNet,
    /// Destination ports matched.
    pub ports: RangeInclusive<u16>,
    /// Transport protocol matched.
    pub protocol: Protocol,
    /// What happens to matching traffic.
    pub action: Action,
}

/// Transport protocols a rule can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

/// What the datapath does with a matching flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver new TCP connections to this listener (a transparent proxy in the
    /// agent's network namespace); the accepted socket's local address is the
    /// original destination.
    Redirect {
        /// The listener's address; it must be bound with `IP_TRANSPARENT`.
        listener: SocketAddr,
    },
    /// Send a copy of every packet out of this interface; the flow itself is
    /// untouched.
    Copy {
        /// An interface in the agent's network namespace.
        interface: String,
    },
    /// Drop the packets, counting them.
    Drop,
}

/// An IP network: an address with its host bits clear and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpNetError {
    /// The address part is not an IP address.
    #[error("`{0}` is not an IP address")]
    Address(String),
    /// The prefix is not a number within the address's width.
    #[error("prefix `{prefix}` is not a number from 0 to {max}")]
    Prefix {
        /// The text after the slash.
        prefix: String,
        /// 32 or 128.
        max: u8,
    },
    /// Bits beyond the prefix are set, so the intended network is ambiguous.
    #[error("`{given}` has host bits set; the network is `{network}`")]
    HostBits {
        /// What was written.
        given: String,
        /// What was probably meant.
        network: IpNet,
    },
}

impl IpNet {
    /// The network of `addr` with `prefix` bits, host bits cleared; `None` if
    /// the prefix is wider than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let width = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= width).then(|| Self { addr: mask_addr(addr, prefix), prefix })
    }

    /// Every IPv4 address.
    pub fn any_v4() -> Self {
        Self { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix: 0 }
    }

    /// Every IPv6 address.
    pub fn any_v6() -> Self {
        Self { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix: 0 }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside this network (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask_addr(addr, self.prefix) == self.addr
    }
}

fn mask_addr(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// `10.0.2.0/24`, `2001:db8::/32`, or a bare address for a single host.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| IpNetError::Address(addr_text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| IpNetError::Prefix { prefix: p.to_owned(), max })?,
        };
        let network = Self { addr: mask_addr(addr, prefix), prefix };
        if network.addr != addr {
            return Err(IpNetError::HostBits { given: text.to_owned(), network });
        }
        Ok(network)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_hosts() {
        let net: IpNet = "10.0.2.0/24".parse().unwrap();
        assert!(net.contains("10.0.2.5".parse().unwrap()));
        assert!(!net.contains("10.0.3.5".parse().unwrap()));
        assert!(!net.contains("::ffff:10.0.2.5".parse().unwrap()), "families never mix");
        assert_eq!("10.0.2.7".parse::<IpNet>().unwrap().prefix(), 32);
        assert_eq!("2001:db8::/32".parse::<IpNet>().unwrap().to_string(), "2001:db8::/32");
        assert!(IpNet::any_v4().contains("192.0.2.1".parse().unwrap()));
        assert!(IpNet::any_v6().contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn refuses_what_is_ambiguous_or_wrong() {
        assert_eq!(
            "10.0.2.5/24".parse::<IpNet>(),
            Err(IpNetError::HostBits { given: "10.0.2.5/24".into(), network: "10.0.2.0/24".parse().unwrap() })
        );
        assert_eq!("10.0.2.0/33".parse::<IpNet>(), Err(IpNetError::Prefix { prefix: "33".into(), max: 32 }));
        assert_eq!("ten/8".parse::<IpNet>(), Err(IpNetError::Address("ten".into())));
        assert_eq!(IpNet::new("10.1.2.3".parse().unwrap(), 8).unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(IpNet::new("10.1.2.3".parse().unwrap(), 40), None);
    }
}
