//! AuthorizationPolicy -> precompiled rules, once per config change.
//!
//! Every policy is compiled twice: for HTTP requests and for TCP connections, applying Istio's
//! rule for HTTP-only fields on TCP and for invalid values:
//! - ALLOW: a rule with an HTTP-only field (on TCP) or an invalid value is dropped.
//! - DENY, AUDIT, CUSTOM: the HTTP-only field (on TCP) or the invalid value is ignored, so the
//!   rule gets wider.
//! - A rule with an unknown `when` key is dropped for every action.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use super::test::{Clause, Conj, HeaderSource, Part, Test, Vals};
use crate::attribute::{self, Attribute};
use crate::error::ResourceId;
use crate::matcher::{Glob, HeaderMatch, IssSubMatch, PathMatch, ServiceAccountMatch, StrMatch};
use crate::resource::{Action, AuthorizationPolicy, Operation, Rule, Source};

/// HTTP request or TCP connection: which compiled form of the rules applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP requests.
    Http,
    /// TCP connections (and HTTP-only fields are treated per Istio's rule).
    Tcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Tcp => "TCP",
        })
    }
}

/// One rule, ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    /// The index in `spec.rules`.
    pub(crate) index: usize,
    /// `from` entries (OR); empty: any source.
    pub(crate) from: Box<[Conj]>,
    /// `to` entries (OR); empty: any operation.
    pub(crate) to: Box<[Conj]>,
    /// `when` conditions (AND).
    pub(crate) when: Conj,
    /// Parts ignored when compiling (HTTP-only on TCP, invalid values): they widened the rule.
    pub(crate) ignored: Box<[String]>,
}

impl CompiledRule {
    /// `from` AND `to` AND `when`, cheapest first: operations (method, path, port) usually
    /// decide before identities and headers need looking at.
    #[inline]
    pub(crate) fn matches(&self, req: &crate::request::Request<'_>) -> bool {
        (self.to.is_empty() || self.to.iter().any(|c| c.matches(req)))
            && (self.from.is_empty() || self.from.iter().any(|c| c.matches(req)))
            && self.when.matches(req)
    }

    /// The first matching `from` and `to` entries (for explanations).
    pub(crate) fn matched_entries(
        &self,
        req: &crate::request::Request<'_>,
    ) -> (Option<usize>, Option<usize>) {
        (
            self.from.iter().position(|c| c.matches(req)),
            self.to.iter().position(|c| c.matches(req)),
        )
    }
}

/// A rule left out of one protocol's form, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DroppedRule {
    /// The index in `spec.rules`.
    pub rule: usize,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Why (Istio's reason).
    pub reason: String,
}

/// An AuthorizationPolicy compiled for evaluation.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub(crate) id: ResourceId,
    pub(crate) action: Action,
    pub(crate) dry_run: bool,
    pub(crate) provider: Option<Box<str>>,
    pub(crate) rule_count: usize,
    /// The HTTP form. A rule without HTTP-only parts is shared with the TCP form.
    pub(crate) http: Box<[Arc<CompiledRule>]>,
    pub(crate) tcp: Box<[Arc<CompiledRule>]>,
    pub(crate) dropped: Box<[DroppedRule]>,
}

impl CompiledPolicy {
    /// Compiles a policy. Works on any policy value, validated or not: what validation would
    /// reject is handled as Istio's proxy configuration generator does (rules dropped or widened).
    pub fn compile(policy: &AuthorizationPolicy) -> CompiledPolicy {
        let action = policy.spec.action;
        let rules = policy.spec.rules();
        let mut dropped = Vec::new();
        let mut http = Vec::with_capacity(rules.len());
        let mut tcp = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let mut cx = RuleCx::new(action, Protocol::Http, &policy.metadata.namespace);
            let http_form = cx
                .rule(rule)
                .map(|parts| Arc::new(parts.into_rule(index, cx.ignored)));
            if !cx.saw_http_only {
                // Nothing HTTP-only in the rule: the TCP form is the same.
                match &http_form {
                    Ok(r) => tcp.push(Arc::clone(r)),
                    Err(reason) => dropped.push(DroppedRule {
                        rule: index,
                        protocol: Protocol::Tcp,
                        reason: reason.clone(),
                    }),
                }
            } else {
                let mut cx = RuleCx::new(action, Protocol::Tcp, &policy.metadata.namespace);
                match cx.rule(rule) {
                    Ok(parts) => tcp.push(Arc::new(parts.into_rule(index, cx.ignored))),
                    Err(reason) => dropped.push(DroppedRule {
                        rule: index,
                        protocol: Protocol::Tcp,
                        reason,
                    }),
                }
            }
            match http_form {
                Ok(r) => http.push(r),
                Err(reason) => dropped.push(DroppedRule {
                    rule: index,
                    protocol: Protocol::Http,
                    reason,
                }),
            }
        }
        dropped.sort_by_key(|d| (d.rule, d.protocol == Protocol::Tcp));
        CompiledPolicy {
            id: policy.id(),
            action,
            dry_run: policy.is_dry_run() && matches!(action, Action::Allow | Action::Deny),
            provider: policy
                .spec
                .provider
                .as_ref()
                .filter(|_| action == Action::Custom)
                .map(|p| p.name.as_str().into()),
            rule_count: rules.len(),
            http: http.into(),
            tcp: tcp.into(),
            dropped: dropped.into(),
        }
    }

    /// `namespace/name`.
    pub fn id(&self) -> &ResourceId {
        &self.id
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Whether the policy is dry-run (evaluated and reported, never enforced).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The ext-authz provider of a CUSTOM policy.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// The number of rules in the spec.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// Rules left out of the HTTP or TCP form, with Istio's reason.
    pub fn dropped_rules(&self) -> &[DroppedRule] {
        &self.dropped
    }

    pub(crate) fn rules(&self, protocol: Protocol) -> &[Arc<CompiledRule>] {
        match protocol {
            Protocol::Http => &self.http,
            Protocol::Tcp => &self.tcp,
        }
    }

    /// The first rule that matches, with the matching `from`/`to` entries.
    #[inline]
    pub(crate) fn first_match(
        &self,
        protocol: Protocol,
        req: &crate::request::Request<'_>,
    ) -> Option<&CompiledRule> {
        self.rules(protocol)
            .iter()
            .find(|r| r.matches(req))
            .map(|r| &**r)
    }
}

struct RuleCx<'a> {
    action: Action,
    protocol: Protocol,
    namespace: &'a str,
    ignored: Vec<String>,
    /// Whether the rule has an HTTP-only part (so its TCP form differs).
    saw_http_only: bool,
}

type Parsed<M> = Result<M, String>;

/// The parts of a compiled rule.
struct RuleParts {
    from: Box<[Conj]>,
    to: Box<[Conj]>,
    when: Conj,
}

impl RuleParts {
    fn into_rule(self, index: usize, ignored: Vec<String>) -> CompiledRule {
        CompiledRule {
            index,
            from: self.from,
            to: self.to,
            when: self.when,
            ignored: ignored.into(),
        }
    }
}

/// Where a field is, for messages: `from[0].source`, `to[1].operation`, `when[2]`.
#[derive(Clone, Copy)]
struct At {
    part: Part,
    index: usize,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.part {
            Part::From(i) => write!(f, "from[{i}].source"),
            Part::To(i) => write!(f, "to[{i}].operation"),
            Part::When => write!(f, "when[{}]", self.index),
        }
    }
}

/// One field to compile into a clause.
struct Field<'s> {
    at: At,
    names: (&'static str, &'static str),
    label: Cow<'static, str>,
    http_only: bool,
    values: &'s [String],
    not_values: &'s [String],
}

impl<'a> RuleCx<'a> {
    fn new(action: Action, protocol: Protocol, namespace: &'a str) -> Self {
        RuleCx {
            action,
            protocol,
            namespace,
            ignored: Vec::new(),
            saw_http_only: false,
        }
    }

    /// Whether an invalid value or HTTP-only field drops the rule (ALLOW) or is ignored (others).
    fn strict(&self) -> bool {
        self.action == Action::Allow
    }

    fn rule(&mut self, rule: &Rule) -> Result<RuleParts, String> {
        // Unknown keys fail the whole rule first, for every action (Istio's model.New).
        let mut keys = Vec::with_capacity(rule.when.len());
        for c in &rule.when {
            match attribute::parse_key(&c.key) {
                Ok(a) => keys.push(a),
                Err(e) => return Err(format!("when key {:?}: {e}", c.key)),
            }
        }
        let mut when = Vec::with_capacity(keys.len());
        for (index, (c, attr)) in rule.when.iter().zip(keys).enumerate() {
            let at = At {
                part: Part::When,
                index,
            };
            if let Some(clause) = self.condition(at, &c.key, attr, &c.values, &c.not_values)? {
                when.push(clause);
            }
        }
        let mut from = Vec::with_capacity(rule.from.as_ref().map_or(0, Vec::len));
        for (i, f) in rule.from.iter().flatten().enumerate() {
            let clauses = match &f.source {
                Some(s) => self.source(
                    At {
                        part: Part::From(i),
                        index: i,
                    },
                    s,
                )?,
                None => Vec::new(),
            };
            from.push(Conj::new(Part::From(i), clauses));
        }
        let mut to = Vec::with_capacity(rule.to.as_ref().map_or(0, Vec::len));
        for (i, t) in rule.to.iter().flatten().enumerate() {
            let clauses = match &t.operation {
                Some(o) => self.operation(
                    At {
                        part: Part::To(i),
                        index: i,
                    },
                    o,
                )?,
                None => Vec::new(),
            };
            to.push(Conj::new(Part::To(i), clauses));
        }
        Ok(RuleParts {
            from: from.into(),
            to: to.into(),
            when: Conj::new(Part::When, when),
        })
    }

    /// Builds one clause; `None` when nothing is left to check.
    fn clause<M>(
        &mut self,
        field: Field<'_>,
        parse: impl Fn(&str) -> Parsed<M>,
        make: impl FnOnce(Vals<M>) -> Test,
    ) -> Result<Option<Clause>, String> {
        let Field {
            at,
            names,
            label,
            http_only,
            values,
            not_values,
        } = field;
        if values.is_empty() && not_values.is_empty() {
            return Ok(None);
        }
        if http_only {
            self.saw_http_only = true;
            if self.protocol == Protocol::Tcp {
                let what = if values.is_empty() { names.1 } else { names.0 };
                let msg = format!("{at}.{what} is HTTP only");
                if self.strict() {
                    return Err(msg);
                }
                self.ignored.push(format!("{msg}, ignored on TCP"));
                return Ok(None);
            }
        }
        let mut parse_all = |list: &[String], name: &str| -> Result<Vec<M>, String> {
            let mut ms = Vec::with_capacity(list.len());
            for v in list {
                match parse(v) {
                    Ok(m) => ms.push(m),
                    Err(why) => {
                        let msg = format!("{at}.{name} value {v:?}: {why}");
                        if self.strict() {
                            return Err(msg);
                        }
                        self.ignored.push(format!("{msg}, ignored"));
                    }
                }
            }
            Ok(ms)
        };
        let pos = parse_all(values, names.0)?;
        let neg = parse_all(not_values, names.1)?;
        if pos.is_empty() && neg.is_empty() {
            return Ok(None);
        }
        Ok(Some(Clause {
            label,
            fields: names,
            test: make(Vals {
                pos: pos.into(),
                neg: neg.into(),
            }),
        }))
    }

    fn source(&mut self, at: At, s: &Source) -> Result<Vec<Clause>, String> {
        let ns = self.namespace;
        let f = |names, label: &'static str, http_only, values, not_values| Field {
            at,
            names,
            label: Cow::Borrowed(label),
            http_only,
            values,
            not_values,
        };
        let strs = |v: &str| -> Parsed<StrMatch> { Ok(StrMatch::parse(v)) };
        let ips =
            |v: &str| -> Parsed<IpNet> { attribute::parse_ip_block(v).map_err(|e| e.to_string()) };
        let parts: [Option<Clause>; 6] = [
            self.clause(
                f(
                    ("principals", "notPrincipals"),
                    "source principal",
                    false,
                    &s.principals,
                    &s.not_principals,
                ),
                strs,
                Test::Principal,
            )?,
            self.clause(
                f(
                    ("requestPrincipals", "notRequestPrincipals"),
                    "request principal",
                    true,
                    &s.request_principals,
                    &s.not_request_principals,
                ),
                |v| Ok(IssSubMatch::parse(v)),
                Test::RequestPrincipal,
            )?,
            self.clause(
                f(
                    ("namespaces", "notNamespaces"),
                    "source namespace",
                    false,
                    &s.namespaces,
                    &s.not_namespaces,
                ),
                |v| Ok(Glob::namespace(v)),
                Test::Namespace,
            )?,
            self.clause(
                f(
                    ("serviceAccounts", "notServiceAccounts"),
                    "source service account",
                    false,
                    &s.service_accounts,
                    &s.not_service_accounts,
                ),
                |v| Ok(ServiceAccountMatch::new(v, ns)),
                Test::ServiceAccount,
            )?,
            self.clause(
                f(
                    ("ipBlocks", "notIpBlocks"),
                    "source ip",
                    false,
                    &s.ip_blocks,
                    &s.not_ip_blocks,
                ),
                ips,
                Test::SourceIp,
            )?,
            self.clause(
                f(
                    ("remoteIpBlocks", "notRemoteIpBlocks"),
                    "remote ip",
                    false,
                    &s.remote_ip_blocks,
                    &s.not_remote_ip_blocks,
                ),
                ips,
                Test::RemoteIp,
            )?,
        ];
        Ok(collect_exact(parts))
    }

    fn operation(&mut self, at: At, o: &Operation) -> Result<Vec<Clause>, String> {
        let f = |names, label: &'static str, http_only, values, not_values| Field {
            at,
            names,
            label: Cow::Borrowed(label),
            http_only,
            values,
            not_values,
        };
        let parts: [Option<Clause>; 4] = [
            self.clause(
                f(("hosts", "notHosts"), "host", true, &o.hosts, &o.not_hosts),
                |v| Ok(StrMatch::parse_lowercase(v)),
                Test::Host,
            )?,
            self.clause(
                f(("ports", "notPorts"), "port", false, &o.ports, &o.not_ports),
                |v| attribute::parse_port(v).map_err(|e| e.to_string()),
                Test::DestPort,
            )?,
            self.clause(
                f(
                    ("methods", "notMethods"),
                    "method",
                    true,
                    &o.methods,
                    &o.not_methods,
                ),
                |v| Ok(HeaderMatch::parse(v)),
                Test::Method,
            )?,
            self.clause(
                f(("paths", "notPaths"), "path", true, &o.paths, &o.not_paths),
                |v| PathMatch::parse(v).ok_or_else(|| "invalid path template".to_owned()),
                Test::Path,
            )?,
        ];
        Ok(collect_exact(parts))
    }

    fn condition(
        &mut self,
        at: At,
        key: &str,
        attr: Attribute,
        values: &[String],
        not_values: &[String],
    ) -> Result<Option<Clause>, String> {
        let http_only = attr.http_only();
        let f = |label: Cow<'static, str>| Field {
            at,
            names: ("values", "notValues"),
            label,
            http_only,
            values,
            not_values,
        };
        let strs = |v: &str| -> Parsed<StrMatch> { Ok(StrMatch::parse(v)) };
        let ips =
            |v: &str| -> Parsed<IpNet> { attribute::parse_ip_block(v).map_err(|e| e.to_string()) };
        let ports = |v: &str| attribute::parse_port(v).map_err(|e| e.to_string());
        let b = Cow::Borrowed;
        match attr {
            Attribute::RequestHeader(name) => {
                let source = HeaderSource::new(&name);
                let label = Cow::Owned(format!("header {}", name.to_ascii_lowercase()));
                self.clause(
                    f(label),
                    |v| Ok(HeaderMatch::parse(v)),
                    |vals| Test::Header(source, vals),
                )
            }
            Attribute::SourceIp => self.clause(f(b("source ip")), ips, Test::SourceIp),
            Attribute::RemoteIp => self.clause(f(b("remote ip")), ips, Test::RemoteIp),
            Attribute::DestinationIp => self.clause(f(b("destination ip")), ips, Test::DestIp),
            Attribute::DestinationPort => {
                self.clause(f(b("destination port")), ports, Test::DestPort)
            }
            Attribute::SourceNamespace => self.clause(
                f(b("source namespace")),
                |v| Ok(Glob::namespace(v)),
                Test::Namespace,
            ),
            Attribute::SourcePrincipal => {
                self.clause(f(b("source principal")), strs, Test::Principal)
            }
            Attribute::RequestPrincipal => self.clause(
                f(b("request principal")),
                |v| Ok(IssSubMatch::parse(v)),
                Test::RequestPrincipal,
            ),
            Attribute::RequestAudiences => self.clause(f(b("JWT audience")), strs, Test::Audience),
            Attribute::RequestPresenter => {
                self.clause(f(b("JWT presenter")), strs, Test::Presenter)
            }
            Attribute::RequestClaims(path) => {
                let label = Cow::Owned(format!("JWT claim {}", path.join(".")));
                let path: Box<[Box<str>]> = path.into_iter().map(Into::into).collect();
                self.clause(f(label), strs, |vals| Test::Claim(path, vals))
            }
            Attribute::ConnectionSni => self.clause(f(b("sni")), strs, Test::Sni),
            Attribute::Experimental => {
                // Envoy metadata Warden does not have: treated as a value that cannot be compiled.
                self.saw_http_only = true;
                let msg = format!("{at} key {key:?} is not supported by Warden");
                if self.strict() {
                    return Err(msg);
                }
                self.ignored.push(format!("{msg}, ignored"));
                Ok(None)
            }
        }
    }
}

/// The clauses that are present, in a vector of exactly that size (it becomes a boxed slice
/// without reallocating).
fn collect_exact<const N: usize>(parts: [Option<Clause>; N]) -> Vec<Clause> {
    let mut out = Vec::with_capacity(parts.iter().flatten().count());
    out.extend(parts.into_iter().flatten());
    out
}

impl HeaderSource {
    fn new(name: &str) -> HeaderSource {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "host" | ":authority" => HeaderSource::Authority,
            ":method" => HeaderSource::Method,
            ":path" => HeaderSource::Path,
            _ => match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(h) => HeaderSource::Named(h),
                Err(_) => HeaderSource::Never,
            },
        }
    }
}
