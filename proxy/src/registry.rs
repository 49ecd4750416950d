//! What the outbound side needs to know about a destination address.
//!
//! A thin trait ([`Registry`]) that the mesh registry (`policy::registry`, in progress elsewhere)
//! will implement; until then [`StaticRegistry`] is built in code or from the ServiceEntry
//! documents of the local config directory ([`StaticRegistry::from_service_entries`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use warden_identity::SpiffeId;

/// The application protocol of a service port, as Istio derives it from the port name or
/// `appProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Opaque TCP.
    Tcp,
    /// HTTP/1.1.
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// TLS (passed through).
    Tls,
}

impl AppProtocol {
    /// Istio's rule: `appProtocol`, else the port name's prefix before `-`; unknown is TCP.
    pub fn from_name(name: &str) -> Self {
        let prefix = name.split('-').next().unwrap_or("").to_ascii_lowercase();
        match prefix.as_str() {
            "http" => AppProtocol::Http,
            "http2" => AppProtocol::Http2,
            "grpc" | "grpc-web" => AppProtocol::Grpc,
            "tls" | "https" => AppProtocol::Tls,
            _ => AppProtocol::Tcp,
        }
    }
}

/// One destination service port.
#[derive(Debug, Serialize)]
pub struct Service {
    /// The host name, e.g. `echo.default.svc.cluster.local`.
    pub hostname: String,
    /// The port's protocol.
    pub protocol: AppProtocol,
    /// In the mesh (mTLS to its sidecars) or external (passthrough).
    pub mesh: bool,
    /// The identities of the workloads backing it (secure naming); mesh services only.
    pub identities: Vec<SpiffeId>,
    /// Where to connect. Empty: the original destination itself.
    pub endpoints: Vec<SocketAddr>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl Service {
    /// A mesh service backed by `identities`, reached at `endpoints`.
    pub fn mesh(
        hostname: impl Into<String>,
        protocol: AppProtocol,
        identities: Vec<SpiffeId>,
        endpoints: Vec<SocketAddr>,
    ) -> Self {
        Self {
            hostname: hostname.into(),
            protocol,
            mesh: true,
            identities,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// An external service (passthrough).
    pub fn external(hostname: impl Into<String>, protocol: AppProtocol) -> Self {
        Self {
            hostname: hostname.into(),
            protocol,
            mesh: false,
            identities: Vec::new(),
            endpoints: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint (round robin), or `original` when the service lists none.
    pub fn pick_endpoint(&self, original: SocketAddr) -> SocketAddr {
        if self.endpoints.is_empty() {
            return original;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints[i]
    }
}

/// Looks up destination addresses.
pub trait Registry: Send + Sync + 'static {
    /// The service behind `addr` (a service VIP or an endpoint address), if known.
    fn lookup(&self, addr: SocketAddr) -> Option<Arc<Service>>;
    /// A JSON view for `/config_dump`.
    fn dump(&self) -> serde_json::Value;
}

/// A registry held in memory.
#[derive(Debug, Default)]
pub struct StaticRegistry {
    by_addr: HashMap<SocketAddr, Arc<Service>>,
}

impl StaticRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Traffic to `addr` goes to `service`.
    pub fn insert(&mut self, addr: SocketAddr, service: Arc<Service>) {
        self.by_addr.insert(addr, service);
    }

    /// Reads `networking.istio.io` ServiceEntry documents: `hosts[0]`, `addresses` (IPs),
    /// `ports[].{number,name,protocol,targetPort}`, `location`, `endpoints[].{address,ports,
    /// serviceAccount}`, `subjectAltNames`. The identity of an endpoint is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>`. Interim, until the
    /// control plane's registry lands; documents it cannot read are reported and skipped.
    pub fn from_service_entries<'a>(
        docs: impl IntoIterator<Item = &'a warden_policy::Document>,
        trust_domain: &warden_identity::TrustDomain,
    ) -> (Self, Vec<String>) {
        let mut reg = Self::new();
        let mut problems = Vec::new();
        for doc in docs {
            if doc.kind != "ServiceEntry" {
                continue;
            }
            if let Err(e) = reg.add_service_entry(doc, trust_domain) {
                problems.push(format!(
                    "{}: ServiceEntry {}/{}: {e}",
                    doc.source.file.display(),
                    doc.metadata.namespace,
                    doc.metadata.name
                ));
            }
        }
        (reg, problems)
    }

    fn add_service_entry(
        &mut self,
        doc: &warden_policy::Document,
        td: &warden_identity::TrustDomain,
    ) -> Result<(), String> {
        use serde_yaml::Value;
        let spec = doc.raw.get("spec").ok_or("spec is missing")?;
        let ns = doc.metadata.namespace.as_str();
        let host = spec
            .get("hosts")
            .and_then(|h| h.get(0))
            .and_then(Value::as_str)
            .ok_or("spec.hosts[0] is missing")?;
        let mesh = match spec.get("location").and_then(Value::as_str) {
            None | Some("MESH_INTERNAL") => true,
            Some("MESH_EXTERNAL") => false,
            Some(other) => return Err(format!("spec.location: invalid value {other:?}")),
        };
        let str_list = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_sequence)
                .map(|s| {
                    s.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let addresses: Vec<IpAddr> = str_list(spec.get("addresses"))
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("spec.addresses: invalid IP {a:?}"))
            })
            .collect::<Result<_, _>>()?;
        let mut extra_ids = Vec::new();
        for san in str_list(spec.get("subjectAltNames")) {
            extra_ids.push(
                SpiffeId::parse(&san).map_err(|e| format!("spec.subjectAltNames: {san:?}: {e}"))?,
            );
        }
        let ports = spec
            .get("ports")
            .and_then(Value::as_sequence)
            .ok_or("spec.ports is missing")?;
        for (pi, port) in ports.iter().enumerate() {
            let number = port
                .get("number")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or(format!("spec.ports[{pi}].number is missing or invalid"))?;
            let name = port.get("name").and_then(Value::as_str).unwrap_or("");
            let proto = port
                .get("protocol")
                .and_then(Value::as_str)
                .map(AppProtocol::from_name)
                .unwrap_or_else(|| AppProtocol::from_name(name));
            let target = port
                .get("targetPort")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(number);
            let mut ids = extra_ids.clone();
            let mut endpoints = Vec::new();
            if let Some(eps) = spec.get("endpoints").and_then(Value::as_sequence) {
                for (ei, ep) in eps.iter().enumerate() {
                    let addr: IpAddr = ep
                        .get("address")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse().ok())
                        .ok_or(format!(
                            "spec.endpoints[{ei}].address is missing or not an IP"
                        ))?;
                    let ep_port = ep
                        .get("ports")
                        .and_then(|p| p.get(name))
                        .and_then(Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(target);
                    endpoints.push(SocketAddr::new(addr, ep_port));
                    if let Some(sa) = ep.get("serviceAccount").and_then(Value::as_str) {
                        let id = SpiffeId::istio(td, ns, sa).map_err(|e| {
                            format!("spec.endpoints[{ei}].serviceAccount {sa:?}: {e}")
                        })?;
                        if !ids.contains(&id) {
                            ids.push(id);
                        }
                    }
                }
            }
            if mesh && ids.is_empty() {
                return Err(format!(
                    "a MESH_INTERNAL service needs endpoints with serviceAccount or subjectAltNames (secure naming) for port {number}"
                ));
            }
            let svc = Arc::new(if mesh {
                Service::mesh(host, proto, ids, endpoints.clone())
            } else {
                Service::external(host, proto)
            });
            for a in &addresses {
                self.insert(SocketAddr::new(*a, number), svc.clone());
            }
            for e in &endpoints {
                self.by_addr.entry(*e).or_insert_with(|| svc.clone());
            }
        }
        Ok(())
    }
}

impl Registry for StaticRegistry {
    fn lookup(&self, addr: SocketAddr) -> Option<Arc<Service>> {
        self.by_addr.get(&addr).cloned()
    }

    fn dump(&self) -> serde_json::Value {
        let mut entries: Vec<_> = self
            .by_addr
            .iter()
            .map(|(a, s)| serde_json::json!({"address": a.to_string(), "service": &**s}))
            .collect();
        entries.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        serde_json::Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_port_name() {
        assert_eq!(AppProtocol::from_name("http-web"), AppProtocol::Http);
        assert_eq!(AppProtocol::from_name("grpc"), AppProtocol::Grpc);
        assert_eq!(AppProtocol::from_name("HTTP2"), AppProtocol::Http2);
        assert_eq!(AppProtocol::from_name("redis"), AppProtocol::Tcp);
        assert_eq!(AppProtocol::from_name(""), AppProtocol::Tcp);
    }

    #[test]
    fn service_entry() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo.shop.svc.cluster.local]
  addresses: [10.9.0.1]
  ports: [{number: 7000, name: tcp-echo}]
  endpoints:
  - {address: 10.1.0.5, serviceAccount: echo, ports: {tcp-echo: 17000}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [example.com]
  addresses: [192.0.2.1]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls}]
"#;
        let report = warden_policy::parse_file("se.yaml".as_ref(), yaml);
        let (reg, problems) = StaticRegistry::from_service_entries(
            &report.others,
            &warden_identity::TrustDomain::default(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let s = reg.lookup("10.9.0.1:7000".parse().unwrap()).unwrap();
        assert!(s.mesh);
        assert_eq!(s.protocol, AppProtocol::Tcp);
        assert_eq!(
            s.identities[0].as_str(),
            "spiffe://cluster.local/ns/shop/sa/echo"
        );
        assert_eq!(
            s.pick_endpoint("10.9.0.1:7000".parse().unwrap())
                .to_string(),
            "10.1.0.5:17000"
        );
        let e = reg.lookup("192.0.2.1:443".parse().unwrap()).unwrap();
        assert!(!e.mesh);
        assert!(reg.lookup("192.0.2.1:80".parse().unwrap()).is_none());
    }

    #[test]
    fn mesh_entry_without_identity_is_reported() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [x], addresses: [10.0.0.1], ports: [{number: 80, name: http}]}\n";
        let report = warden_policy::parse_file("se.yaml".as_ref(), yaml);
        let (_, problems) = StaticRegistry::from_service_entries(
            &report.others,
            &warden_identity::TrustDomain::default(),
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("ServiceEntry default/x"),
            "{problems:?}"
        );
    }
}
