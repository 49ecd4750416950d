//! The serde types of the networking kinds (`spec` of each), named as in Istio's API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resource::{WorkloadSelector, nullable};

/// Fields kept only to warn that they are ignored.
pub type Ignored = BTreeMap<String, serde_yaml::Value>;

fn push_ignored(prefix: &str, ignored: &Ignored, out: &mut Vec<String>) {
    out.extend(ignored.keys().map(|k| format!("{prefix}.{k}")));
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// `hosts`: the service's host names.
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    /// `addresses`: virtual IPs or CIDRs of the service.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    /// `ports`.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    /// `location`.
    #[serde(default)]
    pub location: ServiceLocation,
    /// `resolution`.
    #[serde(default)]
    pub resolution: Resolution,
    /// `endpoints`.
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<WorkloadEntry>,
    /// `workloadSelector`: WorkloadEntries (and pods) backing the service.
    #[serde(default)]
    pub workload_selector: Option<EntrySelector>,
    /// `exportTo`.
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    /// `subjectAltNames`: identities the endpoints present.
    #[serde(default, deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
}

/// A ServiceEntry's `workloadSelector` (`labels`, unlike the security kinds' `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntrySelector {
    /// `labels`: every label must be present with the same value.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
}

impl EntrySelector {
    /// Whether every selector label is in `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// A ServiceEntry port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// `number`.
    pub number: u16,
    /// `protocol`: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS (case-insensitive).
    #[serde(default)]
    pub protocol: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `targetPort`: the endpoints' port when not given per endpoint.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// `location`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceLocation {
    /// `MESH_EXTERNAL` (Istio's default): outside the mesh, no mTLS.
    #[default]
    MeshExternal,
    /// `MESH_INTERNAL`: part of the mesh, mTLS with secure naming.
    MeshInternal,
}

/// `resolution`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// `NONE` (default): connect to the original destination.
    #[default]
    None,
    /// `STATIC`: the endpoints' addresses.
    Static,
    /// `DNS`: resolve the hosts or endpoint addresses.
    Dns,
    /// `DNS_ROUND_ROBIN`: like DNS, one address at a time.
    DnsRoundRobin,
}

// ---------------------------------------------------------------------------------------------
// WorkloadEntry

/// `WorkloadEntry.spec`, also a ServiceEntry endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// `address`: IP, host name or `unix://` path.
    #[serde(default)]
    pub address: String,
    /// `ports`: port name -> the workload's port.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: BTreeMap<String, u16>,
    /// `labels`.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// `network`.
    #[serde(default)]
    pub network: String,
    /// `locality`.
    #[serde(default)]
    pub locality: String,
    /// `weight`.
    #[serde(default)]
    pub weight: u32,
    /// `serviceAccount`: the workload's identity is `<td>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default)]
    pub service_account: String,
}

// ---------------------------------------------------------------------------------------------
// Gateway

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// `selector`: the gateway workloads' labels.
    #[serde(default, deserialize_with = "nullable")]
    pub selector: BTreeMap<String, String>,
    /// `servers`.
    #[serde(default, deserialize_with = "nullable")]
    pub servers: Vec<Server>,
}

/// A Gateway server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// `port`.
    pub port: ServerPort,
    /// `bind`.
    #[serde(default)]
    pub bind: String,
    /// `hosts`: `[namespace/]host`.
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    /// `tls`.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `defaultEndpoint`.
    #[serde(default)]
    pub default_endpoint: String,
}

/// A Gateway server port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    /// `number`.
    pub number: u16,
    /// `protocol`.
    #[serde(default)]
    pub protocol: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `targetPort` (deprecated in Istio).
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// A Gateway server's `tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// `httpsRedirect`.
    #[serde(default)]
    pub https_redirect: bool,
    /// `mode`.
    #[serde(default)]
    pub mode: ServerTlsMode,
    /// `credentialName`.
    #[serde(default)]
    pub credential_name: String,
    /// `credentialNames`.
    #[serde(default, deserialize_with = "nullable")]
    pub credential_names: Vec<String>,
    /// `serverCertificate` (file path).
    #[serde(default)]
    pub server_certificate: String,
    /// `privateKey` (file path).
    #[serde(default)]
    pub private_key: String,
    /// `caCertificates` (file path).
    #[serde(default)]
    pub ca_certificates: String,
    /// `caCrl`.
    #[serde(default)]
    pub ca_crl: String,
    /// `subjectAltNames`.
    #[serde(default, deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
    /// `verifyCertificateSpki`.
    #[serde(default, deserialize_with = "nullable")]
    pub verify_certificate_spki: Vec<String>,
    /// `verifyCertificateHash`.
    #[serde(default, deserialize_with = "nullable")]
    pub verify_certificate_hash: Vec<String>,
    /// `minProtocolVersion`.
    #[serde(default)]
    pub min_protocol_version: TlsVersion,
    /// `maxProtocolVersion`.
    #[serde(default)]
    pub max_protocol_version: TlsVersion,
    /// `cipherSuites`.
    #[serde(default, deserialize_with = "nullable")]
    pub cipher_suites: Vec<String>,
}

/// Gateway server TLS modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// `PASSTHROUGH` (Istio's default): route on SNI without terminating.
    #[default]
    Passthrough,
    /// `SIMPLE`: terminate with a server certificate.
    Simple,
    /// `MUTUAL`: also require a client certificate.
    Mutual,
    /// `AUTO_PASSTHROUGH`.
    AutoPassthrough,
    /// `ISTIO_MUTUAL`: mesh mTLS.
    IstioMutual,
    /// `OPTIONAL_MUTUAL`.
    OptionalMutual,
}

impl ServerTlsMode {
    /// As written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Passthrough => "PASSTHROUGH",
            ServerTlsMode::Simple => "SIMPLE",
            ServerTlsMode::Mutual => "MUTUAL",
            ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
            ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
            ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        }
    }
}

/// TLS protocol versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// `TLS_AUTO`.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// `TLSV1_0`.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// `TLSV1_1`.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// `TLSV1_2`.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// `TLSV1_3`.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

// ---------------------------------------------------------------------------------------------
// VirtualService

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    /// `hosts`.
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    /// `gateways` (`mesh` = the sidecars; default `mesh`).
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// `http` routes.
    #[serde(default, deserialize_with = "nullable")]
    pub http: Vec<HttpRoute>,
    /// `tls` routes (by SNI).
    #[serde(default, deserialize_with = "nullable")]
    pub tls: Vec<TlsRoute>,
    /// `tcp` routes.
    #[serde(default, deserialize_with = "nullable")]
    pub tcp: Vec<TcpRoute>,
    /// `exportTo`.
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    /// Ignored fields.
    #[serde(flatten, skip_serializing)]
    pub ignored: Ignored,
}

impl VirtualService {
    pub(crate) fn ignored_fields(&self, out: &mut Vec<String>) {
        push_ignored("spec", &self.ignored, out);
        for (i, r) in self.http.iter().enumerate() {
            push_ignored(&format!("spec.http[{i}]"), &r.ignored, out);
            for (j, m) in r.r#match.iter().enumerate() {
                push_ignored(&format!("spec.http[{i}].match[{j}]"), &m.ignored, out);
            }
        }
    }
}

/// An HTTP route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `match`: any of these (all when empty).
    #[serde(default, deserialize_with = "nullable")]
    pub r#match: Vec<HttpMatch>,
    /// `route`: weighted destinations.
    #[serde(default, deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
    /// `redirect`.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// `timeout`, e.g. `5s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// `retries`.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    /// Ignored fields.
    #[serde(flatten, skip_serializing)]
    pub ignored: Ignored,
}

/// An HTTP match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `uri`.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// `headers`.
    #[serde(default, deserialize_with = "nullable")]
    pub headers: BTreeMap<String, StringMatch>,
    /// `port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `gateways`.
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// Ignored fields.
    #[serde(flatten, skip_serializing)]
    pub ignored: Ignored,
}

/// `exact` / `prefix` / `regex`: exactly one must be set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawStringMatch")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// RE2 regular expression (whole value).
    Regex(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = &'static str;

    fn try_from(r: RawStringMatch) -> Result<Self, Self::Error> {
        match (r.exact, r.prefix, r.regex) {
            (Some(v), None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v)) => Ok(StringMatch::Regex(v)),
            _ => Err("exactly one of `exact`, `prefix` or `regex` must be set"),
        }
    }
}

/// A weighted destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// `destination`.
    pub destination: Destination,
    /// `weight`.
    #[serde(default)]
    pub weight: u32,
    /// `headers` manipulation (ignored by Warden).
    #[serde(default, skip_serializing)]
    pub headers: Option<serde_yaml::Value>,
}

/// `destination`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// `host`.
    pub host: String,
    /// `subset`.
    #[serde(default)]
    pub subset: String,
    /// `port`.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `port: {number}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// `number`.
    pub number: u16,
}

/// `redirect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    /// `uri`.
    #[serde(default)]
    pub uri: String,
    /// `authority`.
    #[serde(default)]
    pub authority: String,
    /// `scheme`.
    #[serde(default)]
    pub scheme: String,
    /// `port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `redirectCode` (default 301).
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

/// `retries`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    /// `attempts`.
    #[serde(default)]
    pub attempts: u32,
    /// `perTryTimeout`.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// `retryOn`.
    #[serde(default)]
    pub retry_on: String,
}

/// A TLS route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// `match`.
    #[serde(default, deserialize_with = "nullable")]
    pub r#match: Vec<L4Match>,
    /// `route`.
    #[serde(default, deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
}

/// A TCP route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// `match`.
    #[serde(default, deserialize_with = "nullable")]
    pub r#match: Vec<L4Match>,
    /// `route`.
    #[serde(default, deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
}

/// A TLS/TCP match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Match {
    /// `sniHosts` (TLS routes).
    #[serde(default, deserialize_with = "nullable")]
    pub sni_hosts: Vec<String>,
    /// `destinationSubnets`.
    #[serde(default, deserialize_with = "nullable")]
    pub destination_subnets: Vec<String>,
    /// `port`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `gateways`.
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// `sourceLabels`.
    #[serde(default, deserialize_with = "nullable")]
    pub source_labels: BTreeMap<String, String>,
    /// `sourceNamespace`.
    #[serde(default)]
    pub source_namespace: String,
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// `DestinationRule.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    /// `host`.
    #[serde(default)]
    pub host: String,
    /// `trafficPolicy`.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// `subsets`.
    #[serde(default, deserialize_with = "nullable")]
    pub subsets: Vec<Subset>,
    /// `exportTo`.
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    /// `workloadSelector`.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Ignored fields.
    #[serde(flatten, skip_serializing)]
    pub ignored: Ignored,
}

impl DestinationRule {
    pub(crate) fn ignored_fields(&self, out: &mut Vec<String>) {
        push_ignored("spec", &self.ignored, out);
        if let Some(tp) = &self.traffic_policy {
            push_ignored("spec.trafficPolicy", &tp.ignored, out);
        }
        for (i, s) in self.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                push_ignored(
                    &format!("spec.subsets[{i}].trafficPolicy"),
                    &tp.ignored,
                    out,
                );
            }
        }
    }
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// `tls`.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Ignored fields (loadBalancer, connectionPool, outlierDetection, portLevelSettings, ...).
    #[serde(flatten, skip_serializing)]
    pub ignored: Ignored,
}

/// `trafficPolicy.tls`: how to originate TLS to the destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `mode`.
    #[serde(default)]
    pub mode: ClientTlsMode,
    /// `clientCertificate` (file path, MUTUAL).
    #[serde(default)]
    pub client_certificate: String,
    /// `privateKey` (file path, MUTUAL).
    #[serde(default)]
    pub private_key: String,
    /// `caCertificates` (file path).
    #[serde(default)]
    pub ca_certificates: String,
    /// `caCrl`.
    #[serde(default)]
    pub ca_crl: String,
    /// `credentialName`.
    #[serde(default)]
    pub credential_name: String,
    /// `subjectAltNames`.
    #[serde(default, deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
    /// `sni`.
    #[serde(default)]
    pub sni: String,
    /// `insecureSkipVerify`.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// DestinationRule TLS modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// `DISABLE`.
    #[default]
    Disable,
    /// `SIMPLE`.
    Simple,
    /// `MUTUAL`.
    Mutual,
    /// `ISTIO_MUTUAL`.
    IstioMutual,
}

/// A subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `labels`.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// `trafficPolicy`.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}
