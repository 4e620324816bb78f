//! A ClamAV daemon of the test's own, and the EICAR test string.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::binaries::find_command;
use crate::process::Process;
use crate::scratch::scratch_dir;
use crate::wait::free_addr;

/// The EICAR anti-virus test string, assembled at run time so this source
/// file itself does not look infected to scanners.
pub fn eicar() -> String {
    ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat()
}

/// A clamd of our own: scratch config, a one-signature database, TCP on
/// loopback, no unix socket, no freshclam. Killed when dropped.
pub struct Clamd {
    process: Process,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Clamd {
    /// Starts it and waits (up to a minute) until it answers `PING`.
    pub fn start() -> Self {
        let bin = find_command("clamd").expect("clamd not found: run scripts/install-test-deps (Debian package clamav-daemon)");
        let dir = scratch_dir();
        let db = dir.join("db");
        std::fs::create_dir_all(&db).expect("creating clamd's database directory");
        // A body signature (.ndb: name, any file type, any offset, hex bytes), so
        // the string is found anywhere in an upload, not only as a whole file.
        let hex: String = eicar().bytes().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("trefoil-test.ndb"), format!("Trefoil.Test.EICAR:0:*:{hex}\n")).expect("writing the signature");
        let addr = free_addr();
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nTCPAddr {}\nTCPSocket {}\nDatabaseDirectory {}\nTemporaryDirectory {}\nLogFile {}\n",
                addr.ip(),
                addr.port(),
                db.display(),
                dir.display(),
                dir.join("clamd.log").display()
            ),
        )
        .expect("writing clamd.conf");
        let process = Process::spawn_logged("clamd", Command::new(bin).arg("-c").arg(&conf), &dir.join("clamd.stderr"));
        let mut clamd = Clamd { process, addr, dir };
        clamd.process.wait_for("clamd to answer PING", Duration::from_secs(60), || ping(addr));
        clamd
    }

    /// Its stderr and its log file.
    pub fn log(&self) -> String {
        [self.process.log(), std::fs::read_to_string(self.dir.join("clamd.log")).unwrap_or_default()].join("\n")
    }
}

/// Whether clamd answers `PING` (it listens only once its database is loaded).
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = Vec::new();
    conn.write_all(b"zPING\0").is_ok() && conn.read_to_end(&mut answer).is_ok() && answer.starts_with(b"PONG")
}
