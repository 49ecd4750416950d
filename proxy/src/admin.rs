//! The admin (`:15000`, localhost), health (`:15021`) and metrics (`:15020`) HTTP servers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::state::Shared;

/// Which server a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/config_dump`, `/certs`, `/logging`, `/quitquitquit`, `/ready`, `/stats/prometheus`.
    Admin,
    /// `/healthz/ready`.
    Health,
    /// `/stats/prometheus`.
    Stats,
}

/// Serves `listener` until draining ends the process.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, which: Endpoint) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, which, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn route(shared: &Shared, which: Endpoint, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (which, req.method(), path) {
        (Endpoint::Health | Endpoint::Admin, &Method::GET, "/healthz/ready" | "/ready") => {
            match shared.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        (Endpoint::Stats | Endpoint::Admin, &Method::GET, "/stats/prometheus" | "/metrics") => {
            let mut r = text(StatusCode::OK, shared.metrics.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Endpoint::Admin, &Method::GET, "/config_dump") => json(&config_dump(shared)),
        (Endpoint::Admin, &Method::GET, "/certs") => json(&certs(shared)),
        (Endpoint::Admin, &Method::POST | &Method::PUT, "/logging") => {
            let level = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("level="))
                    .map(str::to_owned)
            });
            match (level, &shared.log_control) {
                (None, _) => text(
                    StatusCode::BAD_REQUEST,
                    "usage: POST /logging?level=<filter>\n",
                ),
                (Some(_), None) => text(
                    StatusCode::NOT_IMPLEMENTED,
                    "log level is not adjustable in this process\n",
                ),
                (Some(l), Some(ctl)) => match ctl(&l) {
                    Ok(()) => text(StatusCode::OK, format!("log level set to {l}\n")),
                    Err(e) => text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid log filter {l:?}: {e}\n"),
                    ),
                },
            }
        }
        (Endpoint::Admin, &Method::POST, "/quitquitquit") => {
            tracing::info!("admin: /quitquitquit, draining");
            shared.drain.start();
            text(StatusCode::OK, "OK\n")
        }
        (_, _, _) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn config_dump(shared: &Shared) -> serde_json::Value {
    let c = &shared.config;
    let policy = shared.policy.load();
    let policy = policy.as_ref().map(|p| {
        serde_json::json!({
            "generation": p.generation,
            "origin": &p.origin,
            "peer_authentication": &p.compiled.peer_authentication,
            "authorization_policies": p.compiled.authz.policies().iter().map(|cp| serde_json::json!({
                "policy": cp.id().to_string(),
                "action": format!("{:?}", cp.action()).to_uppercase(),
                "rules": cp.rule_count(),
                "dry_run": cp.is_dry_run(),
            })).collect::<Vec<_>>(),
            "problems": &p.problems,
        })
    });
    serde_json::json!({
        "identity": {
            "spiffe_id": c.identity.spiffe_id().as_str(),
            "namespace": c.identity.namespace,
            "service_account": c.identity.service_account,
            "pod_name": c.identity.pod_name,
            "labels": c.identity.labels,
        },
        "ready": shared.readiness().err().unwrap_or_else(|| "ready".into()),
        "outbound_traffic_policy": c.outbound_traffic_policy,
        "policy": policy,
        "registry": shared.registry.load().dump(),
        "control_plane": shared.config_status().map(|s| serde_json::json!({
            "connected": s.connected,
            "connects": s.connects,
            "last_error": s.last_error,
            "last_nack": s.last_nack.map(|(v, e)| serde_json::json!({"version": v, "error": e})),
        })),
        "active_connections": shared.drain.active(),
    })
}

fn certs(shared: &Shared) -> serde_json::Value {
    crate::cert_source::certs_page(shared)
}
