//! The real `mesh` binary as a child process, for the binary's end-to-end tests: started with
//! its listeners on free ports, its `ready` lines read for their addresses, its log kept, killed
//! when dropped; and plain HTTP/1.1 to its admin port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `mesh` child process.
#[derive(Debug)]
pub struct MeshProcess {
    child: Child,
    addrs: BTreeMap<String, String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for MeshProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MeshProcess {
    /// Spawns `command` (a `mesh serve ...` command with its settings; stdout and stderr are
    /// taken here) and returns once it printed its `ready ... admin` line.
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().expect("stderr");
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut addrs = BTreeMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("reads stdout");
            let mut words = line.split_whitespace();
            if words.next() != Some("ready") {
                continue;
            }
            let (Some(name), Some(url)) = (words.next(), words.next()) else {
                continue;
            };
            let addr = url.split_once("://").map_or(url, |(_, a)| a).to_string();
            let done = name == "admin";
            addrs.insert(name.to_string(), addr);
            if done {
                break;
            }
        }
        assert!(
            addrs.contains_key("admin"),
            "mesh exited before it was ready: {:?}",
            log.lock().unwrap_or_else(|e| e.into_inner())
        );
        Self { child, addrs, log }
    }

    /// The `host:port` of listener `name` (a target, or `admin`).
    pub fn addr(&self, name: &str) -> &str {
        self.addrs
            .get(name)
            .unwrap_or_else(|| panic!("no `ready {name}` line: {:?}", self.addrs))
    }

    /// Every listener by name.
    pub fn addrs(&self) -> &BTreeMap<String, String> {
        &self.addrs
    }

    /// The lines it logged so far that contain every one of `words`.
    pub fn log_lines(&self, words: &[&str]) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .cloned()
            .collect()
    }

    /// The child process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`, a JSON content type); the status and
/// the body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra request `headers` (name, value), e.g. `authorization`.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}
