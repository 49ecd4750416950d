//! One test per validation error (and warning): each asserts the error's field path and kind.

use warden_policy::{Advice, ConfigError, ConfigWarning, Problem, load};

fn check(yaml: &str) -> (Vec<ConfigError>, Vec<ConfigWarning>) {
    let f = load::parse_file("policies/a.yaml".as_ref(), yaml);
    (f.errors, f.warnings)
}

/// Exactly one error; returns it.
fn error(yaml: &str) -> ConfigError {
    let (errors, _) = check(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors.into_iter().next().unwrap()
}

fn warning(yaml: &str) -> ConfigWarning {
    let (errors, warnings) = check(yaml);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(warnings.len(), 1, "expected one warning, got {warnings:#?}");
    warnings.into_iter().next().unwrap()
}

fn kind_doc(kind: &str, meta: &str, spec: &str) -> String {
    let spec = spec
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!("apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {meta}\nspec:\n{spec}\n")
}

/// An AuthorizationPolicy `foo/ap` with the given spec (YAML, unindented).
fn ap(spec: &str) -> String {
    kind_doc("AuthorizationPolicy", "{name: ap, namespace: foo}", spec)
}

fn pa(spec: &str) -> String {
    kind_doc("PeerAuthentication", "{name: pa, namespace: foo}", spec)
}

fn ra(spec: &str) -> String {
    kind_doc("RequestAuthentication", "{name: ra, namespace: foo}", spec)
}

macro_rules! assert_problem {
    ($e:expr, $field:expr, $pat:pat) => {{
        let e = $e;
        assert_eq!(e.field, $field, "{e}");
        assert!(matches!(e.problem, $pat), "{e}");
    }};
}

#[test]
fn message_names_file_document_resource_and_field() {
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\n{}",
        kind_doc(
            "AuthorizationPolicy",
            "{name: deny-bad, namespace: foo}",
            "action: DENY\nrules:\n- from:\n  - source: {principals: [a]}\n  - source: {ipBlocks: [\"10.0.0.0/33\"]}"
        )
    );
    let e = error(&yaml);
    assert_eq!(
        e.to_string(),
        r#"policies/a.yaml: document 2 (AuthorizationPolicy foo/deny-bad): spec.rules[0].from[1].source.ipBlocks[0]: invalid CIDR "10.0.0.0/33""#
    );
    assert_eq!(e.location.document, 2);
    assert_eq!(e.resource.unwrap().to_string(), "foo/deny-bad");
}

#[test]
fn yaml_syntax_error() {
    let e = error("apiVersion: [\n");
    assert_problem!(e, "", Problem::Yaml(_));
}

#[test]
fn document_not_a_mapping() {
    assert_problem!(error("- a\n- b\n"), "", Problem::NotAMapping);
}

#[test]
fn missing_kind() {
    assert_problem!(
        error("apiVersion: v1\nmetadata: {name: x}\n"),
        "kind",
        Problem::Missing
    );
}

#[test]
fn missing_name() {
    let e = error(&kind_doc("AuthorizationPolicy", "{namespace: foo}", "{}"));
    assert_problem!(e, "metadata.name", Problem::Missing);
}

#[test]
fn invalid_name() {
    let e = error(&kind_doc("AuthorizationPolicy", "{name: Bad_Name}", "{}"));
    assert_problem!(e, "metadata.name", Problem::InvalidName(_));
}

#[test]
fn invalid_namespace() {
    let e = error(&kind_doc(
        "AuthorizationPolicy",
        "{name: a, namespace: a.b}",
        "{}",
    ));
    assert_problem!(e, "metadata.namespace", Problem::InvalidName(_));
}

#[test]
fn invalid_creation_timestamp() {
    let e = error(&kind_doc(
        "PeerAuthentication",
        "{name: a, creationTimestamp: yesterday}",
        "{}",
    ));
    assert_problem!(
        e,
        "metadata.creationTimestamp",
        Problem::InvalidTimestamp(_)
    );
}

#[test]
fn unsupported_api_version() {
    let e =
        error("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: a}\n");
    assert_problem!(e, "apiVersion", Problem::UnsupportedApiVersion(_));
}

#[test]
fn other_groups_and_kinds_are_passed_on() {
    let f = load::parse_file(
        "x.yaml".as_ref(),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [x]}\n---\napiVersion: other.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\n",
    );
    assert!(f.errors.is_empty());
    assert!(f.resources.is_empty());
    assert_eq!(f.others.len(), 2);
}

#[test]
fn unknown_spec_field() {
    let e = error(&ap("rules:\n- from:\n  - source: {principal: [a]}"));
    assert!(e.field.starts_with("spec.rules[0].from[0].source"), "{e}");
    assert!(
        matches!(&e.problem, Problem::Schema(m) if m.contains("unknown field `principal`")),
        "{e}"
    );
}

#[test]
fn unknown_top_level_field() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspex: {}\n",
    );
    assert_problem!(e, "spex", Problem::Schema(_));
}

#[test]
fn unknown_metadata_field() {
    let e = error(&kind_doc(
        "AuthorizationPolicy",
        "{name: a, namspace: foo}",
        "{}",
    ));
    assert_problem!(e, "metadata.namspace", Problem::Schema(_));
}

#[test]
fn kubernetes_metadata_is_accepted() {
    let (errors, _) = check(&kind_doc(
        "AuthorizationPolicy",
        "{name: a, uid: x, resourceVersion: \"1\", generation: 2, managedFields: []}",
        "{}",
    ));
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn unknown_action() {
    let e = error(&ap("action: PERMIT"));
    assert!(e.field.starts_with("spec.action"), "{e}");
    assert!(
        matches!(&e.problem, Problem::Schema(m) if m.contains("PERMIT")),
        "{e}"
    );
}

#[test]
fn wrong_type() {
    let e = error(&ap("rules:\n- to:\n  - operation: {ports: [8080]}"));
    assert!(
        e.field.starts_with("spec.rules[0].to[0].operation.ports"),
        "{e}"
    );
    assert!(matches!(e.problem, Problem::Schema(_)));
}

#[test]
fn duplicate_resource() {
    let yaml = format!("{}---\n{}", ap("{}"), ap("{}"));
    let report = load::LoadReport::from_files(vec![load::parse_file("d.yaml".as_ref(), &yaml)]);
    let errors: Vec<_> = report.errors().collect();
    assert_eq!(errors.len(), 1);
    assert_problem!(errors[0].clone(), "metadata.name", Problem::Duplicate(_));
    assert_eq!(errors[0].location.document, 2);
}

#[test]
fn empty_value() {
    let e = error(&ap("rules:\n- to:\n  - operation: {paths: [\"/a\", \"\"]}"));
    assert_problem!(
        e,
        "spec.rules[0].to[0].operation.paths[1]",
        Problem::EmptyValue
    );
}

#[test]
fn invalid_cidr() {
    let e = error(&ap(
        "rules:\n- from:\n  - source: {notRemoteIpBlocks: [\"1.2.3\"]}",
    ));
    assert_problem!(
        e,
        "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
        Problem::InvalidCidr(_)
    );
}

#[test]
fn invalid_cidr_in_condition() {
    let e = error(&ap(
        "rules:\n- when:\n  - key: destination.ip\n    notValues: [\"::1/129\"]",
    ));
    assert_problem!(
        e,
        "spec.rules[0].when[0].notValues[0]",
        Problem::InvalidCidr(_)
    );
}

#[test]
fn invalid_port() {
    let e = error(&ap("rules:\n- to:\n  - operation: {ports: [\"65536\"]}"));
    assert_problem!(
        e,
        "spec.rules[0].to[0].operation.ports[0]",
        Problem::InvalidPort(_)
    );
}

#[test]
fn invalid_port_in_condition() {
    let e = error(&ap(
        "rules:\n- when:\n  - key: destination.port\n    values: [http]",
    ));
    assert_problem!(
        e,
        "spec.rules[0].when[0].values[0]",
        Problem::InvalidPort(_)
    );
}

#[test]
fn invalid_port_range() {
    let e = error(&ap(
        "rules:\n- to:\n  - operation: {notPorts: [\"9000-8000\"]}",
    ));
    assert_problem!(
        e,
        "spec.rules[0].to[0].operation.notPorts[0]",
        Problem::InvalidPortRange(_)
    );
}

#[test]
fn invalid_path_template() {
    let e = error(&ap(
        "rules:\n- to:\n  - operation: {paths: [\"/{**}/x/{*}\"]}",
    ));
    assert_problem!(
        e,
        "spec.rules[0].to[0].operation.paths[0]",
        Problem::InvalidPathTemplate(_)
    );
}

#[test]
fn provider_without_custom() {
    let e = error(&ap("action: DENY\nprovider: {name: x}\nrules: [{}]"));
    assert_problem!(e, "spec.provider", Problem::ProviderWithoutCustom(_));
}

#[test]
fn custom_without_provider() {
    let e = error(&ap("action: CUSTOM\nrules: [{}]"));
    assert_problem!(e, "spec.provider.name", Problem::CustomWithoutProvider);
}

#[test]
fn custom_without_rules() {
    let e = error(&ap("action: CUSTOM\nprovider: {name: x}"));
    assert_problem!(e, "spec.rules", Problem::CustomWithoutRules);
}

#[test]
fn field_not_supported_with_custom() {
    let e = error(&ap(
        "action: CUSTOM\nprovider: {name: x}\nrules:\n- from:\n  - source: {principals: [a]}",
    ));
    assert_problem!(
        e,
        "spec.rules[0].from[0].source.principals",
        Problem::NotSupportedWithCustom(_)
    );
}

#[test]
fn condition_not_supported_with_custom() {
    let e = error(&ap(
        "action: CUSTOM\nprovider: {name: x}\nrules:\n- when:\n  - key: request.auth.claims[iss]\n    values: [a]",
    ));
    assert_problem!(
        e,
        "spec.rules[0].when[0].key",
        Problem::NotSupportedWithCustom(_)
    );
}

#[test]
fn deny_without_rules() {
    let e = error(&ap("action: DENY"));
    assert_problem!(e, "spec.rules", Problem::DenyWithoutRules);
}

#[test]
fn empty_from() {
    assert_problem!(
        error(&ap("rules:\n- from: []")),
        "spec.rules[0].from",
        Problem::EmptyFrom
    );
}

#[test]
fn empty_to() {
    assert_problem!(
        error(&ap("rules:\n- to: []")),
        "spec.rules[0].to",
        Problem::EmptyTo
    );
}

#[test]
fn missing_source() {
    assert_problem!(
        error(&ap("rules:\n- from:\n  - {}")),
        "spec.rules[0].from[0]",
        Problem::MissingSource
    );
}

#[test]
fn empty_source() {
    assert_problem!(
        error(&ap("rules:\n- from:\n  - source: {}")),
        "spec.rules[0].from[0].source",
        Problem::EmptySource
    );
}

#[test]
fn missing_operation() {
    assert_problem!(
        error(&ap("rules:\n- to:\n  - {}")),
        "spec.rules[0].to[0]",
        Problem::MissingOperation
    );
}

#[test]
fn empty_operation() {
    assert_problem!(
        error(&ap("rules:\n- to:\n  - operation: {}")),
        "spec.rules[0].to[0].operation",
        Problem::EmptyOperation
    );
}

#[test]
fn empty_condition_key() {
    assert_problem!(
        error(&ap("rules:\n- when:\n  - values: [a]")),
        "spec.rules[0].when[0].key",
        Problem::EmptyConditionKey
    );
}

#[test]
fn condition_without_values() {
    assert_problem!(
        error(&ap("rules:\n- when:\n  - key: source.ip")),
        "spec.rules[0].when[0]",
        Problem::ConditionWithoutValues(_)
    );
}

#[test]
fn unknown_condition_key() {
    assert_problem!(
        error(&ap(
            "rules:\n- when:\n  - key: source.user\n    values: [a]"
        )),
        "spec.rules[0].when[0].key",
        Problem::UnknownConditionKey(_)
    );
}

#[test]
fn malformed_condition_key() {
    assert_problem!(
        error(&ap(
            "rules:\n- when:\n  - key: request.headers\n    values: [a]"
        )),
        "spec.rules[0].when[0].key",
        Problem::MalformedConditionKey(..)
    );
}

#[test]
fn unsupported_condition_key() {
    assert_problem!(
        error(&ap(
            "rules:\n- when:\n  - key: destination.labels[app]\n    values: [a]"
        )),
        "spec.rules[0].when[0].key",
        Problem::UnsupportedConditionKey(..)
    );
}

#[test]
fn service_accounts_with_principals() {
    assert_problem!(
        error(&ap(
            "rules:\n- from:\n  - source: {serviceAccounts: [a], namespaces: [b]}"
        )),
        "spec.rules[0].from[0].source",
        Problem::ServiceAccountsWithPrincipals
    );
}

#[test]
fn too_many_service_accounts() {
    let list: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
    let e = error(&ap(&format!(
        "rules:\n- from:\n  - source: {{serviceAccounts: [{}]}}",
        list.join(", ")
    )));
    assert_problem!(
        e,
        "spec.rules[0].from[0].source.serviceAccounts",
        Problem::TooManyServiceAccounts(17)
    );
}

#[test]
fn invalid_service_account() {
    assert_problem!(
        error(&ap(
            "rules:\n- from:\n  - source: {notServiceAccounts: [\"ns/sa/x\"]}"
        )),
        "spec.rules[0].from[0].source.notServiceAccounts[0]",
        Problem::InvalidServiceAccount(_)
    );
}

#[test]
fn selector_and_target_ref() {
    assert_problem!(
        error(&ap(
            "selector: {matchLabels: {app: a}}\ntargetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}"
        )),
        "spec",
        Problem::SelectorAndTargetRef
    );
}

#[test]
fn empty_selector_key() {
    assert_problem!(
        error(&ap("selector: {matchLabels: {\"\": a}}")),
        "spec.selector.matchLabels[]",
        Problem::EmptySelectorKey
    );
}

#[test]
fn wildcard_in_selector() {
    assert_problem!(
        error(&ap("selector: {matchLabels: {app: \"web-*\"}}")),
        "spec.selector.matchLabels[app]",
        Problem::WildcardInSelector(_)
    );
}

#[test]
fn invalid_label() {
    assert_problem!(
        error(&ap("selector: {matchLabels: {app: \"has space\"}}")),
        "spec.selector.matchLabels[app]",
        Problem::InvalidLabel(..)
    );
}

#[test]
fn target_ref_without_name() {
    assert_problem!(
        error(&ap(
            "targetRef: {group: gateway.networking.k8s.io, kind: Gateway}"
        )),
        "spec.targetRef.name",
        Problem::TargetRefWithoutName
    );
}

#[test]
fn target_ref_namespace() {
    assert_problem!(
        error(&ap(
            "targetRefs:\n- {group: gateway.networking.k8s.io, kind: Gateway, name: gw, namespace: other}"
        )),
        "spec.targetRefs[0].namespace",
        Problem::TargetRefNamespace
    );
}

#[test]
fn target_ref_kind() {
    assert_problem!(
        error(&ap("targetRef: {kind: Deployment, name: web}")),
        "spec.targetRef.kind",
        Problem::TargetRefKind(_)
    );
}

#[test]
fn dry_run_value() {
    let e = error(&kind_doc(
        "AuthorizationPolicy",
        "{name: a, annotations: {istio.io/dry-run: \"yes\"}}",
        "rules: [{}]",
    ));
    assert_problem!(
        e,
        "metadata.annotations[istio.io/dry-run]",
        Problem::DryRunValue(_)
    );
}

#[test]
fn dry_run_action() {
    let e = error(&kind_doc(
        "AuthorizationPolicy",
        "{name: a, annotations: {istio.io/dry-run: \"true\"}}",
        "action: AUDIT\nrules: [{}]",
    ));
    assert_problem!(
        e,
        "metadata.annotations[istio.io/dry-run]",
        Problem::DryRunAction(_)
    );
}

#[test]
fn dry_run_kind() {
    let e = error(&kind_doc(
        "PeerAuthentication",
        "{name: a, annotations: {istio.io/dry-run: \"true\"}}",
        "mtls: {mode: STRICT}",
    ));
    assert_problem!(
        e,
        "metadata.annotations[istio.io/dry-run]",
        Problem::DryRunKind
    );
}

#[test]
fn port_level_without_selector() {
    assert_problem!(
        error(&pa("portLevelMtls:\n  8080: {mode: DISABLE}")),
        "spec.portLevelMtls",
        Problem::PortLevelWithoutSelector
    );
}

#[test]
fn empty_port_level_mtls() {
    assert_problem!(
        error(&pa("selector: {matchLabels: {app: a}}\nportLevelMtls: {}")),
        "spec.portLevelMtls",
        Problem::EmptyPortLevelMtls
    );
}

#[test]
fn mtls_port_range() {
    assert_problem!(
        error(&pa(
            "selector: {matchLabels: {app: a}}\nportLevelMtls:\n  \"0\": {mode: DISABLE}"
        )),
        "spec.portLevelMtls[0]",
        Problem::MtlsPortRange(0)
    );
}

#[test]
fn unknown_mtls_mode() {
    let e = error(&pa("mtls: {mode: OPTIONAL}"));
    assert!(e.field.starts_with("spec.mtls.mode"), "{e}");
    assert!(matches!(e.problem, Problem::Schema(_)));
}

#[test]
fn jwt_without_issuer() {
    assert_problem!(
        error(&ra("jwtRules:\n- jwksUri: https://example.com/jwks.json")),
        "spec.jwtRules[0].issuer",
        Problem::JwtWithoutIssuer
    );
}

#[test]
fn jwt_empty_audience() {
    assert_problem!(
        error(&ra("jwtRules:\n- issuer: a\n  audiences: [\"\"]")),
        "spec.jwtRules[0].audiences[0]",
        Problem::EmptyValue
    );
}

#[test]
fn invalid_jwks_uri() {
    assert_problem!(
        error(&ra(
            "jwtRules:\n- issuer: a\n  jwksUri: ftp://example.com/keys"
        )),
        "spec.jwtRules[0].jwksUri",
        Problem::InvalidJwksUri(..)
    );
}

#[test]
fn invalid_jwks() {
    assert_problem!(
        error(&ra(
            "jwtRules:\n- issuer: a\n  jwks: '{\"keys\": [{\"n\": \"x\"}]}'"
        )),
        "spec.jwtRules[0].jwks",
        Problem::InvalidJwks(_)
    );
}

#[test]
fn jwt_from_header_without_name() {
    assert_problem!(
        error(&ra(
            "jwtRules:\n- issuer: a\n  fromHeaders:\n  - prefix: \"Bearer \""
        )),
        "spec.jwtRules[0].fromHeaders[0].name",
        Problem::Missing
    );
}

#[test]
fn jwt_invalid_header_name() {
    assert_problem!(
        error(&ra(
            "jwtRules:\n- issuer: a\n  outputPayloadToHeader: \"x payload\""
        )),
        "spec.jwtRules[0].outputPayloadToHeader",
        Problem::InvalidHeaderName(_)
    );
}

#[test]
fn jwt_incomplete_claim_to_header() {
    assert_problem!(
        error(&ra(
            "jwtRules:\n- issuer: a\n  outputClaimToHeaders:\n  - header: x-sub"
        )),
        "spec.jwtRules[0].outputClaimToHeaders[0]",
        Problem::IncompleteClaimToHeader
    );
}

#[test]
fn jwt_invalid_timeout() {
    assert_problem!(
        error(&ra("jwtRules:\n- issuer: a\n  timeout: \"5\"")),
        "spec.jwtRules[0].timeout",
        Problem::InvalidDuration(_)
    );
}

#[test]
fn jwt_unknown_field() {
    let e = error(&ra("jwtRules:\n- issuer: a\n  jwksURI: https://x/y"));
    assert!(e.field.starts_with("spec.jwtRules[0]"), "{e}");
    assert!(matches!(e.problem, Problem::Schema(_)));
}

#[test]
fn valid_request_authentication() {
    let (errors, _) = check(&ra(
        "selector: {matchLabels: {app: a}}\njwtRules:\n- issuer: https://accounts.example.com\n  audiences: [api]\n  jwksUri: https://accounts.example.com/.well-known/jwks.json\n  fromHeaders: [{name: x-jwt, prefix: \"Bearer \"}]\n  fromParams: [token]\n  outputClaimToHeaders: [{header: x-sub, claim: sub}]\n  forwardOriginalToken: true\n  timeout: 1.5s",
    ));
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn warn_selector_without_labels() {
    let w = warning(&ap("selector: {}\nrules: [{}]"));
    assert_eq!(w.advice, Advice::SelectorWithoutLabels);
}

#[test]
fn warn_deny_http_only_rule() {
    let w = warning(&ap(
        "action: DENY\nrules:\n- to:\n  - operation: {methods: [GET]}",
    ));
    assert_eq!(w.field, "spec.rules[0]");
    assert_eq!(w.advice, Advice::DenyHttpOnlyOnTcp);
}

#[test]
fn warn_principal_with_scheme() {
    let w = warning(&ap(
        "rules:\n- from:\n  - source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}",
    ));
    assert!(matches!(w.advice, Advice::PrincipalWithScheme(_)));
}

#[test]
fn warn_experimental_key() {
    let w = warning(&ap(
        "rules:\n- when:\n  - key: experimental.envoy.filters.network.mysql_proxy[db.table]\n    values: [\"[update]\"]",
    ));
    assert!(matches!(w.advice, Advice::UnsupportedExperimentalKey(_)));
}

#[test]
fn warn_lowercase_method() {
    let w = warning(&ap("rules:\n- to:\n  - operation: {methods: [get]}"));
    assert!(matches!(w.advice, Advice::LowercaseMethod(_)));
}

#[test]
fn warn_waypoint_only_target() {
    let w = warning(&ap("targetRef: {kind: Service, name: web}\nrules: [{}]"));
    assert!(matches!(w.advice, Advice::WaypointOnlyTarget(_)));
}

#[test]
fn every_error_is_collected_not_just_the_first() {
    let (errors, _) = check(&ap(
        "action: DENY\nprovider: {name: x}\nrules:\n- from: []\n  to:\n  - operation: {ports: [\"x\"], paths: [\"\"]}",
    ));
    assert_eq!(errors.len(), 4, "{errors:#?}");
}
