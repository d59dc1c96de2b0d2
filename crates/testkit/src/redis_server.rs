//! A redis-server of a test's own, on a free port: for tests that kill and restart Redis, which
//! must never touch the shared one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::backends::unique;

/// A redis-server child process on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    port: u16,
    /// The append-only file's folder, for a durable server.
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts a server without persistence: restarted, it starts empty. `None` when
    /// `redis-server` cannot be started (not installed).
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts a server with an append-only file fsynced on every write, in a fresh temporary
    /// folder: killed with SIGKILL and restarted, it keeps every entry it acknowledged.
    pub fn start_durable() -> Option<Self> {
        let dir = std::env::temp_dir().join(unique("mesh-redis"));
        std::fs::create_dir_all(&dir).ok()?;
        Self::start_with(Some(dir))
    }

    fn start_with(dir: Option<PathBuf>) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn().ok()?;
        Some(server)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts, after [`kill`](Self::kill)) the process on the same port, and waits
    /// until it accepts connections.
    pub fn spawn(&mut self) -> std::io::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null());
        match &self.dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        self.child = Some(command.spawn()?);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "redis-server on port {} did not accept connections within 5 s",
            self.port
        )))
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
