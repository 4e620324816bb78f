//! A real nginx (the Debian package) as an upstream or a network function:
//! one worker, no daemon, everything under a scratch directory; killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{addr, scratch_dir};

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Nginx {
    /// nginx listening on a free loopback port, `server` being the rest of
    /// its one `server` block; the block's `root` is `DIR/html`.
    pub fn start(server: &str) -> Self {
        let dir = scratch_dir();
        Self::start_in(dir, server)
    }

    /// nginx serving `files` (name, content) from its root.
    pub fn static_files(files: &[(&str, &[u8])]) -> Self {
        let dir = scratch_dir();
        std::fs::create_dir_all(dir.join("html")).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join("html").join(name), content).unwrap();
        }
        Self::start_in(dir, "")
    }

    fn start_in(dir: PathBuf, server: &str) -> Self {
        let addr = addr();
        std::fs::create_dir_all(dir.join("html")).unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  server {{\n    listen {addr};\n    root {d}/html;\n    {server}\n  }}\n}}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .expect("starting nginx (scripts/install-test-deps installs it)");
        // Owned before waiting, so it is killed even if it never comes up.
        let nginx = Nginx { child, addr, dir };
        assert!(super::wait_for_port(addr, Duration::from_secs(10)), "nginx did not listen on {addr}:\n{}", nginx.error_log());
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
