//! A real nginx for black-box tests: one process (no master, no daemon)
//! in a scratch directory, serving the `server` blocks it is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, scratch_dir, wait_for_port};

/// A running nginx; killed when dropped.
pub(crate) struct Nginx {
    child: Child,
    pub dir: PathBuf,
    /// The first port its config listens on.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `servers` as the `http` block's server blocks; each
    /// `{port}` becomes a free port (the same one everywhere) and `{dir}` the
    /// scratch directory. Returns once the port accepts connections.
    pub(crate) fn start(servers: &str) -> Self {
        let dir = scratch_dir();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let servers = servers.replace("{port}", &port.to_string()).replace("{dir}", &d.to_string());
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n{servers}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        // Debian installs nginx in sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/nginx", "nginx"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nginx");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut nginx = Nginx { child, dir, addr };
        if !wait_for_port(addr, Duration::from_secs(10)) {
            let exited = nginx.child.try_wait().ok().flatten();
            panic!("nginx did not start ({exited:?}):\n{}", nginx.error_log());
        }
        nginx
    }

    /// nginx serving `files` (name, content) as static files.
    pub(crate) fn static_files(files: &[(&str, &[u8])]) -> Self {
        let nginx = Self::start("  server { listen 127.0.0.1:{port}; root {dir}/html; }");
        std::fs::create_dir_all(nginx.dir.join("html")).unwrap();
        for (name, content) in files {
            std::fs::write(nginx.dir.join("html").join(name), content).unwrap();
        }
        nginx
    }

    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
