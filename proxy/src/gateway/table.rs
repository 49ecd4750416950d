//! The gateway's routing table, compiled once per config or credential change from Istio
//! Gateway, VirtualService, DestinationRule and ServiceEntry resources: which ports to listen
//! on, which server a connection belongs to (by SNI or `Host`), its TLS, and the routes.
//! Connections and requests only read it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use rustls::{ClientConfig, ServerConfig};
use warden_identity::SpiffeId;
use warden_policy::CompiledPolicies;
use warden_policy::duration::parse_duration;
use warden_policy::networking::{
    ClientTlsMode, Destination as RouteDest, DestinationRule, Gateway, HttpRoute, L4Match, Named,
    NetworkingResource, RouteDestination, Server, ServerTlsMode, StringMatch, VirtualService,
};
use warden_policy::registry::{Destination, Registry};

use super::config::{GatewayConfig, GatewayMode};
use super::creds::{self, CredentialFiles};

/// A host name pattern of a Gateway server or a VirtualService (`*`, `*.example.com`,
/// `shop.example.com`), matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`.
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    /// A full name.
    Exact(String),
}

impl HostPattern {
    /// Parses a host, dropping a Gateway's `namespace/` prefix.
    pub fn parse(s: &str) -> Self {
        let s = s.rsplit_once('/').map_or(s, |(_, h)| h);
        let s = s.to_ascii_lowercase();
        if s == "*" {
            HostPattern::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostPattern::Suffix(rest.to_owned())
        } else {
            HostPattern::Exact(s)
        }
    }

    /// Whether `host` (lower case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Exact(h) => h == host,
        }
    }

    /// Higher is more specific (exact, then longer suffixes, then `*`).
    fn specificity(&self) -> usize {
        match self {
            HostPattern::Any => 0,
            HostPattern::Suffix(s) => 1 + s.len(),
            HostPattern::Exact(_) => usize::MAX,
        }
    }

    /// Whether two patterns can match a common host.
    fn intersects(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => true,
            (HostPattern::Exact(a), p) | (p, HostPattern::Exact(a)) => p.matches(a),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }
}

/// The best (most specific) pattern of `patterns` matching `host`.
fn best_match(patterns: &[HostPattern], host: &str) -> Option<usize> {
    patterns
        .iter()
        .filter(|p| p.matches(host))
        .map(HostPattern::specificity)
        .max()
}

/// A string matcher of a VirtualService (`exact`, `prefix`, `regex`: RE2, whole value).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole-value regular expression.
    Regex(regex::Regex),
}

impl Matcher {
    fn compile(m: &StringMatch) -> Result<Self, String> {
        Ok(match m {
            StringMatch::Exact(s) => Matcher::Exact(s.clone()),
            StringMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            StringMatch::Regex(r) => Matcher::Regex(
                regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("invalid regex {r:?}: {e}"))?,
            ),
        })
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == v,
            Matcher::Prefix(s) => v.starts_with(s.as_str()),
            Matcher::Regex(r) => r.is_match(v),
        }
    }
}

/// One `match` of an HTTP route: every condition must hold.
#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    /// `uri` (the path with the query string, as Envoy matches it).
    pub uri: Option<Matcher>,
    /// `headers`.
    pub headers: Vec<(HeaderName, Matcher)>,
}

impl HttpMatch {
    /// Whether the request matches.
    pub fn matches(&self, path_and_query: &str, headers: &http::HeaderMap) -> bool {
        if let Some(u) = &self.uri {
            // Envoy matches `prefix`/`exact` on the path without the query string.
            let path = path_and_query.split('?').next().unwrap_or("");
            if !u.matches(path) {
                return false;
            }
        }
        self.headers.iter().all(|(name, m)| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| m.matches(v))
        })
    }
}

/// Retry conditions (`retryOn`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx answer, or no answer.
    pub status_5xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure`: the upstream could not be reached.
    pub connect_failure: bool,
    /// `reset`: the connection broke before an answer.
    pub reset: bool,
}

/// `retries` of a route.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// When to retry.
    pub on: RetryOn,
}

impl RetryPolicy {
    /// Istio's default when a route sets none: 2 retries on connect failure and refused streams.
    pub const ISTIO_DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on: RetryOn {
            status_5xx: false,
            gateway_error: false,
            connect_failure: true,
            reset: false,
        },
    };
}

/// How to originate TLS to a destination (DestinationRule `trafficPolicy.tls`).
#[derive(Debug)]
pub struct Origination {
    /// `SIMPLE` or `MUTUAL`.
    pub mode: ClientTlsMode,
    /// The client config (verifier, client certificate), offering ALPN `http/1.1`.
    pub config: Arc<ClientConfig>,
    /// The same, offering ALPN `h2` (HTTP/2 and gRPC destinations).
    pub config_h2: Arc<ClientConfig>,
    /// `sni`; the destination host when empty.
    pub sni: Option<String>,
    /// The DestinationRule (`namespace/name`).
    pub rule: String,
}

/// A resolved route destination.
#[derive(Debug)]
pub struct Target {
    /// The destination host (FQDN).
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The registry entry, when the host is known.
    pub service: Option<Arc<Destination>>,
    /// Secure naming for mesh services: the identities the endpoint may present.
    pub identities: Vec<SpiffeId>,
    /// TLS origination, when a DestinationRule asks for it.
    pub origination: Option<Arc<Origination>>,
    /// The subset's labels: endpoints must carry them.
    pub subset: BTreeMap<String, String>,
    next: AtomicUsize,
}

impl Target {
    /// Whether requests go upstream as HTTP/2 (the service port is `HTTP2` or `GRPC`).
    pub fn http2(&self) -> bool {
        self.service.as_ref().is_some_and(|s| {
            matches!(
                s.protocol,
                warden_policy::registry::Protocol::Http2 | warden_policy::registry::Protocol::Grpc
            )
        })
    }

    /// Whether traffic goes over mesh mTLS (a `MESH_INTERNAL` service).
    pub fn is_mesh(&self) -> bool {
        self.service.as_ref().is_some_and(|s| s.mesh_internal)
    }

    /// The next endpoint `(address, port)` (round robin over the endpoints that carry the
    /// subset labels); the host itself when the service lists none (DNS).
    pub fn pick(&self) -> Option<(String, u16)> {
        let Some(svc) = &self.service else {
            return Some((self.host.clone(), self.port));
        };
        let eps: Vec<_> = svc
            .endpoints
            .iter()
            .filter(|e| {
                self.subset
                    .iter()
                    .all(|(k, v)| e.labels.get(k).is_some_and(|l| l == v))
            })
            .collect();
        if svc.endpoints.is_empty() {
            return Some((self.host.clone(), self.port));
        }
        if eps.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % eps.len();
        Some((eps[i].address.clone(), eps[i].port))
    }
}

/// A weighted destination of a route.
#[derive(Debug)]
pub struct Weighted {
    /// Where to.
    pub target: Arc<Target>,
    /// Its weight (0 counts as 1 when the route has one destination).
    pub weight: u32,
}

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward to one of the weighted destinations.
    Forward {
        /// Destinations.
        dests: Vec<Weighted>,
        /// Sum of the weights.
        total: u32,
        /// Smooth weighted round robin state (one current weight per destination).
        wrr: std::sync::Mutex<Vec<i64>>,
        /// `timeout` of the whole request (retries included).
        timeout: Option<Duration>,
        /// `retries`.
        retry: RetryPolicy,
    },
    /// Answer with a redirect.
    Redirect {
        /// `uri`.
        uri: String,
        /// `authority`.
        authority: String,
        /// `scheme`.
        scheme: String,
        /// `redirectCode`.
        code: u16,
    },
}

impl RouteAction {
    /// A route with no usable destination: its traffic is refused.
    pub fn refusing() -> Self {
        RouteAction::Forward {
            dests: Vec::new(),
            total: 0,
            wrr: std::sync::Mutex::new(Vec::new()),
            timeout: None,
            retry: RetryPolicy::ISTIO_DEFAULT,
        }
    }

    /// The destination for the next request: smooth weighted round robin (nginx's), so that
    /// weights 75/25 give exactly 3 of every 4 requests to the first, interleaved. A weight of
    /// 0 gets no traffic.
    pub fn pick(&self) -> Option<&Arc<Target>> {
        let RouteAction::Forward {
            dests, total, wrr, ..
        } = self
        else {
            return None;
        };
        if dests.is_empty() {
            return None;
        }
        if *total == 0 || dests.len() == 1 {
            return Some(&dests[0].target);
        }
        let mut cur = wrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut best = 0;
        for (i, d) in dests.iter().enumerate() {
            cur[i] += i64::from(d.weight);
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= i64::from(*total);
        Some(&dests[best].target)
    }
}

/// An HTTP route of a VirtualService bound to a server.
#[derive(Debug)]
pub struct HttpRouteEntry {
    /// `VirtualService namespace/name`, `http[i]`.
    pub name: String,
    /// Any of these (always when empty).
    pub matches: Vec<HttpMatch>,
    /// What to do.
    pub action: RouteAction,
}

/// The routes of one VirtualService on a server, for its hosts.
#[derive(Debug)]
pub struct VirtualHost {
    /// The VirtualService's hosts.
    pub hosts: Vec<HostPattern>,
    /// HTTP routes in order.
    pub http: Vec<HttpRouteEntry>,
    /// TLS routes: (SNI patterns (empty = any), destinations).
    pub tls: Vec<(Vec<HostPattern>, RouteAction)>,
    /// TCP routes.
    pub tcp: Vec<RouteAction>,
}

/// How a server handles TLS.
#[derive(Clone)]
pub enum ServerTls {
    /// Plaintext.
    None,
    /// Not terminated: route on the ClientHello's SNI.
    Passthrough,
    /// Terminated with this config (SIMPLE, MUTUAL, OPTIONAL_MUTUAL).
    Terminate(Arc<ServerConfig>),
    /// Mesh mTLS with the gateway's workload certificate.
    IstioMutual,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerTls::None => "None",
            ServerTls::Passthrough => "Passthrough",
            ServerTls::Terminate(_) => "Terminate",
            ServerTls::IstioMutual => "IstioMutual",
        })
    }
}

/// What is carried once TLS (if any) is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// HTTP (HTTP, HTTPS, HTTP2, GRPC ports).
    Http,
    /// TLS from the client, routed by its SNI (TLS ports).
    Tls,
    /// Opaque TCP.
    Tcp,
}

/// One server of a Gateway, as compiled.
#[derive(Debug)]
pub struct ServerEntry {
    /// `Gateway namespace/name`, `servers[i]`.
    pub name: String,
    /// The port.
    pub port: u16,
    /// `hosts`.
    pub hosts: Vec<HostPattern>,
    /// TLS handling.
    pub tls: ServerTls,
    /// TLS mode as written (for logs).
    pub tls_mode: &'static str,
    /// What is carried inside.
    pub carried: Carried,
    /// `tls.httpsRedirect`.
    pub https_redirect: bool,
    /// VirtualServices bound to this server, most specific hosts first.
    pub vhosts: Vec<VirtualHost>,
}

impl ServerEntry {
    /// The virtual host for `host` (most specific VirtualService host wins).
    pub fn vhost(&self, host: &str) -> Option<&VirtualHost> {
        self.vhosts
            .iter()
            .filter_map(|v| best_match(&v.hosts, host).map(|s| (s, v)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, v)| v)
    }
}

/// The servers of one port.
#[derive(Debug, Default)]
pub struct PortEntry {
    /// The servers, in config order.
    pub servers: Vec<Arc<ServerEntry>>,
}

impl PortEntry {
    /// Whether connections start with TLS (any server terminates or passes TLS through).
    pub fn is_tls(&self) -> bool {
        self.servers
            .iter()
            .any(|s| !matches!(s.tls, ServerTls::None))
    }

    /// The server for a host name (SNI or `Host`): the most specific host match; without a
    /// name, the first server with `*`, else the first server.
    pub fn server_for(&self, host: Option<&str>) -> Option<&Arc<ServerEntry>> {
        match host {
            Some(h) => self
                .servers
                .iter()
                .filter_map(|s| best_match(&s.hosts, h).map(|sp| (sp, s)))
                .max_by_key(|(sp, _)| *sp)
                .map(|(_, s)| s),
            None => self
                .servers
                .iter()
                .find(|s| s.hosts.contains(&HostPattern::Any))
                .or_else(|| self.servers.first()),
        }
    }
}

/// The compiled gateway config.
pub struct GatewayTable {
    /// Servers by port.
    pub ports: BTreeMap<u16, PortEntry>,
    /// The registry (ServiceEntry, WorkloadEntry).
    pub registry: Arc<Registry>,
    /// TLS origination by destination host.
    pub origination: HashMap<String, Arc<Origination>>,
    /// AuthorizationPolicy for the gateway's labels.
    pub policy: CompiledPolicies,
    /// Credential files in use (watched for changes).
    pub credential_files: Vec<PathBuf>,
    /// Problems found while compiling (the affected server or route is left out).
    pub problems: Vec<String>,
    /// Bumped on every build.
    pub generation: u64,
    trust_domain: String,
    /// DestinationRule subsets: (host, subset) -> labels.
    subsets: HashMap<(String, String), BTreeMap<String, String>>,
    /// The previous table's server TLS configs by server name (kept on credential errors).
    last_good_servers: HashMap<String, Arc<ServerConfig>>,
    /// The previous table's originations by DestinationRule (kept on credential errors).
    last_good_origination: HashMap<String, Arc<Origination>>,
}

impl std::fmt::Debug for GatewayTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayTable")
            .field("ports", &self.ports)
            .field("problems", &self.problems)
            .field("generation", &self.generation)
            .finish()
    }
}

fn fqdn(host: &str, ns: &str) -> String {
    let h = host.to_ascii_lowercase();
    if h.contains('.') || h.contains('*') {
        h
    } else {
        format!("{h}.{ns}.svc.cluster.local")
    }
}

fn carried(protocol: &str) -> Option<Carried> {
    match protocol.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB" => Some(Carried::Http),
        "TLS" => Some(Carried::Tls),
        "TCP" | "MONGO" | "REDIS" | "MYSQL" => Some(Carried::Tcp),
        _ => None,
    }
}

impl GatewayTable {
    /// Compiles the table. Problems (a credential that cannot be read, a destination that is not
    /// in the registry, a bad regex, ...) are reported and leave the affected server or route
    /// out: that traffic is refused rather than sent somewhere unintended.
    ///
    /// A credential that cannot be loaded (a file being replaced, a key that does not match
    /// its certificate) keeps the last good TLS config of `previous` for the same server or
    /// DestinationRule, so a bad update never takes a serving port down.
    pub fn build(
        cfg: &GatewayConfig,
        networking: &[NetworkingResource],
        policy: CompiledPolicies,
        generation: u64,
        previous: Option<&GatewayTable>,
    ) -> GatewayTable {
        let registry = Arc::new(Registry::build(
            networking.iter(),
            cfg.trust_domain.as_str(),
        ));
        let mut t = GatewayTable {
            ports: BTreeMap::new(),
            registry,
            origination: HashMap::new(),
            policy,
            credential_files: Vec::new(),
            problems: Vec::new(),
            generation,
            trust_domain: cfg.trust_domain.as_str().to_owned(),
            subsets: HashMap::new(),
            last_good_servers: previous
                .map(|p| {
                    p.ports
                        .values()
                        .flat_map(|e| e.servers.iter())
                        .filter_map(|s| match &s.tls {
                            ServerTls::Terminate(c) => Some((s.name.clone(), c.clone())),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            last_good_origination: previous
                .map(|p| {
                    p.origination
                        .values()
                        .map(|o| (o.rule.clone(), o.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut gateways = Vec::new();
        let mut vss = Vec::new();
        for r in networking {
            match r {
                NetworkingResource::Gateway(g) if selects(&g.spec.selector, &cfg.labels) => {
                    gateways.push(g)
                }
                NetworkingResource::VirtualService(v) => vss.push(v),
                NetworkingResource::DestinationRule(d) => t.add_destination_rule(cfg, d),
                _ => {}
            }
        }
        gateways.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        vss.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp,
                &a.metadata.namespace,
                &a.metadata.name,
            )
                .cmp(&(
                    b.metadata.creation_timestamp,
                    &b.metadata.namespace,
                    &b.metadata.name,
                ))
        });
        for g in gateways {
            t.add_gateway(cfg, g, &vss);
        }
        t.credential_files.sort();
        t.credential_files.dedup();
        t
    }

    fn add_destination_rule(&mut self, cfg: &GatewayConfig, d: &Named<DestinationRule>) {
        let name = format!("{}/{}", d.metadata.namespace, d.metadata.name);
        let host = fqdn(&d.spec.host, &d.metadata.namespace);
        for sub in &d.spec.subsets {
            self.subsets
                .insert((host.clone(), sub.name.clone()), sub.labels.clone());
        }
        let Some(tls) = d.spec.traffic_policy.as_ref().and_then(|p| p.tls.as_ref()) else {
            return;
        };
        let mutual = match tls.mode {
            ClientTlsMode::Simple => false,
            ClientTlsMode::Mutual => true,
            ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return,
        };
        let files = if tls.credential_name.is_empty() {
            Ok(CredentialFiles::from_paths(
                &tls.client_certificate,
                &tls.private_key,
                &tls.ca_certificates,
            ))
        } else {
            CredentialFiles::from_name(cfg.credentials_dir.as_deref(), &tls.credential_name)
        };
        let built = files.and_then(|f| {
            self.credential_files.extend(f.paths().cloned());
            creds::origination_config(&f, mutual, &tls.subject_alt_names)
        });
        match built {
            Ok(config) => {
                self.origination.insert(
                    host,
                    Arc::new(Origination {
                        mode: tls.mode,
                        config_h2: {
                            let mut c = (*config).clone();
                            c.alpn_protocols = vec![b"h2".to_vec()];
                            Arc::new(c)
                        },
                        config,
                        sni: (!tls.sni.is_empty()).then(|| tls.sni.clone()),
                        rule: name,
                    }),
                );
            }
            Err(e) => match self.last_good_origination.get(&name).cloned() {
                Some(last) => {
                    self.problems.push(format!(
                        "{}: DestinationRule {name}: spec.trafficPolicy.tls: {e} (the last good credentials stay in use)",
                        d.source
                    ));
                    self.origination.insert(host, last);
                }
                None => self.problems.push(format!(
                    "{}: DestinationRule {name}: spec.trafficPolicy.tls: {e} (traffic to {} is refused)",
                    d.source, d.spec.host
                )),
            },
        }
    }

    fn add_gateway(
        &mut self,
        cfg: &GatewayConfig,
        g: &Named<Gateway>,
        vss: &[&Named<VirtualService>],
    ) {
        let gw_ns = &g.metadata.namespace;
        let gw_name = &g.metadata.name;
        for (i, s) in g.spec.servers.iter().enumerate() {
            let name = format!("Gateway {gw_ns}/{gw_name} servers[{i}]");
            match self.server(cfg, g, s, &name, vss) {
                Ok(entry) => {
                    let port = self.ports.entry(s.port.number).or_default();
                    if let Some(first) = port.servers.first()
                        && first.is_plain() != entry.is_plain()
                    {
                        self.problems.push(format!(
                            "{}: {name}: port {} mixes TLS and plaintext servers ({} is first); this server is ignored",
                            g.source, s.port.number, first.name
                        ));
                        continue;
                    }
                    port.servers.push(Arc::new(entry));
                }
                Err(why) => self.problems.push(format!(
                    "{}: {name}: {why}; the server is not served",
                    g.source
                )),
            }
        }
    }

    fn server(
        &mut self,
        cfg: &GatewayConfig,
        g: &Named<Gateway>,
        s: &Server,
        name: &str,
        vss: &[&Named<VirtualService>],
    ) -> Result<ServerEntry, String> {
        let carried = carried(&s.port.protocol)
            .ok_or_else(|| format!("port.protocol: unsupported value {:?}", s.port.protocol))?;
        let hosts: Vec<HostPattern> = s.hosts.iter().map(|h| HostPattern::parse(h)).collect();
        if hosts.is_empty() {
            return Err("hosts: at least one host is required".into());
        }
        let https_redirect = s.tls.as_ref().is_some_and(|t| t.https_redirect);
        let tls_terminates = !matches!(
            s.port.protocol.to_ascii_uppercase().as_str(),
            "HTTP" | "TCP" | "HTTP2" | "GRPC"
        );
        let (tls, tls_mode) = match (&s.tls, tls_terminates) {
            (None, false) => (ServerTls::None, "NONE"),
            (Some(_), false) => (ServerTls::None, "NONE"),
            (None, true) => return Err("tls: required for an HTTPS or TLS port".into()),
            (Some(t), true) => {
                let alpn: &[&[u8]] = if carried == Carried::Http {
                    &[b"h2", b"http/1.1"]
                } else {
                    &[]
                };
                let tls13 = t.min_protocol_version == warden_policy::networking::TlsVersion::V1_3;
                let files = || -> Result<CredentialFiles, String> {
                    if t.credential_name.is_empty() {
                        Ok(CredentialFiles::from_paths(
                            &t.server_certificate,
                            &t.private_key,
                            &t.ca_certificates,
                        ))
                    } else {
                        CredentialFiles::from_name(
                            cfg.credentials_dir.as_deref(),
                            &t.credential_name,
                        )
                        .map(|mut f| {
                            // An explicit caCertificates adds to a credentialName.
                            if !t.ca_certificates.is_empty() {
                                f.ca = Some(PathBuf::from(&t.ca_certificates));
                            }
                            f
                        })
                        .map_err(|e| format!("tls.credentialName: {e}"))
                    }
                };
                match t.mode {
                    ServerTlsMode::Passthrough => (ServerTls::Passthrough, "PASSTHROUGH"),
                    ServerTlsMode::IstioMutual => (ServerTls::IstioMutual, "ISTIO_MUTUAL"),
                    ServerTlsMode::Simple | ServerTlsMode::Mutual => {
                        let mutual = t.mode == ServerTlsMode::Mutual;
                        let built = files().and_then(|f| {
                            self.credential_files.extend(f.paths().cloned());
                            creds::server_config(&f, mutual, alpn, tls13)
                                .map_err(|e| format!("tls: {e}"))
                        });
                        let sc = match built {
                            Ok(sc) => sc,
                            Err(e) => match self.last_good_servers.get(name) {
                                Some(last) => {
                                    self.problems.push(format!(
                                        "{}: {name}: {e}; the last good credentials stay in use",
                                        g.source
                                    ));
                                    last.clone()
                                }
                                None => return Err(e),
                            },
                        };
                        (ServerTls::Terminate(sc), t.mode.as_str())
                    }
                    ServerTlsMode::OptionalMutual | ServerTlsMode::AutoPassthrough => {
                        return Err(format!("tls.mode: {} is not supported", t.mode.as_str()));
                    }
                }
            }
        };
        let mut entry = ServerEntry {
            name: name.to_owned(),
            port: s.port.number,
            hosts,
            tls,
            tls_mode,
            carried,
            https_redirect,
            vhosts: Vec::new(),
        };
        for vs in vss {
            if !binds(vs, g) {
                continue;
            }
            let vs_hosts: Vec<HostPattern> = vs
                .spec
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect();
            if !vs_hosts
                .iter()
                .any(|h| entry.hosts.iter().any(|sh| sh.intersects(h)))
            {
                continue;
            }
            let vh = self.vhost(vs, g, &entry, vs_hosts);
            entry.vhosts.push(vh);
        }
        Ok(entry)
    }

    fn vhost(
        &mut self,
        vs: &Named<VirtualService>,
        g: &Named<Gateway>,
        server: &ServerEntry,
        hosts: Vec<HostPattern>,
    ) -> VirtualHost {
        let ns = &vs.metadata.namespace;
        let vs_name = format!("VirtualService {ns}/{}", vs.metadata.name);
        let mut vh = VirtualHost {
            hosts,
            http: Vec::new(),
            tls: Vec::new(),
            tcp: Vec::new(),
        };
        for (i, r) in vs.spec.http.iter().enumerate() {
            let field = format!("{vs_name} spec.http[{i}]");
            match self.http_route(ns, r, g, server, &field, &vs.source.to_string()) {
                Ok(Some(entry)) => vh.http.push(entry),
                Ok(None) => {}
                Err(e) => self.problems.push(format!(
                    "{}: {field}: {e}; the route is left out",
                    vs.source
                )),
            }
        }
        for (i, r) in vs.spec.tls.iter().enumerate() {
            if !l4_applies(&r.r#match, g, server.port) {
                continue;
            }
            let sni: Vec<HostPattern> = r
                .r#match
                .iter()
                .flat_map(|m| m.sni_hosts.iter().map(|h| HostPattern::parse(h)))
                .collect();
            let field = format!("{vs_name} spec.tls[{i}]");
            match self.forward(ns, &r.route, None, RetryPolicy::ISTIO_DEFAULT) {
                Ok(a) => vh.tls.push((sni, a)),
                Err(e) => {
                    self.problems.push(format!(
                        "{}: {field}: {e}; connections it matches are refused",
                        vs.source
                    ));
                    vh.tls.push((sni, RouteAction::refusing()));
                }
            }
        }
        for (i, r) in vs.spec.tcp.iter().enumerate() {
            if !l4_applies(&r.r#match, g, server.port) {
                continue;
            }
            let field = format!("{vs_name} spec.tcp[{i}]");
            match self.forward(ns, &r.route, None, RetryPolicy::ISTIO_DEFAULT) {
                Ok(a) => vh.tcp.push(a),
                Err(e) => {
                    self.problems.push(format!(
                        "{}: {field}: {e}; connections it matches are refused",
                        vs.source
                    ));
                    vh.tcp.push(RouteAction::refusing());
                }
            }
        }
        vh
    }

    fn http_route(
        &mut self,
        ns: &str,
        r: &HttpRoute,
        g: &Named<Gateway>,
        server: &ServerEntry,
        field: &str,
        source: &str,
    ) -> Result<Option<HttpRouteEntry>, String> {
        let mut matches = Vec::new();
        for (j, m) in r.r#match.iter().enumerate() {
            if !m.gateways.is_empty() && !m.gateways.iter().any(|n| names_gateway(n, ns, g)) {
                continue;
            }
            if m.port.is_some_and(|p| p != server.port) {
                continue;
            }
            let uri = m
                .uri
                .as_ref()
                .map(Matcher::compile)
                .transpose()
                .map_err(|e| format!("match[{j}].uri: {e}"))?;
            let mut headers = Vec::new();
            for (k, v) in &m.headers {
                let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("match[{j}].headers: {k:?} is not a header name"))?;
                headers.push((
                    name,
                    Matcher::compile(v).map_err(|e| format!("match[{j}].headers.{k}: {e}"))?,
                ));
            }
            matches.push(HttpMatch { uri, headers });
        }
        if !r.r#match.is_empty() && matches.is_empty() {
            // Every match is for another gateway or port.
            return Ok(None);
        }
        let action = if let Some(rd) = &r.redirect {
            RouteAction::Redirect {
                uri: rd.uri.clone(),
                authority: rd.authority.clone(),
                scheme: rd.scheme.clone(),
                code: rd.redirect_code.unwrap_or(301),
            }
        } else {
            let dur = |what: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
                v.as_ref()
                    .map(|s| {
                        parse_duration(s).ok_or_else(|| format!("{what}: invalid duration {s:?}"))
                    })
                    .transpose()
            };
            let timeout = dur("timeout", &r.timeout)?.filter(|d| !d.is_zero());
            let retry = match &r.retries {
                None => RetryPolicy::ISTIO_DEFAULT,
                Some(rt) => {
                    let mut on = RetryOn::default();
                    for c in rt
                        .retry_on
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                    {
                        match c {
                            "5xx" => on.status_5xx = true,
                            "gateway-error" => on.gateway_error = true,
                            "connect-failure" => on.connect_failure = true,
                            "reset" => on.reset = true,
                            // gRPC and HTTP/2 conditions do not occur on HTTP/1.1 upstreams.
                            "refused-stream"
                            | "retriable-4xx"
                            | "cancelled"
                            | "unavailable"
                            | "deadline-exceeded"
                            | "resource-exhausted"
                            | "internal"
                            | "retriable-status-codes" => {}
                            other => {
                                return Err(format!(
                                    "retries.retryOn: unknown condition {other:?}"
                                ));
                            }
                        }
                    }
                    if rt.retry_on.is_empty() {
                        on = RetryPolicy::ISTIO_DEFAULT.on;
                    }
                    RetryPolicy {
                        attempts: rt.attempts,
                        per_try_timeout: dur("retries.perTryTimeout", &rt.per_try_timeout)?,
                        on,
                    }
                }
            };
            if r.route.is_empty() {
                return Err("neither route nor redirect is set".into());
            }
            match self.forward(ns, &r.route, timeout, retry) {
                Ok(a) => a,
                Err(e) => {
                    // Keep the route's matches, answering them 404: its requests must not
                    // fall through to a later route.
                    self.problems.push(format!(
                        "{source}: {field}: {e}; its requests are answered 404"
                    ));
                    RouteAction::refusing()
                }
            }
        };
        Ok(Some(HttpRouteEntry {
            name: field.to_owned(),
            matches,
            action,
        }))
    }

    fn forward(
        &mut self,
        ns: &str,
        route: &[RouteDestination],
        timeout: Option<Duration>,
        retry: RetryPolicy,
    ) -> Result<RouteAction, String> {
        let mut dests = Vec::new();
        for (k, d) in route.iter().enumerate() {
            let target = self
                .target(ns, &d.destination)
                .map_err(|e| format!("route[{k}].destination: {e}"))?;
            let weight = if route.len() == 1 && d.weight == 0 {
                1
            } else {
                d.weight
            };
            dests.push(Weighted {
                target: Arc::new(target),
                weight,
            });
        }
        let total = dests.iter().fold(0u32, |t, d| t.saturating_add(d.weight));
        Ok(RouteAction::Forward {
            wrr: std::sync::Mutex::new(vec![0; dests.len()]),
            dests,
            total,
            timeout,
            retry,
        })
    }

    fn target(&self, ns: &str, d: &RouteDest) -> Result<Target, String> {
        let host = fqdn(&d.host, ns);
        let port = d.port.map(|p| p.number);
        let candidates: Vec<&Arc<Destination>> = self
            .registry
            .destinations()
            .iter()
            .filter(|x| x.host.eq_ignore_ascii_case(&host))
            .collect();
        let service = match port {
            Some(p) => self.registry.lookup_host(&host, p).and_then(|_| {
                candidates
                    .iter()
                    .find(|x| x.port == p)
                    .map(|x| (*x).clone())
            }),
            None if candidates.len() == 1 => Some(candidates[0].clone()),
            None if candidates.is_empty() => None,
            None => {
                return Err(format!(
                    "host {host} has several ports: destination.port.number is required"
                ));
            }
        };
        let port = match (port, &service) {
            (Some(p), _) => p,
            (None, Some(s)) => s.port,
            (None, None) => {
                return Err(format!(
                    "host {host} is not in the registry and has no destination.port"
                ));
            }
        };
        let mut identities = Vec::new();
        if let Some(s) = service.as_ref().filter(|s| s.mesh_internal) {
            for id in &s.identities {
                identities.push(SpiffeId::parse(id).map_err(|e| format!("identity {id:?}: {e}"))?);
            }
            if identities.is_empty() {
                return Err(format!(
                    "mesh service {host} has no identities (no serviceAccount): secure naming is impossible"
                ));
            }
        }
        Ok(Target {
            origination: self.origination.get(&host).cloned(),
            host,
            port,
            service,
            identities,
            subset: BTreeMap::new(),
            next: AtomicUsize::new(0),
        })
        .and_then(|mut t| {
            if !d.subset.is_empty() {
                t.subset = self
                    .subsets
                    .get(&(t.host.clone(), d.subset.clone()))
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "subset {:?} of {} is not defined by a DestinationRule",
                            d.subset, t.host
                        )
                    })?;
            }
            Ok(t)
        })
    }

    /// A destination for a host outside any route (egress): the registry's entry for
    /// `host:port` (any port of the host when `port` is `None`), or, when `allow_any`, the host
    /// itself by DNS.
    pub fn direct_target(&self, host: &str, port: Option<u16>, allow_any: bool) -> Option<Target> {
        let host = host.to_ascii_lowercase();
        let service = match port {
            Some(p) => self.registry.lookup_host(&host, p).map(|d| {
                self.registry
                    .destinations()
                    .iter()
                    .find(|x| std::ptr::eq(&***x, d))
                    .cloned()
            }),
            None => self
                .registry
                .destinations()
                .iter()
                .find(|x| x.host.eq_ignore_ascii_case(&host))
                .map(|x| Some(x.clone())),
        }
        .flatten();
        let service = match service {
            Some(s) => s,
            None if allow_any => {
                return Some(Target {
                    origination: self.origination.get(&host).cloned(),
                    host,
                    port: port.unwrap_or(80),
                    service: None,
                    identities: Vec::new(),
                    subset: BTreeMap::new(),
                    next: AtomicUsize::new(0),
                });
            }
            None => return None,
        };
        let identities = if service.mesh_internal {
            service
                .identities
                .iter()
                .filter_map(|i| SpiffeId::parse(i).ok())
                .collect()
        } else {
            Vec::new()
        };
        Some(Target {
            origination: self.origination.get(&host).cloned(),
            port: service.port,
            host,
            service: Some(service),
            identities,
            subset: BTreeMap::new(),
            next: AtomicUsize::new(0),
        })
    }

    /// The trust domain of the mesh.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The ports to listen on.
    pub fn port_numbers(&self) -> BTreeSet<u16> {
        self.ports.keys().copied().collect()
    }
}

impl ServerEntry {
    fn is_plain(&self) -> bool {
        matches!(self.tls, ServerTls::None)
    }
}

/// Whether a Gateway's `selector` picks a workload with `labels` (an empty selector picks none,
/// as Istio's gateways always select).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
}

/// Whether a gateway reference (`name` or `namespace/name`, relative to `ns`) names `g`.
fn names_gateway(reference: &str, ns: &str, g: &Named<Gateway>) -> bool {
    let (rns, rname) = reference.split_once('/').unwrap_or((ns, reference));
    rns == g.metadata.namespace && rname == g.metadata.name
}

fn binds(vs: &Named<VirtualService>, g: &Named<Gateway>) -> bool {
    vs.spec
        .gateways
        .iter()
        .any(|n| names_gateway(n, &vs.metadata.namespace, g))
}

fn l4_applies(matches: &[L4Match], g: &Named<Gateway>, port: u16) -> bool {
    matches.is_empty()
        || matches.iter().any(|m| {
            m.port.is_none_or(|p| p == port)
                && (m.gateways.is_empty()
                    || m.gateways
                        .iter()
                        .any(|n| names_gateway(n, &g.metadata.namespace, g)))
        })
}

/// The mode is used by callers to choose defaults for traffic without a route.
pub fn allows_direct_routes(mode: GatewayMode) -> bool {
    mode == GatewayMode::Egress
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> GatewayTable {
        let cfg = GatewayConfig::from_parts(
            GatewayMode::Ingress,
            std::path::Path::new("gw.yaml"),
            "identity: {namespace: istio-system}\ncertificates: {staticDir: /c}\nconfig: {directory: /d}\n",
            &|_| None,
        )
        .unwrap();
        let report = warden_policy::parse_file(std::path::Path::new("cfg.yaml"), yaml);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let networking: Vec<NetworkingResource> = report
            .others
            .iter()
            .filter_map(warden_policy::networking::interpret_networking)
            .map(|p| p.result.unwrap())
            .collect();
        let labels = cfg.labels.clone();
        let policy = warden_policy::PolicySet::new([], &Default::default()).compile_for(
            &warden_policy::WorkloadRef {
                namespace: "istio-system",
                labels: &labels,
            },
        );
        GatewayTable::build(&cfg, &networking, policy, 1, None)
    }

    const BASE: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\n\
        spec:\n  selector: {istio: ingressgateway}\n  servers:\n\
        \x20 - {port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*.example.com']}\n\
        \x20 - {port: {number: 8080, name: http2, protocol: HTTP}, hosts: [shop.example.com]}\n\
        \x20 - {port: {number: 9443, name: tls, protocol: TLS}, hosts: [a.example.com], tls: {mode: PASSTHROUGH}}\n\
        \x20 - {port: {number: 9443, name: plain, protocol: HTTP}, hosts: [b.example.com]}\n\
        \x20 - {port: {number: 9444, name: nope, protocol: HTTPS}, hosts: [c.example.com]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: app, namespace: shop}\n\
        spec: {hosts: [app.shop.svc.cluster.local], ports: [{number: 80, name: http}], location: MESH_INTERNAL,\n\
        \x20 resolution: STATIC, endpoints: [{address: 10.0.0.1, serviceAccount: app}]}\n\
        ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vs, namespace: shop}\n\
        spec:\n  hosts: [shop.example.com]\n  gateways: [gw]\n  http:\n\
        \x20 - {match: [{uri: {prefix: /a}}], route: [{destination: {host: missing}}]}\n\
        \x20 - {route: [{destination: {host: app}}]}\n";

    #[test]
    fn servers_by_host_and_reported_problems() {
        let t = table(BASE);
        let p8080 = &t.ports[&8080];
        assert_eq!(
            p8080.server_for(Some("shop.example.com")).unwrap().name,
            "Gateway shop/gw servers[1]"
        );
        assert_eq!(
            p8080.server_for(Some("x.example.com")).unwrap().name,
            "Gateway shop/gw servers[0]"
        );
        assert!(p8080.server_for(Some("example.org")).is_none());
        // Mixed TLS and plaintext on one port, an HTTPS server without tls, a bad destination.
        let all = t.problems.join("\n");
        assert!(
            all.contains("servers[3]: port 9443 mixes TLS and plaintext"),
            "{all}"
        );
        assert!(
            all.contains("servers[4]: tls: required for an HTTPS or TLS port"),
            "{all}"
        );
        assert!(
            all.contains("VirtualService shop/vs spec.http[0]: route[0].destination: host missing.shop.svc.cluster.local is not in the registry and has no destination.port; its requests are answered 404"),
            "{all}"
        );
    }

    #[test]
    fn a_route_with_a_bad_destination_does_not_fall_through() {
        let t = table(BASE);
        let server = t.ports[&8080].server_for(Some("shop.example.com")).unwrap();
        let vh = server.vhost("shop.example.com").unwrap();
        let h = http::HeaderMap::new();
        let first = vh
            .http
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches("/a/b", &h)))
            .unwrap();
        assert!(first.action.pick().is_none(), "refused, not routed");
        let other = vh
            .http
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches("/z", &h)))
            .unwrap();
        let target = other.action.pick().unwrap();
        assert_eq!(target.host, "app.shop.svc.cluster.local");
        assert!(target.is_mesh());
        assert_eq!(
            target.identities[0].as_str(),
            "spiffe://cluster.local/ns/shop/sa/app"
        );
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("ns1/*.example.com");
        assert!(p.matches("a.example.com"));
        assert!(!p.matches("example.com"));
        assert!(HostPattern::parse("*").matches("x"));
        assert!(HostPattern::parse("Shop.Example.com").matches("shop.example.com"));
        assert!(p.intersects(&HostPattern::parse("shop.example.com")));
        assert!(!p.intersects(&HostPattern::parse("shop.example.org")));
        let all = [
            HostPattern::Any,
            p.clone(),
            HostPattern::parse("a.example.com"),
        ];
        assert_eq!(best_match(&all, "a.example.com"), Some(usize::MAX));
        assert_eq!(
            best_match(&all, "b.example.com"),
            Some(1 + ".example.com".len())
        );
    }

    #[test]
    fn matchers_and_regex_whole_value() {
        let r = Matcher::compile(&StringMatch::Regex("/api/v[0-9]+".into())).unwrap();
        assert!(r.matches("/api/v2"));
        assert!(!r.matches("/api/v2/x"));
        let m = HttpMatch {
            uri: Some(Matcher::Prefix("/shop".into())),
            headers: vec![(
                HeaderName::from_static("x-user"),
                Matcher::Exact("alice".into()),
            )],
        };
        let mut h = http::HeaderMap::new();
        assert!(!m.matches("/shop/cart?x=1", &h));
        h.insert("x-user", "alice".parse().unwrap());
        assert!(m.matches("/shop/cart?x=1", &h));
        assert!(!m.matches("/other", &h));
        assert!(Matcher::compile(&StringMatch::Regex("(".into())).is_err());
    }
}
