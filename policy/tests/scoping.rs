//! Which policies apply to which workload, PeerAuthentication precedence, RequestAuthentication
//! rules, and loading files and directories.

mod common;

use common::{Req, allowed, compile, labels, set};
use warden_policy::{
    LastGoodConfig, ModeSource, MtlsPolicy, PolicySet, PolicySetOptions, Problem, WorkloadRef,
    load_path,
};

fn applied(set: &PolicySet, ns: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    compile(set, ns, pairs)
        .authz
        .policies()
        .iter()
        .map(|p| p.id().to_string())
        .collect()
}

const SCOPES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-v1, namespace: istio-system}
spec:
  selector: {matchLabels: {version: v1}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: foo}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-only, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin, version: v1}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bar-wide, namespace: bar}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-policy, namespace: foo}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: public}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: foo}
spec:
  targetRef: {kind: Service, name: httpbin}
  rules: [{}]
"#;

#[test]
fn namespace_selector_and_root_namespace() {
    let s = set(SCOPES);
    assert_eq!(
        applied(&s, "foo", &[("app", "httpbin"), ("version", "v1")]),
        [
            "foo/httpbin-only",
            "foo/ns-wide",
            "istio-system/mesh-v1",
            "istio-system/mesh-wide"
        ]
    );
    assert_eq!(
        applied(&s, "foo", &[("app", "httpbin"), ("version", "v2")]),
        ["foo/ns-wide", "istio-system/mesh-wide"]
    );
    assert_eq!(
        applied(&s, "bar", &[]),
        ["bar/bar-wide", "istio-system/mesh-wide"]
    );
    assert_eq!(
        applied(&s, "elsewhere", &[("version", "v1")]),
        ["istio-system/mesh-v1", "istio-system/mesh-wide"]
    );
    // A workload in the root namespace sees the root policies once.
    assert_eq!(applied(&s, "istio-system", &[]), ["istio-system/mesh-wide"]);
    // Gateway deployments carry their Gateway's name.
    assert_eq!(
        applied(
            &s,
            "foo",
            &[("gateway.networking.k8s.io/gateway-name", "public")]
        ),
        ["foo/gw-policy", "foo/ns-wide", "istio-system/mesh-wide"]
    );
}

#[test]
fn root_namespace_is_configurable() {
    let report = warden_policy::LoadReport::from_files(vec![warden_policy::parse_file(
        "x.yaml".as_ref(),
        SCOPES,
    )]);
    let s = PolicySet::new(
        report.resources(),
        &PolicySetOptions {
            root_namespace: "mesh-root".into(),
        },
    );
    let l = labels(&[]);
    let c = s.compile_for(&WorkloadRef {
        namespace: "bar",
        labels: &l,
    });
    let names: Vec<String> = c
        .authz
        .policies()
        .iter()
        .map(|p| p.id().to_string())
        .collect();
    assert_eq!(names, ["bar/bar-wide"]);
}

fn peer(
    yaml: &str,
    ns: &str,
    pairs: &[(&str, &str)],
) -> warden_policy::EffectivePeerAuthentication {
    compile(&set(yaml), ns, pairs).peer_authentication
}

const PA_LEVELS: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: wl, namespace: foo}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}
  portLevelMtls:
    8443: {mode: STRICT}
    "9000": {mode: UNSET}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: unset-ns, namespace: bar}
spec: {mtls: {mode: UNSET}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: root-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}
"#;

#[test]
fn peer_authentication_precedence() {
    // Mesh level only.
    let p = peer(PA_LEVELS, "other", &[("app", "legacy")]);
    assert_eq!(
        p.mode,
        MtlsPolicy::Strict,
        "selector policy in the root namespace is ignored"
    );
    assert!(matches!(p.source, ModeSource::Mesh { .. }));
    // Namespace overrides mesh.
    let p = peer(PA_LEVELS, "foo", &[("app", "web")]);
    assert_eq!(p.mode, MtlsPolicy::Permissive);
    // Workload overrides namespace; port-level overrides; UNSET port inherits the workload mode.
    let p = peer(PA_LEVELS, "foo", &[("app", "legacy")]);
    assert_eq!(p.mode, MtlsPolicy::Disable);
    assert_eq!(p.mode_for_port(8443), MtlsPolicy::Strict);
    assert_eq!(p.mode_for_port(9000), MtlsPolicy::Disable);
    assert_eq!(p.mode_for_port(80), MtlsPolicy::Disable);
    assert!(matches!(
        p.explain_port(8443).1,
        ModeSource::Port { port: 8443, .. }
    ));
    // UNSET at namespace level inherits the mesh mode.
    let p = peer(PA_LEVELS, "bar", &[]);
    assert_eq!(p.mode, MtlsPolicy::Strict);
    assert!(matches!(p.source, ModeSource::Mesh { .. }));
    // Nothing anywhere: PERMISSIVE.
    let p = peer("", "foo", &[]);
    assert_eq!(p.mode, MtlsPolicy::Permissive);
    assert_eq!(p.source, ModeSource::Default);
}

#[test]
fn oldest_peer_authentication_wins_then_name() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a-newer, namespace: foo, creationTimestamp: "2024-05-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: z-older, namespace: foo, creationTimestamp: "2023-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
"#;
    let p = peer(yaml, "foo", &[]);
    assert_eq!(p.mode, MtlsPolicy::Strict);
    let same_time = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: b, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: a, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
"#;
    assert_eq!(peer(same_time, "foo", &[]).mode, MtlsPolicy::Strict);
}

#[test]
fn request_authentication_rules_that_apply() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://mesh.example.com"}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: api, namespace: foo}
spec:
  selector: {matchLabels: {app: api}}
  jwtRules:
  - {issuer: "https://a.example.com"}
  - {issuer: "https://b.example.com", audiences: [api]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: other, namespace: bar}
spec:
  jwtRules: [{issuer: "https://bar.example.com"}]
"#;
    let s = set(yaml);
    let issuers = |ns: &str, pairs: &[(&str, &str)]| -> Vec<String> {
        compile(&s, ns, pairs)
            .jwt_rules
            .iter()
            .map(|r| format!("{}#{}:{}", r.policy(), r.index(), r.rule().issuer))
            .collect()
    };
    assert_eq!(
        issuers("foo", &[("app", "api")]),
        [
            "foo/api#0:https://a.example.com",
            "foo/api#1:https://b.example.com",
            "istio-system/mesh#0:https://mesh.example.com"
        ]
    );
    assert_eq!(
        issuers("foo", &[("app", "web")]),
        ["istio-system/mesh#0:https://mesh.example.com"]
    );
}

#[test]
fn compiling_one_workload_only_sees_its_scopes() {
    // 2,000 namespaces each with an allow-nothing policy: a workload in `ns-7` sees one.
    let mut yaml = String::new();
    for i in 0..2000 {
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns-{i}}}\nspec: {{}}\n---\n"
        ));
    }
    let s = set(&yaml);
    assert_eq!(s.len(), 2000);
    let c = compile(&s, "ns-7", &[]);
    assert_eq!(c.authz.policies().len(), 1);
    assert!(!allowed(&c, &Req::get("/")));
    assert!(allowed(&compile(&s, "unrelated", &[]), &Req::get("/")));
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const GOOD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: foo}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]}\n";
const BAD: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec: {rules: [{from: [{source: {ipBlocks: [\"300.0.0.1\"]}}]}]}\n";

#[test]
fn directory_loading_keeps_good_files_when_one_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a-good.yaml", GOOD);
    write(dir.path(), "b-bad.yml", BAD);
    write(
        dir.path(),
        "nested/c.yaml",
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se}\nspec: {hosts: [example.com]}\n",
    );
    write(dir.path(), "..data/dup.yaml", GOOD);
    write(dir.path(), "notes.txt", "not yaml");
    let report = load_path(dir.path()).unwrap();
    let files: Vec<String> = report
        .files
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(dir.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(files, ["a-good.yaml", "b-bad.yml", "nested/c.yaml"]);
    assert!(report.has_errors());
    let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("b-bad.yml: document 1 (AuthorizationPolicy foo/bad): spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR \"300.0.0.1\""), "{errors:?}");
    let names: Vec<String> = report.resources().map(|r| r.id().to_string()).collect();
    assert_eq!(names, ["foo/good"]);
    assert_eq!(report.others().count(), 1);
    // The good file's policy is in force.
    let s = PolicySet::new(report.resources(), &PolicySetOptions::default());
    assert!(!allowed(&compile(&s, "foo", &[]), &Req::get("/admin")));
}

#[test]
fn duplicates_across_files_reject_the_later_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "1.yaml", GOOD);
    write(dir.path(), "2.yaml", GOOD);
    let report = load_path(dir.path()).unwrap();
    assert!(report.files[0].is_ok());
    assert!(matches!(
        report.files[1].errors[0].problem,
        Problem::Duplicate(_)
    ));
}

#[test]
fn last_good_config_survives_a_bad_edit() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", GOOD);
    let mut cache = LastGoodConfig::default();
    assert!(cache.update(&load_path(dir.path()).unwrap()).is_empty());
    assert_eq!(cache.resources().count(), 1);
    // A broken edit: the previous version stays in force.
    write(
        dir.path(),
        "p.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: good, namespace: foo}\nspec: {action: DENY}\n",
    );
    let kept = cache.update(&load_path(dir.path()).unwrap());
    assert_eq!(kept.len(), 1);
    let s = PolicySet::new(cache.resources(), &PolicySetOptions::default());
    assert!(!allowed(&compile(&s, "foo", &[]), &Req::get("/admin")));
    // The file is removed: so is its policy.
    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    cache.update(&load_path(dir.path()).unwrap());
    assert_eq!(cache.resources().count(), 0);
}

#[test]
fn missing_path_is_an_error() {
    let err = load_path("/nonexistent/warden/policies".as_ref()).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/warden/policies"),
        "{err}"
    );
}

#[test]
fn unreadable_file_is_reported_in_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok.yaml", GOOD);
    // Invalid UTF-8 cannot be read as text.
    std::fs::write(dir.path().join("binary.yaml"), [0xff, 0xfe, 0x00]).unwrap();
    let report = load_path(dir.path()).unwrap();
    let bad = report
        .files
        .iter()
        .find(|f| f.path.ends_with("binary.yaml"))
        .unwrap();
    assert!(matches!(bad.errors[0].problem, Problem::Io(_)));
    assert!(
        bad.errors[0]
            .to_string()
            .ends_with("binary.yaml: cannot read: stream did not contain valid UTF-8"),
        "{}",
        bad.errors[0]
    );
    assert_eq!(report.resources().count(), 1);
}
