//! Loopback ports for everything the runtime starts.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Hands out free loopback ports. Every port stays bound until the
/// allocator is dropped, so one plan never gets the same port twice; the
/// OS may still give a released port to someone else before the child binds
/// it, which is the price of letting children bind their own sockets.
#[derive(Default)]
pub struct PortAllocator {
    held: Vec<TcpListener>,
    /// `--admin-base`: admin ports are `base + offset` in plan order; 0 asks the OS.
    admin_base: u16,
    admin_next: u16,
}

impl PortAllocator {
    pub fn new(admin_base: u16) -> Self {
        PortAllocator { held: Vec::new(), admin_base, admin_next: 0 }
    }

    /// A free `127.0.0.1` port, below the kernel's ephemeral range when it
    /// can: a port from that range, released until the child binds it, may
    /// meanwhile become the local port of any outgoing connection.
    pub fn free(&mut self) -> std::io::Result<SocketAddr> {
        let listener = below_ephemeral().map_or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)), Ok)?;
        let addr = listener.local_addr()?;
        self.held.push(listener);
        Ok(addr)
    }

    /// The next admin address: `base + offset`, or OS-chosen when the base is 0.
    pub fn admin(&mut self) -> std::io::Result<SocketAddr> {
        if self.admin_base == 0 {
            return self.free();
        }
        let port = self
            .admin_base
            .checked_add(self.admin_next)
            .ok_or_else(|| std::io::Error::other(format!("admin ports from {} run past 65535", self.admin_base)))?;
        self.admin_next += 1;
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }

    /// `addr` itself, or a free port on its IP when its port is 0.
    pub fn resolve(&mut self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        if addr.port() != 0 {
            return Ok(addr);
        }
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        self.held.push(listener);
        Ok(addr)
    }
}

/// Lowest port of the kernel's range for outgoing connections' local ports.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A bound listener on a random port between 20000 (above the default admin
/// ports, 15000 and up) and the ephemeral range;
/// `None` when that range is too small or every try was taken.
fn below_ephemeral() -> Option<TcpListener> {
    let end = ephemeral_start();
    if end <= 21000 {
        return None;
    }
    (0..64).find_map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, fastrand::u16(20000..end))).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_while_held() {
        let mut a = PortAllocator::new(0);
        let ports: std::collections::BTreeSet<u16> = (0..20).map(|_| a.free().unwrap().port()).collect();
        assert_eq!(ports.len(), 20);
        assert!(ports.iter().all(|p| *p < ephemeral_start()), "{ports:?}");
    }

    #[test]
    fn admin_ports_count_up_from_the_base() {
        let mut a = PortAllocator::new(15000);
        assert_eq!(a.admin().unwrap().port(), 15000);
        assert_eq!(a.admin().unwrap().port(), 15001);
        let mut a = PortAllocator::new(65535);
        a.admin().unwrap();
        assert!(a.admin().is_err());
    }
}
