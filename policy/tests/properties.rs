//! Property tests over random policies and requests drawn from a small vocabulary (so that
//! matches are frequent).

mod common;

use std::collections::BTreeMap;

use common::Req;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;
use warden_policy::document::ObjectMeta;
use warden_policy::jwt_rule::{ClaimToHeader, JwtHeader, JwtRule};
use warden_policy::resource::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition, MtlsMode, MutualTls,
    Operation, PeerAuthentication, PeerAuthenticationSpec, PortKey, RequestAuthentication,
    RequestAuthenticationSpec, Rule, RuleFrom, RuleTo, Source, WorkloadSelector,
};
use warden_policy::{Location, PolicySet, PolicySetOptions, Reason, Resource};

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/a/sa/x",
    "cluster.local/ns/b/sa/y",
    "*",
    "cluster.local/ns/a/*",
    "*/sa/y",
];
const NAMESPACES: &[&str] = &["a", "b", "*"];
const REQUEST_PRINCIPALS: &[&str] = &["https://idp/u1", "https://idp/*", "*"];
const PATHS: &[&str] = &["/", "/admin", "/admin*", "*.png", "/api/*", "/api/{*}/x"];
const METHODS: &[&str] = &["GET", "POST", "*"];
const PORTS: &[&str] = &["80", "8080", "9000", "9000-9100"];
const IPS: &[&str] = &["10.0.0.0/8", "10.0.0.1", "192.168.0.0/16", "2001:db8::/32"];
const HOSTS: &[&str] = &["a.com", "*.b.com", "*"];
const HEADER_VALUES: &[&str] = &["1", "2", "*", "1*"];

fn some_of(list: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(select(list).prop_map(str::to_owned), 0..3)
}

prop_compose! {
    fn source()(
        principals in some_of(PRINCIPALS),
        not_principals in some_of(PRINCIPALS),
        namespaces in some_of(NAMESPACES),
        request_principals in some_of(REQUEST_PRINCIPALS),
        not_request_principals in some_of(REQUEST_PRINCIPALS),
        ip_blocks in some_of(IPS),
        not_ip_blocks in some_of(IPS),
        remote_ip_blocks in some_of(IPS),
    ) -> Source {
        let mut s = Source {
            principals, not_principals, namespaces, request_principals, not_request_principals,
            ip_blocks, not_ip_blocks, remote_ip_blocks,
            ..Source::default()
        };
        if s.is_empty() {
            s.ip_blocks.push("10.0.0.0/8".into());
        }
        s
    }
}

prop_compose! {
    fn operation()(
        hosts in some_of(HOSTS),
        ports in some_of(PORTS),
        not_ports in some_of(PORTS),
        methods in some_of(METHODS),
        paths in some_of(PATHS),
        not_paths in some_of(PATHS),
    ) -> Operation {
        let mut o = Operation { hosts, ports, not_ports, methods, paths, not_paths, ..Operation::default() };
        if o.is_empty() {
            o.paths.push("/".into());
        }
        o
    }
}

fn condition() -> impl Strategy<Value = Condition> {
    let cond =
        |key: &'static str, values: &'static [&'static str], not: &'static [&'static str]| {
            (some_of(values), some_of(not)).prop_map(move |(mut values_, not_values)| {
                if values_.is_empty() && not_values.is_empty() {
                    values_.push(values[0].to_owned());
                }
                Condition {
                    key: key.into(),
                    values: values_,
                    not_values,
                }
            })
        };
    prop_oneof![
        cond("request.headers[x-a]", HEADER_VALUES, HEADER_VALUES),
        cond("destination.ip", IPS, IPS),
        cond("destination.port", PORTS, PORTS),
        cond("source.namespace", NAMESPACES, NAMESPACES),
        cond("request.auth.claims[groups]", &["g1", "g2", "g*"], &["g1"]),
        cond("connection.sni", &["sni.internal", "*.internal"], &["x"]),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(source(), 1..3)),
        prop::option::of(prop::collection::vec(operation(), 1..3)),
        prop::collection::vec(condition(), 0..2),
    )
        .prop_map(|(from, to, when)| Rule {
            from: from.map(|v| {
                v.into_iter()
                    .map(|s| RuleFrom { source: Some(s) })
                    .collect()
            }),
            to: to.map(|v| {
                v.into_iter()
                    .map(|o| RuleTo { operation: Some(o) })
                    .collect()
            }),
            when,
        })
}

fn meta(name: String, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name,
        namespace: namespace.into(),
        ..ObjectMeta::default()
    }
}

fn policy_with(action: Action) -> impl Strategy<Value = AuthorizationPolicySpec> {
    prop::collection::vec(rule(), 0..3).prop_map(move |rules| AuthorizationPolicySpec {
        rules: if action == Action::Allow && rules.is_empty() {
            None
        } else {
            Some(rules)
        },
        action,
        ..AuthorizationPolicySpec::default()
    })
}

fn authz(name: String, spec: AuthorizationPolicySpec) -> Resource {
    Resource::AuthorizationPolicy(AuthorizationPolicy {
        source: Location::new(std::path::Path::new("prop"), 1),
        api_version: "security.istio.io/v1".into(),
        metadata: meta(name, "ns"),
        spec,
    })
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::option::of(select(
            &[
                "cluster.local/ns/a/sa/x",
                "cluster.local/ns/b/sa/y",
                "td/ns/c/sa/y",
            ][..],
        )),
        select(
            &[
                "10.0.0.1",
                "10.1.2.3",
                "192.168.1.1",
                "172.16.0.1",
                "2001:db8::5",
            ][..],
        ),
        select(&[80u16, 8080, 9000, 9050, 7000][..]),
        prop::option::of((
            select(&["GET", "POST", "DELETE"][..]),
            select(
                &[
                    "/",
                    "/admin",
                    "/admin/x",
                    "/logo.png",
                    "/api/v1",
                    "/api/v1/x",
                    "/other",
                ][..],
            ),
            select(&["a.com", "x.b.com", "c.com"][..]),
            prop::option::of(select(&["1", "2", "12"][..])),
            prop::option::of((select(&["u1", "u2"][..]), 0..3usize)),
        )),
        prop::option::of(select(&["sni.internal", "db.internal", "public"][..])),
    )
        .prop_map(|(peer, ip, port, http, sni)| {
            let mut r = match http {
                None => Req::tcp(port),
                Some((method, path, host, header, jwt)) => {
                    let mut r = Req::http(method, path).host(host).port(port);
                    if let Some(h) = header {
                        r = r.header("x-a", h);
                    }
                    if let Some((sub, g)) = jwt {
                        let groups = [json!(["g1"]), json!("g2"), json!(["g3", "g1"])][g].clone();
                        r = r.claims(json!({"iss": "https://idp", "sub": sub, "groups": groups}));
                    }
                    r
                }
            };
            if let Some(p) = peer {
                r = r.peer(p);
            }
            if let Some(s) = sni {
                r = r.sni(s);
            }
            r.source_ip(ip).destination_ip("10.0.0.2")
        })
}

fn allowed_by(resources: &[Resource], req: &Req) -> (bool, bool) {
    let set = PolicySet::new(resources, &PolicySetOptions::default());
    let compiled = common::compile(&set, "ns", &[]);
    req.with(|r| {
        let d = compiled.authz.evaluate(r, &warden_policy::NoExtAuthz);
        (d.is_allowed(), matches!(d.reason, Reason::Denied(_)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// If a DENY policy alone denies a request, the request is denied by a DENY policy whatever
    /// other ALLOW, DENY and AUDIT policies apply.
    #[test]
    fn a_matching_deny_always_wins(
        denies in prop::collection::vec(policy_with(Action::Deny), 1..3),
        allows in prop::collection::vec(policy_with(Action::Allow), 0..3),
        audits in prop::collection::vec(policy_with(Action::Audit), 0..2),
        req in request(),
    ) {
        let deny_resources: Vec<Resource> = denies
            .into_iter()
            .enumerate()
            .map(|(i, s)| authz(format!("deny-{i}"), s))
            .collect();
        let mut all = deny_resources.clone();
        all.extend(allows.into_iter().enumerate().map(|(i, s)| authz(format!("allow-{i}"), s)));
        all.extend(audits.into_iter().enumerate().map(|(i, s)| authz(format!("audit-{i}"), s)));
        let some_deny_matches = deny_resources
            .iter()
            .any(|d| !allowed_by(std::slice::from_ref(d), &req).0);
        let (allowed, by_deny) = allowed_by(&all, &req);
        if some_deny_matches {
            prop_assert!(!allowed && by_deny);
        } else {
            prop_assert!(!by_deny);
        }
    }

    /// Adding an ALLOW policy `A` to a set `S` never allows a request that `A` does not match:
    /// for every request `r` not matched by `A`, allowed(S + A, r) implies allowed(S, r). When `S`
    /// already has ALLOW policies, the verdict for such `r` does not change at all; when it has
    /// none (workload-wide allow), such `r` become denied.
    #[test]
    fn adding_an_allow_policy_never_allows_more_unmatched_requests(
        existing in prop::collection::vec(
            prop_oneof![policy_with(Action::Allow), policy_with(Action::Deny), policy_with(Action::Audit)],
            0..4,
        ),
        added in policy_with(Action::Allow),
        req in request(),
    ) {
        let before: Vec<Resource> = existing
            .into_iter()
            .enumerate()
            .map(|(i, s)| authz(format!("p-{i}"), s))
            .collect();
        let added = authz("added".into(), added);
        let a_matches = allowed_by(std::slice::from_ref(&added), &req).0;
        prop_assume!(!a_matches);
        let mut after = before.clone();
        after.push(added);
        let (allowed_before, _) = allowed_by(&before, &req);
        let (allowed_after, _) = allowed_by(&after, &req);
        prop_assert!(!allowed_after || allowed_before);
        let had_allow = before.iter().any(|r| matches!(r, Resource::AuthorizationPolicy(p) if p.spec.action == Action::Allow));
        if had_allow {
            prop_assert_eq!(allowed_after, allowed_before);
        } else {
            prop_assert!(!allowed_after);
        }
    }

    /// Printing a resource and parsing it back gives the same resource, and printing that gives
    /// the same text.
    #[test]
    fn parse_print_parse_is_stable(resource in any_resource()) {
        let text = resource.to_yaml();
        let file = warden_policy::parse_file("roundtrip.yaml".as_ref(), &text);
        prop_assert!(file.errors.is_empty(), "{:#?}\n{}", file.errors, text);
        prop_assert_eq!(file.resources.len(), 1);
        let back = &file.resources[0];
        prop_assert_eq!(back.metadata(), resource.metadata());
        match (&resource, back) {
            (Resource::AuthorizationPolicy(a), Resource::AuthorizationPolicy(b)) => prop_assert_eq!(&a.spec, &b.spec),
            (Resource::PeerAuthentication(a), Resource::PeerAuthentication(b)) => prop_assert_eq!(&a.spec, &b.spec),
            (Resource::RequestAuthentication(a), Resource::RequestAuthentication(b)) => prop_assert_eq!(&a.spec, &b.spec),
            _ => prop_assert!(false, "kind changed"),
        }
        prop_assert_eq!(back.to_yaml(), text);
    }
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        select(&["app", "version", "team.example.com/owner"][..]).prop_map(str::to_owned),
        select(&["web", "v1", "a-b.c_d"][..]).prop_map(str::to_owned),
        0..3,
    )
}

fn any_metadata() -> impl Strategy<Value = ObjectMeta> {
    (
        select(&["p1", "allow-all", "x.y"][..]),
        select(&["default", "foo", "istio-system"][..]),
        labels(),
        prop::option::of(select(&[1_600_000_000i64, 1_700_000_123][..])),
    )
        .prop_map(|(name, ns, labels, ts)| ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            labels,
            annotations: BTreeMap::from([("owner".to_owned(), "team: a\nmulti-line".to_owned())]),
            creation_timestamp: ts.map(|t| time::OffsetDateTime::from_unix_timestamp(t).unwrap()),
        })
}

fn selector() -> impl Strategy<Value = Option<WorkloadSelector>> {
    prop::option::of(
        labels()
            .prop_filter("labels", |l| !l.is_empty())
            .prop_map(|match_labels| WorkloadSelector { match_labels }),
    )
}

fn any_resource() -> impl Strategy<Value = Resource> {
    let api = select(&["security.istio.io/v1", "security.istio.io/v1beta1"][..]);
    let mode = select(
        &[
            MtlsMode::Unset,
            MtlsMode::Disable,
            MtlsMode::Permissive,
            MtlsMode::Strict,
        ][..],
    );
    prop_oneof![
        (
            any_metadata(),
            api.clone(),
            selector(),
            prop_oneof![Just(Action::Allow), Just(Action::Deny), Just(Action::Audit)],
            prop::collection::vec(rule(), 0..3)
        )
            .prop_map(|(metadata, api, selector, action, rules)| {
                Resource::AuthorizationPolicy(AuthorizationPolicy {
                    source: Location::new(std::path::Path::new("prop"), 1),
                    api_version: api.into(),
                    metadata,
                    spec: AuthorizationPolicySpec {
                        selector,
                        rules: if action == Action::Allow && rules.is_empty() {
                            None
                        } else {
                            Some(rules)
                        },
                        action,
                        ..AuthorizationPolicySpec::default()
                    },
                })
            }),
        (
            any_metadata(),
            api.clone(),
            selector(),
            prop::option::of(mode.clone()),
            prop::collection::btree_map(select(&[80u64, 8080, 9000][..]), mode, 0..3)
        )
            .prop_map(|(metadata, api, selector, mtls, ports)| {
                let has_selector = selector.is_some();
                Resource::PeerAuthentication(PeerAuthentication {
                    source: Location::new(std::path::Path::new("prop"), 1),
                    api_version: api.into(),
                    metadata,
                    spec: PeerAuthenticationSpec {
                        selector,
                        mtls: mtls.map(|mode| MutualTls { mode }),
                        port_level_mtls: (has_selector && !ports.is_empty()).then(|| {
                            ports
                                .into_iter()
                                .map(|(p, mode)| (PortKey(p), MutualTls { mode }))
                                .collect()
                        }),
                    },
                })
            }),
        (
            any_metadata(),
            api,
            selector(),
            prop::collection::vec(
                (
                    select(&["https://idp", "issuer@x"][..]),
                    some_of(&["api", "web"]),
                    any::<bool>()
                ),
                0..3
            )
        )
            .prop_map(|(metadata, api, selector, rules)| {
                Resource::RequestAuthentication(RequestAuthentication {
                    source: Location::new(std::path::Path::new("prop"), 1),
                    api_version: api.into(),
                    metadata,
                    spec: RequestAuthenticationSpec {
                        selector,
                        jwt_rules: rules
                            .into_iter()
                            .map(|(issuer, audiences, forward)| JwtRule {
                                issuer: issuer.into(),
                                audiences,
                                jwks_uri: Some("https://idp/jwks.json".into()),
                                from_headers: vec![JwtHeader {
                                    name: "authorization".into(),
                                    prefix: "Bearer ".into(),
                                }],
                                output_claim_to_headers: vec![ClaimToHeader {
                                    header: "x-sub".into(),
                                    claim: "sub".into(),
                                }],
                                forward_original_token: forward,
                                timeout: forward.then(|| "5s".into()),
                                ..JwtRule::default()
                            })
                            .collect(),
                        ..RequestAuthenticationSpec::default()
                    },
                })
            }),
    ]
}
