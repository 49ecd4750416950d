//! Which policies apply to which workload: namespace, selector, root namespace, targetRef.
//! [`PolicySet`] compiles every AuthorizationPolicy once and indexes everything by namespace, so
//! [`PolicySet::compile_for`] only looks at the root namespace and the workload's namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::authz::{Authorizer, CompiledPolicy};
use crate::error::ResourceId;
use crate::jwt_rule::JwtRule;
use crate::peer_authn::EffectivePeerAuthentication;
use crate::resource::{
    GATEWAY_NAME_LABEL, PeerAuthentication, PolicyTargetReference, RequestAuthentication, Resource,
    WorkloadSelector,
};

/// Istio's default root namespace (MeshConfig `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// Options for a [`PolicySet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetOptions {
    /// The root namespace: its policies apply mesh-wide.
    pub root_namespace: String,
}

impl Default for PolicySetOptions {
    fn default() -> Self {
        PolicySetOptions {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
        }
    }
}

/// A workload to compile policies for.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRef<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its (pod) labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Which workloads a policy selects inside its scope.
#[derive(Debug, Clone)]
enum Selects {
    /// Every workload of the namespace (or of the mesh, in the root namespace).
    All,
    /// Workloads with these labels.
    Labels(BTreeMap<String, String>),
    /// Gateway deployments of these Gateways (same namespace only).
    Gateways(Vec<String>),
    /// Nothing Warden runs (waypoint-only targets).
    Nothing,
}

impl Selects {
    fn new(
        selector: Option<&WorkloadSelector>,
        target_ref: Option<&PolicyTargetReference>,
        target_refs: &[PolicyTargetReference],
    ) -> Selects {
        if target_ref.is_some() || !target_refs.is_empty() {
            let gateways: Vec<String> = target_ref
                .into_iter()
                .chain(target_refs)
                .filter(|t| t.is_gateway())
                .map(|t| t.name.clone())
                .collect();
            return if gateways.is_empty() {
                Selects::Nothing
            } else {
                Selects::Gateways(gateways)
            };
        }
        match selector {
            Some(s) if !s.match_labels.is_empty() => Selects::Labels(s.match_labels.clone()),
            _ => Selects::All,
        }
    }

    fn applies(&self, policy_ns: &str, root: &str, wl: &WorkloadRef<'_>) -> bool {
        let same_ns = policy_ns == wl.namespace;
        if !same_ns && policy_ns != root {
            return false;
        }
        match self {
            Selects::All => true,
            Selects::Labels(labels) => labels
                .iter()
                .all(|(k, v)| wl.labels.get(k).is_some_and(|l| l == v)),
            Selects::Gateways(names) => {
                same_ns
                    && wl
                        .labels
                        .get(GATEWAY_NAME_LABEL)
                        .is_some_and(|g| names.iter().any(|n| n == g))
            }
            Selects::Nothing => false,
        }
    }
}

#[derive(Debug, Default)]
struct NamespaceIndex {
    authz: Vec<usize>,
    peer: Vec<usize>,
    request_authn: Vec<usize>,
}

/// Every security resource of the mesh, compiled and indexed. Build one per config change.
#[derive(Debug, Default)]
pub struct PolicySet {
    root_namespace: String,
    authz: Vec<(Selects, String, Arc<CompiledPolicy>)>,
    peer: Vec<Arc<PeerAuthentication>>,
    request_authn: Vec<(Selects, Arc<RequestAuthentication>)>,
    by_namespace: HashMap<String, NamespaceIndex>,
}

/// One `jwtRules[]` entry that applies to a workload.
#[derive(Debug, Clone)]
pub struct AppliedJwtRule {
    policy: Arc<RequestAuthentication>,
    index: usize,
}

impl AppliedJwtRule {
    /// The RequestAuthentication (`namespace/name`).
    pub fn policy(&self) -> ResourceId {
        self.policy.id()
    }

    /// The index in `spec.jwtRules`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rule.
    pub fn rule(&self) -> &JwtRule {
        &self.policy.spec.jwt_rules[self.index]
    }
}

/// Everything that applies to one workload, compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    /// AuthorizationPolicy evaluation.
    pub authz: Authorizer,
    /// The PeerAuthentication result (mode per port).
    pub peer_authentication: EffectivePeerAuthentication,
    /// The RequestAuthentication JWT rules, all applicable policies together (sorted by policy).
    pub jwt_rules: Vec<AppliedJwtRule>,
    /// The RequestAuthentication policies that apply.
    pub request_authentications: Vec<ResourceId>,
}

/// Whether `resource` applies to the workload: it is in the workload's namespace or in the root
/// namespace, and its selector (or targetRef) picks the workload. The same rule
/// [`PolicySet::compile_for`] uses; a control plane uses it to send each proxy only what applies.
pub fn applies_to(resource: &Resource, root_namespace: &str, wl: &WorkloadRef<'_>) -> bool {
    let ns = resource.metadata().namespace.as_str();
    match resource {
        Resource::AuthorizationPolicy(p) => Selects::new(
            p.spec.selector.as_ref(),
            p.spec.target_ref.as_ref(),
            &p.spec.target_refs,
        )
        .applies(ns, root_namespace, wl),
        Resource::RequestAuthentication(p) => Selects::new(
            p.spec.selector.as_ref(),
            p.spec.target_ref.as_ref(),
            &p.spec.target_refs,
        )
        .applies(ns, root_namespace, wl),
        Resource::PeerAuthentication(p) => {
            (ns == wl.namespace || ns == root_namespace)
                && p.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.matches(wl.labels))
        }
    }
}

impl PolicySet {
    /// Compiles and indexes resources.
    pub fn new<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
        options: &PolicySetOptions,
    ) -> Self {
        let mut set = PolicySet {
            root_namespace: options.root_namespace.clone(),
            ..PolicySet::default()
        };
        for r in resources {
            set.insert(r);
        }
        set
    }

    /// Adds one resource.
    pub fn insert(&mut self, resource: &Resource) {
        match resource {
            Resource::AuthorizationPolicy(p) => {
                let selects = Selects::new(
                    p.spec.selector.as_ref(),
                    p.spec.target_ref.as_ref(),
                    &p.spec.target_refs,
                );
                let compiled = Arc::new(CompiledPolicy::compile(p));
                let ns = p.metadata.namespace.clone();
                let idx = self.authz.len();
                self.authz.push((selects, ns.clone(), compiled));
                self.by_namespace.entry(ns).or_default().authz.push(idx);
            }
            Resource::PeerAuthentication(p) => {
                let idx = self.peer.len();
                let ns = p.metadata.namespace.clone();
                self.peer.push(Arc::new(p.clone()));
                self.by_namespace.entry(ns).or_default().peer.push(idx);
            }
            Resource::RequestAuthentication(p) => {
                let selects = Selects::new(
                    p.spec.selector.as_ref(),
                    p.spec.target_ref.as_ref(),
                    &p.spec.target_refs,
                );
                let idx = self.request_authn.len();
                let ns = p.metadata.namespace.clone();
                self.request_authn.push((selects, Arc::new(p.clone())));
                self.by_namespace
                    .entry(ns)
                    .or_default()
                    .request_authn
                    .push(idx);
            }
        }
    }

    /// The root namespace.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The number of resources.
    pub fn len(&self) -> usize {
        self.authz.len() + self.peer.len() + self.request_authn.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The namespaces to look at for a workload: the root namespace and its own.
    fn scopes<'a>(&'a self, wl: &WorkloadRef<'_>) -> impl Iterator<Item = &'a NamespaceIndex> {
        let root = self.by_namespace.get(&self.root_namespace);
        let own = if wl.namespace == self.root_namespace {
            None
        } else {
            self.by_namespace.get(wl.namespace)
        };
        root.into_iter().chain(own)
    }

    /// Compiles what applies to one workload: cost proportional to the policies of the root
    /// namespace and the workload's namespace, not to the whole mesh.
    pub fn compile_for(&self, wl: &WorkloadRef<'_>) -> CompiledPolicies {
        let root = self.root_namespace.as_str();
        let authz = Authorizer::new(
            self.scopes(wl)
                .flat_map(|ix| ix.authz.iter())
                .map(|&i| &self.authz[i])
                .filter(|(selects, ns, _)| selects.applies(ns, root, wl))
                .map(|(_, _, p)| p.clone()),
        );
        let peer = self
            .scopes(wl)
            .flat_map(|ix| ix.peer.iter())
            .map(|&i| &*self.peer[i])
            .filter(|p| {
                p.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.matches(wl.labels))
            });
        let peer_authentication = EffectivePeerAuthentication::compose(root, peer);
        let mut ra: Vec<&Arc<RequestAuthentication>> = self
            .scopes(wl)
            .flat_map(|ix| ix.request_authn.iter())
            .map(|&i| &self.request_authn[i])
            .filter(|(selects, p)| selects.applies(&p.metadata.namespace, root, wl))
            .map(|(_, p)| p)
            .collect();
        ra.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let jwt_rules = ra
            .iter()
            .flat_map(|p| {
                (0..p.spec.jwt_rules.len()).map(|index| AppliedJwtRule {
                    policy: Arc::clone(p),
                    index,
                })
            })
            .collect();
        CompiledPolicies {
            authz,
            peer_authentication,
            jwt_rules,
            request_authentications: ra.iter().map(|p| p.id()).collect(),
        }
    }
}
