//! Istio's standard metrics in Prometheus text format (reference §9), hand-rolled: one label set
//! is interned per connection (a map lookup under a mutex when the connection opens), and the
//! hot path only adds to atomics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which side reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's sidecar (outbound).
    Source,
    /// The server's sidecar (inbound).
    Destination,
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

/// The metrics registry of one proxy.
#[derive(Debug, Default)]
pub struct Metrics {
    tcp: Mutex<HashMap<Arc<TcpLabels>, Arc<TcpCounters>>>,
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

/// HTTP metrics, registered for the L7 path (no samples until it serves requests).
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
        for (name, kind, help) in HTTP {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        self.limits.render(&mut out);
        out
    }
}

fn label_text(l: &TcpLabels) -> String {
    let mut s = String::with_capacity(512);
    let mut push = |k: &str, v: &str| {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    };
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
    s
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
}
