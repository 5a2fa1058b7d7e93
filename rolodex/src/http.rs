//! A minimal HTTP/1.1 responder for /metrics, /healthz and status pages.
//!
//! Scrapes and probes are tiny GETs; a full HTTP stack would add more code than it saves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
    pub fn json(body: String) -> Self {
        Self { status: 200, content_type: "application/json", body }
    }
}

/// Binds `addr` and serves GET requests with `handler(path)` until the task is dropped.
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> anyhow::Result<impl Future<Output = ()>>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let handler = Arc::new(handler);
    Ok(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // Read the request head; give up on slow or oversized requests.
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while len < buf.len() {
                        let n = stream.read(&mut buf[len..]).await.ok()?;
                        if n == 0 {
                            return None;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            return Some(());
                        }
                    }
                    None
                })
                .await;
                let resp = match read {
                    Ok(Some(())) => {
                        let head = String::from_utf8_lossy(&buf[..len]);
                        let mut parts = head.split_whitespace();
                        match (parts.next(), parts.next()) {
                            (Some("GET"), Some(path)) => handler(path.to_string()).await,
                            _ => Response::text(405, "only GET\n"),
                        }
                    }
                    _ => return,
                };
                let reason = match resp.status {
                    200 => "OK",
                    404 => "Not Found",
                    405 => "Method Not Allowed",
                    503 => "Service Unavailable",
                    _ => "",
                };
                let head = format!(
                    "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    resp.status,
                    resp.content_type,
                    resp.body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(resp.body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// Renders a Prometheus registry in the text exposition format.
pub fn render(registry: &prometheus::Registry) -> Response {
    use prometheus::Encoder;
    let mut out = Vec::new();
    match prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
        Ok(()) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: String::from_utf8_lossy(&out).into_owned(),
        },
        Err(e) => Response::text(500, format!("encoding metrics: {e}\n")),
    }
}
