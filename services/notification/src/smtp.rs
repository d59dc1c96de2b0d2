//! A small SMTP client over tokio: plain SMTP to a relay (`EHLO`, `MAIL FROM`, `RCPT TO`,
//! `DATA`), no TLS and no authentication: meant for a local relay or a sidecar that handles
//! both. Every reply is checked; an error names the step.

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// One message.
#[derive(Debug, Clone)]
pub struct Mail<'a> {
    /// Sender address.
    pub from: &'a str,
    /// Recipient address.
    pub to: &'a str,
    /// Subject line.
    pub subject: &'a str,
    /// Plain-text body.
    pub body: &'a str,
    /// Message-ID (the delivery id, so a retried send can be recognised).
    pub message_id: &'a str,
}

async fn reply(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    step: &str,
    want: char,
) -> Result<(), String> {
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|e| format!("smtp {step}: {e}"))?;
        if n == 0 {
            return Err(format!("smtp {step}: connection closed"));
        }
        // Multi-line replies continue with `250-`; the last line has `250 `.
        if line.len() >= 4 && line.as_bytes()[3] == b'-' {
            continue;
        }
        return if line.starts_with(want) {
            Ok(())
        } else {
            Err(format!("smtp {step}: {}", line.trim_end()))
        };
    }
}

/// Sends `mail` through the relay at `host:port`.
pub async fn send(host: &str, port: u16, mail: &Mail<'_>) -> Result<(), String> {
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("smtp connect to {host}:{port}: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut r = BufReader::new(read);
    reply(&mut r, "greeting", '2').await?;
    let header_safe = |s: &str| s.replace(['\r', '\n'], " ");
    let mut body = String::new();
    for line in mail.body.lines() {
        // Dot-stuffing (RFC 5321 4.5.2).
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    let steps: [(String, &str, char); 5] = [
        ("EHLO mesh\r\n".into(), "EHLO", '2'),
        (
            format!("MAIL FROM:<{}>\r\n", header_safe(mail.from)),
            "MAIL FROM",
            '2',
        ),
        (
            format!("RCPT TO:<{}>\r\n", header_safe(mail.to)),
            "RCPT TO",
            '2',
        ),
        ("DATA\r\n".into(), "DATA", '3'),
        (
            format!(
                "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nMessage-ID: <{}@mesh>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}.\r\n",
                header_safe(mail.from),
                header_safe(mail.to),
                header_safe(mail.subject),
                header_safe(mail.message_id)
            ),
            "message",
            '2',
        ),
    ];
    for (command, step, want) in steps {
        write
            .write_all(command.as_bytes())
            .await
            .map_err(|e| format!("smtp {step}: {e}"))?;
        reply(&mut r, step, want).await?;
    }
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(())
}
