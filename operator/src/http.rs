//! `/metrics`, `/healthz` and `/readyz` on `--metrics-listen`, served by `rolodex::http`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rolodex::http::Response;

use crate::metrics::Metrics;

/// Answers one request path.
pub fn respond(path: &str, metrics: &Metrics, ready: &AtomicBool) -> Response {
    match path.split('?').next().unwrap_or("") {
        "/metrics" => rolodex::http::render(&metrics.registry),
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" if ready.load(Ordering::Relaxed) => Response::text(200, "ok\n"),
        "/readyz" => Response::text(503, "starting\n"),
        _ => Response::text(404, "not found\n"),
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<impl Future<Output = ()> + Send> {
    rolodex::http::serve(addr, move |path| {
        let response = respond(&path, &metrics, &ready);
        async move { response }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::new().unwrap();
        let ready = AtomicBool::new(false);
        assert_eq!(respond("/healthz", &m, &ready).status, 200);
        assert_eq!(respond("/readyz", &m, &ready).status, 503);
        ready.store(true, Ordering::Relaxed);
        assert_eq!(respond("/readyz?verbose", &m, &ready).status, 200);
        let metrics = respond("/metrics", &m, &ready);
        assert!(metrics.body.contains("rolomesh_operator_leader"));
        assert_eq!(respond("/nope", &m, &ready).status, 404);
    }
}
