//! A small SMTP relay for the tests: STARTTLS or implicit TLS with a given certificate, AUTH
//! PLAIN and LOGIN (offered only once TLS is up) against one user and password, MAIL, RCPT,
//! DATA; it records every session (whether TLS came up, the credentials given, the commands,
//! the messages) as it goes, so a test can also see what a refused client did not send.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How the relay does TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Plain greeting; `STARTTLS` offered (or, with `false`, never offered).
    StartTls(bool),
    /// TLS from the first byte.
    Implicit,
}

/// What one connection did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    /// The TLS handshake completed.
    pub tls: bool,
    /// The commands' verbs, in order.
    pub commands: Vec<String>,
    /// The mechanism, user and password of each AUTH.
    pub auth: Vec<(String, String, String)>,
    /// `MAIL FROM` addresses.
    pub from: Vec<String>,
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// Each message's data (dot-stuffing undone, without the final dot).
    pub messages: Vec<String>,
}

/// What the relay accepts.
pub(crate) struct Config {
    /// Its TLS.
    pub mode: Mode,
    /// Its certificate.
    pub tls: Arc<rustls::ServerConfig>,
    /// The AUTH mechanisms it offers, e.g. `PLAIN LOGIN`.
    pub mechanisms: &'static str,
    /// The one user it accepts.
    pub user: String,
    /// That user's password (a test may change it).
    pub password: Arc<Mutex<String>>,
    /// A reply to every RCPT instead of `250` (e.g. a 4xx).
    pub rcpt_reply: Option<&'static str>,
}

/// A running relay.
pub(crate) struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its sessions so far.
    pub sessions: Arc<Mutex<Vec<Session>>>,
}

impl Relay {
    /// Starts a relay with `config` on 127.0.0.1.
    pub(crate) async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(config);
        let all = sessions.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (config, all) = (config.clone(), all.clone());
                tokio::spawn(async move {
                    let id = {
                        let mut all = all.lock().unwrap();
                        all.push(Session::default());
                        all.len() - 1
                    };
                    let conn = Conn {
                        config: &config,
                        all: &all,
                        id,
                    };
                    let acceptor = TlsAcceptor::from(config.tls.clone());
                    match config.mode {
                        Mode::Implicit => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                conn.update(|s| s.tls = true);
                                conn.run(tls).await;
                            }
                        }
                        Mode::StartTls(_) => {
                            if let Some(tcp) = conn.run(tcp).await
                                && let Ok(tls) = acceptor.accept(tcp).await
                            {
                                conn.update(|s| s.tls = true);
                                conn.run(tls).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, sessions }
    }

    /// The sessions so far.
    pub(crate) fn sessions(&self) -> Vec<Session> {
        self.sessions.lock().unwrap().clone()
    }
}

struct Conn<'a> {
    config: &'a Config,
    all: &'a Mutex<Vec<Session>>,
    id: usize,
}

fn decode(b64: &str) -> String {
    String::from_utf8(BASE64.decode(b64.trim()).unwrap_or_default()).unwrap_or_default()
}

impl Conn<'_> {
    fn update(&self, f: impl FnOnce(&mut Session)) {
        f(&mut self.all.lock().unwrap()[self.id]);
    }

    fn tls(&self) -> bool {
        self.all.lock().unwrap()[self.id].tls
    }

    /// Speaks SMTP on `stream` until the client quits or leaves (`None`), or asks for STARTTLS
    /// (the stream back, to be wrapped).
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Option<S> {
        let mut s = BufReader::new(stream);
        let tls = self.tls();
        if !(tls && matches!(self.config.mode, Mode::StartTls(_))) {
            s.write_all(b"220 relay.test ESMTP\r\n").await.ok()?;
        }
        let (mut data, mut in_data) = (String::new(), false);
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    let message = std::mem::take(&mut data);
                    self.update(|s| s.messages.push(message));
                    s.write_all(b"250 2.0.0 queued\r\n").await.ok()?;
                } else {
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                continue;
            }
            let line = line.trim_end().to_string();
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            self.update(|s| s.commands.push(verb.clone()));
            let arg = |prefix: usize| {
                line.get(prefix..)
                    .unwrap_or_default()
                    .trim()
                    .trim_matches(['<', '>'])
                    .split('>')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            let reply = match verb.as_str() {
                "EHLO" | "HELO" => {
                    let mut reply = String::from("250-relay.test\r\n");
                    if !tls && self.config.mode == Mode::StartTls(true) {
                        reply.push_str("250-STARTTLS\r\n");
                    }
                    if tls {
                        reply.push_str(&format!("250-AUTH {}\r\n", self.config.mechanisms));
                    }
                    reply.push_str("250 SIZE 1000000\r\n");
                    reply
                }
                "STARTTLS" if !tls && self.config.mode == Mode::StartTls(true) => {
                    s.write_all(b"220 2.0.0 go ahead\r\n").await.ok()?;
                    s.flush().await.ok()?;
                    return Some(s.into_inner());
                }
                "AUTH" if tls => {
                    let mut words = line.split_whitespace().skip(1);
                    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                    let (user, password) = match mechanism.as_str() {
                        "PLAIN" => {
                            let response = match words.next() {
                                Some(r) => r.to_string(),
                                None => {
                                    s.write_all(b"334 \r\n").await.ok()?;
                                    let mut r = String::new();
                                    s.read_line(&mut r).await.ok()?;
                                    r
                                }
                            };
                            let plain = decode(&response);
                            let mut parts = plain.split('\0').skip(1);
                            (
                                parts.next().unwrap_or_default().to_string(),
                                parts.next().unwrap_or_default().to_string(),
                            )
                        }
                        "LOGIN" => {
                            let mut ask = async |prompt: &[u8]| {
                                s.write_all(prompt).await.ok()?;
                                let mut r = String::new();
                                s.read_line(&mut r).await.ok()?;
                                Some(decode(&r))
                            };
                            let user = ask(b"334 VXNlcm5hbWU6\r\n").await?;
                            let password = ask(b"334 UGFzc3dvcmQ6\r\n").await?;
                            (user, password)
                        }
                        _ => (String::new(), String::new()),
                    };
                    let ok = user == self.config.user
                        && password == *self.config.password.lock().unwrap();
                    self.update(|s| s.auth.push((mechanism, user, password)));
                    if ok {
                        "235 2.7.0 authenticated\r\n".into()
                    } else {
                        "535 5.7.8 bad credentials\r\n".into()
                    }
                }
                "MAIL" => {
                    let from = arg("MAIL FROM:".len());
                    self.update(|s| s.from.push(from));
                    "250 2.1.0 ok\r\n".into()
                }
                "RCPT" => match self.config.rcpt_reply {
                    Some(reply) => format!("{reply}\r\n"),
                    None => {
                        let to = arg("RCPT TO:".len());
                        self.update(|s| s.to.push(to));
                        "250 2.1.5 ok\r\n".into()
                    }
                },
                "DATA" => {
                    in_data = true;
                    "354 end with .\r\n".into()
                }
                "RSET" | "NOOP" => "250 2.0.0 ok\r\n".into(),
                "QUIT" => {
                    s.write_all(b"221 2.0.0 bye\r\n").await.ok()?;
                    return None;
                }
                _ => "502 5.5.2 not here\r\n".into(),
            };
            s.write_all(reply.as_bytes()).await.ok()?;
        }
    }
}
