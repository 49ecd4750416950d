//! Resource limits of the data plane (`limits:` in the sidecar YAML), with Envoy's defaults
//! where Envoy has one and its edge best-practice values where those are the safer choice.
//!
//! Read once when the config is built; the accept loops ([`crate::accept`]), L4 forwarding
//! ([`crate::l4`]) and the HTTP server builders ([`Limits::http_server_builder`]) apply them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use warden_policy::duration::parse_duration;

use crate::config::ConfigError;

/// hyper refuses HTTP/1 read buffers below this size.
const MIN_HEADER_BYTES: u32 = 8 * 1024;

/// The validated limits. Every field has a default (see [`Limits::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections on the inbound listener; over it new connections are closed at
    /// once (`warden_listener_overflow_total{listener="inbound"}`). Default 16384 (Envoy has no
    /// default; its edge guide sets a global 50000).
    pub max_connections_inbound: usize,
    /// Concurrent connections on the outbound listener. Default 16384.
    pub max_connections_outbound: usize,
    /// Bytes of a request head (request line and headers): HTTP/1 read buffer, HTTP/2 header
    /// list size. Default 60 KiB (Envoy `max_request_headers_kb: 60`).
    pub max_request_headers_bytes: u32,
    /// Headers per request. Default 100 (Envoy `max_headers_count`).
    pub max_request_headers_count: usize,
    /// Time for a client to send a complete request head; slowloris protection. Default 10 s
    /// (Envoy's edge guide `request_headers_timeout: 10s`; Envoy's own default is off).
    pub request_headers_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed. Default 1 h
    /// (Envoy `idle_timeout` of the HTTP connection manager and of `tcp_proxy`).
    pub idle_timeout: Duration,
    /// HTTP/2 concurrent streams per connection. Default 100 (Envoy's edge guide; Envoy's
    /// default is 2^31-1).
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 initial stream window. Default 64 KiB (edge guide; Envoy default 256 MiB).
    pub http2_initial_stream_window_size: u32,
    /// HTTP/2 initial connection window. Default 1 MiB (edge guide; Envoy default 256 MiB).
    pub http2_initial_connection_window_size: u32,
    /// Buffered bytes per connection: L4 copy buffers (half per direction, held only while
    /// data moves), HTTP/2 send buffer. Default 128 KiB: 64 KiB per L4 direction, so a bulk
    /// transfer moves four TLS records per syscall instead of one (docs/benchmarks.md, "TCP
    /// copy path"). Envoy's default is 1 MiB; its edge guide sets 32 KiB.
    pub connection_buffer_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections_inbound: 16_384,
            max_connections_outbound: 16_384,
            max_request_headers_bytes: 60 * 1024,
            max_request_headers_count: 100,
            request_headers_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            http2_max_concurrent_streams: 100,
            http2_initial_stream_window_size: 64 * 1024,
            http2_initial_connection_window_size: 1024 * 1024,
            connection_buffer_bytes: 128 * 1024,
        }
    }
}

/// `limits:` as written in the YAML (camelCase, every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawLimits {
    max_connections_inbound: Option<usize>,
    max_connections_outbound: Option<usize>,
    max_request_headers_bytes: Option<u32>,
    max_request_headers_count: Option<usize>,
    request_headers_timeout: Option<String>,
    idle_timeout: Option<String>,
    http2_max_concurrent_streams: Option<u32>,
    http2_initial_stream_window_size: Option<u32>,
    http2_initial_connection_window_size: Option<u32>,
    connection_buffer_bytes: Option<u32>,
}

fn invalid(origin: &str, field: &str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        field: format!("limits.{field}"),
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

fn ranged<T: PartialOrd + Copy + ToString>(
    origin: &str,
    field: &str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if v >= min && v <= max => Ok(v),
        Some(v) => Err(invalid(
            origin,
            field,
            v,
            &format!(
                "expected a value from {} to {}",
                min.to_string(),
                max.to_string()
            ),
        )),
    }
}

fn positive_duration(
    origin: &str,
    field: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = v else { return Ok(default) };
    match parse_duration(&s) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err(invalid(origin, field, &s, "must be positive")),
        None => Err(invalid(
            origin,
            field,
            &s,
            "expected a duration such as 5s, 100ms, 1m30s",
        )),
    }
}

impl Limits {
    /// Validates `raw` (from `origin`, the file name) over the defaults.
    pub fn from_raw(origin: &str, raw: RawLimits) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            max_connections_inbound: ranged(
                origin,
                "maxConnectionsInbound",
                raw.max_connections_inbound,
                d.max_connections_inbound,
                1,
                10_000_000,
            )?,
            max_connections_outbound: ranged(
                origin,
                "maxConnectionsOutbound",
                raw.max_connections_outbound,
                d.max_connections_outbound,
                1,
                10_000_000,
            )?,
            max_request_headers_bytes: ranged(
                origin,
                "maxRequestHeadersBytes",
                raw.max_request_headers_bytes,
                d.max_request_headers_bytes,
                MIN_HEADER_BYTES,
                8 * 1024 * 1024,
            )?,
            max_request_headers_count: ranged(
                origin,
                "maxRequestHeadersCount",
                raw.max_request_headers_count,
                d.max_request_headers_count,
                1,
                10_000,
            )?,
            request_headers_timeout: positive_duration(
                origin,
                "requestHeadersTimeout",
                raw.request_headers_timeout,
                d.request_headers_timeout,
            )?,
            idle_timeout: positive_duration(
                origin,
                "idleTimeout",
                raw.idle_timeout,
                d.idle_timeout,
            )?,
            http2_max_concurrent_streams: ranged(
                origin,
                "http2MaxConcurrentStreams",
                raw.http2_max_concurrent_streams,
                d.http2_max_concurrent_streams,
                1,
                i32::MAX as u32,
            )?,
            // RFC 9113 §6.9.2: at most 2^31-1; below the 64 KiB default is legal but slow.
            http2_initial_stream_window_size: ranged(
                origin,
                "http2InitialStreamWindowSize",
                raw.http2_initial_stream_window_size,
                d.http2_initial_stream_window_size,
                65_535,
                i32::MAX as u32,
            )?,
            http2_initial_connection_window_size: ranged(
                origin,
                "http2InitialConnectionWindowSize",
                raw.http2_initial_connection_window_size,
                d.http2_initial_connection_window_size,
                65_535,
                i32::MAX as u32,
            )?,
            connection_buffer_bytes: ranged(
                origin,
                "connectionBufferBytes",
                raw.connection_buffer_bytes,
                d.connection_buffer_bytes,
                8 * 1024,
                64 * 1024 * 1024,
            )?,
        })
    }

    /// The concurrent-connection limit of a listener.
    pub fn max_connections(&self, listener: ListenerKind) -> usize {
        match listener {
            ListenerKind::Inbound => self.max_connections_inbound,
            ListenerKind::Outbound => self.max_connections_outbound,
        }
    }

    /// The L4 copy buffer per direction: half the connection buffer.
    pub fn l4_buffer_per_direction(&self) -> usize {
        (self.connection_buffer_bytes / 2) as usize
    }

    /// An HTTP/1 + HTTP/2 server builder with these limits: head size and header count,
    /// request-head timeout (HTTP/1), concurrent streams, windows, header list size and send
    /// buffer (HTTP/2). Cheap to build; the L7 code uses it for every server connection.
    pub fn http_server_builder(&self) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.request_headers_timeout)
            .max_buf_size(self.max_request_headers_bytes as usize)
            .max_headers(self.max_request_headers_count);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .initial_stream_window_size(self.http2_initial_stream_window_size)
            .initial_connection_window_size(self.http2_initial_connection_window_size)
            .max_header_list_size(self.max_request_headers_bytes)
            .max_send_buf_size(self.connection_buffer_bytes as usize);
        b
    }

    /// An HTTP/1-only server builder with the same HTTP/1 limits as
    /// [`Limits::http_server_builder`], for connections whose protocol ALPN or sniffing
    /// already established: no version detection, no rewind wrapper on every read.
    pub fn http1_server_builder(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.request_headers_timeout)
            .max_buf_size(self.max_request_headers_bytes as usize)
            .max_headers(self.max_request_headers_count);
        b
    }
}

/// Which capture listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// 15006.
    Inbound,
    /// 15001.
    Outbound,
}

impl ListenerKind {
    /// `inbound` / `outbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Inbound => "inbound",
            ListenerKind::Outbound => "outbound",
        }
    }
}

/// Counters of limit events, rendered on the stats port.
#[derive(Debug, Default)]
pub struct LimitCounters {
    overflow_inbound: AtomicU64,
    overflow_outbound: AtomicU64,
    accept_errors_inbound: AtomicU64,
    accept_errors_outbound: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl LimitCounters {
    /// A connection was closed because the listener was at its limit.
    pub fn overflow(&self, l: ListenerKind) -> u64 {
        match l {
            ListenerKind::Inbound => &self.overflow_inbound,
            ListenerKind::Outbound => &self.overflow_outbound,
        }
        .fetch_add(1, Ordering::Relaxed)
            + 1
    }

    /// `accept()` failed (file descriptors exhausted and the like).
    pub fn accept_error(&self, l: ListenerKind) {
        match l {
            ListenerKind::Inbound => &self.accept_errors_inbound,
            ListenerKind::Outbound => &self.accept_errors_outbound,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed by the idle timeout.
    pub fn idle_timeout(&self) {
        self.idle_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused at the limit so far.
    pub fn overflow_count(&self, l: ListenerKind) -> u64 {
        match l {
            ListenerKind::Inbound => &self.overflow_inbound,
            ListenerKind::Outbound => &self.overflow_outbound,
        }
        .load(Ordering::Relaxed)
    }

    /// Appends the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP warden_listener_overflow_total Connections closed at accept because the listener was at limits.maxConnections*\n\
             # TYPE warden_listener_overflow_total counter\n\
             warden_listener_overflow_total{{listener=\"inbound\"}} {}\n\
             warden_listener_overflow_total{{listener=\"outbound\"}} {}",
            l(&self.overflow_inbound),
            l(&self.overflow_outbound)
        );
        let _ = writeln!(
            out,
            "# HELP warden_accept_errors_total accept() failures (e.g. file descriptors exhausted)\n\
             # TYPE warden_accept_errors_total counter\n\
             warden_accept_errors_total{{listener=\"inbound\"}} {}\n\
             warden_accept_errors_total{{listener=\"outbound\"}} {}",
            l(&self.accept_errors_inbound),
            l(&self.accept_errors_outbound)
        );
        let _ = writeln!(
            out,
            "# HELP warden_idle_timeouts_total Connections closed by limits.idleTimeout\n\
             # TYPE warden_idle_timeouts_total counter\n\
             warden_idle_timeouts_total {}",
            l(&self.idle_timeouts)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawLimits {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_envoy_and_edge_values() {
        let l = Limits::from_raw("f", RawLimits::default()).unwrap();
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_request_headers_bytes, 61_440);
        assert_eq!(l.max_request_headers_count, 100);
        assert_eq!(l.idle_timeout, Duration::from_secs(3600));
        assert_eq!(l.l4_buffer_per_direction(), 64 * 1024);
    }

    #[test]
    fn fields_are_read_and_checked() {
        let l = Limits::from_raw(
            "f",
            raw("maxConnectionsInbound: 10\nidleTimeout: 30s\nhttp2MaxConcurrentStreams: 7\n"),
        )
        .unwrap();
        assert_eq!(l.max_connections(ListenerKind::Inbound), 10);
        assert_eq!(l.max_connections(ListenerKind::Outbound), 16_384);
        assert_eq!(l.idle_timeout, Duration::from_secs(30));
        assert_eq!(l.http2_max_concurrent_streams, 7);

        let e = Limits::from_raw("s.yaml", raw("maxRequestHeadersBytes: 100\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.yaml: limits.maxRequestHeadersBytes: invalid value \"100\": expected a value from 8192 to 8388608"
        );
        let e = Limits::from_raw("s.yaml", raw("idleTimeout: 0s\n")).unwrap_err();
        assert!(e.to_string().contains("limits.idleTimeout"), "{e}");
        let e = Limits::from_raw("s.yaml", raw("maxConnectionsOutbound: 0\n")).unwrap_err();
        assert!(
            e.to_string().contains("limits.maxConnectionsOutbound"),
            "{e}"
        );
        assert!(serde_yaml::from_str::<RawLimits>("bogus: 1\n").is_err());
    }

    #[test]
    fn counters_render() {
        let c = LimitCounters::default();
        assert_eq!(c.overflow(ListenerKind::Outbound), 1);
        c.accept_error(ListenerKind::Inbound);
        let mut s = String::new();
        c.render(&mut s);
        assert!(s.contains("warden_listener_overflow_total{listener=\"outbound\"} 1\n"));
        assert!(s.contains("warden_listener_overflow_total{listener=\"inbound\"} 0\n"));
        assert!(s.contains("warden_accept_errors_total{listener=\"inbound\"} 1\n"));
    }
}
