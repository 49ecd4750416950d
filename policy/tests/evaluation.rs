//! Evaluation semantics beyond the documentation examples: order, explanations, CUSTOM,
//! dry-run, AUDIT, invalid values and unknown keys, traces.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use common::{Req, compile, decide, decide_with, set, unvalidated};
use warden_policy::{
    AsyncExtAuthz, ExtAuthzDenial, ExtAuthzError, ExtAuthzVerdict, PolicySet, PolicySetOptions,
    Reason, Request, RuleOutcome, Verdict,
};

const DENY_BAD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: ns}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-bad]
      values: ["yes"]
"#;

#[test]
fn deny_explanation_names_policy_rule_and_match() {
    let s = set(DENY_BAD);
    let c = compile(&s, "ns", &[]);
    let (ok, why) = decide(&c, &Req::get("/").header("x-bad", "yes"));
    assert!(!ok);
    assert_eq!(
        why,
        r#"denied by ns/deny-bad rule 0: header x-bad matched "yes""#
    );
    let (ok, why) = decide(&c, &Req::get("/"));
    assert!(ok);
    assert_eq!(why, "allowed: no ALLOW policy applies");
}

#[test]
fn no_allow_matched_lists_the_applied_policies() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: ns}
spec:
  rules: [{to: [{operation: {paths: ["/a"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: ns}
spec:
  rules: [{to: [{operation: {paths: ["/b"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: root, namespace: istio-system}
spec:
  rules: [{to: [{operation: {paths: ["/r"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    assert_eq!(
        decide(&c, &Req::get("/x")),
        (
            false,
            "no ALLOW policy matched (3 applied: istio-system/root, ns/a, ns/b)".to_owned()
        )
    );
    assert_eq!(
        decide(&c, &Req::get("/b")),
        (
            true,
            r#"allowed by ns/b rule 0: path matched "/b""#.to_owned()
        )
    );
}

#[test]
fn deny_wins_over_allow_and_custom_runs_first() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: ns}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: ns}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: ["/headers", "/admin/x"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    let calls = std::cell::Cell::new(0);
    let provider = |name: &str, req: &Request<'_>| {
        calls.set(calls.get() + 1);
        assert_eq!(name, "my-authz");
        let h = req.http.expect("http");
        if h.headers.get("x-ext-authz").is_some_and(|v| v == "allow") {
            Ok(ExtAuthzVerdict::Allow)
        } else {
            Ok(ExtAuthzVerdict::Deny(ExtAuthzDenial::forbidden(
                "denied by ext_authz",
            )))
        }
    };
    // Not matched by the CUSTOM rule: the provider is not asked.
    assert!(decide_with(&c, &Req::get("/ip"), &provider).0);
    assert_eq!(calls.get(), 0);
    // Matched and the provider denies.
    let (ok, why) = decide_with(
        &c,
        &Req::get("/headers").header("x-ext-authz", "deny"),
        &provider,
    );
    assert!(!ok);
    assert!(
        why.starts_with(
            r#"denied by ext-authz provider "my-authz" (403, CUSTOM ns/ext-authz rule 0)"#
        ),
        "{why}"
    );
    assert_eq!(calls.get(), 1);
    // Matched and allowed by the provider: ALLOW/DENY still apply.
    assert!(
        decide_with(
            &c,
            &Req::get("/headers").header("x-ext-authz", "allow"),
            &provider
        )
        .0
    );
    let (ok, why) = decide_with(
        &c,
        &Req::get("/admin/x").header("x-ext-authz", "allow"),
        &provider,
    );
    assert!(!ok);
    assert!(why.starts_with("denied by ns/deny-admin rule 0"), "{why}");
    // A provider error fails closed.
    let failing = |_: &str, _: &Request<'_>| {
        Err(ExtAuthzError::Unavailable {
            provider: "my-authz".into(),
            reason: "connection refused".into(),
        })
    };
    let (ok, why) = decide_with(&c, &Req::get("/headers"), &failing);
    assert!(!ok);
    assert!(why.contains("connection refused"), "{why}");
    // Without any provider configured: fail closed.
    assert!(!decide(&c, &Req::get("/headers")).0);
    // The provider's status is relayed.
    let teapot = |_: &str, _: &Request<'_>| {
        Ok(ExtAuthzVerdict::Deny(ExtAuthzDenial {
            status: 418,
            reason: String::new(),
        }))
    };
    Req::get("/headers").with(|r| {
        let d = c.authz.evaluate(r, &teapot);
        assert_eq!(d.http_status(), 418);
    });
}

#[test]
fn two_custom_providers_for_one_workload_deny_what_they_match() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: one}
  rules: [{to: [{operation: {paths: ["/a"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: two}
  rules: [{to: [{operation: {paths: ["/b"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    let allow_all = |_: &str, _: &Request<'_>| Ok(ExtAuthzVerdict::Allow);
    let (ok, why) = decide_with(&c, &Req::get("/a"), &allow_all);
    assert!(!ok);
    assert!(why.contains(r#"2 providers ("one", "two")"#), "{why}");
    assert!(decide_with(&c, &Req::get("/c"), &allow_all).0);
}

struct AsyncAllow;

#[async_trait::async_trait]
impl AsyncExtAuthz for AsyncAllow {
    async fn check(
        &self,
        provider: &str,
        _: &Request<'_>,
    ) -> Result<ExtAuthzVerdict, ExtAuthzError> {
        if provider == "async" {
            Ok(ExtAuthzVerdict::Allow)
        } else {
            Err(ExtAuthzError::UnknownProvider(provider.into()))
        }
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
fn async_ext_authz() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c, namespace: ns}
spec:
  action: CUSTOM
  provider: {name: async}
  rules: [{}]
"#);
    let c = compile(&s, "ns", &[]);
    Req::get("/").with(|r| {
        let d = block_on(c.authz.evaluate_async(r, &AsyncAllow));
        assert!(d.is_allowed(), "{d}");
        assert_eq!(
            d.custom.map(|m| m.policy().to_string()),
            Some("ns/c".into())
        );
    });
}

#[test]
fn audit_marks_without_changing_the_decision() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-get, namespace: ns}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    Req::get("/").with(|r| {
        let d = c.authz.evaluate(r, &warden_policy::NoExtAuthz);
        assert!(d.is_allowed());
        let audit = d.audit.expect("audited");
        assert_eq!(audit.policy().to_string(), "ns/audit-get");
        assert_eq!(audit.rule_index(), 0);
    });
    Req::http("POST", "/").with(|r| {
        assert!(
            c.authz
                .evaluate(r, &warden_policy::NoExtAuthz)
                .audit
                .is_none()
        );
    });
    // AUDIT ignores HTTP-only parts on TCP: every connection is audited.
    Req::tcp(80).with(|r| {
        assert!(
            c.authz
                .evaluate(r, &warden_policy::NoExtAuthz)
                .audit
                .is_some()
        );
    });
}

#[test]
fn dry_run_reports_what_would_happen() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny
  namespace: ns
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/headers"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-allow
  namespace: ns
  annotations: {istio.io/dry-run: "true"}
spec:
  rules: [{to: [{operation: {paths: ["/ip", "/headers"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    let dry = |req: Req| {
        req.with(|r| {
            let d = c.authz.evaluate(r, &warden_policy::NoExtAuthz);
            assert!(d.is_allowed(), "dry-run policies are never enforced");
            let dr = d.dry_run.expect("dry-run result");
            (
                dr.would_be,
                dr.deny.map(|m| m.policy().name.clone()),
                dr.allow.map(|m| m.policy().name.clone()),
            )
        })
    };
    assert_eq!(
        dry(Req::get("/headers")),
        (
            Verdict::Deny,
            Some("dry-deny".into()),
            Some("dry-allow".into())
        )
    );
    assert_eq!(
        dry(Req::get("/ip")),
        (Verdict::Allow, None, Some("dry-allow".into()))
    );
    assert_eq!(dry(Req::get("/other")), (Verdict::Deny, None, None));
}

#[test]
fn invalid_values_follow_the_allow_deny_split() {
    // Unvalidated policies: what Istio's proxy configuration generator does with them.
    let resources = vec![
        unvalidated(
            "ns",
            "allow-bad-cidr",
            r#"rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33", "1.2.3.4"]}}]}, {to: [{operation: {paths: ["/ok"]}}]}]"#,
        ),
        unvalidated(
            "ns",
            "deny-bad-port",
            r#"{action: DENY, rules: [{to: [{operation: {ports: ["http"], paths: ["/admin"]}}]}]}"#,
        ),
    ];
    let s = PolicySet::new(&resources, &PolicySetOptions::default());
    let c = compile(&s, "ns", &[]);
    // ALLOW rule 0 is dropped (the valid 1.2.3.4 does not rescue it); rule 1 still works.
    assert!(!decide(&c, &Req::get("/").source_ip("1.2.3.4")).0);
    assert!(decide(&c, &Req::get("/ok").source_ip("1.2.3.4")).0);
    // DENY ignores the bad port: the rule denies /admin on every port.
    let (ok, why) = decide(&c, &Req::get("/admin").port(1234));
    assert!(!ok);
    assert!(why.contains("ignored"), "{why}");
    let dropped = c
        .authz
        .policies()
        .iter()
        .find(|p| p.id().name == "allow-bad-cidr")
        .unwrap()
        .dropped_rules()
        .iter()
        .filter(|d| d.rule == 0)
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(dropped.len(), 2, "dropped for HTTP and TCP: {dropped:?}");
    assert!(dropped[0].reason.contains("10.0.0.0/33"), "{dropped:?}");
}

#[test]
fn unknown_condition_key_drops_the_rule_for_every_action() {
    let resources = vec![
        unvalidated(
            "ns",
            "deny-unknown",
            r#"{action: DENY, rules: [{when: [{key: "request.regex.path", values: ["x"]}]}, {to: [{operation: {paths: ["/deny"]}}]}]}"#,
        ),
        unvalidated(
            "ns",
            "allow-unknown",
            r#"{rules: [{when: [{key: "source.user", values: ["x"]}]}, {to: [{operation: {paths: ["/allow", "/deny"]}}]}]}"#,
        ),
    ];
    let s = PolicySet::new(&resources, &PolicySetOptions::default());
    let c = compile(&s, "ns", &[]);
    // The DENY rule with the unknown key is dropped (it would otherwise deny everything).
    assert!(decide(&c, &Req::get("/allow")).0);
    assert!(!decide(&c, &Req::get("/deny")).0);
    // The ALLOW rule with the unknown key is dropped (it would otherwise allow everything).
    assert!(!decide(&c, &Req::get("/other")).0);
}

#[test]
fn experimental_keys_drop_allow_rules_and_widen_deny_rules() {
    let resources = vec![unvalidated(
        "ns",
        "deny-mysql",
        r#"{action: DENY, rules: [{when: [{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["[update]"]}], to: [{operation: {ports: ["3306"]}}]}]}"#,
    )];
    let s = PolicySet::new(&resources, &PolicySetOptions::default());
    let c = compile(&s, "ns", &[]);
    assert!(!decide(&c, &Req::tcp(3306)).0);
    assert!(decide(&c, &Req::tcp(3307)).0);
}

#[test]
fn trace_explains_every_rule() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewers, namespace: ns}
spec:
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/ns/sa/frontend"]}
  - to:
    - operation: {methods: ["GET"], paths: ["/public*"]}
"#);
    let c = compile(&s, "ns", &[]);
    let trace = Req::get("/private")
        .peer("cluster.local/ns/ns/sa/backend")
        .with(|r| c.authz.trace(r));
    assert_eq!(trace.len(), 1);
    let rules = &trace[0].rules;
    assert_eq!(
        rules[0].outcome,
        RuleOutcome::NotMatched {
            why: r#"from[0].principals: "spiffe://cluster.local/ns/ns/sa/backend" not in ["cluster.local/ns/ns/sa/frontend"]"#
                .into()
        }
    );
    assert_eq!(
        rules[1].outcome,
        RuleOutcome::NotMatched {
            why: r#"to[0].paths: "/private" not in ["/public*"]"#.into()
        }
    );
    let trace = Req::tcp(80).with(|r| c.authz.trace(r));
    assert!(
        matches!(&trace[0].rules[1].outcome, RuleOutcome::Dropped { why } if why.contains("HTTP only"))
    );
    let trace = Req::get("/public/x").with(|r| c.authz.trace(r));
    assert_eq!(trace[0].matched_rule(), Some(1));
    assert_eq!(
        trace[0].rules[1].outcome,
        RuleOutcome::Matched {
            why: vec![
                r#"to[0].methods: "GET" matched "GET""#.into(),
                r#"to[0].paths: "/public/x" matched "/public*""#.into()
            ]
        }
    );
}

#[test]
fn decision_reason_variants_are_matchable() {
    let s = set(DENY_BAD);
    let c = compile(&s, "ns", &[]);
    Req::get("/").header("x-bad", "yes").with(|r| {
        let d = c.authz.evaluate(r, &warden_policy::NoExtAuthz);
        match d.reason {
            Reason::Denied(m) => {
                assert_eq!(m.policy().to_string(), "ns/deny-bad");
                assert_eq!(m.rule_index(), 0);
                assert_eq!(m.action(), warden_policy::Action::Deny);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(d.http_status(), 403);
    });
}

#[test]
fn peer_principal_may_omit_the_scheme() {
    let s = set(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: ns}
spec:
  rules: [{from: [{source: {principals: ["cluster.local/ns/a/sa/b"], namespaces: ["a"]}}]}]
"#);
    let c = compile(&s, "ns", &[]);
    let mut req = Req::get("/");
    req.peer = Some("cluster.local/ns/a/sa/b".into());
    assert!(decide(&c, &req).0);
    req.peer = Some("spiffe://cluster.local/ns/a/sa/b".into());
    assert!(decide(&c, &req).0);
    req.peer = Some("https://cluster.local/ns/a/sa/b".into());
    assert!(!decide(&c, &req).0);
}
