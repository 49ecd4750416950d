//! A 100 MB body each way through client sidecar -> HTTP/2 mTLS -> server sidecar -> app, with
//! the process's peak memory (VmHWM) growing by far less than the body: nothing buffers whole
//! bodies. Alone in its own test binary so no other test moves the high-water mark.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::net::TcpListener;

const BODY: u64 = 100 << 20;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `left` bytes in 64 KiB chunks, made as they are polled.
struct Generated {
    left: u64,
}

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(64 * 1024);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// Peak resident memory of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `POST /count` answers the body length; `GET /big` sends [`BODY`] bytes.
async fn app(addr: std::net::SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let body = if req.uri().path() == "/count" {
                        let mut b = req.into_body();
                        let mut n = 0u64;
                        while let Some(f) = b.frame().await {
                            if let Ok(d) = f.unwrap().into_data() {
                                n += d.len() as u64;
                            }
                        }
                        Full::new(Bytes::from(n.to_string()))
                            .map_err(|e: Infallible| -> BoxError { match e {} })
                            .boxed()
                    } else {
                        Generated { left: BODY }.boxed()
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_pass_with_bounded_memory() {
    let mesh = Mesh::new();
    let test = 50;
    let (a, b) = client_and_server(&mesh, test, "http", "b", "b", vec![], "").await;
    app(b.app()).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, BoxError>>();
    let warm = Request::post(format!("http://{}/count", a.outbound()))
        .body(
            Full::new(Bytes::from_static(b"warm"))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    let r = client.request(warm).await.unwrap();
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "4");
    let before = vm_hwm_kib();

    // Upload.
    let up = Request::post(format!("http://{}/count", a.outbound()))
        .body(Generated { left: BODY }.boxed())
        .unwrap();
    let r = client.request(up).await.unwrap();
    assert_eq!(r.status(), 200);
    let n = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(n, BODY.to_string());

    // Download, counted as it streams.
    let r = client
        .request(
            Request::get(format!("http://{}/big", a.outbound()))
                .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, BODY);

    let after = vm_hwm_kib();
    let grown_mib = (after.saturating_sub(before)) / 1024;
    println!("VmHWM before {before} KiB, after {after} KiB: grew {grown_mib} MiB for 2 x 100 MiB");
    assert!(
        grown_mib < 64,
        "peak memory grew by {grown_mib} MiB moving 100 MiB bodies"
    );
    // Byte metrics saw the whole bodies (warm-up + upload; download + the two counts).
    let m = a.metrics();
    let sum = metric_line(&m, "istio_request_bytes_sum", &["reporter=\"source\""]).unwrap();
    assert!(sum.ends_with(&format!(" {}", BODY + 4)), "{sum}");
    let sum = metric_line(&m, "istio_response_bytes_sum", &["reporter=\"source\""]).unwrap();
    assert!(sum.ends_with(&format!(" {}", BODY + 1 + 9)), "{sum}");
}
