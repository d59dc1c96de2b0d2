//! A small HTTP/1 JSON client for a process's admin port (`mesh events --admin URL`): GET and
//! POST with a bearer token, the answer parsed as JSON, and an error that says what the port
//! answered.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The admin port of one process.
#[derive(Debug, Clone)]
pub(crate) struct AdminClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client of the admin port at `url` (`http://host:port`, or `host:port`), sending `token`.
    pub(crate) fn new(url: &str, token: String) -> anyhow::Result<Self> {
        let base = if url.contains("://") {
            url.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", url.trim_end_matches('/'))
        };
        base.parse::<http::Uri>()
            .with_context(|| format!("--admin {url}: not a URL"))?;
        Ok(Self {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// `GET path` (with its query), as JSON.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(http::Method::GET, path, None).await
    }

    /// `POST path` with the JSON `body`, as JSON.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(http::Method::POST, path, Some(body)).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .context("--token is not a valid header value")?;
        let answer = self
            .http
            .request(request)
            .await
            .with_context(|| format!("{method} {url}: the admin port did not answer"))?;
        let status = answer.status();
        let bytes = answer
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {url}: answered {status} with no JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        if !status.is_success() {
            let reason = json["error"].as_str().unwrap_or("no reason given");
            anyhow::bail!("{method} {url}: {status}: {reason}");
        }
        Ok(json)
    }
}
