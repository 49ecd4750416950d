//! AuthorizationPolicy evaluation with Istio's semantics.
//!
//! Order, per request (HTTP) or connection (TCP):
//! 1. a CUSTOM policy matches and its provider denies (or fails) -> deny;
//! 2. a DENY policy matches -> deny;
//! 3. no ALLOW policy applies to the workload -> allow;
//! 4. an ALLOW policy matches -> allow;
//! 5. otherwise deny.
//!
//! AUDIT policies mark the request and never change the decision; dry-run policies are evaluated
//! and reported in [`Decision::dry_run`], never enforced.

mod compile;
mod decision;
mod ext;
mod test;
mod trace;

use std::sync::Arc;

pub use compile::{CompiledPolicy, DroppedRule, Protocol};
pub use decision::{Decision, DryRun, Explanation, Reason, RuleMatch, Verdict};
pub use ext::{
    AsyncExtAuthz, ExtAuthz, ExtAuthzDenial, ExtAuthzError, ExtAuthzVerdict, NoExtAuthz,
};
pub use trace::{PolicyTrace, RuleOutcome, RuleTrace};

use crate::request::Request;
use crate::resource::Action;

/// A CUSTOM rule matched: the provider must be asked before the decision (see
/// [`Authorizer::custom_match`] and [`Authorizer::finish`]).
#[derive(Debug, Clone, Copy)]
pub struct CustomMatch<'p> {
    /// The CUSTOM rule that matched.
    pub matched: RuleMatch<'p>,
    /// The provider to ask.
    pub provider: &'p str,
    /// CUSTOM policies for several providers apply: the request is denied without asking.
    pub conflict: bool,
}

/// The AuthorizationPolicies that apply to one workload, split by action, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    all: Box<[Arc<CompiledPolicy>]>,
    custom: Box<[Arc<CompiledPolicy>]>,
    deny: Box<[Arc<CompiledPolicy>]>,
    allow: Box<[Arc<CompiledPolicy>]>,
    audit: Box<[Arc<CompiledPolicy>]>,
    dry_deny: Box<[Arc<CompiledPolicy>]>,
    dry_allow: Box<[Arc<CompiledPolicy>]>,
    providers: Box<[Box<str>]>,
}

fn protocol(req: &Request<'_>) -> Protocol {
    if req.http.is_some() {
        Protocol::Http
    } else {
        Protocol::Tcp
    }
}

#[inline]
fn first_match<'p>(
    policies: &'p [Arc<CompiledPolicy>],
    protocol: Protocol,
    req: &Request<'_>,
) -> Option<RuleMatch<'p>> {
    for p in policies {
        if let Some(rule) = p.first_match(protocol, req) {
            let (from, to) = rule.matched_entries(req);
            return Some(RuleMatch {
                policy: p,
                rule,
                protocol,
                from,
                to,
            });
        }
    }
    None
}

impl Authorizer {
    /// The evaluator for a set of policies (the ones that apply to one workload).
    pub fn new(policies: impl IntoIterator<Item = Arc<CompiledPolicy>>) -> Self {
        let mut all: Vec<Arc<CompiledPolicy>> = policies.into_iter().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        let pick = |action: Action, dry: bool| -> Box<[Arc<CompiledPolicy>]> {
            all.iter()
                .filter(|p| p.action == action && p.dry_run == dry)
                .cloned()
                .collect()
        };
        let custom = pick(Action::Custom, false);
        let mut providers: Vec<Box<str>> =
            custom.iter().filter_map(|p| p.provider.clone()).collect();
        providers.sort();
        providers.dedup();
        Authorizer {
            deny: pick(Action::Deny, false),
            allow: pick(Action::Allow, false),
            audit: pick(Action::Audit, false),
            dry_deny: pick(Action::Deny, true),
            dry_allow: pick(Action::Allow, true),
            custom,
            providers: providers.into(),
            all: all.into(),
        }
    }

    /// Every applicable policy, sorted by `namespace/name`.
    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.all
    }

    /// Whether no policy applies (everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Step 1 of evaluation: the CUSTOM rule that matches, whose provider must be asked.
    pub fn custom_match<'p>(&'p self, req: &Request<'_>) -> Option<CustomMatch<'p>> {
        if self.custom.is_empty() {
            return None;
        }
        let matched = first_match(&self.custom, protocol(req), req)?;
        Some(CustomMatch {
            matched,
            provider: matched.policy.provider.as_deref().unwrap_or(""),
            conflict: self.providers.len() > 1,
        })
    }

    /// Step 2: the decision, given the CUSTOM match (if any) and its provider's answer.
    /// A CUSTOM match without an answer is denied (fail closed).
    pub fn finish<'p>(
        &'p self,
        req: &Request<'_>,
        custom: Option<CustomMatch<'p>>,
        answer: Option<Result<ExtAuthzVerdict, ExtAuthzError>>,
    ) -> Decision<'p> {
        let proto = protocol(req);
        let audit = if self.audit.is_empty() {
            None
        } else {
            first_match(&self.audit, proto, req)
        };
        let mut decision = Decision {
            verdict: Verdict::Allow,
            reason: Reason::NoAllowPolicies,
            custom: None,
            audit,
            dry_run: None,
        };
        let deny = |mut d: Decision<'p>, reason: Reason<'p>| {
            d.verdict = Verdict::Deny;
            d.reason = reason;
            d
        };
        if let Some(c) = custom {
            if c.conflict {
                decision = deny(
                    decision,
                    Reason::CustomConflict {
                        matched: c.matched,
                        providers: &self.providers,
                    },
                );
            } else {
                match answer {
                    Some(Ok(ExtAuthzVerdict::Allow)) => decision.custom = Some(c.matched),
                    Some(Ok(ExtAuthzVerdict::Deny(denial))) => {
                        decision = deny(
                            decision,
                            Reason::CustomDenied {
                                matched: c.matched,
                                denial,
                            },
                        );
                    }
                    Some(Err(error)) => {
                        decision = deny(
                            decision,
                            Reason::CustomFailed {
                                matched: c.matched,
                                error,
                            },
                        );
                    }
                    None => {
                        decision = deny(
                            decision,
                            Reason::CustomFailed {
                                matched: c.matched,
                                error: ExtAuthzError::Unavailable {
                                    provider: c.provider.to_owned(),
                                    reason: "not asked".to_owned(),
                                },
                            },
                        );
                    }
                }
            }
        }
        if decision.verdict == Verdict::Allow {
            if let Some(m) = first_match(&self.deny, proto, req) {
                decision = deny(decision, Reason::Denied(m));
            } else if !self.allow.is_empty() {
                match first_match(&self.allow, proto, req) {
                    Some(m) => decision.reason = Reason::Allowed(m),
                    None => {
                        decision = deny(
                            decision,
                            Reason::NoAllowMatched {
                                policies: &self.allow,
                            },
                        );
                    }
                }
            }
        }
        if !self.dry_deny.is_empty() || !self.dry_allow.is_empty() {
            decision.dry_run = Some(self.dry_run(&decision, proto, req));
        }
        decision
    }

    fn dry_run<'p>(
        &'p self,
        enforced: &Decision<'p>,
        proto: Protocol,
        req: &Request<'_>,
    ) -> DryRun<'p> {
        let deny = first_match(&self.dry_deny, proto, req);
        let allow = first_match(&self.dry_allow, proto, req);
        let has_allow = !self.dry_allow.is_empty();
        let would_allow = match &enforced.reason {
            Reason::CustomDenied { .. }
            | Reason::CustomFailed { .. }
            | Reason::CustomConflict { .. }
            | Reason::Denied(_) => false,
            _ if deny.is_some() => false,
            Reason::Allowed(_) => true,
            Reason::NoAllowPolicies | Reason::NoAllowMatched { .. } => {
                // With the dry-run ALLOW policies enforced, ALLOW policies apply if either set has one.
                let any_allow_policy = !self.allow.is_empty() || has_allow;
                !any_allow_policy || allow.is_some()
            }
        };
        DryRun {
            deny,
            allow,
            has_allow,
            would_be: if would_allow {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
        }
    }

    /// Evaluates a request, asking `ext` when a CUSTOM rule matches.
    pub fn evaluate<'p>(&'p self, req: &Request<'_>, ext: &dyn ExtAuthz) -> Decision<'p> {
        let custom = self.custom_match(req);
        let answer = custom
            .filter(|c| !c.conflict)
            .map(|c| ext.check(c.provider, req));
        self.finish(req, custom, answer)
    }

    /// Evaluates a request, awaiting `ext` when a CUSTOM rule matches.
    pub async fn evaluate_async<'p>(
        &'p self,
        req: &Request<'_>,
        ext: &dyn AsyncExtAuthz,
    ) -> Decision<'p> {
        let custom = self.custom_match(req);
        let answer = match custom.filter(|c| !c.conflict) {
            Some(c) => Some(ext.check(c.provider, req).await),
            None => None,
        };
        self.finish(req, custom, answer)
    }

    /// Every applicable policy evaluated rule by rule, in evaluation order (CUSTOM, DENY,
    /// ALLOW, AUDIT, then dry-run DENY and ALLOW). Allocates; for debugging.
    pub fn trace(&self, req: &Request<'_>) -> Vec<PolicyTrace> {
        let proto = protocol(req);
        [
            &self.custom,
            &self.deny,
            &self.allow,
            &self.audit,
            &self.dry_deny,
            &self.dry_allow,
        ]
        .into_iter()
        .flat_map(|list| list.iter())
        .map(|p| trace::policy(p, proto, req))
        .collect()
    }
}
