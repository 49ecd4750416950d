//! YAML text -> documents -> validated Istio security resources -> compiled policy set ->
//! decisions, traces and a print/parse round trip. Nothing on this path may panic, and
//! printing a valid resource and reading it back must give the same resource.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use warden_policy::{
    ConnectionContext, HttpRequest, NoExtAuthz, PathNormalization, PolicySet, PolicySetOptions,
    Request, Resource, WorkloadRef, load, normalize_path,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = load::parse_file("fuzz.yaml".as_ref(), text);
    for e in &file.errors {
        let _ = e.to_string();
    }
    for w in &file.warnings {
        let _ = w.to_string();
    }
    for r in &file.resources {
        let printed = r.to_yaml();
        let again = load::parse_file("again.yaml".as_ref(), &printed);
        assert!(again.errors.is_empty(), "{:?}\n{printed}", again.errors);
        assert_eq!(again.resources.len(), 1);
        assert_eq!(again.resources[0].metadata(), r.metadata());
        assert_eq!(again.resources[0].to_yaml(), printed);
    }

    let set = PolicySet::new(&file.resources, &PolicySetOptions::default());
    let mut headers = http::HeaderMap::new();
    headers.insert("x-token", http::HeaderValue::from_static("admin"));
    let path = normalize_path(text.lines().next().unwrap_or("/"), PathNormalization::DecodeAndMergeSlashes)
        .unwrap_or_else(|_| "/".to_owned());
    for r in &file.resources {
        let labels: BTreeMap<String, String> = match r {
            Resource::AuthorizationPolicy(p) => p
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default(),
            _ => BTreeMap::new(),
        };
        let meta = r.metadata();
        let compiled = set.compile_for(&WorkloadRef {
            namespace: &meta.namespace,
            labels: &labels,
        });
        let conn = ConnectionContext::new("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 8080)
            .with_peer("spiffe://cluster.local/ns/foo/sa/bar");
        let claims = serde_json::json!({
            "iss": "https://idp.example.com", "sub": "alice", "aud": ["api"], "azp": "web",
            "groups": ["admins"], "scope": "read write"
        });
        for req in [
            Request::tcp(conn),
            Request::http(
                conn,
                HttpRequest {
                    method: "GET",
                    host: "example.com",
                    path: &path,
                    headers: &headers,
                    auth: Some(warden_policy::RequestAuth::new(&claims)),
                },
            ),
        ] {
            let d = compiled.authz.evaluate(&req, &NoExtAuthz);
            let _ = d.to_string();
            let _ = compiled.authz.trace(&req);
        }
        let _ = compiled.peer_authentication.mode_for_port(8080);
    }
});
