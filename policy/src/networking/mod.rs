//! Istio networking resources (`networking.istio.io`): ServiceEntry, WorkloadEntry, Gateway,
//! VirtualService and DestinationRule, read from [`Document`]s with the same precise errors as the
//! security kinds (file, document, `namespace/name`, field path).
//!
//! Unknown fields: ServiceEntry, WorkloadEntry and Gateway are modelled completely for what Istio
//! validates, and an unknown field is an error (as `istioctl validate` and the CRD schema reject
//! it). VirtualService and DestinationRule have many features Warden does not implement (fault
//! injection, mirroring, CORS, load balancer settings, outlier detection, ...): those fields are
//! accepted and ignored with a warning ([`Advice::IgnoredField`]); a field that Istio itself does
//! not know is ignored the same way (Warden cannot tell the two apart there).

mod types;

pub use types::*;

use crate::resource::spec_of;

use crate::document::Document;
use crate::error::{
    Advice, ConfigError, ConfigWarning, Location, Problem, ResourceId, ResourceKind,
};
use crate::names;

/// The API group of the networking kinds.
pub const NETWORKING_GROUP: &str = "networking.istio.io";

/// One Istio networking resource.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkingResource {
    /// A ServiceEntry.
    ServiceEntry(Named<ServiceEntry>),
    /// A WorkloadEntry.
    WorkloadEntry(Named<WorkloadEntry>),
    /// A Gateway.
    Gateway(Named<Gateway>),
    /// A VirtualService.
    VirtualService(Named<VirtualService>),
    /// A DestinationRule.
    DestinationRule(Named<DestinationRule>),
}

/// A resource spec with its metadata and source.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    /// Where it was read.
    pub source: Location,
    /// `metadata`.
    pub metadata: crate::document::ObjectMeta,
    /// `spec`.
    pub spec: T,
}

impl NetworkingResource {
    /// The kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            NetworkingResource::ServiceEntry(_) => ResourceKind::ServiceEntry,
            NetworkingResource::WorkloadEntry(_) => ResourceKind::WorkloadEntry,
            NetworkingResource::Gateway(_) => ResourceKind::Gateway,
            NetworkingResource::VirtualService(_) => ResourceKind::VirtualService,
            NetworkingResource::DestinationRule(_) => ResourceKind::DestinationRule,
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &crate::document::ObjectMeta {
        match self {
            NetworkingResource::ServiceEntry(r) => &r.metadata,
            NetworkingResource::WorkloadEntry(r) => &r.metadata,
            NetworkingResource::Gateway(r) => &r.metadata,
            NetworkingResource::VirtualService(r) => &r.metadata,
            NetworkingResource::DestinationRule(r) => &r.metadata,
        }
    }

    /// Where it was read.
    pub fn source(&self) -> &Location {
        match self {
            NetworkingResource::ServiceEntry(r) => &r.source,
            NetworkingResource::WorkloadEntry(r) => &r.source,
            NetworkingResource::Gateway(r) => &r.source,
            NetworkingResource::VirtualService(r) => &r.source,
            NetworkingResource::DestinationRule(r) => &r.source,
        }
    }

    /// `kind namespace/name`.
    pub fn id(&self) -> ResourceId {
        ResourceId {
            kind: self.kind(),
            namespace: self.metadata().namespace.clone(),
            name: self.metadata().name.clone(),
        }
    }
}

/// The result of reading one networking document.
#[derive(Debug, Clone)]
pub struct NetworkingParse {
    /// The resource, or why it is rejected.
    pub result: Result<NetworkingResource, Vec<ConfigError>>,
    /// Fields accepted and ignored.
    pub warnings: Vec<ConfigWarning>,
}

/// Reads a document as a networking resource; `None` when it is not one of the networking kinds.
pub fn interpret_networking(doc: &Document) -> Option<NetworkingParse> {
    let kind = ResourceKind::parse_networking(&doc.kind)?;
    if doc.group() != NETWORKING_GROUP {
        return None;
    }
    let id = ResourceId {
        kind,
        namespace: doc.metadata.namespace.clone(),
        name: doc.metadata.name.clone(),
    };
    let err = |field: &str, problem: Problem| ConfigError {
        location: doc.source.clone(),
        resource: Some(id.clone()),
        field: field.to_owned(),
        problem,
    };
    let mut errors = Vec::new();
    let version = doc.api_version.rsplit_once('/').map_or("", |(_, v)| v);
    if !matches!(version, "v1" | "v1beta1" | "v1alpha3") {
        errors.push(err(
            "apiVersion",
            Problem::UnsupportedNetworkingApiVersion(doc.api_version.clone()),
        ));
        return Some(NetworkingParse {
            result: Err(errors),
            warnings: Vec::new(),
        });
    }
    if doc.metadata.name.is_empty() {
        errors.push(err("metadata.name", Problem::Missing));
    } else if !names::is_dns1123_subdomain(&doc.metadata.name) {
        errors.push(err(
            "metadata.name",
            Problem::InvalidName(doc.metadata.name.clone()),
        ));
    }
    if !names::is_dns1123_label(&doc.metadata.namespace) {
        errors.push(err(
            "metadata.namespace",
            Problem::InvalidName(doc.metadata.namespace.clone()),
        ));
    }
    let spec = doc.spec().cloned().unwrap_or(serde_yaml::Value::Null);
    let mut ignored = Vec::new();
    let resource = match kind {
        ResourceKind::ServiceEntry => spec_of::<ServiceEntry>(spec, &mut errors, &err)
            .map(|s| NetworkingResource::ServiceEntry(named(doc, s))),
        ResourceKind::WorkloadEntry => spec_of::<WorkloadEntry>(spec, &mut errors, &err)
            .map(|s| NetworkingResource::WorkloadEntry(named(doc, s))),
        ResourceKind::Gateway => spec_of::<Gateway>(spec, &mut errors, &err)
            .map(|s| NetworkingResource::Gateway(named(doc, s))),
        ResourceKind::VirtualService => {
            spec_of::<VirtualService>(spec, &mut errors, &err).map(|s| {
                s.ignored_fields(&mut ignored);
                NetworkingResource::VirtualService(named(doc, s))
            })
        }
        ResourceKind::DestinationRule => {
            spec_of::<DestinationRule>(spec, &mut errors, &err).map(|s| {
                s.ignored_fields(&mut ignored);
                NetworkingResource::DestinationRule(named(doc, s))
            })
        }
        _ => None,
    };
    if let Some(r) = &resource {
        for (field, problem) in validate(r) {
            errors.push(err(&field, problem));
        }
    }
    let warnings = ignored
        .into_iter()
        .map(|field| ConfigWarning {
            location: doc.source.clone(),
            resource: Some(id.clone()),
            advice: Advice::IgnoredField(field.clone()),
            field,
        })
        .collect();
    let result = match resource {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    };
    Some(NetworkingParse { result, warnings })
}

fn named<T>(doc: &Document, spec: T) -> Named<T> {
    Named {
        source: doc.source.clone(),
        metadata: doc.metadata.clone(),
        spec,
    }
}

/// Istio's semantic checks that the schema cannot express. Returns `(field, problem)` pairs.
fn validate(r: &NetworkingResource) -> Vec<(String, Problem)> {
    let mut out = Vec::new();
    match r {
        NetworkingResource::ServiceEntry(se) => {
            let s = &se.spec;
            if s.hosts.is_empty() {
                out.push(("spec.hosts".into(), Problem::Missing));
            }
            for (i, h) in s.hosts.iter().enumerate() {
                if h.is_empty() {
                    out.push((format!("spec.hosts[{i}]"), Problem::EmptyValue));
                } else if h == "*" {
                    out.push((
                        format!("spec.hosts[{i}]"),
                        Problem::InvalidValue(h.clone(), "a ServiceEntry host cannot be `*`"),
                    ));
                }
            }
            for (i, a) in s.addresses.iter().enumerate() {
                if a.parse::<ipnet::IpNet>().is_err() && a.parse::<std::net::IpAddr>().is_err() {
                    out.push((
                        format!("spec.addresses[{i}]"),
                        Problem::InvalidCidr(a.clone()),
                    ));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, p) in s.ports.iter().enumerate() {
                if p.number == 0 {
                    out.push((
                        format!("spec.ports[{i}].number"),
                        Problem::InvalidPort(p.number.to_string()),
                    ));
                }
                if !seen.insert(p.number) {
                    out.push((
                        format!("spec.ports[{i}].number"),
                        Problem::InvalidValue(p.number.to_string(), "duplicate port number"),
                    ));
                }
                if p.name.is_empty() {
                    out.push((format!("spec.ports[{i}].name"), Problem::Missing));
                }
            }
            if s.resolution == Resolution::Static
                && s.endpoints.is_empty()
                && s.workload_selector.is_none()
            {
                out.push((
                    "spec.endpoints".into(),
                    Problem::InvalidValue(
                        "[]".into(),
                        "resolution STATIC needs endpoints or a workloadSelector",
                    ),
                ));
            }
            if s.workload_selector.is_some() && !s.endpoints.is_empty() {
                out.push((
                    "spec.workloadSelector".into(),
                    Problem::InvalidValue(
                        "workloadSelector".into(),
                        "only one of endpoints or workloadSelector can be set",
                    ),
                ));
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if s.resolution == Resolution::Static
                    && e.address.parse::<std::net::IpAddr>().is_err()
                    && !e.address.starts_with("unix://")
                {
                    out.push((
                        format!("spec.endpoints[{i}].address"),
                        Problem::InvalidValue(
                            e.address.clone(),
                            "resolution STATIC needs IP addresses",
                        ),
                    ));
                }
                for (name, port) in &e.ports {
                    if *port == 0 {
                        out.push((
                            format!("spec.endpoints[{i}].ports.{name}"),
                            Problem::InvalidPort(port.to_string()),
                        ));
                    }
                }
            }
        }
        NetworkingResource::WorkloadEntry(we) => {
            if we.spec.address.is_empty() && we.spec.network.is_empty() {
                out.push(("spec.address".into(), Problem::Missing));
            }
            if !we.spec.service_account.is_empty()
                && !names::is_dns1123_subdomain(&we.spec.service_account)
            {
                out.push((
                    "spec.serviceAccount".into(),
                    Problem::InvalidName(we.spec.service_account.clone()),
                ));
            }
        }
        NetworkingResource::Gateway(gw) => {
            if gw.spec.servers.is_empty() {
                out.push(("spec.servers".into(), Problem::Missing));
            }
            for (i, s) in gw.spec.servers.iter().enumerate() {
                if s.hosts.is_empty() {
                    out.push((format!("spec.servers[{i}].hosts"), Problem::Missing));
                }
                if s.port.number == 0 {
                    out.push((
                        format!("spec.servers[{i}].port.number"),
                        Problem::InvalidPort("0".into()),
                    ));
                }
                if let Some(tls) = &s.tls {
                    let needs_cert =
                        matches!(tls.mode, ServerTlsMode::Simple | ServerTlsMode::Mutual);
                    if needs_cert
                        && tls.credential_name.is_empty()
                        && (tls.server_certificate.is_empty() || tls.private_key.is_empty())
                    {
                        out.push((
                            format!("spec.servers[{i}].tls"),
                            Problem::InvalidValue(
                                tls.mode.as_str().into(),
                                "SIMPLE and MUTUAL need credentialName or serverCertificate and privateKey",
                            ),
                        ));
                    }
                    if tls.mode == ServerTlsMode::Mutual
                        && tls.credential_name.is_empty()
                        && tls.ca_certificates.is_empty()
                    {
                        out.push((
                            format!("spec.servers[{i}].tls.caCertificates"),
                            Problem::Missing,
                        ));
                    }
                }
            }
        }
        NetworkingResource::VirtualService(vs) => {
            if vs.spec.hosts.is_empty() {
                out.push(("spec.hosts".into(), Problem::Missing));
            }
            for (i, route) in vs.spec.http.iter().enumerate() {
                if route.route.is_empty() && route.redirect.is_none() {
                    out.push((
                        format!("spec.http[{i}]"),
                        Problem::InvalidValue(
                            route.name.clone(),
                            "an HTTP route needs `route` or `redirect`",
                        ),
                    ));
                }
                for (j, m) in route.r#match.iter().enumerate() {
                    if let Some(StringMatch::Regex(re)) = &m.uri
                        && regex_syntax_ok(re).is_err()
                    {
                        out.push((
                            format!("spec.http[{i}].match[{j}].uri.regex"),
                            Problem::InvalidValue(re.clone(), "not a valid RE2 regular expression"),
                        ));
                    }
                }
            }
        }
        NetworkingResource::DestinationRule(dr) => {
            if dr.spec.host.is_empty() {
                out.push(("spec.host".into(), Problem::Missing));
            }
            for (i, s) in dr.spec.subsets.iter().enumerate() {
                if s.name.is_empty() {
                    out.push((format!("spec.subsets[{i}].name"), Problem::Missing));
                }
            }
        }
    }
    out
}

fn regex_syntax_ok(re: &str) -> Result<(), ()> {
    // Balanced brackets is the cheapest sanity check without pulling a regex engine into policy;
    // the proxy compiles the regex (and rejects the config) when it builds its routes.
    let mut depth: i32 = 0;
    let mut escaped = false;
    for c in re.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Err(());
                }
            }
            _ => {}
        }
    }
    if depth == 0 && !escaped {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::parse_config_file;

    #[test]
    fn errors_name_file_document_resource_and_field() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ok, namespace: a}\nspec:\n  hosts: [x.example.com]\n  ports: [{number: 80, name: http}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad, namespace: a}\nspec:\n  hosts: [y.example.com]\n  ports: [{number: 80, name: http, protocl: HTTP}]\n";
        let f = parse_config_file(Path::new("se.yaml"), text);
        assert_eq!(f.networking.len(), 1);
        assert_eq!(f.errors.len(), 1);
        let e = f.errors[0].to_string();
        assert!(
            e.starts_with("se.yaml: document 2 (ServiceEntry a/bad): spec.ports[0].protocl: unknown field `protocl`"),
            "{e}"
        );
    }

    #[test]
    fn semantic_checks() {
        let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: a}\nspec:\n  hosts: [\"*\"]\n  addresses: [10.0.0.0/40]\n  resolution: STATIC\n  ports: [{number: 80, name: http}, {number: 80, name: http2}]\n";
        let f = parse_config_file(Path::new("se.yaml"), text);
        let fields: Vec<&str> = f.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.hosts[0]",
                "spec.addresses[0]",
                "spec.ports[1].number",
                "spec.endpoints"
            ]
        );
        let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: a}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE}\n";
        let f = parse_config_file(Path::new("gw.yaml"), gw);
        assert_eq!(f.errors.len(), 1);
        assert_eq!(f.errors[0].field, "spec.servers[0].tls");
    }

    #[test]
    fn virtual_service_and_destination_rule_ignore_unimplemented_fields_with_warnings() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: a}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /api}, headers: {x-user: {exact: bob}}}]\n    route: [{destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 100}]\n    timeout: 5s\n    fault: {abort: {httpStatus: 500}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: a}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n    loadBalancer: {simple: ROUND_ROBIN}\n  subsets: [{name: v2, labels: {version: v2}}]\n";
        let f = parse_config_file(Path::new("vs.yaml"), text);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert_eq!(f.networking.len(), 2);
        let warned: Vec<&str> = f.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            warned,
            ["spec.http[0].fault", "spec.trafficPolicy.loadBalancer"]
        );
        match &f.networking[0] {
            super::NetworkingResource::VirtualService(vs) => {
                let m = &vs.spec.http[0].r#match[0];
                assert_eq!(m.uri, Some(super::StringMatch::Prefix("/api".into())));
                assert_eq!(vs.spec.http[0].route[0].destination.subset, "v2");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
