//! The effective PeerAuthentication mode of a workload and port, with Istio's precedence.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::error::ResourceId;
use crate::resource::{MtlsMode, PeerAuthentication};

/// The inbound mTLS mode in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsPolicy {
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext, detected per connection (Istio's default).
    Permissive,
    /// mTLS with a client certificate only.
    Strict,
}

impl fmt::Display for MtlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsPolicy::Disable => "DISABLE",
            MtlsPolicy::Permissive => "PERMISSIVE",
            MtlsPolicy::Strict => "STRICT",
        })
    }
}

fn set(mode: MtlsMode) -> Option<MtlsPolicy> {
    match mode {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(MtlsPolicy::Disable),
        MtlsMode::Permissive => Some(MtlsPolicy::Permissive),
        MtlsMode::Strict => Some(MtlsPolicy::Strict),
    }
}

/// Which level set a mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "level", rename_all = "lowercase")]
pub enum ModeSource {
    /// Nothing set anywhere: Istio's default.
    Default,
    /// The mesh-wide policy (root namespace, no selector).
    Mesh {
        /// The policy.
        policy: ResourceId,
    },
    /// The namespace-wide policy (no selector).
    Namespace {
        /// The policy.
        policy: ResourceId,
    },
    /// The workload policy (selector).
    Workload {
        /// The policy.
        policy: ResourceId,
    },
    /// A `portLevelMtls` entry of the workload policy.
    Port {
        /// The policy.
        policy: ResourceId,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for ModeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeSource::Default => f.write_str("default, no PeerAuthentication sets a mode"),
            ModeSource::Mesh { policy } => write!(f, "mesh-wide {policy}"),
            ModeSource::Namespace { policy } => write!(f, "namespace-wide {policy}"),
            ModeSource::Workload { policy } => write!(f, "workload {policy}"),
            ModeSource::Port { policy, port } => {
                write!(f, "workload {policy}, portLevelMtls {port}")
            }
        }
    }
}

/// The PeerAuthentication result for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectivePeerAuthentication {
    /// The workload-wide mode.
    pub mode: MtlsPolicy,
    /// Where it comes from.
    pub source: ModeSource,
    /// Per-port modes from the workload policy's `portLevelMtls`.
    pub ports: BTreeMap<u16, MtlsPolicy>,
    /// The policies chosen at each level (oldest wins), in mesh, namespace, workload order.
    pub considered: Vec<ResourceId>,
}

impl Default for EffectivePeerAuthentication {
    fn default() -> Self {
        EffectivePeerAuthentication {
            mode: MtlsPolicy::Permissive,
            source: ModeSource::Default,
            ports: BTreeMap::new(),
            considered: Vec::new(),
        }
    }
}

impl EffectivePeerAuthentication {
    /// The mode for inbound traffic to `port` (the workload's port).
    pub fn mode_for_port(&self, port: u16) -> MtlsPolicy {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }

    /// The mode for `port` and where it comes from.
    pub fn explain_port(&self, port: u16) -> (MtlsPolicy, ModeSource) {
        match (self.ports.get(&port), &self.source, self.considered.last()) {
            (Some(m), _, Some(policy)) => (
                *m,
                ModeSource::Port {
                    policy: policy.clone(),
                    port,
                },
            ),
            _ => (self.mode, self.source.clone()),
        }
    }

    /// Istio's composition: workload (selector) > namespace > mesh (root namespace, no
    /// selector); several at a level: the oldest wins (creation time, then name); UNSET inherits;
    /// a selector policy in the root namespace is ignored; nothing set: PERMISSIVE.
    ///
    /// `policies` are those of the root namespace and the workload's namespace whose selector
    /// (if any) matches the workload.
    pub fn compose<'a>(
        root_namespace: &str,
        policies: impl IntoIterator<Item = &'a PeerAuthentication>,
    ) -> Self {
        let mut mesh: Option<&PeerAuthentication> = None;
        let mut namespace: Option<&PeerAuthentication> = None;
        let mut workload: Option<&PeerAuthentication> = None;
        let older = |a: &PeerAuthentication, b: &PeerAuthentication| {
            // `None` (no timestamp) sorts first, like Go's zero time.
            (a.metadata.creation_timestamp, &a.metadata.name)
                < (b.metadata.creation_timestamp, &b.metadata.name)
        };
        let keep = |slot: &mut Option<&'a PeerAuthentication>, p: &'a PeerAuthentication| {
            if slot.is_none_or(|cur| older(p, cur)) {
                *slot = Some(p);
            }
        };
        for p in policies {
            if !p.has_selector() {
                if p.metadata.namespace == root_namespace {
                    keep(&mut mesh, p);
                } else {
                    keep(&mut namespace, p);
                }
            } else if p.metadata.namespace != root_namespace {
                keep(&mut workload, p);
            }
        }
        let mut out = EffectivePeerAuthentication::default();
        let mode_of = |p: &PeerAuthentication| set(p.spec.mtls.unwrap_or_default().mode);
        if let Some(p) = mesh {
            out.considered.push(p.id());
            if let Some(m) = mode_of(p) {
                out.mode = m;
                out.source = ModeSource::Mesh { policy: p.id() };
            }
        }
        if let Some(p) = namespace {
            out.considered.push(p.id());
            if let Some(m) = mode_of(p) {
                out.mode = m;
                out.source = ModeSource::Namespace { policy: p.id() };
            }
        }
        if let Some(p) = workload {
            out.considered.push(p.id());
            if let Some(m) = mode_of(p) {
                out.mode = m;
                out.source = ModeSource::Workload { policy: p.id() };
            }
            for (port, mtls) in p.spec.port_level_mtls.iter().flatten() {
                let Some(port) = u16::try_from(port.0).ok().filter(|p| *p != 0) else {
                    continue;
                };
                out.ports.insert(port, set(mtls.mode).unwrap_or(out.mode));
            }
        }
        out
    }
}
