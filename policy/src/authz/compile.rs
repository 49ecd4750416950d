//! AuthorizationPolicy -> precompiled rules, once per config change.
//!
//! Every policy is compiled twice: for HTTP requests and for TCP connections, applying Istio's
//! rule for HTTP-only fields on TCP and for invalid values:
//! - ALLOW: a rule with an HTTP-only field (on TCP) or an invalid value is dropped.
//! - DENY, AUDIT, CUSTOM: the HTTP-only field (on TCP) or the invalid value is ignored, so the
//!   rule gets wider.
//! - A rule with an unknown `when` key is dropped for every action.

use http::HeaderName;
use ipnet::IpNet;

use super::test::{Clause, Conj, HeaderSource, Test, Vals};
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
    #[inline]
    pub(crate) fn matches(&self, req: &crate::request::Request<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|c| c.matches(req)))
            && (self.to.is_empty() || self.to.iter().any(|c| c.matches(req)))
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
    pub(crate) http: Box<[CompiledRule]>,
    pub(crate) tcp: Box<[CompiledRule]>,
    pub(crate) dropped: Box<[DroppedRule]>,
}

impl CompiledPolicy {
    /// Compiles a policy. Works on any policy value, validated or not: what validation would
    /// reject is handled as Istio's proxy configuration generator does (rules dropped or widened).
    pub fn compile(policy: &AuthorizationPolicy) -> CompiledPolicy {
        let action = policy.spec.action;
        let mut dropped = Vec::new();
        let mut forms = [Vec::new(), Vec::new()];
        for (p, protocol) in [Protocol::Http, Protocol::Tcp].into_iter().enumerate() {
            for (index, rule) in policy.spec.rules().iter().enumerate() {
                let mut cx = RuleCx {
                    action,
                    protocol,
                    namespace: &policy.metadata.namespace,
                    ignored: Vec::new(),
                };
                match cx.rule(rule) {
                    Ok((from, to, when)) => forms[p].push(CompiledRule {
                        index,
                        from,
                        to,
                        when,
                        ignored: cx.ignored.into(),
                    }),
                    Err(reason) => dropped.push(DroppedRule {
                        rule: index,
                        protocol,
                        reason,
                    }),
                }
            }
        }
        let [http, tcp] = forms;
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
            rule_count: policy.spec.rules().len(),
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

    pub(crate) fn rules(&self, protocol: Protocol) -> &[CompiledRule] {
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
        self.rules(protocol).iter().find(|r| r.matches(req))
    }
}

struct RuleCx<'a> {
    action: Action,
    protocol: Protocol,
    namespace: &'a str,
    ignored: Vec<String>,
}

type Parsed<M> = Result<M, String>;

impl RuleCx<'_> {
    /// Whether an invalid value or HTTP-only field drops the rule (ALLOW) or is ignored (others).
    fn strict(&self) -> bool {
        self.action == Action::Allow
    }

    #[allow(clippy::type_complexity)]
    fn rule(&mut self, rule: &Rule) -> Result<(Box<[Conj]>, Box<[Conj]>, Conj), String> {
        // Unknown keys fail the whole rule first, for every action (Istio's model.New).
        let mut keys = Vec::with_capacity(rule.when.len());
        for c in &rule.when {
            match attribute::parse_key(&c.key) {
                Ok(a) => keys.push(a),
                Err(e) => return Err(format!("when key {:?}: {e}", c.key)),
            }
        }
        let mut when = Vec::new();
        for (i, (c, attr)) in rule.when.iter().zip(keys).enumerate() {
            let field = format!("when[{i}]");
            if let Some(clause) = self.condition(&field, &c.key, attr, &c.values, &c.not_values)? {
                when.push(clause);
            }
        }
        let mut from = Vec::new();
        for (i, f) in rule.from.iter().flatten().enumerate() {
            let field = format!("from[{i}]");
            let clauses = match &f.source {
                Some(s) => self.source(&field, s)?,
                None => Vec::new(),
            };
            from.push(Conj::new(field, clauses));
        }
        let mut to = Vec::new();
        for (i, t) in rule.to.iter().flatten().enumerate() {
            let field = format!("to[{i}]");
            let clauses = match &t.operation {
                Some(o) => self.operation(&field, o)?,
                None => Vec::new(),
            };
            to.push(Conj::new(field, clauses));
        }
        Ok((from.into(), to.into(), Conj::new("when".into(), when)))
    }

    /// Builds one clause; `None` when nothing is left to check.
    #[allow(clippy::too_many_arguments)]
    fn clause<M>(
        &mut self,
        field: &str,
        names: (&str, &str),
        label: String,
        http_only: bool,
        values: &[String],
        not_values: &[String],
        parse: impl Fn(&str) -> Parsed<M>,
        make: impl FnOnce(Vals<M>) -> Test,
    ) -> Result<Option<Clause>, String> {
        if values.is_empty() && not_values.is_empty() {
            return Ok(None);
        }
        let what = if values.is_empty() { names.1 } else { names.0 };
        if http_only && self.protocol == Protocol::Tcp {
            let msg = format!("{field}.{what} is HTTP only");
            if self.strict() {
                return Err(msg);
            }
            self.ignored.push(format!("{msg}, ignored on TCP"));
            return Ok(None);
        }
        let mut parse_all =
            |list: &[String], name: &str| -> Result<(Vec<M>, Vec<Box<str>>), String> {
                let mut ms = Vec::with_capacity(list.len());
                let mut raw = Vec::with_capacity(list.len());
                for v in list {
                    match parse(v) {
                        Ok(m) => {
                            ms.push(m);
                            raw.push(v.as_str().into());
                        }
                        Err(why) => {
                            let msg = format!("{field}.{name} value {v:?}: {why}");
                            if self.strict() {
                                return Err(msg);
                            }
                            self.ignored.push(format!("{msg}, ignored"));
                        }
                    }
                }
                Ok((ms, raw))
            };
        let (pos, pos_raw) = parse_all(values, names.0)?;
        let (neg, neg_raw) = parse_all(not_values, names.1)?;
        if pos.is_empty() && neg.is_empty() {
            return Ok(None);
        }
        Ok(Some(Clause {
            label: label.into(),
            fields: (names.0.into(), names.1.into()),
            pos_raw: pos_raw.into(),
            neg_raw: neg_raw.into(),
            test: make(Vals {
                pos: pos.into(),
                neg: neg.into(),
            }),
        }))
    }

    fn source(&mut self, field: &str, s: &Source) -> Result<Vec<Clause>, String> {
        let f = &format!("{field}.source");
        let ns = self.namespace.to_owned();
        let mut out = Vec::new();
        let strs = |v: &str| -> Parsed<StrMatch> { Ok(StrMatch::parse(v)) };
        let ips =
            |v: &str| -> Parsed<IpNet> { attribute::parse_ip_block(v).map_err(|e| e.to_string()) };
        let parts: [Option<Clause>; 6] = [
            self.clause(
                f,
                ("principals", "notPrincipals"),
                "source principal".into(),
                false,
                &s.principals,
                &s.not_principals,
                strs,
                Test::Principal,
            )?,
            self.clause(
                f,
                ("requestPrincipals", "notRequestPrincipals"),
                "request principal".into(),
                true,
                &s.request_principals,
                &s.not_request_principals,
                |v| Ok(IssSubMatch::parse(v)),
                Test::RequestPrincipal,
            )?,
            self.clause(
                f,
                ("namespaces", "notNamespaces"),
                "source namespace".into(),
                false,
                &s.namespaces,
                &s.not_namespaces,
                |v| Ok(Glob::namespace(v)),
                Test::Namespace,
            )?,
            self.clause(
                f,
                ("serviceAccounts", "notServiceAccounts"),
                "source service account".into(),
                false,
                &s.service_accounts,
                &s.not_service_accounts,
                |v| Ok(ServiceAccountMatch::new(v, &ns)),
                Test::ServiceAccount,
            )?,
            self.clause(
                f,
                ("ipBlocks", "notIpBlocks"),
                "source ip".into(),
                false,
                &s.ip_blocks,
                &s.not_ip_blocks,
                ips,
                Test::SourceIp,
            )?,
            self.clause(
                f,
                ("remoteIpBlocks", "notRemoteIpBlocks"),
                "remote ip".into(),
                false,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                ips,
                Test::RemoteIp,
            )?,
        ];
        out.extend(parts.into_iter().flatten());
        Ok(out)
    }

    fn operation(&mut self, field: &str, o: &Operation) -> Result<Vec<Clause>, String> {
        let f = &format!("{field}.operation");
        let parts: [Option<Clause>; 4] = [
            self.clause(
                f,
                ("hosts", "notHosts"),
                "host".into(),
                true,
                &o.hosts,
                &o.not_hosts,
                |v| Ok(StrMatch::parse_lowercase(v)),
                Test::Host,
            )?,
            self.clause(
                f,
                ("ports", "notPorts"),
                "port".into(),
                false,
                &o.ports,
                &o.not_ports,
                |v| attribute::parse_port(v).map_err(|e| e.to_string()),
                Test::DestPort,
            )?,
            self.clause(
                f,
                ("methods", "notMethods"),
                "method".into(),
                true,
                &o.methods,
                &o.not_methods,
                |v| Ok(HeaderMatch::parse(v)),
                Test::Method,
            )?,
            self.clause(
                f,
                ("paths", "notPaths"),
                "path".into(),
                true,
                &o.paths,
                &o.not_paths,
                |v| PathMatch::parse(v).ok_or_else(|| "invalid path template".to_owned()),
                Test::Path,
            )?,
        ];
        Ok(parts.into_iter().flatten().collect())
    }

    fn condition(
        &mut self,
        field: &str,
        key: &str,
        attr: Attribute,
        values: &[String],
        not_values: &[String],
    ) -> Result<Option<Clause>, String> {
        let names = ("values", "notValues");
        let strs = |v: &str| -> Parsed<StrMatch> { Ok(StrMatch::parse(v)) };
        let ips =
            |v: &str| -> Parsed<IpNet> { attribute::parse_ip_block(v).map_err(|e| e.to_string()) };
        let http_only = attr.http_only();
        match attr {
            Attribute::RequestHeader(name) => {
                let source = HeaderSource::new(&name);
                let label = format!("header {}", name.to_ascii_lowercase());
                self.clause(
                    field,
                    names,
                    label,
                    http_only,
                    values,
                    not_values,
                    |v| Ok(HeaderMatch::parse(v)),
                    |vals| Test::Header(source, vals),
                )
            }
            Attribute::SourceIp => self.clause(
                field,
                names,
                "source ip".into(),
                http_only,
                values,
                not_values,
                ips,
                Test::SourceIp,
            ),
            Attribute::RemoteIp => self.clause(
                field,
                names,
                "remote ip".into(),
                http_only,
                values,
                not_values,
                ips,
                Test::RemoteIp,
            ),
            Attribute::DestinationIp => self.clause(
                field,
                names,
                "destination ip".into(),
                http_only,
                values,
                not_values,
                ips,
                Test::DestIp,
            ),
            Attribute::DestinationPort => self.clause(
                field,
                names,
                "destination port".into(),
                http_only,
                values,
                not_values,
                |v| attribute::parse_port(v).map_err(|e| e.to_string()),
                Test::DestPort,
            ),
            Attribute::SourceNamespace => self.clause(
                field,
                names,
                "source namespace".into(),
                http_only,
                values,
                not_values,
                |v| Ok(Glob::namespace(v)),
                Test::Namespace,
            ),
            Attribute::SourcePrincipal => self.clause(
                field,
                names,
                "source principal".into(),
                http_only,
                values,
                not_values,
                strs,
                Test::Principal,
            ),
            Attribute::RequestPrincipal => self.clause(
                field,
                names,
                "request principal".into(),
                http_only,
                values,
                not_values,
                |v| Ok(IssSubMatch::parse(v)),
                Test::RequestPrincipal,
            ),
            Attribute::RequestAudiences => self.clause(
                field,
                names,
                "JWT audience".into(),
                http_only,
                values,
                not_values,
                strs,
                Test::Audience,
            ),
            Attribute::RequestPresenter => self.clause(
                field,
                names,
                "JWT presenter".into(),
                http_only,
                values,
                not_values,
                strs,
                Test::Presenter,
            ),
            Attribute::RequestClaims(path) => {
                let label = format!("JWT claim {}", path.join("."));
                let path: Box<[Box<str>]> = path.into_iter().map(Into::into).collect();
                self.clause(
                    field,
                    names,
                    label,
                    http_only,
                    values,
                    not_values,
                    strs,
                    |vals| Test::Claim(path, vals),
                )
            }
            Attribute::ConnectionSni => self.clause(
                field,
                names,
                "sni".into(),
                http_only,
                values,
                not_values,
                strs,
                Test::Sni,
            ),
            Attribute::Experimental => {
                // Envoy metadata Warden does not have: treated as a value that cannot be compiled.
                let msg = format!("{field} key {key:?} is not supported by Warden");
                if self.strict() {
                    return Err(msg);
                }
                self.ignored.push(format!("{msg}, ignored"));
                Ok(None)
            }
        }
    }
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
