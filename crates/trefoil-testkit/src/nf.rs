//! A sample network function, `trefoil nf KIND`, as a real process.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::binaries::trefoil_command;
use crate::client::http_get;
use crate::process::Process;
use crate::scratch::scratch_dir;
use crate::wait::free_addr;

/// A `trefoil nf` process on a free port; killed when dropped.
pub struct Nf {
    process: Process,
    pub addr: SocketAddr,
}

impl Nf {
    /// `trefoil nf ARGS --listen ADDR`; returns once it accepts connections
    /// and answers its health probe.
    pub fn start(args: &[&str]) -> Self {
        let addr = free_addr();
        let mut process = Process::spawn_logged(
            &format!("trefoil nf {args:?}"),
            trefoil_command().arg("nf").args(args).args(["--listen", &addr.to_string()]),
            &scratch_dir().join("nf.stderr"),
        );
        process.wait_for("its listener", Duration::from_secs(20), || TcpStream::connect(addr).is_ok());
        assert_eq!(http_get(addr, "nf", "/healthz").0, 200, "trefoil nf {args:?} answers its probe");
        Nf { process, addr }
    }

    /// What it wrote on stderr: its log.
    pub fn stderr(&self) -> String {
        self.process.log()
    }
}
