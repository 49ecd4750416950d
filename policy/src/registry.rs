//! The service registry: from ServiceEntry and WorkloadEntry, which service is behind an
//! `ip:port` or a `host:port`, with its protocol, endpoints, the SPIFFE identities that back them,
//! and whether it is in the mesh.
//!
//! Build a [`Registry`] once per config change; [`Registry::lookup_addr`] and
//! [`Registry::lookup_host`] do not allocate.
//!
//! Rules, as Istio:
//! - protocol: the port's `protocol` (case-insensitive), else the port name's prefix before the
//!   first `-` (`http-web` is HTTP, `grpc` is gRPC); anything else is [`Protocol::Unknown`], for
//!   which proxies sniff the protocol;
//! - an endpoint's port is `endpoint.ports[port.name]`, else `port.targetPort`, else the port;
//! - an endpoint's identity is `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`
//!   (namespace of the ServiceEntry for inline endpoints, of the WorkloadEntry otherwise; service
//!   account `default` when not set for in-mesh endpoints), and the ServiceEntry's
//!   `subjectAltNames` are accepted for every endpoint;
//! - a `workloadSelector` selects WorkloadEntries of the ServiceEntry's namespace by labels;
//! - `addresses` (VIPs, or CIDRs for [`Registry::lookup_addr`] only) and the endpoint IPs map
//!   `ip:port` to the service; hosts map `host:port`, with `*.suffix` wildcards (longest wins).
//!
//! Visibility (`exportTo`) is not applied: every service is visible to every proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::networking::{
    self, Named, NetworkingResource, Resolution, ServiceEntry, ServiceLocation,
};

/// An application protocol, as Istio names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// `HTTP` (HTTP/1.1, or HTTP/2 when the client speaks it).
    Http,
    /// `HTTP2`.
    Http2,
    /// `GRPC`.
    Grpc,
    /// `GRPC-WEB`.
    GrpcWeb,
    /// `HTTPS`: TLS that is not terminated by the mesh.
    Https,
    /// `TLS`.
    Tls,
    /// `TCP`.
    Tcp,
    /// `UDP` (not proxied).
    Udp,
    /// `MONGO`.
    Mongo,
    /// `MYSQL`.
    Mysql,
    /// `REDIS`.
    Redis,
    /// Not declared: proxies sniff it.
    Unknown,
}

impl Protocol {
    /// Parses a protocol name (case-insensitive).
    pub fn parse(name: &str) -> Protocol {
        const TABLE: &[(&str, Protocol)] = &[
            ("http", Protocol::Http),
            ("http_proxy", Protocol::Http),
            ("http2", Protocol::Http2),
            ("grpc", Protocol::Grpc),
            ("grpc-web", Protocol::GrpcWeb),
            ("https", Protocol::Https),
            ("tls", Protocol::Tls),
            ("tcp", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("mongo", Protocol::Mongo),
            ("mysql", Protocol::Mysql),
            ("redis", Protocol::Redis),
        ];
        TABLE
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Protocol::Unknown, |(_, p)| *p)
    }

    /// Istio's rule for a port: the declared protocol, else the name's prefix.
    pub fn for_port(protocol: &str, name: &str) -> Protocol {
        if !protocol.is_empty() {
            return Protocol::parse(protocol);
        }
        // `grpc-web` is a protocol whose name contains `-`.
        if name.len() >= 8 && name[..8].eq_ignore_ascii_case("grpc-web") {
            return Protocol::GrpcWeb;
        }
        Protocol::parse(name.split_once('-').map_or(name, |(p, _)| p))
    }

    /// Whether the mesh handles it as HTTP (HTTP/1.1, HTTP/2, gRPC).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// IP address, or host name for DNS resolution.
    pub address: String,
    /// The port to connect to.
    pub port: u16,
    /// The SPIFFE IDs it may present (its own, then the ServiceEntry's subjectAltNames).
    pub identities: Vec<String>,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `network`.
    pub network: String,
    /// `locality`.
    pub locality: String,
    /// `weight` (0 = default).
    pub weight: u32,
}

/// What is behind an `ip:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Destination {
    /// The service host (first host of the ServiceEntry).
    pub host: String,
    /// The ServiceEntry (`namespace/name`).
    pub service_entry: String,
    /// The service port.
    pub port: u16,
    /// The port name.
    pub port_name: String,
    /// The protocol.
    pub protocol: Protocol,
    /// Whether it is in the mesh (`MESH_INTERNAL`): mTLS with secure naming.
    pub mesh_internal: bool,
    /// The resolution.
    pub resolution: Resolution,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Every identity any endpoint may present (deduplicated): the secure-naming set.
    pub identities: Vec<String>,
}

/// The registry of services. Cheap to share (`Arc`).
#[derive(Debug, Default)]
pub struct Registry {
    by_addr: HashMap<SocketAddr, Arc<Destination>>,
    by_cidr: Vec<(IpNet, u16, Arc<Destination>)>,
    /// Exact host -> (port, destination).
    by_host: HashMap<Box<str>, Vec<(u16, Arc<Destination>)>>,
    /// Wildcard `*.suffix` stored under `.suffix`.
    by_wildcard: HashMap<Box<str>, Vec<(u16, Arc<Destination>)>>,
    destinations: Vec<Arc<Destination>>,
}

impl Registry {
    /// Builds the registry from networking resources (other kinds are skipped). `trust_domain`
    /// names the identities of endpoints given by service account.
    pub fn build<'a>(
        resources: impl IntoIterator<Item = &'a NetworkingResource>,
        trust_domain: &str,
    ) -> Registry {
        let mut entries = Vec::new();
        let mut workloads = Vec::new();
        for r in resources {
            match r {
                NetworkingResource::ServiceEntry(se) => entries.push(se),
                NetworkingResource::WorkloadEntry(we) => workloads.push(we),
                _ => {}
            }
        }
        // Deterministic: the oldest (then by namespace/name) wins a conflicting address.
        entries.sort_by(|a, b| {
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
        let mut reg = Registry::default();
        for se in entries {
            reg.add_service_entry(se, &workloads, trust_domain);
        }
        reg
    }

    fn add_service_entry(
        &mut self,
        se: &Named<ServiceEntry>,
        workloads: &[&Named<networking::WorkloadEntry>],
        trust_domain: &str,
    ) {
        let spec = &se.spec;
        let ns = &se.metadata.namespace;
        let internal = spec.location == ServiceLocation::MeshInternal;
        // (namespace, entry) of every endpoint.
        let mut backing: Vec<(&str, &networking::WorkloadEntry)> =
            spec.endpoints.iter().map(|e| (ns.as_str(), e)).collect();
        if let Some(sel) = &spec.workload_selector {
            backing.extend(
                workloads
                    .iter()
                    .filter(|w| &w.metadata.namespace == ns && sel.matches(&w.spec.labels))
                    .map(|w| (w.metadata.namespace.as_str(), &w.spec)),
            );
        }
        for port in &spec.ports {
            let mut identities: Vec<String> = Vec::new();
            let endpoints: Vec<Endpoint> = backing
                .iter()
                .map(|(ens, e)| {
                    let mut ids = Vec::new();
                    let sa = if e.service_account.is_empty() && internal {
                        "default"
                    } else {
                        e.service_account.as_str()
                    };
                    if !sa.is_empty() {
                        ids.push(format!("spiffe://{trust_domain}/ns/{ens}/sa/{sa}"));
                    }
                    ids.extend(spec.subject_alt_names.iter().map(|s| spiffe_uri(s)));
                    for id in &ids {
                        if !identities.contains(id) {
                            identities.push(id.clone());
                        }
                    }
                    Endpoint {
                        address: e.address.clone(),
                        port: e
                            .ports
                            .get(&port.name)
                            .copied()
                            .or(port.target_port)
                            .unwrap_or(port.number),
                        identities: ids,
                        labels: e.labels.clone(),
                        network: e.network.clone(),
                        locality: e.locality.clone(),
                        weight: e.weight,
                    }
                })
                .collect();
            if endpoints.is_empty() {
                identities.extend(spec.subject_alt_names.iter().map(|s| spiffe_uri(s)));
            }
            let dest = Arc::new(Destination {
                host: spec.hosts.first().cloned().unwrap_or_default(),
                service_entry: format!("{}/{}", ns, se.metadata.name),
                port: port.number,
                port_name: port.name.clone(),
                protocol: Protocol::for_port(&port.protocol, &port.name),
                mesh_internal: internal,
                resolution: spec.resolution,
                endpoints,
                identities,
            });
            for a in &spec.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    self.by_addr
                        .entry(SocketAddr::new(ip, port.number))
                        .or_insert_with(|| dest.clone());
                } else if let Ok(net) = a.parse::<IpNet>() {
                    if net.prefix_len() == net.max_prefix_len() {
                        self.by_addr
                            .entry(SocketAddr::new(net.addr(), port.number))
                            .or_insert_with(|| dest.clone());
                    } else {
                        self.by_cidr.push((net, port.number, dest.clone()));
                    }
                }
            }
            for e in &dest.endpoints {
                if let Ok(ip) = e.address.parse::<IpAddr>() {
                    self.by_addr
                        .entry(SocketAddr::new(ip, e.port))
                        .or_insert_with(|| dest.clone());
                }
            }
            for h in &spec.hosts {
                let h = h.to_ascii_lowercase();
                let (map, key) = match h.strip_prefix('*') {
                    Some(suffix) => (&mut self.by_wildcard, suffix.to_owned()),
                    None => (&mut self.by_host, h),
                };
                let ports = map.entry(key.into_boxed_str()).or_default();
                if !ports.iter().any(|(p, _)| *p == port.number) {
                    ports.push((port.number, dest.clone()));
                }
            }
            self.destinations.push(dest);
        }
        // Longest CIDR first.
        self.by_cidr
            .sort_by_key(|c| std::cmp::Reverse(c.0.prefix_len()));
    }

    /// The service behind `addr` (a VIP, a CIDR of `addresses`, or an endpoint).
    pub fn lookup_addr(&self, addr: SocketAddr) -> Option<&Destination> {
        if let Some(d) = self.by_addr.get(&addr) {
            return Some(d);
        }
        self.by_cidr
            .iter()
            .find(|(net, port, _)| *port == addr.port() && net.contains(&addr.ip()))
            .map(|(_, _, d)| &**d)
    }

    /// The service for `host:port` (exact host first, then the longest `*.suffix`). `host` must
    /// be lower case (SNI and `Host` are case-insensitive; lower-case them once per connection).
    pub fn lookup_host(&self, host: &str, port: u16) -> Option<&Destination> {
        fn find(v: &[(u16, Arc<Destination>)], port: u16) -> Option<&Destination> {
            v.iter().find(|(p, _)| *p == port).map(|(_, d)| &**d)
        }
        if let Some(d) = self.by_host.get(host).and_then(|v| find(v, port)) {
            return Some(d);
        }
        // `a.b.example.com`: try `.b.example.com`, then `.example.com`, then `.com`.
        let mut rest = host;
        while let Some(i) = rest.find('.') {
            let suffix = &host[host.len() - rest.len() + i..];
            if let Some(d) = self.by_wildcard.get(suffix).and_then(|v| find(v, port)) {
                return Some(d);
            }
            rest = &rest[i + 1..];
        }
        // `*` alone matches everything.
        self.by_wildcard.get("").and_then(|v| find(v, port))
    }

    /// Every destination (one per ServiceEntry port).
    pub fn destinations(&self) -> &[Arc<Destination>] {
        &self.destinations
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }
}

fn spiffe_uri(san: &str) -> String {
    if san.starts_with("spiffe://") {
        san.to_owned()
    } else {
        format!("spiffe://{san}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::parse_documents;
    use crate::networking::interpret_networking;
    use std::path::Path;

    fn resources(text: &str) -> Vec<NetworkingResource> {
        let p = parse_documents(Path::new("r.yaml"), text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        p.documents
            .iter()
            .map(|d| interpret_networking(d).unwrap().result.unwrap())
            .collect()
    }

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  addresses: [240.0.0.10]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http-web, targetPort: 8080}
  - {number: 9090, name: grpc}
  - {number: 5432, name: db, protocol: TCP}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: shop}
spec:
  address: 10.1.0.5
  labels: {app: reviews}
  serviceAccount: reviews-sa
  ports: {grpc: 19090}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: elsewhere}
spec:
  address: 10.9.9.9
  labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: egress}
spec:
  hosts: [api.example.com, "*.googleapis.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"#;

    #[test]
    fn maps_vips_endpoints_and_hosts() {
        let rs = resources(MESH);
        let reg = Registry::build(&rs, "cluster.local");
        let d = reg.lookup_addr("240.0.0.10:9080".parse().unwrap()).unwrap();
        assert_eq!(d.host, "reviews.shop.svc.cluster.local");
        assert_eq!(d.protocol, Protocol::Http);
        assert!(d.mesh_internal);
        assert_eq!(
            d.endpoints.len(),
            1,
            "the WorkloadEntry of another namespace is not selected"
        );
        assert_eq!(d.endpoints[0].port, 8080);
        assert_eq!(
            d.identities,
            vec!["spiffe://cluster.local/ns/shop/sa/reviews-sa".to_owned()]
        );
        let g = reg.lookup_addr("240.0.0.10:9090".parse().unwrap()).unwrap();
        assert_eq!(g.protocol, Protocol::Grpc);
        assert_eq!(g.endpoints[0].port, 19090);
        // The endpoint address maps too.
        let e = reg.lookup_addr("10.1.0.5:19090".parse().unwrap()).unwrap();
        assert_eq!(e.port, 9090);
        assert_eq!(
            reg.lookup_addr("240.0.0.10:5432".parse().unwrap())
                .unwrap()
                .protocol,
            Protocol::Tcp
        );
        assert!(
            reg.lookup_addr("240.0.0.11:9080".parse().unwrap())
                .is_none()
        );

        let x = reg.lookup_host("api.example.com", 443).unwrap();
        assert!(!x.mesh_internal);
        assert_eq!(x.protocol, Protocol::Tls);
        assert!(reg.lookup_host("api.example.com", 80).is_none());
        let w = reg.lookup_host("storage.googleapis.com", 443).unwrap();
        assert_eq!(w.service_entry, "egress/ext");
        assert!(reg.lookup_host("googleapis.com", 443).is_none());
        assert!(
            reg.lookup_host("reviews.shop.svc.cluster.local", 9080)
                .is_some()
        );
    }

    #[test]
    fn protocol_rules() {
        assert_eq!(Protocol::for_port("", "http"), Protocol::Http);
        assert_eq!(Protocol::for_port("", "http2-x"), Protocol::Http2);
        assert_eq!(Protocol::for_port("", "grpc-web-x"), Protocol::GrpcWeb);
        assert_eq!(Protocol::for_port("", "web"), Protocol::Unknown);
        assert_eq!(Protocol::for_port("HTTPS", "http"), Protocol::Https);
        assert_eq!(Protocol::for_port("", "mongo-db"), Protocol::Mongo);
        assert!(Protocol::Grpc.is_http());
        assert!(!Protocol::Tls.is_http());
    }

    #[test]
    fn subject_alt_names_and_cidrs() {
        let rs = resources(
            "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.internal]\n  addresses: [10.20.0.0/16]\n  location: MESH_INTERNAL\n  subjectAltNames: [\"spiffe://cluster.local/ns/data/sa/db\"]\n  ports: [{number: 5432, name: tcp-pg}]\n",
        );
        let reg = Registry::build(&rs, "cluster.local");
        let d = reg.lookup_addr("10.20.3.4:5432".parse().unwrap()).unwrap();
        assert_eq!(
            d.identities,
            vec!["spiffe://cluster.local/ns/data/sa/db".to_owned()]
        );
        assert!(reg.lookup_addr("10.21.3.4:5432".parse().unwrap()).is_none());
    }
}
