//! `warden check` end to end: the real binary on real policy files.

use std::path::Path;
use std::process::{Command, Output};

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin*"], ports: ["8080"]}
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/bar/sa/sleep"]}
    to:
    - operation: {methods: ["GET"]}
  - from:
    - source: {requestPrincipals: ["https://idp.example.com/*"]}
    when:
    - key: request.auth.claims[groups]
      values: ["admins"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: PERMISSIVE}
"#;

fn warden(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("check")
        .arg("--policies")
        .arg(dir)
        .args(args)
        .output()
        .expect("run warden")
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.yaml"), POLICIES).unwrap();
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn allow_exits_0_and_names_the_rule() {
    let dir = setup();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "--principal",
            "cluster.local/ns/bar/sa/sleep",
            "--path",
            "/status",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Decision   ALLOW"), "{text}");
    assert!(text.contains("allowed by foo/allow-get rule 0"), "{text}");
    assert!(
        text.contains("PERMISSIVE on port 8080 (namespace-wide foo/default)"),
        "{text}"
    );
}

#[test]
fn deny_exits_1_and_explains() {
    let dir = setup();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "--principal",
            "cluster.local/ns/bar/sa/sleep",
            "--path",
            "/admin/x",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DENY (HTTP 403)"), "{text}");
    assert!(
        text.contains(r#"denied by foo/deny-admin rule 0: port matched "8080", path matched "/admin*", header x-token not in notValues ["admin"]"#),
        "{text}"
    );
    // The header lifts the deny.
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "--principal",
            "cluster.local/ns/bar/sa/sleep",
            "--path",
            "/admin/x",
            "-H",
            "X-Token: admin",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn jwt_claims_and_json_output() {
    let dir = setup();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "-X",
            "DELETE",
            "--path",
            "/items/1",
            "--request-principal",
            "https://idp.example.com/alice",
            "--claim",
            r#"groups=["admins"]"#,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["decision"], "ALLOW");
    assert_eq!(v["deciding"]["policy"], "foo/allow-get");
    assert_eq!(v["deciding"]["rule"], 1);
    assert_eq!(v["request"]["jwt_claims"]["sub"], "alice");
    assert_eq!(v["mtls"]["mode"], "PERMISSIVE");
    assert!(v["policies"].as_array().unwrap().len() == 2);
}

#[test]
fn tcp_drops_http_only_allow_rules() {
    let dir = setup();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "--tcp",
            "--port",
            "5432",
            "--principal",
            "cluster.local/ns/bar/sa/sleep",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DENY (connection closed)"), "{text}");
    assert!(
        text.contains("no ALLOW policy matched (1 applied: foo/allow-get)"),
        "{text}"
    );
    assert!(text.contains("dropped"), "{text}");
}

#[test]
fn config_errors_exit_2_and_are_listed() {
    let dir = setup();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec:\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.0/33\"]}\n",
    )
    .unwrap();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "-l",
            "app=httpbin",
            "--principal",
            "cluster.local/ns/bar/sa/sleep",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(r#"broken.yaml: document 1 (AuthorizationPolicy foo/bad): spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR "10.0.0.0/33""#), "{text}");
    // The valid file is still evaluated.
    assert!(text.contains("allowed by foo/allow-get rule 0"), "{text}");
}

#[test]
fn missing_directory_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "--policies", "/nonexistent/warden-policies"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/warden-policies"));
}

#[test]
fn bad_path_is_a_400() {
    let dir = setup();
    let out = warden(
        dir.path(),
        &[
            "-n",
            "foo",
            "--path",
            "/a%00b",
            "--principal",
            "a/ns/b/sa/c",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DENY (HTTP 400)"), "{text}");
}

/// `--jwt` runs the workload's RequestAuthentication exactly as the sidecar would: a valid token
/// gives the request principal and claims that AuthorizationPolicy matches; a forged one is 401.
#[test]
fn jwt_is_validated_with_the_workloads_request_authentication() {
    use warden_policy::jwt::{Algorithm, SigningKey, jwks_json};
    let dir = setup();
    let key = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("k1");
    let jwks = jwks_json([key.public_jwk().unwrap()]);
    let ra = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\n\
         spec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  jwtRules:\n  - issuer: https://idp.example.com\n    jwks: '{jwks}'\n"
    );
    std::fs::write(dir.path().join("ra.yaml"), ra).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.example.com", "sub": "alice", "exp": now + 600, "groups": ["admins"],
    });
    let token = key.sign(&claims).unwrap();
    let base = ["-n", "foo", "-l", "app=httpbin", "--method", "POST"];

    // Valid token, claim groups=admins: allowed by rule 1 of allow-get.
    let mut args = base.to_vec();
    args.extend(["--jwt", &token]);
    let out = warden(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("allowed by foo/allow-get rule 1"), "{text}");

    // The same token signed by another key: 401 before authorization.
    let forged = SigningKey::generate(Algorithm::ES256)
        .unwrap()
        .with_kid("k1")
        .sign(&claims)
        .unwrap();
    let mut args = base.to_vec();
    args.extend(["--jwt", &forged]);
    let out = warden(dir.path(), &args);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("RequestAuthentication"), "{text}");
    assert!(text.contains("401"), "{text}");

    // No token: no request principal, so the POST is denied by ALLOW (403), not 401.
    let out = warden(dir.path(), &base);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("RequestAuthentication:"), "{text}");
}
