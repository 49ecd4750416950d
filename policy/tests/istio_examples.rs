//! The examples of Istio's authorization documentation (the AuthorizationPolicy reference and the
//! authorization tasks), table-driven: each policy set, workload and request asserts allow or deny.

mod common;

use common::{Req, compile, decide, set};
use serde_json::json;

struct Case {
    name: &'static str,
    yaml: &'static str,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    requests: Vec<(Req, bool)>,
}

const HTTPBIN: &[(&str, &str)] = &[("app", "httpbin"), ("version", "v1")];

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no policy at all: allow everything",
            yaml: "",
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![(Req::get("/"), true), (Req::tcp(9000), true)],
        },
        Case {
            name: "allow-all: rules [{}]",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/anything"), true),
                (Req::http("DELETE", "/x"), true),
                (Req::tcp(9000), true),
            ],
        },
        Case {
            name: "allow-nothing: spec {}",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/"), false),
                (Req::tcp(9000), false),
                (Req::get("/").peer("cluster.local/ns/foo/sa/sleep"), false),
            ],
        },
        Case {
            name: "allow-nothing with a selector only affects selected workloads",
            yaml: r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: bar}
spec:
  selector:
    matchLabels: {app: httpbin}
"#,
            namespace: "bar",
            labels: &[("app", "sleep")],
            requests: vec![(Req::get("/"), true)],
        },
        Case {
            name: "deny-all: DENY rules [{}]",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec:
  action: DENY
  rules:
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules: [{}]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![(Req::get("/"), false), (Req::tcp(9000), false)],
        },
        Case {
            name: "reference example: principal or namespace, GET /info* or POST /data, JWT issuer claim",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: {
                let google = json!({"iss": "https://accounts.google.com", "sub": "u1"});
                let other = json!({"iss": "https://example.com", "sub": "u1"});
                vec![
                    (
                        Req::get("/info/x")
                            .peer("cluster.local/ns/default/sa/sleep")
                            .claims(google.clone()),
                        true,
                    ),
                    (
                        Req::http("POST", "/data")
                            .peer("cluster.local/ns/test/sa/any")
                            .claims(google.clone()),
                        true,
                    ),
                    // Wrong method for the path.
                    (
                        Req::http("POST", "/info")
                            .peer("cluster.local/ns/test/sa/any")
                            .claims(google.clone()),
                        false,
                    ),
                    // Wrong issuer.
                    (
                        Req::get("/info")
                            .peer("cluster.local/ns/default/sa/sleep")
                            .claims(other),
                        false,
                    ),
                    // No JWT.
                    (
                        Req::get("/info").peer("cluster.local/ns/default/sa/sleep"),
                        false,
                    ),
                    // Neither the principal nor the namespace.
                    (
                        Req::get("/info")
                            .peer("cluster.local/ns/prod/sa/sleep")
                            .claims(google.clone()),
                        false,
                    ),
                    // Plaintext: no principal, no namespace.
                    (Req::get("/info").claims(google), false),
                ]
            },
        },
        Case {
            name: "reference example: DENY POST from namespace dev",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["POST"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (
                    Req::http("POST", "/").peer("cluster.local/ns/dev/sa/x"),
                    false,
                ),
                (
                    Req::http("GET", "/").peer("cluster.local/ns/dev/sa/x"),
                    true,
                ),
                (
                    Req::http("POST", "/").peer("cluster.local/ns/prod/sa/x"),
                    true,
                ),
                (Req::http("POST", "/"), true),
            ],
        },
        Case {
            name: "bookinfo: productpage-viewer allows GET from anyone, details-viewer only productpage",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: default}
spec:
  selector:
    matchLabels: {app: productpage}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector:
    matchLabels: {app: details}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
    to:
    - operation:
        methods: ["GET"]
"#,
            namespace: "default",
            labels: &[("app", "details")],
            requests: vec![
                (
                    Req::get("/details/0").peer("cluster.local/ns/default/sa/bookinfo-productpage"),
                    true,
                ),
                (
                    Req::http("POST", "/details/0")
                        .peer("cluster.local/ns/default/sa/bookinfo-productpage"),
                    false,
                ),
                (
                    Req::get("/details/0").peer("cluster.local/ns/default/sa/bookinfo-reviews"),
                    false,
                ),
            ],
        },
        Case {
            name: "principal prefix and suffix, presence",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-product*"]}
  - from:
    - source: {principals: ["*/sa/admin"]}
    to:
    - operation: {methods: ["DELETE"]}
  - from:
    - source: {principals: ["*"]}
    to:
    - operation: {paths: ["/mtls-only"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (
                    Req::get("/").peer("cluster.local/ns/default/sa/bookinfo-productpage"),
                    true,
                ),
                (
                    Req::get("/").peer("cluster.local/ns/default/sa/bookinfo-reviews"),
                    false,
                ),
                (
                    Req::http("DELETE", "/").peer("td.example/ns/x/sa/admin"),
                    true,
                ),
                (
                    Req::http("DELETE", "/").peer("td.example/ns/x/sa/user"),
                    false,
                ),
                (Req::get("/mtls-only").peer("any.td/ns/y/sa/z"), true),
                (Req::get("/mtls-only"), false),
            ],
        },
        Case {
            name: "namespaces and notNamespaces",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {notNamespaces: ["foo", "istio-*"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").peer("cluster.local/ns/foo/sa/a"), true),
                (
                    Req::get("/").peer("cluster.local/ns/istio-system/sa/ingress"),
                    true,
                ),
                (Req::get("/").peer("cluster.local/ns/bar/sa/a"), false),
                // Plaintext has no namespace: notNamespaces matches, so DENY applies.
                (Req::get("/"), false),
            ],
        },
        Case {
            name: "paths: exact, prefix, suffix, presence, notPaths",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: paths, namespace: foo}
spec:
  rules:
  - to:
    - operation: {paths: ["/exact", "/api/*", "*.png"]}
  - to:
    - operation: {paths: ["/public*"], notPaths: ["/public/secret*"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/exact"), true),
                (Req::get("/exact/"), false),
                (Req::get("/api/v1/users"), true),
                (Req::get("/api"), false),
                (Req::get("/img/logo.png"), true),
                (Req::get("/img/logo.jpg"), false),
                (Req::get("/public/index.html"), true),
                (Req::get("/public/secret/key"), false),
            ],
        },
        Case {
            name: "methods and notMethods (gRPC is POST)",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: m, namespace: foo}
spec:
  rules:
  - to:
    - operation: {notMethods: ["DELETE", "PATCH"]}
  - to:
    - operation: {methods: ["POST"], paths: ["/pkg.Svc/Method"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/"), true),
                (Req::http("PUT", "/"), true),
                (Req::http("DELETE", "/"), false),
                (Req::http("POST", "/pkg.Svc/Method"), true),
            ],
        },
        Case {
            name: "hosts are case-insensitive, notHosts",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: foo}
spec:
  rules:
  - to:
    - operation: {hosts: ["*.Example.com", "exact.test"], notHosts: ["admin.example.com"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").host("api.example.com"), true),
                (Req::get("/").host("API.EXAMPLE.COM"), true),
                (Req::get("/").host("EXACT.test"), true),
                (Req::get("/").host("Admin.Example.com"), false),
                (Req::get("/").host("example.org"), false),
                // The port is part of the host as sent.
                (Req::get("/").host("exact.test:8080"), false),
            ],
        },
        Case {
            name: "deny-method-get with request.headers[x-token] notValues (explicit deny task)",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-method-get, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: DENY
  rules:
  - to:
    - operation: {methods: ["GET"]}
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-path-ip, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - to:
    - operation: {paths: ["/ip"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/ip").header("x-token", "admin"), true),
                (Req::get("/ip").header("x-token", "guest"), false),
                (Req::get("/ip"), false),
                (Req::get("/get").header("x-token", "admin"), false),
                (Req::http("POST", "/ip"), true),
            ],
        },
        Case {
            name: "header values: exact, prefix, suffix, presence; names case-insensitive",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: headers, namespace: foo}
spec:
  rules:
  - when:
    - key: request.headers[X-Version]
      values: ["v1", "beta-*", "*-rc"]
  - when:
    - key: request.headers[x-debug]
      values: ["*"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").header("x-version", "v1"), true),
                (Req::get("/").header("x-version", "beta-3"), true),
                (Req::get("/").header("x-version", "2.0-rc"), true),
                (Req::get("/").header("x-version", "v2"), false),
                (Req::get("/").header("x-debug", ""), true),
                (Req::get("/"), false),
                // Repeated headers are joined with commas.
                (
                    Req::get("/")
                        .header("x-version", "v1")
                        .header("x-version", "v2"),
                    false,
                ),
                (
                    Req::get("/")
                        .header("x-version", "beta-1")
                        .header("x-version", "x"),
                    true,
                ),
            ],
        },
        Case {
            name: "JWT task: requestPrincipals and claims[groups]",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]
    when:
    - key: request.auth.claims[groups]
      values: ["group1"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (
                    Req::get("/headers").claims(json!({
                        "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io",
                        "groups": ["group1", "group2"]
                    })),
                    true,
                ),
                (
                    Req::get("/headers").claims(json!({
                        "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io",
                        "groups": ["group2"]
                    })),
                    false,
                ),
                (
                    Req::get("/headers").claims(json!({
                        "iss": "testing@secure.istio.io", "sub": "someone-else",
                        "groups": ["group1"]
                    })),
                    false,
                ),
                (Req::get("/headers"), false),
            ],
        },
        Case {
            name: "requestPrincipals [*] requires a JWT; notRequestPrincipals",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-any-jwt, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/"), false),
                (Req::get("/").claims(json!({"iss": "i", "sub": "s"})), true),
                // Without `sub` there is no request principal.
                (Req::get("/").claims(json!({"iss": "i"})), false),
            ],
        },
        Case {
            name: "request principal split at the last slash (URL issuers)",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rp, namespace: foo}
spec:
  rules:
  - from:
    - source:
        requestPrincipals: ["https://accounts.example.com/*"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (
                    Req::get("/")
                        .claims(json!({"iss": "https://accounts.example.com", "sub": "42"})),
                    true,
                ),
                (
                    Req::get("/").claims(json!({"iss": "https://evil.example.com", "sub": "42"})),
                    false,
                ),
            ],
        },
        Case {
            name: "audiences, presenter, nested claims and space-delimited scope",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: foo}
spec:
  rules:
  - when:
    - key: request.auth.audiences
      values: ["api.example.com"]
    - key: request.auth.presenter
      values: ["frontend*"]
    - key: request.auth.claims[realm][role]
      values: ["admin"]
    - key: request.auth.claims[scope]
      values: ["write"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: {
                let good = json!({
                    "iss": "i", "sub": "s", "aud": ["web", "api.example.com"], "azp": "frontend-1",
                    "realm": {"role": "admin"}, "scope": "read write"
                });
                let mut string_aud = good.clone();
                string_aud["aud"] = json!("api.example.com");
                let mut bad_scope = good.clone();
                bad_scope["scope"] = json!("read");
                let mut bad_role = good.clone();
                bad_role["realm"] = json!({"role": "user"});
                vec![
                    (Req::get("/").claims(good), true),
                    (Req::get("/").claims(string_aud), true),
                    (Req::get("/").claims(bad_scope), false),
                    (Req::get("/").claims(bad_role), false),
                ]
            },
        },
        Case {
            name: "ipBlocks and notIpBlocks, IPv4 and IPv6, bare IPs",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip, namespace: foo}
spec:
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4", "5.6.7.0/24", "2001:db8::/32"]
        notIpBlocks: ["5.6.7.8"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").source_ip("1.2.3.4"), true),
                (Req::get("/").source_ip("1.2.3.5"), false),
                (Req::get("/").source_ip("5.6.7.9"), true),
                (Req::get("/").source_ip("5.6.7.8"), false),
                (Req::get("/").source_ip("2001:db8:1::9"), true),
                (Req::get("/").source_ip("2001:db9::1"), false),
            ],
        },
        Case {
            name: "ingress: remoteIpBlocks (original client) vs ipBlocks (direct peer)",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-policy, namespace: istio-system}
spec:
  selector:
    matchLabels: {app: istio-ingressgateway}
  action: DENY
  rules:
  - from:
    - source:
        remoteIpBlocks: ["203.0.113.0/24"]
"#,
            namespace: "istio-system",
            labels: &[("app", "istio-ingressgateway")],
            requests: vec![
                (
                    Req::get("/").source_ip("10.0.0.5").remote_ip("203.0.113.7"),
                    false,
                ),
                (
                    Req::get("/")
                        .source_ip("203.0.113.7")
                        .remote_ip("198.51.100.1"),
                    true,
                ),
            ],
        },
        Case {
            name: "ports and notPorts, destination.port and destination.ip conditions",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ports, namespace: foo}
spec:
  rules:
  - to:
    - operation: {ports: ["8000", "9000"], notPorts: ["9000"]}
  - when:
    - key: destination.port
      values: ["7070"]
    - key: destination.ip
      values: ["10.1.0.0/16"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").port(8000), true),
                (Req::get("/").port(9000), false),
                (Req::get("/").port(7070).destination_ip("10.1.2.3"), true),
                (Req::get("/").port(7070).destination_ip("10.2.2.3"), false),
                (Req::tcp(8000), true),
            ],
        },
        Case {
            name: "connection.sni and source.principal conditions",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni, namespace: foo}
spec:
  rules:
  - when:
    - key: connection.sni
      values: ["*.internal"]
    - key: source.principal
      notValues: ["cluster.local/ns/foo/sa/blocked"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (
                    Req::tcp(9000)
                        .sni("db.internal")
                        .peer("cluster.local/ns/foo/sa/app"),
                    true,
                ),
                (
                    Req::tcp(9000)
                        .sni("db.internal")
                        .peer("cluster.local/ns/foo/sa/blocked"),
                    false,
                ),
                (Req::tcp(9000).sni("db.external"), false),
                (Req::tcp(9000), false),
            ],
        },
        Case {
            name: "TCP task: ALLOW ports 9000 and 9001",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: ALLOW
  rules:
  - to:
    - operation: {ports: ["9000", "9001"]}
"#,
            namespace: "foo",
            labels: &[("app", "tcp-echo")],
            requests: vec![
                (Req::tcp(9000), true),
                (Req::tcp(9001), true),
                (Req::tcp(9002), false),
            ],
        },
        Case {
            name: "TCP task: ALLOW rule with methods is dropped for TCP, so port 9000 is denied",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"#,
            namespace: "foo",
            labels: &[("app", "tcp-echo")],
            requests: vec![
                (Req::tcp(9000), false),
                (Req::tcp(9001), false),
                // The same policy over HTTP works as written.
                (Req::get("/").port(9000), true),
            ],
        },
        Case {
            name: "ALLOW: only the HTTP-only rule is dropped; other rules still allow TCP",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: foo}
spec:
  rules:
  - from:
    - source: {requestPrincipals: ["*"]}
  - to:
    - operation: {ports: ["9001"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![(Req::tcp(9001), true), (Req::tcp(9000), false)],
        },
        Case {
            name: "TCP task: DENY with methods ignores the HTTP part on TCP and denies every port",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
"#,
            namespace: "foo",
            labels: &[("app", "tcp-echo")],
            requests: vec![
                (Req::tcp(9000), false),
                (Req::tcp(9001), false),
                (Req::http("POST", "/").port(9000), true),
                (Req::get("/").port(9000), false),
            ],
        },
        Case {
            name: "TCP task: DENY with methods and ports denies only that port on TCP",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["9000"]
"#,
            namespace: "foo",
            labels: &[("app", "tcp-echo")],
            requests: vec![(Req::tcp(9000), false), (Req::tcp(9001), true)],
        },
        Case {
            name: "DENY requestPrincipals [*] on TCP denies every connection",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jwt, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {requestPrincipals: ["*"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::tcp(9000), false),
                (Req::get("/"), true),
                (Req::get("/").claims(json!({"iss": "i", "sub": "s"})), false),
            ],
        },
        Case {
            name: "serviceAccounts: name in the policy's namespace, or ns/name",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: foo}
spec:
  rules:
  - from:
    - source: {serviceAccounts: ["sleep", "bar/api"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/").peer("cluster.local/ns/foo/sa/sleep"), true),
                (Req::get("/").peer("other.td/ns/bar/sa/api"), true),
                (Req::get("/").peer("cluster.local/ns/bar/sa/sleep"), false),
                (Req::get("/").peer("cluster.local/ns/foo/sa/sleeper"), false),
                (Req::get("/"), false),
            ],
        },
        Case {
            name: "root namespace policy with a selector applies in every namespace",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing-v1, namespace: istio-system}
spec:
  selector:
    matchLabels: {version: v1}
"#,
            namespace: "anywhere",
            labels: HTTPBIN,
            requests: vec![(Req::get("/"), false)],
        },
        Case {
            name: "AUDIT never changes the decision",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec:
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/user/profile/*"]
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![(Req::get("/user/profile/1"), true), (Req::get("/x"), true)],
        },
        Case {
            name: "dry-run DENY is never enforced",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  namespace: foo
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels: {app: httpbin}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/headers"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![(Req::get("/headers"), true), (Req::get("/ip"), true)],
        },
        Case {
            name: "path templates {*} and {**}",
            yaml: r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tpl, namespace: foo}
spec:
  rules:
  - to:
    - operation: {paths: ["/users/{*}/profile", "/static/{**}"]}
"#,
            namespace: "foo",
            labels: HTTPBIN,
            requests: vec![
                (Req::get("/users/42/profile"), true),
                (Req::get("/users/42/x/profile"), false),
                (Req::get("/static/css/site.css"), true),
                (Req::get("/static"), false),
            ],
        },
    ]
}

#[test]
fn istio_documentation_examples() {
    let mut failures = Vec::new();
    for case in cases() {
        let s = set(case.yaml);
        let compiled = compile(&s, case.namespace, case.labels);
        for (i, (req, want)) in case.requests.iter().enumerate() {
            let (got, why) = decide(&compiled, req);
            if got != *want {
                failures.push(format!(
                    "{}: request {i} ({:?} {}): want {}, got {} ({why})",
                    case.name,
                    req.http
                        .as_ref()
                        .map(|h| h.method.as_str())
                        .unwrap_or("TCP"),
                    req.http.as_ref().map(|h| h.path.as_str()).unwrap_or(""),
                    if *want { "allow" } else { "deny" },
                    if got { "allow" } else { "deny" },
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
