//! `warden control status`: the connected proxies as JSON on a local debug endpoint
//! (`GET /debug/proxies`, on `127.0.0.1:15014` by default, Istio's control plane monitoring port)
//! and as a table like `istioctl proxy-status`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::push::{ProxyStatus, PushServer};

/// Serves `GET /debug/proxies` (JSON array of [`ProxyStatus`]) and `GET /debug/config` (the
/// current snapshot version and validation errors) on `listener` until `shutdown` completes.
/// Bind it to loopback: it is not authenticated.
pub async fn serve_debug(
    listener: TcpListener,
    server: PushServer,
    config: tokio::sync::watch::Receiver<std::sync::Arc<crate::store::Snapshot>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let server = server.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let server = server.clone();
                let config = config.clone();
                async move { Ok::<_, Infallible>(handle(&req, &server, &config)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn handle(
    req: &Request<hyper::body::Incoming>,
    server: &PushServer,
    config: &tokio::sync::watch::Receiver<std::sync::Arc<crate::store::Snapshot>>,
) -> Response<Full<Bytes>> {
    let json = |body: String| {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/debug/proxies") => {
            json(serde_json::to_string_pretty(&server.proxies()).unwrap_or_default())
        }
        ("GET", "/debug/config") => {
            let snap = config.borrow().clone();
            json(
                serde_json::json!({
                    "version": snap.version,
                    "security": snap.security.len(),
                    "networking": snap.networking.len(),
                    "errors": snap.errors,
                })
                .to_string(),
            )
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Connecting or the HTTP exchange failed.
    #[error("cannot reach the control plane debug endpoint at {addr}: {message}")]
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// The error.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("unexpected answer from {addr}: {message}")]
    BadAnswer {
        /// The address.
        addr: SocketAddr,
        /// What was wrong.
        message: String,
    },
}

/// Fetches `GET /debug/proxies` from a control plane's debug endpoint.
pub async fn fetch(addr: SocketAddr) -> Result<Vec<ProxyStatus>, StatusError> {
    let unreachable = |e: &dyn std::fmt::Display| StatusError::Unreachable {
        addr,
        message: e.to_string(),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = Request::get("/debug/proxies")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| unreachable(&e))?;
    let resp = send.send_request(req).await.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(StatusError::BadAnswer {
            addr,
            message: format!("HTTP {status}"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| StatusError::BadAnswer {
        addr,
        message: e.to_string(),
    })
}

/// Renders proxies as a table: NAME, IDENTITY, TYPE, VERSION (sent), ACKED, SYNC, CERT EXPIRY,
/// CONNECTED SINCE, LAST NACK (version and the proxy's error).
pub fn render_table(proxies: &[ProxyStatus]) -> String {
    let header = [
        "NAME",
        "IDENTITY",
        "TYPE",
        "VERSION",
        "ACKED",
        "SYNC",
        "CERT EXPIRY",
        "CONNECTED SINCE",
        "LAST NACK",
    ];
    let rows: Vec<[String; 9]> = proxies
        .iter()
        .map(|p| {
            [
                format!(
                    "{}.{}",
                    if p.pod_name.is_empty() {
                        "-"
                    } else {
                        &p.pod_name
                    },
                    p.namespace
                ),
                p.identity.clone(),
                p.proxy_type.clone(),
                p.version_sent.to_string(),
                p.version_acked.to_string(),
                p.sync_state().to_owned(),
                p.cert_expiry.clone(),
                p.connected_since.clone(),
                p.last_nack
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |(v, e)| format!("v{v}: {e}")),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i != last {
                for _ in c.chars().count()..widths[i] + 3 {
                    out.push(' ');
                }
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}
