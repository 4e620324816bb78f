//! A real nginx: one process (no master, no daemon) in a scratch directory,
//! serving the `server` blocks it is given; an upstream, or an inline
//! function that knows nothing of Trefoil.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::binaries::find_command;
use crate::process::Process;
use crate::scratch::scratch_dir;
use crate::wait::{free_port, wait_for_port};

/// A running nginx; killed when dropped.
pub struct Nginx {
    process: Process,
    pub dir: PathBuf,
    /// The first port its config listens on.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx with `servers` as the `http` block's server blocks; each
    /// `{port}` becomes a free port (the same one everywhere) and `{dir}` the
    /// scratch directory. Returns once the port accepts connections.
    pub fn start(servers: &str) -> Self {
        let dir = scratch_dir();
        std::fs::create_dir_all(dir.join("tmp")).expect("creating nginx's temp directory");
        let port = free_port();
        let d = dir.display();
        let servers = servers.replace("{port}", &port.to_string()).replace("{dir}", &d.to_string());
        let conf = format!(
            "worker_processes 1;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n{servers}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("writing nginx.conf");
        // Debian installs nginx in sbin, which a non-root PATH may lack.
        let bin = find_command("nginx").expect("nginx not found: run scripts/install-test-deps");
        let process = Process::spawn_logged(
            "nginx",
            Command::new(bin).arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir).args(["-g", "daemon off;"]),
            &dir.join("nginx.stderr"),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut nginx = Nginx { process, dir, addr };
        if !wait_for_port(addr, Duration::from_secs(10)) {
            let exited = nginx.process.exited();
            panic!("nginx did not start ({exited:?}):\n{}{}", nginx.process.log(), nginx.error_log());
        }
        nginx
    }

    /// nginx serving `files` (name, content) as static files.
    pub fn static_files(files: &[(&str, &[u8])]) -> Self {
        let nginx = Self::start("  server { listen 127.0.0.1:{port}; root {dir}/html; }");
        std::fs::create_dir_all(nginx.dir.join("html")).expect("creating nginx's root");
        for (name, content) in files {
            std::fs::write(nginx.dir.join("html").join(name), content).expect("writing a file nginx serves");
        }
        nginx
    }

    /// Its `error.log`.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}
