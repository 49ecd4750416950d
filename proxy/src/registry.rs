//! The outbound view of the mesh registry.
//!
//! The registry itself (ServiceEntry / WorkloadEntry parsing, `ip:port` and `host:port` lookup,
//! protocols, secure-naming identities) is [`warden_policy::registry::Registry`]. This module only
//! adds what a proxy needs per connection and should not recompute each time: the identities
//! parsed as [`SpiffeId`]s, the IP endpoints as [`SocketAddr`]s, and a round-robin cursor per
//! service. Built once per config change ([`ServiceRegistry::new`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use warden_identity::SpiffeId;
use warden_identity::tls::Alpn;
use warden_policy::registry::{Destination, Protocol, Registry};

/// One destination service port, ready for the outbound path.
#[derive(Debug)]
pub struct Service {
    destination: Arc<Destination>,
    identities: Vec<SpiffeId>,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Service {
    fn new(destination: Arc<Destination>, problems: &mut Vec<String>) -> Self {
        let mut identities = Vec::with_capacity(destination.identities.len());
        for id in &destination.identities {
            match SpiffeId::parse(id) {
                Ok(id) => identities.push(id),
                Err(e) => problems.push(format!(
                    "ServiceEntry {} port {}: identity {id:?} skipped: {e}",
                    destination.service_entry, destination.port
                )),
            }
        }
        if destination.mesh_internal && identities.is_empty() {
            problems.push(format!(
                "ServiceEntry {} port {}: MESH_INTERNAL without any identity (endpoints with \
                 serviceAccount, or subjectAltNames): every connection to it fails secure naming",
                destination.service_entry, destination.port
            ));
        }
        // Endpoints given by host name (DNS resolution) are not resolved here: the original
        // destination is used for them.
        let endpoints = destination
            .endpoints
            .iter()
            .filter_map(|e| {
                e.address
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, e.port))
            })
            .collect();
        Self {
            destination,
            identities,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The registry entry.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The service host name, e.g. `echo.default.svc.cluster.local`.
    pub fn hostname(&self) -> &str {
        &self.destination.host
    }

    /// The port's protocol.
    pub fn protocol(&self) -> Protocol {
        self.destination.protocol
    }

    /// In the mesh (mTLS with secure naming) or external (passthrough).
    pub fn is_mesh(&self) -> bool {
        self.destination.mesh_internal
    }

    /// The identities its endpoints may present (the secure-naming set).
    pub fn identities(&self) -> &[SpiffeId] {
        &self.identities
    }

    /// The next IP endpoint (round robin), or `original` when the service has none.
    pub fn pick_endpoint(&self, original: SocketAddr) -> SocketAddr {
        if self.endpoints.is_empty() {
            return original;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints[i]
    }

    /// The ALPN set a client sidecar offers to this service's sidecars (reference §5).
    pub fn alpn(&self) -> Alpn {
        match self.destination.protocol {
            Protocol::Http => Alpn::Http11,
            Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => Alpn::Http2,
            _ => Alpn::Tcp,
        }
    }
}

/// The registry with its per-service outbound state. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct ServiceRegistry {
    registry: Registry,
    /// Keyed by the address of the registry's `Destination` (stable: each lives in an `Arc`).
    services: HashMap<usize, Arc<Service>>,
    problems: Vec<String>,
}

fn key(d: &Destination) -> usize {
    std::ptr::from_ref(d) as usize
}

impl ServiceRegistry {
    /// Wraps `registry`; problems (unusable identities, mesh services without any) are kept
    /// for [`problems`](Self::problems).
    pub fn new(registry: Registry) -> Self {
        let mut problems = Vec::new();
        let services = registry
            .destinations()
            .iter()
            .map(|d| (key(d), Arc::new(Service::new(d.clone(), &mut problems))))
            .collect();
        Self {
            registry,
            services,
            problems,
        }
    }

    /// The service behind `addr` (a VIP, a CIDR of `addresses`, or an endpoint), if known.
    pub fn lookup(&self, addr: SocketAddr) -> Option<Arc<Service>> {
        self.registry
            .lookup_addr(addr)
            .and_then(|d| self.services.get(&key(d)).cloned())
    }

    /// The service for `host:port` (`host` in lower case), if known.
    pub fn lookup_host(&self, host: &str, port: u16) -> Option<Arc<Service>> {
        self.registry
            .lookup_host(host, port)
            .and_then(|d| self.services.get(&key(d)).cloned())
    }

    /// The underlying registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What was wrong with the entries (reported, not fatal).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// A JSON view for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let all: Vec<&Destination> = self.registry.destinations().iter().map(|d| &**d).collect();
        serde_json::to_value(all).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_policy::config::parse_config_file;

    fn build(yaml: &str) -> ServiceRegistry {
        let f = parse_config_file("se.yaml".as_ref(), yaml);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        ServiceRegistry::new(Registry::build(&f.networking, "cluster.local"))
    }

    const ENTRIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  addresses: [10.9.0.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-echo}, {number: 8080, name: http-web}]
  endpoints:
  - {address: 10.1.0.5, serviceAccount: echo, ports: {tcp-echo: 17000}}
  - {address: 10.1.0.6, serviceAccount: echo, ports: {tcp-echo: 17000}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [example.com]
  addresses: [192.0.2.1]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 443, name: tls}]
"#;

    #[test]
    fn mesh_and_external_services() {
        let reg = build(ENTRIES);
        assert!(reg.problems().is_empty(), "{:?}", reg.problems());
        let vip: SocketAddr = "10.9.0.1:7000".parse().unwrap();
        let s = reg.lookup(vip).unwrap();
        assert!(s.is_mesh());
        assert_eq!(s.hostname(), "echo.shop.svc.cluster.local");
        assert_eq!(s.alpn(), Alpn::Tcp);
        assert_eq!(
            s.identities()[0].as_str(),
            "spiffe://cluster.local/ns/shop/sa/echo"
        );
        // Round robin over the two endpoints.
        let picks: Vec<String> = (0..4).map(|_| s.pick_endpoint(vip).to_string()).collect();
        assert_eq!(
            picks,
            [
                "10.1.0.5:17000",
                "10.1.0.6:17000",
                "10.1.0.5:17000",
                "10.1.0.6:17000"
            ]
        );
        // The same service object (and cursor) for the same destination.
        assert!(Arc::ptr_eq(&s, &reg.lookup(vip).unwrap()));
        let web = reg.lookup("10.9.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(web.alpn(), Alpn::Http11);
        assert!(!Arc::ptr_eq(&s, &web));

        let ext: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let e = reg.lookup(ext).unwrap();
        assert!(!e.is_mesh());
        assert_eq!(e.pick_endpoint(ext), ext, "no endpoints: the original");
        assert!(reg.lookup("192.0.2.1:80".parse().unwrap()).is_none());
        assert!(reg.lookup_host("example.com", 443).is_some());
        assert_eq!(reg.dump().as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn mesh_entry_without_identity_is_reported() {
        let reg = build(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x, namespace: a}\nspec: {hosts: [x], addresses: [10.0.0.1], location: MESH_INTERNAL, ports: [{number: 80, name: http}]}\n",
        );
        assert_eq!(reg.problems().len(), 1, "{:?}", reg.problems());
        assert!(
            reg.problems()[0].contains("ServiceEntry a/x port 80"),
            "{:?}",
            reg.problems()
        );
        // Still listed: connections to it fail closed on secure naming.
        let s = reg.lookup("10.0.0.1:80".parse().unwrap()).unwrap();
        assert!(s.is_mesh() && s.identities().is_empty());
    }
}
