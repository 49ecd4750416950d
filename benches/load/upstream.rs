//! The upstream the proxies forward to, run as a child process of the harness
//! (`load --serve-upstream`) so its CPU and file descriptors are its own.
//!
//! - HTTP (HTTP/1.1 and HTTP/2 prior knowledge on every HTTP port): `200` with a 1 KiB body.
//! - TCP: writes one greeting byte on accept (a client sees the whole path is up), then reads
//!   until end of stream and answers with the byte count (8 bytes, big endian).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Size of every HTTP response body.
pub const BODY: usize = 1024;

/// Serves HTTP on `http` and the TCP sink on `tcp` until the process is killed.
pub fn serve(http: &[SocketAddr], tcp: &[SocketAddr], threads: usize) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let body = Bytes::from(vec![b'x'; BODY]);
        for addr in http {
            let l = TcpListener::bind(addr).await?;
            let body = body.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    let body = body.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req: Request<Incoming>| {
                            let body = body.clone();
                            async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        }
        for addr in tcp {
            let l = TcpListener::bind(addr).await?;
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    tokio::spawn(sink(s));
                }
            });
        }
        println!("upstream ready");
        std::future::pending::<std::io::Result<()>>().await
    })
}

async fn sink(mut s: TcpStream) {
    if s.write_all(b"R").await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(&total.to_be_bytes()).await;
    let _ = s.shutdown().await;
}
