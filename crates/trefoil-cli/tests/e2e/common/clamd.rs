//! A ClamAV daemon of the test's own, and the EICAR test string.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{addr, scratch_dir};

/// The EICAR anti-virus test string, assembled at run time so this source
/// file itself does not look infected to scanners.
pub(crate) fn eicar() -> String {
    ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat()
}

/// A clamd of our own: scratch config, a one-signature database, TCP on
/// loopback, no unix socket, no freshclam. Killed when dropped.
pub(crate) struct Clamd {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Clamd {
    pub(crate) fn start() -> Self {
        let bin =
            trefoil_testkit::find_command("clamd").expect("clamd not found: run scripts/install-test-deps (Debian package clamav-daemon)");
        let dir = scratch_dir();
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        // A body signature (.ndb: name, any file type, any offset, hex bytes), so
        // the string is found anywhere in an upload, not only as a whole file.
        let hex: String = eicar().bytes().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("trefoil-test.ndb"), format!("Trefoil.Test.EICAR:0:*:{hex}\n")).unwrap();
        let addr = addr();
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
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("clamd.stderr")).unwrap())
            .spawn()
            .expect("starting clamd");
        let mut clamd = Clamd { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !clamd.pong() {
            if let Ok(Some(status)) = clamd.child.try_wait() {
                panic!("clamd exited with {status}:\n{}", clamd.log());
            }
            assert!(Instant::now() < deadline, "clamd not answering PING within 60s:\n{}", clamd.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        clamd
    }

    /// Whether clamd answers `PING` (it listens only once its database is loaded).
    pub(crate) fn pong(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else { return false };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = Vec::new();
        conn.write_all(b"zPING\0").is_ok() && conn.read_to_end(&mut answer).is_ok() && answer.starts_with(b"PONG")
    }

    pub(crate) fn log(&self) -> String {
        ["clamd.stderr", "clamd.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
