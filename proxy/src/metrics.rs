//! Istio's standard metrics in Prometheus text format (reference §9), hand-rolled: one label set
//! is interned per connection (a map lookup under a mutex when the connection opens), and the
//! hot path only adds to atomics.
//!
//! HTTP: the connection-level labels ([`HttpLabels`]) are interned once per connection (or per
//! peer identity on a pooled connection) into an [`HttpSeries`]; per request only the response
//! code, flags and protocol pick a row of it ([`HttpSeries::row`]: a read lock and a scan of a
//! few entries, no allocation once the row exists), and recording is atomic adds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which side reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar (outbound).
    Source = 0,
    /// The server's sidecar (inbound).
    Destination = 1,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The labels of Istio's TCP metrics. `unknown` where a value is not known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_principal`: the client's SPIFFE ID.
    pub source_principal: String,
    /// `source_workload`.
    pub source_workload: String,
    /// `source_workload_namespace`.
    pub source_workload_namespace: String,
    /// `destination_principal`.
    pub destination_principal: String,
    /// `destination_workload`.
    pub destination_workload: String,
    /// `destination_workload_namespace`.
    pub destination_workload_namespace: String,
    /// `destination_service`: the service host name.
    pub destination_service: String,
    /// `connection_security_policy`: `mutual_tls` or `none`.
    pub mutual_tls: bool,
    /// `response_flags`: `-`, or Envoy's flag (`UF` upstream connect failure, `NR` no route).
    pub response_flags: &'static str,
}

/// The live counters of one label set.
#[derive(Debug, Default)]
pub struct TcpCounters {
    opened: AtomicU64,
    closed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl TcpCounters {
    /// A connection opened.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
    /// A connection closed.
    pub fn closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
    /// Bytes sent to the client (the response direction).
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes received from the client (the request direction).
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    /// (opened, closed, sent, received).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.closed.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// The labels of Istio's HTTP metrics fixed for a connection (the per-request ones,
/// `response_code`, `response_flags` and `request_protocol`, are chosen per row).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_principal`.
    pub source_principal: Arc<str>,
    /// `source_workload`.
    pub source_workload: Arc<str>,
    /// `source_workload_namespace`.
    pub source_workload_namespace: Arc<str>,
    /// `destination_principal`.
    pub destination_principal: Arc<str>,
    /// `destination_workload`.
    pub destination_workload: Arc<str>,
    /// `destination_workload_namespace`.
    pub destination_workload_namespace: Arc<str>,
    /// `destination_service`.
    pub destination_service: Arc<str>,
    /// `connection_security_policy`: `mutual_tls` or `none`.
    pub mutual_tls: bool,
}

/// Istio's default duration buckets (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Size buckets (bytes), powers of ten as Istio's.
const SIZE_BUCKETS: [f64; 10] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

/// A Prometheus histogram of atomics. The sum is kept in thousandths of the unit.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    sum_milli: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_milli: AtomicU64::new(0),
        }
    }

    fn observe(&self, v: f64) {
        // Buckets are not cumulative here (one add per sample); rendering accumulates.
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli
            .fetch_add((v * 1000.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {acc}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The counters of one HTTP label set and response code.
#[derive(Debug)]
pub struct HttpStats {
    requests: AtomicU64,
    duration: Histogram<19>,
    request_bytes: Histogram<10>,
    response_bytes: Histogram<10>,
}

impl HttpStats {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_BUCKETS),
            request_bytes: Histogram::new(&SIZE_BUCKETS),
            response_bytes: Histogram::new(&SIZE_BUCKETS),
        }
    }

    /// Records one finished request.
    pub fn record(&self, duration: std::time::Duration, request_bytes: u64, response_bytes: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.duration.observe(duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// One row key of an [`HttpSeries`].
type RowKey = (u16, &'static str, bool);

/// The HTTP metrics of one connection-level label set, by response code, flags and protocol.
#[derive(Debug)]
pub struct HttpSeries {
    labels: HttpLabels,
    rows: std::sync::RwLock<Vec<(RowKey, Arc<HttpStats>)>>,
}

impl HttpSeries {
    /// The counters for a response `code` with Envoy `flags` (`-`, `UF`, `UC`, ...), over gRPC
    /// or plain HTTP. No allocation once the row exists.
    pub fn row(&self, code: u16, flags: &'static str, grpc: bool) -> Arc<HttpStats> {
        let key = (code, flags, grpc);
        {
            let rows = self.rows.read().unwrap_or_else(|p| p.into_inner());
            if let Some((_, s)) = rows.iter().find(|(k, _)| *k == key) {
                return s.clone();
            }
        }
        let mut rows = self.rows.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, s)) = rows.iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let s = Arc::new(HttpStats::new());
        rows.push((key, s.clone()));
        s
    }

    /// The connection-level labels.
    pub fn labels(&self) -> &HttpLabels {
        &self.labels
    }
}

/// The metrics registry of one proxy.
#[derive(Debug, Default)]
pub struct Metrics {
    tcp: Mutex<HashMap<Arc<TcpLabels>, Arc<TcpCounters>>>,
    http: Mutex<HashMap<HttpLabels, Arc<HttpSeries>>>,
    /// Completed mTLS handshakes: [as client (source), as server (destination)].
    handshakes: [AtomicU64; 2],
    /// Limit events (listener overflow, accept errors, idle timeouts).
    pub limits: crate::limits::LimitCounters,
}

const TCP: [(&str, &str); 4] = [
    (
        "istio_tcp_connections_opened_total",
        "Total TCP connections opened",
    ),
    (
        "istio_tcp_connections_closed_total",
        "Total TCP connections closed",
    ),
    (
        "istio_tcp_sent_bytes_total",
        "Bytes sent to the client during the connection",
    ),
    (
        "istio_tcp_received_bytes_total",
        "Bytes received from the client during the connection",
    ),
];

/// HTTP metrics.
const HTTP: [(&str, &str, &str); 4] = [
    ("istio_requests_total", "counter", "Total requests"),
    (
        "istio_request_duration_milliseconds",
        "histogram",
        "Request duration",
    ),
    ("istio_request_bytes", "histogram", "Request body size"),
    ("istio_response_bytes", "histogram", "Response body size"),
];

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters for `labels` (interned: call once per connection).
    pub fn tcp(&self, labels: TcpLabels) -> Arc<TcpCounters> {
        let mut map = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(Arc::new(labels)).or_default().clone()
    }

    /// Counts a completed mTLS handshake: as the client (`Source`, outbound) or the server
    /// (`Destination`, inbound).
    pub fn tls_handshake(&self, side: Reporter) {
        self.handshakes[side as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Completed mTLS handshakes on one side.
    pub fn tls_handshakes(&self, side: Reporter) -> u64 {
        self.handshakes[side as usize].load(Ordering::Relaxed)
    }

    /// The HTTP series for `labels` (interned: call once per connection or peer).
    pub fn http(&self, labels: HttpLabels) -> Arc<HttpSeries> {
        let mut map = self.http.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(labels)
            .or_insert_with_key(|l| {
                Arc::new(HttpSeries {
                    labels: l.clone(),
                    rows: std::sync::RwLock::new(Vec::new()),
                })
            })
            .clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let rows: Vec<(Arc<TcpLabels>, Arc<TcpCounters>)> = {
            let map = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(l, c)| (l.clone(), c.clone())).collect()
        };
        let mut rendered: Vec<(String, (u64, u64, u64, u64))> = rows
            .iter()
            .map(|(l, c)| (label_text(l), c.snapshot()))
            .collect();
        rendered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::with_capacity(256 + rendered.len() * 1024);
        for (i, (name, help)) in TCP.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, (o, c, s, r)) in &rendered {
                let v = [o, c, s, r][i];
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP warden_tls_handshakes_total Completed mTLS handshakes (reporter source: as client)"
        );
        let _ = writeln!(out, "# TYPE warden_tls_handshakes_total counter");
        for side in [Reporter::Source, Reporter::Destination] {
            let _ = writeln!(
                out,
                "warden_tls_handshakes_total{{reporter=\"{}\"}} {}",
                side.as_str(),
                self.tls_handshakes(side)
            );
        }
        let series: Vec<Arc<HttpSeries>> = {
            let map = self.http.lock().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        let mut http_rows: Vec<(String, Arc<HttpStats>)> = Vec::new();
        for s in &series {
            let base = http_label_text(&s.labels);
            let rows = s.rows.read().unwrap_or_else(|p| p.into_inner());
            for ((code, flags, grpc), stats) in rows.iter() {
                let mut l = base.clone();
                let _ = write!(
                    l,
                    ",request_protocol=\"{}\",response_code=\"{code}\",response_flags=\"{flags}\"",
                    if *grpc { "grpc" } else { "http" }
                );
                http_rows.push((l, stats.clone()));
            }
        }
        http_rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (name, kind, help)) in HTTP.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, stats) in &http_rows {
                match i {
                    0 => {
                        let _ = writeln!(out, "{name}{{{labels}}} {}", stats.requests());
                    }
                    1 => stats.duration.render(&mut out, name, labels),
                    2 => stats.request_bytes.render(&mut out, name, labels),
                    _ => stats.response_bytes.render(&mut out, name, labels),
                }
            }
        }
        self.limits.render(&mut out);
        out
    }
}

/// A Prometheus label list (`k="v",k2="v2"`) with escaped values.
pub(crate) struct LabelText(String);

impl LabelText {
    /// An empty list.
    pub(crate) fn new() -> Self {
        Self(String::with_capacity(512))
    }

    /// Appends `k="v"`, escaping `v`.
    pub(crate) fn push(&mut self, k: &str, v: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(k);
        self.0.push_str("=\"");
        escape_into(&mut self.0, v);
        self.0.push('"');
    }

    /// The finished list.
    pub(crate) fn finish(self) -> String {
        self.0
    }
}

fn escape_into(s: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
}

fn http_label_text(l: &HttpLabels) -> String {
    let mut text = crate::metrics::LabelText::new();
    let mut push = |k: &str, v: &str| text.push(k, v);
    push("reporter", l.reporter.as_str());
    push("source_principal", &l.source_principal);
    push("source_workload", &l.source_workload);
    push("source_workload_namespace", &l.source_workload_namespace);
    push("destination_principal", &l.destination_principal);
    push("destination_workload", &l.destination_workload);
    push(
        "destination_workload_namespace",
        &l.destination_workload_namespace,
    );
    push("destination_service", &l.destination_service);
    push(
        "connection_security_policy",
        if l.mutual_tls { "mutual_tls" } else { "none" },
    );
    text.finish()
}

fn label_text(l: &TcpLabels) -> String {
    let mut text = crate::metrics::LabelText::new();
    let mut push = |k: &str, v: &str| text.push(k, v);
    push("reporter", l.reporter.as_str());
    push("source_principal", &l.source_principal);
    push("source_workload", &l.source_workload);
    push("source_workload_namespace", &l.source_workload_namespace);
    push("destination_principal", &l.destination_principal);
    push("destination_workload", &l.destination_workload);
    push(
        "destination_workload_namespace",
        &l.destination_workload_namespace,
    );
    push("destination_service", &l.destination_service);
    push("request_protocol", "tcp");
    push("response_flags", l.response_flags);
    push(
        "connection_security_policy",
        if l.mutual_tls { "mutual_tls" } else { "none" },
    );
    text.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_labels_and_escaping() {
        let m = Metrics::new();
        let labels = TcpLabels {
            reporter: Reporter::Destination,
            source_principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            source_workload: "unknown".into(),
            source_workload_namespace: "a".into(),
            destination_principal: "spiffe://cluster.local/ns/c/sa/d".into(),
            destination_workload: "we\"ird".into(),
            destination_workload_namespace: "c".into(),
            destination_service: "d.c.svc.cluster.local".into(),
            mutual_tls: true,
            response_flags: "-",
        };
        let c = m.tcp(labels.clone());
        c.opened();
        c.add_received(10);
        c.add_sent(7);
        c.closed();
        // Interned: the same label set gives the same counters.
        m.tcp(labels).opened();
        let text = m.render();
        assert!(text.contains("istio_tcp_connections_opened_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/a/sa/b\""), "{text}");
        assert!(
            text.contains("destination_workload=\"we\\\"ird\""),
            "{text}"
        );
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE istio_requests_total counter"));
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap();
        assert!(sent.ends_with(" 7"), "{sent}");
    }

    #[test]
    fn http_series_render_counters_and_histograms() {
        let m = Metrics::new();
        let labels = HttpLabels {
            reporter: Reporter::Source,
            source_principal: "spiffe://cluster.local/ns/a/sa/b".into(),
            source_workload: "b".into(),
            source_workload_namespace: "a".into(),
            destination_principal: "spiffe://cluster.local/ns/c/sa/d".into(),
            destination_workload: "unknown".into(),
            destination_workload_namespace: "c".into(),
            destination_service: "d.c.svc.cluster.local".into(),
            mutual_tls: true,
        };
        let s = m.http(labels.clone());
        assert!(Arc::ptr_eq(&s, &m.http(labels)));
        let ok = s.row(200, "-", false);
        assert!(Arc::ptr_eq(&ok, &s.row(200, "-", false)));
        ok.record(std::time::Duration::from_millis(3), 10, 2000);
        ok.record(std::time::Duration::from_millis(70), 0, 5);
        s.row(503, "UF", false)
            .record(std::time::Duration::from_micros(100), 0, 90);
        let text = m.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {text}"))
                .to_owned()
        };
        assert!(line("istio_requests_total{reporter=\"source\"").contains("response_code=\"200\""));
        let total_200: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{") && l.contains("code=\"200\""))
            .collect();
        assert_eq!(total_200.len(), 1, "{text}");
        assert!(total_200[0].ends_with(" 2"), "{text}");
        assert!(
            total_200[0]
                .contains("connection_security_policy=\"mutual_tls\",request_protocol=\"http\"")
        );
        // Cumulative buckets: 3 ms is in le=5, 70 ms first in le=100.
        let le5 = text
            .lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains("code=\"200\"")
                    && l.contains("le=\"5\"")
            })
            .unwrap();
        assert!(le5.ends_with(" 1"), "{le5}");
        let le100 = text
            .lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains("code=\"200\"")
                    && l.contains("le=\"100\"")
            })
            .unwrap();
        assert!(le100.ends_with(" 2"), "{le100}");
        let sum = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_sum{") && l.contains("code=\"200\""))
            .unwrap();
        assert!(sum.ends_with(" 2005"), "{sum}");
        assert!(
            text.contains("response_code=\"503\",response_flags=\"UF\"} 1"),
            "{text}"
        );
    }
}
