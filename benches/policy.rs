//! Policy engine micro-benchmarks.
//!
//! - `decision/http_20_rules`: one typical HTTP request (mTLS peer, path, method, headers) against
//!   a workload with 20 applicable rules (a DENY policy and three ALLOW policies), matched by
//!   the last ALLOW rule. Target: <= 1 us median.
//! - `decision/http_20_rules_in_10k_mesh`: the same workload compiled out of a mesh with
//!   10,000 AuthorizationPolicies across 1,000 namespaces: the decision time must not change.
//! - `decision/tcp_20_rules`: the same policies for a TCP connection.
//! - `compile/10k_policies_1k_namespaces`: compiling 10,000 policies into a `PolicySet` and the
//!   per-workload view of one workload in each of the 1,000 namespaces. Target: < 200 ms.
//! - `parse/10k_policies_yaml`: reading the same 10,000 policies from YAML (for reference).
//! - `decision_cpu/*`: the decision benchmarks timed in thread CPU time instead of wall time,
//!   so that other processes competing for the CPU do not inflate them (a busy build machine).

use std::collections::BTreeMap;
use std::hint::black_box;

use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use warden_policy::{
    ConnectionContext, HttpRequest, NoExtAuthz, PolicySet, PolicySetOptions, Request, Resource,
    WorkloadRef, load,
};

/// The workload's 20 rules: DENY (5 rules) and three ALLOW policies (5 rules each).
fn workload_policies(ns: &str) -> String {
    let mut y = format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-bad, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - from: [{{source: {{notNamespaces: ["{ns}", "istio-system", "frontend"]}}}}]
  - to: [{{operation: {{paths: ["/admin*", "/debug/*"]}}}}]
  - when: [{{key: "request.headers[x-bad]", values: ["yes", "true"]}}]
  - from: [{{source: {{ipBlocks: ["192.168.0.0/16", "203.0.113.0/24"]}}}}]
  - to: [{{operation: {{methods: ["TRACE", "CONNECT"]}}}}]
"#
    );
    for p in 0..3 {
        y.push_str(&format!(
            r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-{p}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/team-{p}/sa/reader"]}}}}]
    to: [{{operation: {{methods: ["GET", "HEAD"], paths: ["/v{p}/items*"]}}}}]
  - from: [{{source: {{namespaces: ["batch-{p}"]}}}}]
    to: [{{operation: {{methods: ["POST"], paths: ["/v{p}/jobs"]}}}}]
  - to: [{{operation: {{hosts: ["admin-{p}.example.com"], ports: ["9090"]}}}}]
  - when: [{{key: "request.headers[x-tenant]", values: ["tenant-{p}"]}}, {{key: source.ip, values: ["10.{p}.0.0/16"]}}]
  - from: [{{source: {{principals: ["cluster.local/ns/frontend/sa/web-{p}*"]}}}}]
    to: [{{operation: {{methods: ["GET", "POST"], paths: ["/api/{p}/*", "*.json"]}}}}]
"#
        ));
    }
    y
}

fn parse(yaml: &str) -> Vec<Resource> {
    let report = load::LoadReport::from_files(vec![load::parse_file("bench.yaml".as_ref(), yaml)]);
    assert!(!report.has_errors(), "{:?}", report.errors().next());
    report.files.into_iter().flat_map(|f| f.resources).collect()
}

/// 10,000 policies over 1,000 namespaces (10 each: the 4 above plus 6 more).
fn mesh_yaml() -> String {
    let mut y = String::new();
    for n in 0..1000 {
        let ns = format!("ns-{n}");
        y.push_str(&workload_policies(&ns));
        for k in 0..6 {
            y.push_str(&format!(
                r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: extra-{k}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: svc-{k}}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/{ns}/sa/client-{k}"]}}}}]
    to: [{{operation: {{methods: ["GET"], paths: ["/svc-{k}/*"]}}}}]
"#
            ));
        }
        y.push_str("\n---\n");
    }
    y
}

fn bench(c: &mut Criterion) {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let options = PolicySetOptions::default();

    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", HeaderValue::from_static("0f5b2c1e-3a4d"));
    headers.insert("x-tenant", HeaderValue::from_static("tenant-7"));
    let peer = "spiffe://cluster.local/ns/frontend/sa/web-2-canary";
    let conn = ConnectionContext::new(
        "10.9.1.2".parse().unwrap(),
        "10.9.3.4".parse().unwrap(),
        8080,
    )
    .with_peer(peer);
    let req = Request::http(
        conn,
        HttpRequest {
            method: "GET",
            host: "web.ns-7.svc.cluster.local:8080",
            path: "/api/2/orders/17",
            headers: &headers,
            auth: None,
        },
    );
    let tcp = Request::tcp(conn);

    let small = PolicySet::new(&parse(&workload_policies("ns-7")), &options);
    let compiled = small.compile_for(&WorkloadRef {
        namespace: "ns-7",
        labels: &labels,
    });
    let d = compiled.authz.evaluate(&req, &NoExtAuthz);
    assert!(d.is_allowed(), "{d}");
    assert_eq!(d.deciding_rule().map(|m| m.rule_index()), Some(4));
    let rules: usize = compiled
        .authz
        .policies()
        .iter()
        .map(|p| p.rule_count())
        .sum();
    assert_eq!(rules, 20);

    let mut g = c.benchmark_group("decision");
    g.bench_function("http_20_rules", |b| {
        b.iter(|| black_box(compiled.authz.evaluate(black_box(&req), &NoExtAuthz)).is_allowed())
    });
    g.bench_function("tcp_20_rules", |b| {
        b.iter(|| black_box(compiled.authz.evaluate(black_box(&tcp), &NoExtAuthz)).is_allowed())
    });

    let mesh = parse(&mesh_yaml());
    assert_eq!(mesh.len(), 10_000);
    let big = PolicySet::new(&mesh, &options);
    let in_mesh = big.compile_for(&WorkloadRef {
        namespace: "ns-7",
        labels: &labels,
    });
    assert_eq!(in_mesh.authz.policies().len(), 4);
    g.bench_function("http_20_rules_in_10k_mesh", |b| {
        b.iter(|| black_box(in_mesh.authz.evaluate(black_box(&req), &NoExtAuthz)).is_allowed())
    });
    g.finish();

    // The same, in thread CPU time.
    let cpu = |iters: u64, f: &dyn Fn() -> bool| -> Duration {
        let start = ThreadTime::now();
        for _ in 0..iters {
            black_box(f());
        }
        start.elapsed()
    };
    let mut g = c.benchmark_group("decision_cpu");
    g.bench_function("http_20_rules", |b| {
        b.iter_custom(|n| {
            cpu(n, &|| {
                compiled
                    .authz
                    .evaluate(black_box(&req), &NoExtAuthz)
                    .is_allowed()
            })
        })
    });
    g.bench_function("tcp_20_rules", |b| {
        b.iter_custom(|n| {
            cpu(n, &|| {
                compiled
                    .authz
                    .evaluate(black_box(&tcp), &NoExtAuthz)
                    .is_allowed()
            })
        })
    });
    g.bench_function("http_20_rules_in_10k_mesh", |b| {
        b.iter_custom(|n| {
            cpu(n, &|| {
                in_mesh
                    .authz
                    .evaluate(black_box(&req), &NoExtAuthz)
                    .is_allowed()
            })
        })
    });
    g.finish();

    let namespaces: Vec<String> = (0..1000).map(|n| format!("ns-{n}")).collect();
    // Compile the mesh, then the view of one workload in every namespace.
    let compile_all = || {
        let set = PolicySet::new(&mesh, &options);
        let mut total = 0;
        for ns in &namespaces {
            let c = set.compile_for(&WorkloadRef {
                namespace: ns,
                labels: &labels,
            });
            total += c.authz.policies().len();
        }
        assert_eq!(total, 4000);
        total
    };
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10k_policies_1k_namespaces", |b| {
        b.iter(|| black_box(compile_all()))
    });
    g.bench_function("10k_policies_1k_namespaces_cpu_time", |b| {
        b.iter_custom(|n| {
            let start = ThreadTime::now();
            for _ in 0..n {
                black_box(compile_all());
            }
            start.elapsed()
        })
    });
    g.finish();

    let yaml = mesh_yaml();
    let mut g = c.benchmark_group("parse");
    g.sample_size(10);
    g.bench_function("10k_policies_yaml", |b| {
        b.iter(|| black_box(parse(black_box(&yaml))).len())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
