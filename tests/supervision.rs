//! End-to-end: a service's background task is supervised. A fault switch makes payment's
//! charge worker fail; the real `mesh` binary restarts it (logged with its cause), turns the
//! service's readiness off (`/readyz` 503 naming the task, the port's gRPC health
//! `NOT_SERVING`), and turns it back on once the switch is cleared and the task runs again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

struct Mesh {
    child: Child,
    grpc: String,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
    _data: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_payment() -> Mesh {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(MESH)
        .args(["serve", "payment"])
        .env("MESH_ADMIN_PORT", "0")
        .env("MESH_PAYMENT_PORT", "0")
        .env("MESH_DATA_DIR", data.path())
        .env("MESH_LOG", "info")
        .env("MESH_LOG_FORMAT", "json")
        .env_remove("MESH_DATABASE_URL")
        .env_remove("MESH_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh starts");
    let log = Arc::new(Mutex::new(Vec::new()));
    {
        let stderr = child.stderr.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let (mut grpc, mut admin) = (String::new(), String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("reads stdout");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"ready") {
            continue;
        }
        let addr = words[2].split_once("://").unwrap().1.to_string();
        if words[1] == "admin" {
            admin = addr;
            break;
        }
        grpc = addr;
    }
    Mesh {
        child,
        grpc,
        admin,
        log,
        _data: data,
    }
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

async fn health(addr: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: "payment.v1.PaymentService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failing_background_task_is_restarted_and_turns_readiness_off_until_it_recovers() {
    let mesh = start_payment();
    let admin = mesh.admin.clone();
    eventually(Duration::from_secs(10), "ready", || {
        http(&admin, "GET", "/readyz", "").0 == 200
    })
    .await;
    assert_eq!(health(&mesh.grpc).await, ServingStatus::Serving);

    let (status, body) = http(
        &admin,
        "PUT",
        "/faults/payment",
        "task/charge-worker:error=1",
    );
    assert!(status < 300, "{status} {body}");
    eventually(Duration::from_secs(10), "/readyz 503", || {
        http(&admin, "GET", "/readyz", "").0 == 503
    })
    .await;
    let (_, body) = http(&admin, "GET", "/readyz", "");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cause = ready["problems"]["payment"]["task:charge-worker"]
        .as_str()
        .unwrap_or_else(|| panic!("the task is named as the cause: {body}"));
    assert!(cause.contains("fault injected"), "{cause}");
    assert_eq!(health(&mesh.grpc).await, ServingStatus::NotServing);
    let restarts = || {
        mesh.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("charge-worker") && l.contains("restarting"))
            .count()
    };
    assert!(restarts() >= 3, "each failure logged: {}", restarts());

    let (status, _) = http(&admin, "DELETE", "/faults/payment", "");
    assert!(status < 300);
    eventually(
        Duration::from_secs(30),
        "ready again after the task runs stably",
        || http(&admin, "GET", "/readyz", "").0 == 200,
    )
    .await;
    assert_eq!(health(&mesh.grpc).await, ServingStatus::Serving);
    assert!(
        mesh.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("background task recovered")),
        "recovery logged"
    );
}
