//! `warden quickstart --once`: the whole demo mesh (control plane, two sidecars, two apps) on
//! loopback in the real binary; it exits 0 and its output shows the allowed request (200, the
//! ALLOW policy that decided) and the denied one (403, the DENY policy that decided), both seen
//! by the backend's sidecar over mTLS from the frontend's identity, and both sidecars subscribed
//! to the control plane and in sync (certificates from its CA, config from its push API).

use std::process::Command;

#[test]
fn quickstart_once_shows_an_allowed_and_a_denied_request() {
    // Its own loopback network, so a quickstart a developer runs (127.77.x) does not collide.
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["quickstart", "--once", "--net", "78"])
        .env_remove("POD_NAMESPACE")
        .output()
        .expect("run warden quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let section = |n: &str| {
        let start = stdout
            .find(&format!("{n}. frontend -> backend"))
            .unwrap_or_else(|| panic!("no request {n} in:\n{stdout}"));
        let rest = &stdout[start..];
        let end = rest[3..].find("\n\n").map_or(rest.len(), |e| e + 3);
        rest[..end].to_owned()
    };
    let allowed = section("1");
    assert!(allowed.contains("GET /api/hello"), "{allowed}");
    assert!(
        allowed.lines().any(|l| l.contains("frontend's sidecar")
            && l.contains("spiffe://cluster.local/ns/demo/sa/backend")),
        "the frontend's sidecar line names the backend identity: {allowed}"
    );
    assert!(
        allowed.contains("peer spiffe://cluster.local/ns/demo/sa/frontend over mTLS -> 200"),
        "{allowed}"
    );
    assert!(
        allowed.contains("decision: allowed by demo/backend-allow-frontend rule 0"),
        "{allowed}"
    );
    assert!(
        allowed.contains("answer: 200 hello from backend: GET /api/hello"),
        "{allowed}"
    );
    let denied = section("2");
    assert!(denied.contains("GET /admin/users"), "{denied}");
    assert!(
        denied.contains("peer spiffe://cluster.local/ns/demo/sa/frontend over mTLS -> 403"),
        "{denied}"
    );
    assert!(
        denied.contains("decision: denied by demo/backend-deny-admin rule 0"),
        "{denied}"
    );
    assert!(
        denied.contains("answer: 403 RBAC: access denied"),
        "{denied}"
    );
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    // Both sidecars got certificates from the CA and config from the control plane.
    let status = &stdout[stdout
        .find("Proxies subscribed to the control plane")
        .unwrap_or_else(|| panic!("no status table in:\n{stdout}"))..];
    for (pod, id) in [
        (
            "frontend-1.demo",
            "spiffe://cluster.local/ns/demo/sa/frontend",
        ),
        (
            "backend-1.demo",
            "spiffe://cluster.local/ns/demo/sa/backend",
        ),
    ] {
        let row = status
            .lines()
            .find(|l| l.trim_start().starts_with(pod))
            .unwrap_or_else(|| panic!("{pod} not subscribed:\n{status}"));
        assert!(row.contains(id), "{row}");
        assert!(row.contains("SYNCED"), "{row}");
    }
}
