//! Istio's HTTP request metrics for the gateways (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), reported as `reporter="source"` as Istio's gateways
//! do. The TCP metrics use [`crate::metrics::Metrics`]; this adds the request samples to its
//! exposition under the metric families it declares.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The labels of one request series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpLabels {
    /// `source_principal`: the gateway's own identity (the gateway is the mesh source).
    pub source_principal: String,
    /// `source_workload`.
    pub source_workload: String,
    /// `source_workload_namespace`.
    pub source_workload_namespace: String,
    /// `destination_principal`: the upstream's SPIFFE ID over mTLS, else `unknown`.
    pub destination_principal: String,
    /// `destination_workload_namespace`.
    pub destination_workload_namespace: String,
    /// `destination_service`: the routed host, `unknown` when there was no route.
    pub destination_service: String,
    /// `request_protocol`: `http` or `grpc`.
    pub request_protocol: &'static str,
    /// `response_code`.
    pub response_code: u16,
    /// `response_flags`: `-`, `NR` no route, `UF` upstream failure, `UH` no healthy upstream,
    /// `UT` timeout, `URX` retries exhausted.
    pub response_flags: &'static str,
    /// `connection_security_policy`: mTLS to the upstream.
    pub mutual_tls: bool,
}

/// Duration histogram buckets (ms), Istio's defaults.
const BUCKETS: [u64; 17] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
];

/// Size histogram buckets (bytes), Istio's defaults.
const BYTE_BUCKETS: [u64; 10] = [
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000,
];

#[derive(Debug)]
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[u64; N], v: u64) {
        self.sum.fetch_add(v, Ordering::Relaxed);
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[u64; N], count: u64) {
        for (i, b) in bounds.iter().enumerate() {
            let c = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Debug, Default)]
struct Series {
    requests: AtomicU64,
    duration: Histogram<17>,
    request_bytes: Histogram<10>,
    response_bytes: Histogram<10>,
}

/// The request metrics of one gateway.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    series: Mutex<HashMap<Arc<HttpLabels>, Arc<Series>>>,
}

impl HttpMetrics {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one finished request: its duration (until the response body ended) and the
    /// request and response body sizes.
    pub fn record(
        &self,
        labels: HttpLabels,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let s = {
            let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(Arc::new(labels)).or_default().clone()
        };
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.duration.observe(&BUCKETS, ms);
        s.request_bytes.observe(&BYTE_BUCKETS, request_bytes);
        s.response_bytes.observe(&BYTE_BUCKETS, response_bytes);
    }

    /// Adds the request samples to `base` (the text of [`crate::metrics::Metrics::render`]),
    /// right after the `# TYPE` lines of their families.
    pub fn render_into(&self, base: &str) -> String {
        let mut rows: Vec<(String, Arc<Series>)> = {
            let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|(l, s)| (label_text(l), s.clone()))
                .collect()
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mut requests = String::new();
        let mut durations = String::new();
        let mut req_sizes = String::new();
        let mut resp_sizes = String::new();
        for (labels, s) in &rows {
            let n = s.requests.load(Ordering::Relaxed);
            let _ = writeln!(requests, "istio_requests_total{{{labels}}} {n}");
            s.duration.render(
                &mut durations,
                "istio_request_duration_milliseconds",
                labels,
                &BUCKETS,
                n,
            );
            s.request_bytes.render(
                &mut req_sizes,
                "istio_request_bytes",
                labels,
                &BYTE_BUCKETS,
                n,
            );
            s.response_bytes.render(
                &mut resp_sizes,
                "istio_response_bytes",
                labels,
                &BYTE_BUCKETS,
                n,
            );
        }
        let families = [
            ("istio_requests_total", "counter", requests),
            (
                "istio_request_duration_milliseconds",
                "histogram",
                durations,
            ),
            ("istio_request_bytes", "histogram", req_sizes),
            ("istio_response_bytes", "histogram", resp_sizes),
        ];
        let mut out = String::with_capacity(
            base.len() + families.iter().map(|f| f.2.len()).sum::<usize>() + 256,
        );
        let mut placed = [false; 4];
        for line in base.lines() {
            out.push_str(line);
            out.push('\n');
            for (i, (name, kind, samples)) in families.iter().enumerate() {
                if line.strip_prefix("# TYPE ") == Some(&format!("{name} {kind}")) {
                    out.push_str(samples);
                    placed[i] = true;
                }
            }
        }
        for (i, (name, kind, samples)) in families.iter().enumerate() {
            if !placed[i] && !samples.is_empty() {
                let _ = writeln!(out, "# TYPE {name} {kind}");
                out.push_str(samples);
            }
        }
        out
    }
}

fn label_text(l: &HttpLabels) -> String {
    let mut text = crate::metrics::LabelText::new();
    let mut push = |k: &str, v: &str| text.push(k, v);
    push("reporter", "source");
    push("source_principal", &l.source_principal);
    push("source_workload", &l.source_workload);
    push("source_workload_namespace", &l.source_workload_namespace);
    push("destination_principal", &l.destination_principal);
    push(
        "destination_workload_namespace",
        &l.destination_workload_namespace,
    );
    push("destination_service", &l.destination_service);
    push("request_protocol", l.request_protocol);
    push("response_code", &l.response_code.to_string());
    push("response_flags", l.response_flags);
    push(
        "connection_security_policy",
        if l.mutual_tls {
            "mutual_tls"
        } else {
            "unknown"
        },
    );
    text.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_go_under_the_declared_families() {
        let m = HttpMetrics::new();
        let labels = HttpLabels {
            source_principal: "spiffe://cluster.local/ns/istio-system/sa/gw".into(),
            source_workload: "istio-ingressgateway".into(),
            source_workload_namespace: "istio-system".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/app".into(),
            destination_workload_namespace: "shop".into(),
            destination_service: "app.shop.svc.cluster.local".into(),
            request_protocol: "http",
            response_code: 200,
            response_flags: "-",
            mutual_tls: true,
        };
        m.record(labels.clone(), Duration::from_millis(7), 0, 5);
        m.record(labels, Duration::from_millis(70), 20, 500);
        let base = crate::metrics::Metrics::new().render();
        let text = m.render_into(&base);
        assert_eq!(
            text.matches("# TYPE istio_requests_total counter").count(),
            1
        );
        let after = text
            .split("# TYPE istio_requests_total counter\n")
            .nth(1)
            .unwrap();
        assert!(
            after.starts_with("istio_requests_total{reporter=\"source\""),
            "{text}"
        );
        assert!(after.lines().next().unwrap().ends_with("response_code=\"200\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 2"), "{text}");
        assert!(text.contains("le=\"10\"} 1\n"), "{text}");
        assert!(text.contains("le=\"100\"} 2\n"), "{text}");
        assert!(
            text.contains("istio_request_duration_milliseconds_sum{"),
            "{text}"
        );
    }
}
