//! Istio's validation of the security kinds (what `istioctl validate` and the admission webhook
//! reject), with each error located at its field.

use crate::attribute::{self, Attribute};
use crate::error::{Advice, ConfigError, ConfigWarning, Problem, ResourceId};
use crate::names;
use crate::resource::authz::parse_bool;
use crate::resource::{
    Action, AuthorizationPolicy, DRY_RUN_ANNOTATION, PeerAuthentication, PolicyTargetReference,
    RequestAuthentication, Resource, Source, WorkloadSelector,
};

/// The errors and warnings of one resource.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) warnings: Vec<ConfigWarning>,
}

struct Ctx<'a> {
    resource: &'a Resource,
    id: ResourceId,
    report: Report,
}

impl Ctx<'_> {
    fn error(&mut self, field: impl Into<String>, problem: Problem) {
        self.report.errors.push(ConfigError {
            location: self.resource.source().clone(),
            resource: Some(self.id.clone()),
            field: field.into(),
            problem,
        });
    }

    fn warn(&mut self, field: impl Into<String>, advice: Advice) {
        self.report.warnings.push(ConfigWarning {
            location: self.resource.source().clone(),
            resource: Some(self.id.clone()),
            field: field.into(),
            advice,
        });
    }

    /// Reports empty strings in a list.
    fn non_empty(&mut self, field: &str, values: &[String]) {
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                self.error(format!("{field}[{i}]"), Problem::EmptyValue);
            }
        }
    }
}

/// Validates one resource.
pub(crate) fn validate(resource: &Resource) -> Report {
    let mut cx = Ctx {
        resource,
        id: resource.id(),
        report: Report::default(),
    };
    match resource {
        Resource::AuthorizationPolicy(p) => authorization_policy(&mut cx, p),
        Resource::PeerAuthentication(p) => peer_authentication(&mut cx, p),
        Resource::RequestAuthentication(p) => request_authentication(&mut cx, p),
    }
    cx.report
}

fn selector_and_targets(
    cx: &mut Ctx<'_>,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        cx.error("spec", Problem::SelectorAndTargetRef);
    }
    if let Some(s) = selector {
        workload_selector(cx, s);
    }
    if let Some(t) = target_ref {
        target_reference(cx, "spec.targetRef", t);
    }
    for (i, t) in target_refs.iter().enumerate() {
        target_reference(cx, &format!("spec.targetRefs[{i}]"), t);
    }
}

fn workload_selector(cx: &mut Ctx<'_>, s: &WorkloadSelector) {
    if s.match_labels.is_empty() {
        cx.warn("spec.selector", Advice::SelectorWithoutLabels);
    }
    for (k, v) in &s.match_labels {
        let field = format!("spec.selector.matchLabels[{k}]");
        if k.is_empty() {
            cx.error(field, Problem::EmptySelectorKey);
        } else if k.contains('*') || v.contains('*') {
            cx.error(field, Problem::WildcardInSelector(format!("{k}={v}")));
        } else if let Err(why) = names::check_label_key(k) {
            cx.error(field, Problem::InvalidLabel(k.clone(), why));
        } else if let Err(why) = names::check_label_value(v) {
            cx.error(field, Problem::InvalidLabel(format!("{k}={v}"), why));
        }
    }
}

fn target_reference(cx: &mut Ctx<'_>, field: &str, t: &PolicyTargetReference) {
    if t.name.is_empty() {
        cx.error(format!("{field}.name"), Problem::TargetRefWithoutName);
    }
    if !t.namespace.is_empty() {
        cx.error(format!("{field}.namespace"), Problem::TargetRefNamespace);
    }
    let group = if t.group.is_empty() { "core" } else { &t.group };
    let allowed = matches!(
        (group, t.kind.as_str()),
        ("core", "Service")
            | ("networking.istio.io", "ServiceEntry")
            | ("gateway.networking.k8s.io", "Gateway")
            | ("gateway.networking.k8s.io", "GatewayClass")
    );
    if !allowed {
        cx.error(
            format!("{field}.kind"),
            Problem::TargetRefKind(format!("{}/{}", t.group, t.kind)),
        );
    } else if !t.is_gateway() {
        cx.warn(field, Advice::WaypointOnlyTarget(t.kind.clone()));
    }
}

fn no_dry_run(cx: &mut Ctx<'_>) {
    if cx
        .resource
        .metadata()
        .annotations
        .contains_key(DRY_RUN_ANNOTATION)
    {
        cx.error(
            format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
            Problem::DryRunKind,
        );
    }
}

fn authorization_policy(cx: &mut Ctx<'_>, p: &AuthorizationPolicy) {
    let spec = &p.spec;
    selector_and_targets(
        cx,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    if let Some(v) = p.metadata.annotations.get(DRY_RUN_ANNOTATION) {
        let field = format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
        match spec.action {
            Action::Allow | Action::Deny => {
                if parse_bool(v).is_none() {
                    cx.error(field, Problem::DryRunValue(v.clone()));
                }
            }
            a => cx.error(field, Problem::DryRunAction(a.to_string())),
        }
    }
    match spec.action {
        Action::Custom => {
            if spec.rules.is_none() {
                cx.error("spec.rules", Problem::CustomWithoutRules);
            } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                cx.error("spec.provider.name", Problem::CustomWithoutProvider);
            }
        }
        action => {
            if spec.provider.is_some() {
                cx.error(
                    "spec.provider",
                    Problem::ProviderWithoutCustom(action.to_string()),
                );
            }
        }
    }
    if spec.action == Action::Deny && spec.rules.is_none() {
        cx.error("spec.rules", Problem::DenyWithoutRules);
    }
    let custom = spec.action == Action::Custom;
    for (i, rule) in spec.rules().iter().enumerate() {
        let rf = format!("spec.rules[{i}]");
        let mut from_exists = false;
        let mut tcp_in_from = false;
        let mut to_exists = false;
        let mut tcp_in_to = false;
        if rule.from.as_ref().is_some_and(Vec::is_empty) {
            cx.error(format!("{rf}.from"), Problem::EmptyFrom);
        }
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let ff = format!("{rf}.from[{j}]");
            let Some(src) = &from.source else {
                cx.error(ff, Problem::MissingSource);
                continue;
            };
            from_exists = true;
            tcp_in_from |= source(cx, &format!("{ff}.source"), src, custom);
        }
        if rule.to.as_ref().is_some_and(Vec::is_empty) {
            cx.error(format!("{rf}.to"), Problem::EmptyTo);
        }
        for (j, to) in rule.to.iter().flatten().enumerate() {
            let tf = format!("{rf}.to[{j}]");
            let Some(op) = &to.operation else {
                cx.error(tf, Problem::MissingOperation);
                continue;
            };
            to_exists = true;
            let of = format!("{tf}.operation");
            if op.is_empty() {
                cx.error(of.clone(), Problem::EmptyOperation);
            }
            for (name, list) in [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
                ("ports", &op.ports),
                ("notPorts", &op.not_ports),
            ] {
                cx.non_empty(&format!("{of}.{name}"), list);
            }
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, v) in list.iter().enumerate() {
                    if !v.is_empty()
                        && let Err(problem) = attribute::parse_port(v)
                    {
                        cx.error(format!("{of}.{name}[{k}]"), problem);
                    }
                }
            }
            for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, v) in list.iter().enumerate() {
                    if let Err(problem) = attribute::check_path(v) {
                        cx.error(format!("{of}.{name}[{k}]"), problem);
                    }
                }
            }
            for (name, list) in [("methods", &op.methods), ("notMethods", &op.not_methods)] {
                for (k, v) in list.iter().enumerate() {
                    if v.bytes().any(|b| b.is_ascii_lowercase()) {
                        cx.warn(
                            format!("{of}.{name}[{k}]"),
                            Advice::LowercaseMethod(v.clone()),
                        );
                    }
                }
            }
            tcp_in_to |= !op.ports.is_empty() || !op.not_ports.is_empty();
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let wf = format!("{rf}.when[{j}]");
            if cond.key.is_empty() {
                cx.error(format!("{wf}.key"), Problem::EmptyConditionKey);
                continue;
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                cx.error(wf, Problem::ConditionWithoutValues(cond.key.clone()));
                continue;
            }
            let attr = match attribute::parse_key(&cond.key) {
                Ok(a) => a,
                Err(problem) => {
                    cx.error(format!("{wf}.key"), problem);
                    continue;
                }
            };
            if custom
                && (matches!(
                    attr,
                    Attribute::SourceNamespace | Attribute::SourcePrincipal
                ) || cond.key.starts_with("request.auth."))
            {
                cx.error(
                    format!("{wf}.key"),
                    Problem::NotSupportedWithCustom(cond.key.clone()),
                );
            }
            if attr == Attribute::Experimental {
                cx.warn(
                    format!("{wf}.key"),
                    Advice::UnsupportedExperimentalKey(cond.key.clone()),
                );
            }
            for (name, list) in [("values", &cond.values), ("notValues", &cond.not_values)] {
                for (k, v) in list.iter().enumerate() {
                    let vf = format!("{wf}.{name}[{k}]");
                    if v.is_empty() {
                        cx.error(vf, Problem::EmptyValue);
                        continue;
                    }
                    let checked = match attr {
                        Attribute::SourceIp | Attribute::RemoteIp | Attribute::DestinationIp => {
                            attribute::parse_ip_block(v).map(|_| ())
                        }
                        Attribute::DestinationPort => attribute::parse_port(v).map(|_| ()),
                        _ => Ok(()),
                    };
                    if let Err(problem) = checked {
                        cx.error(vf, problem);
                    }
                }
            }
        }
        if spec.action == Action::Deny
            && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
        {
            cx.warn(rf, Advice::DenyHttpOnlyOnTcp);
        }
    }
}

/// Validates a `source`; returns whether it has fields that apply to TCP.
fn source(cx: &mut Ctx<'_>, sf: &str, src: &Source, custom: bool) -> bool {
    if src.is_empty() {
        cx.error(sf, Problem::EmptySource);
    }
    let principals_or_ns = !src.principals.is_empty()
        || !src.not_principals.is_empty()
        || !src.namespaces.is_empty()
        || !src.not_namespaces.is_empty();
    let sas = !src.service_accounts.is_empty() || !src.not_service_accounts.is_empty();
    if principals_or_ns && sas {
        cx.error(sf, Problem::ServiceAccountsWithPrincipals);
    }
    let lists: [(&str, &Vec<String>); 12] = [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("namespaces", &src.namespaces),
        ("notNamespaces", &src.not_namespaces),
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ];
    for (name, list) in lists {
        cx.non_empty(&format!("{sf}.{name}"), list);
        if custom
            && matches!(
                name,
                "principals"
                    | "notPrincipals"
                    | "requestPrincipals"
                    | "notRequestPrincipals"
                    | "namespaces"
                    | "notNamespaces"
                    | "serviceAccounts"
                    | "notServiceAccounts"
            )
            && !list.is_empty()
        {
            cx.error(
                format!("{sf}.{name}"),
                Problem::NotSupportedWithCustom(name.to_owned()),
            );
        }
    }
    for (name, list) in [
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty()
                && let Err(problem) = attribute::parse_ip_block(v)
            {
                cx.error(format!("{sf}.{name}[{k}]"), problem);
            }
        }
    }
    for (name, list) in [
        ("serviceAccounts", &src.service_accounts),
        ("notServiceAccounts", &src.not_service_accounts),
    ] {
        if list.len() > 16 {
            cx.error(
                format!("{sf}.{name}"),
                Problem::TooManyServiceAccounts(list.len()),
            );
        }
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() && !valid_service_account(v) {
                cx.error(
                    format!("{sf}.{name}[{k}]"),
                    Problem::InvalidServiceAccount(v.clone()),
                );
            }
        }
    }
    for (name, list) in [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
    ] {
        for (k, v) in list.iter().enumerate() {
            if v.starts_with("spiffe://") {
                cx.warn(
                    format!("{sf}.{name}[{k}]"),
                    Advice::PrincipalWithScheme(v.clone()),
                );
            }
        }
    }
    !src.principals.is_empty()
        || !src.not_principals.is_empty()
        || !src.namespaces.is_empty()
        || !src.not_namespaces.is_empty()
        || !src.ip_blocks.is_empty()
        || !src.not_ip_blocks.is_empty()
        || !src.remote_ip_blocks.is_empty()
        || !src.not_remote_ip_blocks.is_empty()
        || sas
}

fn valid_service_account(v: &str) -> bool {
    let ok = |s: &str| names::is_dns1123_subdomain(s);
    match v.split_once('/') {
        Some((ns, sa)) => names::is_dns1123_label(ns) && ok(sa),
        None => ok(v),
    }
}

fn peer_authentication(cx: &mut Ctx<'_>, p: &PeerAuthentication) {
    no_dry_run(cx);
    if let Some(s) = &p.spec.selector {
        workload_selector(cx, s);
    }
    if let Some(ports) = &p.spec.port_level_mtls {
        if !p.has_selector() {
            cx.error("spec.portLevelMtls", Problem::PortLevelWithoutSelector);
        }
        if ports.is_empty() {
            cx.error("spec.portLevelMtls", Problem::EmptyPortLevelMtls);
        }
        for port in ports.keys() {
            if port.0 == 0 || port.0 > 65535 {
                cx.error(
                    format!("spec.portLevelMtls[{}]", port.0),
                    Problem::MtlsPortRange(port.0),
                );
            }
        }
    }
}

fn request_authentication(cx: &mut Ctx<'_>, p: &RequestAuthentication) {
    no_dry_run(cx);
    let spec = &p.spec;
    selector_and_targets(
        cx,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let rf = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            cx.error(format!("{rf}.issuer"), Problem::JwtWithoutIssuer);
        }
        cx.non_empty(&format!("{rf}.audiences"), &rule.audiences);
        if let Some(uri) = &rule.jwks_uri
            && let Err(why) = check_jwks_uri(uri)
        {
            cx.error(
                format!("{rf}.jwksUri"),
                Problem::InvalidJwksUri(uri.clone(), why),
            );
        }
        if let Some(jwks) = &rule.jwks
            && !jwks.is_empty()
            && let Err(why) = check_jwks(jwks)
        {
            cx.error(format!("{rf}.jwks"), Problem::InvalidJwks(why));
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                cx.error(format!("{rf}.fromHeaders[{j}].name"), Problem::Missing);
            } else if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                cx.error(
                    format!("{rf}.fromHeaders[{j}].name"),
                    Problem::InvalidHeaderName(h.name.clone()),
                );
            }
        }
        cx.non_empty(&format!("{rf}.fromParams"), &rule.from_params);
        cx.non_empty(&format!("{rf}.fromCookies"), &rule.from_cookies);
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let cf = format!("{rf}.outputClaimToHeaders[{j}]");
            if c.header.is_empty() || c.claim.is_empty() {
                cx.error(cf, Problem::IncompleteClaimToHeader);
            } else if !strict_header_name(&c.header) {
                cx.error(
                    format!("{cf}.header"),
                    Problem::InvalidHeaderName(c.header.clone()),
                );
            }
        }
        if let Some(h) = &rule.output_payload_to_header
            && !strict_header_name(h)
        {
            cx.error(
                format!("{rf}.outputPayloadToHeader"),
                Problem::InvalidHeaderName(h.clone()),
            );
        }
        if let Some(t) = &rule.timeout
            && crate::duration::parse_duration(t).is_none()
        {
            cx.error(format!("{rf}.timeout"), Problem::InvalidDuration(t.clone()));
        }
    }
}

/// Istio's header name rule for generated headers: `^[-_A-Za-z0-9]+$`.
fn strict_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    match parsed.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => return Err(format!("URI scheme {other:?} is not supported")),
        None => return Err("expected an absolute http:// or https:// URL".into()),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    Ok(())
}

fn check_jwks(jwks: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let key_ok = |k: &serde_json::Value| k.get("kty").is_some_and(serde_json::Value::is_string);
    match v.get("keys") {
        Some(serde_json::Value::Array(keys)) => {
            if let Some(i) = keys.iter().position(|k| !key_ok(k)) {
                return Err(format!("keys[{i}] has no \"kty\""));
            }
            Ok(())
        }
        Some(_) => Err("\"keys\" must be an array".into()),
        None if key_ok(&v) => Ok(()),
        None => Err("expected a JSON Web Key Set ({\"keys\": [...]}) or a single key".into()),
    }
}
