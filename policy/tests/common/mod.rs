//! Shared test harness: policies from YAML, requests from a small builder.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use warden_policy::document::ObjectMeta;
use warden_policy::resource::{AuthorizationPolicy, AuthorizationPolicySpec};
use warden_policy::{
    CompiledPolicies, ConnectionContext, Decision, ExtAuthz, HttpRequest, Location, NoExtAuthz,
    PolicySet, PolicySetOptions, Request, RequestAuth, Resource, WorkloadRef, load,
};

/// Parses YAML (panics on any error, printing it) into a policy set with the default root.
pub fn set(yaml: &str) -> PolicySet {
    let report = load::LoadReport::from_files(vec![load::parse_file("test.yaml".as_ref(), yaml)]);
    let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert!(errors.is_empty(), "config errors: {errors:#?}");
    PolicySet::new(report.resources(), &PolicySetOptions::default())
}

/// An AuthorizationPolicy built from a spec without validation (what Istio's proxy config
/// generator sees when the webhook is bypassed).
pub fn unvalidated(namespace: &str, name: &str, spec_yaml: &str) -> Resource {
    let spec: AuthorizationPolicySpec = serde_yaml::from_str(spec_yaml).expect("spec schema");
    Resource::AuthorizationPolicy(AuthorizationPolicy {
        source: Location::new(std::path::Path::new("code"), 1),
        api_version: "security.istio.io/v1".into(),
        metadata: ObjectMeta {
            name: name.into(),
            namespace: namespace.into(),
            ..ObjectMeta::default()
        },
        spec,
    })
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A request description that owns its data.
#[derive(Clone, Debug)]
pub struct Req {
    pub peer: Option<String>,
    pub source_ip: IpAddr,
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: IpAddr,
    pub port: u16,
    pub sni: Option<String>,
    pub http: Option<Http>,
}

#[derive(Clone, Debug)]
pub struct Http {
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: HeaderMap,
    pub claims: Option<serde_json::Value>,
}

impl Req {
    pub fn tcp(port: u16) -> Req {
        Req {
            peer: None,
            source_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: None,
            destination_ip: "10.0.0.2".parse().unwrap(),
            port,
            sni: None,
            http: None,
        }
    }

    pub fn http(method: &str, path: &str) -> Req {
        Req {
            http: Some(Http {
                method: method.into(),
                host: "httpbin.foo:8000".into(),
                path: path.into(),
                headers: HeaderMap::new(),
                claims: None,
            }),
            ..Req::tcp(8000)
        }
    }

    pub fn get(path: &str) -> Req {
        Req::http("GET", path)
    }

    /// Peer principal, written like Istio policies (no scheme): the URI SAN gets `spiffe://`.
    pub fn peer(mut self, principal: &str) -> Req {
        self.peer = Some(format!("spiffe://{principal}"));
        self
    }

    pub fn source_ip(mut self, ip: &str) -> Req {
        self.source_ip = ip.parse().unwrap();
        self
    }

    pub fn remote_ip(mut self, ip: &str) -> Req {
        self.remote_ip = Some(ip.parse().unwrap());
        self
    }

    pub fn destination_ip(mut self, ip: &str) -> Req {
        self.destination_ip = ip.parse().unwrap();
        self
    }

    pub fn port(mut self, port: u16) -> Req {
        self.port = port;
        self
    }

    pub fn sni(mut self, sni: &str) -> Req {
        self.sni = Some(sni.into());
        self
    }

    pub fn host(mut self, host: &str) -> Req {
        self.http.as_mut().expect("http").host = host.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.http.as_mut().expect("http").headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    pub fn claims(mut self, claims: serde_json::Value) -> Req {
        self.http.as_mut().expect("http").claims = Some(claims);
        self
    }

    /// Runs `f` with the borrowed [`Request`].
    pub fn with<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let mut conn = ConnectionContext::new(self.source_ip, self.destination_ip, self.port);
        conn.peer_principal = self.peer.as_deref();
        conn.remote_ip = self.remote_ip.unwrap_or(self.source_ip);
        conn.sni = self.sni.as_deref();
        let req = match &self.http {
            None => Request::tcp(conn),
            Some(h) => Request::http(
                conn,
                HttpRequest {
                    method: &h.method,
                    host: &h.host,
                    path: &h.path,
                    headers: &h.headers,
                    auth: h.claims.as_ref().map(RequestAuth::new),
                },
            ),
        };
        f(&req)
    }
}

/// Compiles for a workload.
pub fn compile(set: &PolicySet, namespace: &str, pairs: &[(&str, &str)]) -> CompiledPolicies {
    let l = labels(pairs);
    set.compile_for(&WorkloadRef {
        namespace,
        labels: &l,
    })
}

/// The decision line for a request with no ext-authz provider.
pub fn decide(compiled: &CompiledPolicies, req: &Req) -> (bool, String) {
    decide_with(compiled, req, &NoExtAuthz)
}

pub fn decide_with(compiled: &CompiledPolicies, req: &Req, ext: &dyn ExtAuthz) -> (bool, String) {
    req.with(|r| {
        let d: Decision<'_> = compiled.authz.evaluate(r, ext);
        (d.is_allowed(), d.to_string())
    })
}

/// Whether a request is allowed.
pub fn allowed(compiled: &CompiledPolicies, req: &Req) -> bool {
    decide(compiled, req).0
}
