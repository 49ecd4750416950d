//! Per-request accounting: bodies that count their bytes as they stream, and the record that is
//! written (Istio HTTP metrics + one access log line) when the response body ends, fails, or
//! is dropped by a client that went away.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::BoxError;
use crate::metrics::HttpSeries;

/// A request body that adds the bytes it yields to a shared counter.
pub struct CountingBody<B> {
    inner: B,
    counter: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    /// Wraps `inner`, counting into `counter`.
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self { inner, counter }
    }
}

impl<B> HttpBody for CountingBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known about one request, written out when its response ends.
#[derive(Debug)]
pub struct Exchange {
    /// When the request arrived.
    pub start: Instant,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The method.
    pub method: http::Method,
    /// The path (normalized on inbound), with the query.
    pub path: Box<str>,
    /// The authority (Host).
    pub authority: Box<str>,
    /// The response code sent.
    pub status: u16,
    /// Envoy's response flags (`-`, `UF`, `UC`, `UPE`, `DC`, `UAEX`, `NR`).
    pub flags: &'static str,
    /// gRPC request.
    pub grpc: bool,
    /// The metric series of the connection.
    pub series: Arc<HttpSeries>,
    /// Request body bytes, counted as they stream; `None` while no body is counted (a request
    /// without a body costs no counter).
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// The downstream peer address.
    pub downstream: SocketAddr,
    /// The connection's original destination.
    pub dst: SocketAddr,
    /// Where the request went (app or peer sidecar), if anywhere.
    pub upstream: Option<SocketAddr>,
    /// Why the request was allowed or denied (the policy explanation); empty if no policy ran.
    pub detail: Box<str>,
    /// Write the access log line (see [`access_log_enabled`]).
    pub access_log: bool,
}

/// Whether a request's access log line would be written now: `configured` (`http.accessLog`)
/// and the log filter lets [`ACCESS_LOG_TARGET`](crate::logging::ACCESS_LOG_TARGET) through at
/// INFO. With the line filtered out (`--log warn`) nothing is formatted for it per request.
/// Checked per request, so a `/logging` change applies to the next request.
pub fn access_log_enabled(configured: bool) -> bool {
    configured
        && tracing::enabled!(
            target: crate::logging::ACCESS_LOG_TARGET,
            tracing::Level::INFO
        )
}

impl Exchange {
    /// The request body to forward: counted into [`Exchange::request_bytes`], except a body
    /// that is empty from the start (a GET), which needs no counter.
    pub fn request_body<B>(&mut self, body: B) -> super::Body
    where
        B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        if body.is_end_stream() {
            return body.map_err(Into::into).boxed();
        }
        let counter = Arc::new(AtomicU64::new(0));
        self.request_bytes = Some(counter.clone());
        CountingBody::new(body, counter).boxed()
    }

    /// Records the metrics and writes the access log line.
    pub fn finish(self, response_bytes: u64) {
        let duration = self.start.elapsed();
        let request_bytes = self
            .request_bytes
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        self.series.row(self.status, self.flags, self.grpc).record(
            duration,
            request_bytes,
            response_bytes,
        );
        if !self.access_log {
            return;
        }
        // The same field names as the per-connection lines (src, dst, principal or
        // peer_principal, security, decision or outcome), plus the request's.
        let l = self.series.labels();
        let upstream = self.upstream.map(|u| u.to_string());
        let upstream = upstream.as_deref().unwrap_or("-");
        let security = if l.mutual_tls { "mutual_tls" } else { "none" };
        let protocol = if self.grpc { "grpc" } else { "http" };
        let duration_ms = duration.as_millis() as u64;
        if self.direction == "inbound" {
            tracing::info!(
                target: crate::logging::ACCESS_LOG_TARGET,
                direction = "inbound",
                protocol,
                src = %self.downstream,
                dst = %self.dst,
                principal = known(&l.source_principal),
                security,
                method = %self.method,
                path = &*self.path,
                authority = &*self.authority,
                status = self.status,
                response_flags = self.flags,
                decision = &*self.detail,
                upstream,
                bytes_received = request_bytes,
                bytes_sent = response_bytes,
                duration_ms,
                "request"
            );
        } else {
            let outcome = if self.detail.is_empty() {
                "forwarded"
            } else {
                &self.detail
            };
            tracing::info!(
                target: crate::logging::ACCESS_LOG_TARGET,
                direction = "outbound",
                protocol,
                src = %self.downstream,
                dst = %self.dst,
                peer_principal = known(&l.destination_principal),
                security,
                method = %self.method,
                path = &*self.path,
                authority = &*self.authority,
                status = self.status,
                response_flags = self.flags,
                outcome,
                upstream,
                destination_service = &*l.destination_service,
                bytes_sent_upstream = request_bytes,
                bytes_received_upstream = response_bytes,
                duration_ms,
                "request"
            );
        }
    }
}

/// `-` for an unknown principal, as the per-connection lines write it.
fn known(p: &str) -> &str {
    if p == "unknown" { "-" } else { p }
}

/// A response body that counts its bytes and finishes its [`Exchange`] at the end of the
/// stream, on an error (flag `UC` when the upstream failed mid-body) or when dropped early
/// (flag `DC`: the client went away).
pub struct RecordedBody<B> {
    inner: B,
    bytes: u64,
    empty: bool,
    exchange: Option<Box<Exchange>>,
}

impl<B: HttpBody> RecordedBody<B> {
    /// Wraps `inner`; `exchange` is finished when the body ends.
    pub fn new(inner: B, exchange: Box<Exchange>) -> Self {
        Self {
            empty: inner.is_end_stream(),
            inner,
            bytes: 0,
            exchange: Some(exchange),
        }
    }
}

impl<B> RecordedBody<B> {
    fn finish(&mut self, flags: Option<&'static str>) {
        if let Some(mut e) = self.exchange.take() {
            if let Some(f) = flags {
                e.flags = f;
            }
            e.finish(self.bytes);
        }
    }
}

impl<B> HttpBody for RecordedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(None);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(Some("UC"));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        // A body empty from the start is never polled; any other body dropped before its end
        // lost its client.
        let flags = if self.empty { None } else { Some("DC") };
        self.finish(flags);
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::metrics::{HttpLabels, Metrics, Reporter};

    fn exchange(m: &Metrics) -> Box<Exchange> {
        let series = m.http(HttpLabels {
            reporter: Reporter::Destination,
            source_principal: "unknown".into(),
            source_workload: "unknown".into(),
            source_workload_namespace: "unknown".into(),
            destination_principal: "unknown".into(),
            destination_workload: "w".into(),
            destination_workload_namespace: "ns".into(),
            destination_service: "svc".into(),
            mutual_tls: false,
        });
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Box::new(Exchange {
            start: Instant::now(),
            direction: "inbound",
            method: http::Method::GET,
            path: "/".into(),
            authority: "svc".into(),
            status: 200,
            flags: "-",
            grpc: false,
            series,
            request_bytes: Some(Arc::new(AtomicU64::new(3))),
            downstream: addr,
            dst: addr,
            upstream: None,
            detail: "".into(),
            access_log: false,
        })
    }

    #[tokio::test]
    async fn recorded_at_the_end_of_the_body_with_its_bytes() {
        let m = Metrics::new();
        let body = RecordedBody::new(Full::new(Bytes::from_static(b"hello")), exchange(&m));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let text = m.render();
        assert!(
            text.contains("response_code=\"200\",response_flags=\"-\"} 1\n"),
            "{text}"
        );
        let sum = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_sum{"))
            .unwrap();
        assert!(sum.ends_with(" 5"), "{sum}");
        let req = text
            .lines()
            .find(|l| l.starts_with("istio_request_bytes_sum{"))
            .unwrap();
        assert!(req.ends_with(" 3"), "{req}");
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_recorded_once_as_downstream_disconnect() {
        let m = Metrics::new();
        let body = RecordedBody::new(Full::new(Bytes::from_static(b"unread")), exchange(&m));
        drop(body);
        let text = m.render();
        assert!(text.contains("response_flags=\"DC\"} 1\n"), "{text}");
        // An empty body (never polled) is complete, not a disconnect.
        let m = Metrics::new();
        drop(RecordedBody::new(Full::new(Bytes::new()), exchange(&m)));
        assert!(m.render().contains("response_flags=\"-\"} 1\n"));
    }
}
