//! The outcome of authorization: allow or deny, which policy and rule decided, and why.

use std::fmt;
use std::sync::Arc;

use super::compile::{CompiledPolicy, CompiledRule, Protocol};
use super::ext::{ExtAuthzDenial, ExtAuthzError};
use super::test::Clause;
use crate::error::ResourceId;
use crate::resource::Action;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Let the request or connection through.
    Allow,
    /// Refuse it (HTTP 403 `RBAC: access denied`, or close the TCP connection).
    Deny,
}

/// A rule that matched: its policy, its index, and the `from`/`to` entries that matched.
#[derive(Debug, Clone, Copy)]
pub struct RuleMatch<'p> {
    pub(crate) policy: &'p CompiledPolicy,
    pub(crate) rule: &'p CompiledRule,
    pub(crate) protocol: Protocol,
    pub(crate) from: Option<usize>,
    pub(crate) to: Option<usize>,
}

impl<'p> RuleMatch<'p> {
    /// The policy (`namespace/name`).
    pub fn policy(&self) -> &'p ResourceId {
        &self.policy.id
    }

    /// The policy's action.
    pub fn action(&self) -> Action {
        self.policy.action
    }

    /// The index of the rule in `spec.rules`.
    pub fn rule_index(&self) -> usize {
        self.rule.index
    }

    /// What matched, in one line: `header x-bad matched "yes", path matched "/admin*"`.
    pub fn explanation(&self) -> Explanation<'p> {
        Explanation(*self)
    }

    fn clauses(&self) -> impl Iterator<Item = &'p Clause> {
        let from = self
            .from
            .map(|i| &self.rule.from[i].clauses[..])
            .unwrap_or(&[]);
        let to = self.to.map(|i| &self.rule.to[i].clauses[..]).unwrap_or(&[]);
        from.iter()
            .chain(to.iter())
            .chain(self.rule.when.clauses.iter())
    }
}

impl fmt::Display for RuleMatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.policy.id, self.rule.index)
    }
}

/// The one-line "why" of a [`RuleMatch`] (see [`RuleMatch::explanation`]).
#[derive(Debug, Clone, Copy)]
pub struct Explanation<'p>(RuleMatch<'p>);

fn list(f: &mut fmt::Formatter<'_>, values: &[std::borrow::Cow<'_, str>]) -> fmt::Result {
    f.write_str("[")?;
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v:?}")?;
    }
    f.write_str("]")
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if first {
                first = false;
                Ok(())
            } else {
                f.write_str(", ")
            }
        };
        for c in m.clauses() {
            let (pos, neg) = c.test.raw();
            match pos.len() {
                0 => {}
                1 => {
                    sep(f)?;
                    write!(f, "{} matched {:?}", c.label, pos[0])?;
                }
                _ => {
                    sep(f)?;
                    write!(f, "{} matched one of ", c.label)?;
                    list(f, &pos)?;
                }
            }
            if !neg.is_empty() {
                sep(f)?;
                write!(f, "{} not in {} ", c.label, c.fields.1)?;
                list(f, &neg)?;
            }
        }
        if first {
            let what = match m.protocol {
                Protocol::Http => "request",
                Protocol::Tcp => "connection",
            };
            write!(f, "the rule matches every {what}")?;
        }
        if !m.rule.ignored.is_empty() {
            write!(f, " (ignored: {})", m.rule.ignored.join("; "))?;
        }
        Ok(())
    }
}

/// Why the decision is what it is.
#[derive(Debug, Clone)]
pub enum Reason<'p> {
    /// No ALLOW policy applies to the workload, and nothing denied: allow.
    NoAllowPolicies,
    /// An ALLOW rule matched: allow.
    Allowed(RuleMatch<'p>),
    /// A DENY rule matched: deny.
    Denied(RuleMatch<'p>),
    /// ALLOW policies apply and none matched: deny.
    NoAllowMatched {
        /// The ALLOW policies that applied.
        policies: &'p [Arc<CompiledPolicy>],
    },
    /// A CUSTOM rule matched and its provider denied.
    CustomDenied {
        /// The CUSTOM rule.
        matched: RuleMatch<'p>,
        /// The provider's answer.
        denial: ExtAuthzDenial,
    },
    /// A CUSTOM rule matched and its provider could not answer: deny (fail closed).
    CustomFailed {
        /// The CUSTOM rule.
        matched: RuleMatch<'p>,
        /// What failed.
        error: ExtAuthzError,
    },
    /// CUSTOM policies for several providers apply to the workload (Istio allows one per
    /// workload and then denies the requests they match).
    CustomConflict {
        /// The CUSTOM rule that matched.
        matched: RuleMatch<'p>,
        /// The providers.
        providers: &'p [Box<str>],
    },
}

/// What the dry-run policies would have done. Dry-run policies never change the decision.
#[derive(Debug, Clone, Copy)]
pub struct DryRun<'p> {
    /// The first dry-run DENY rule that matched.
    pub deny: Option<RuleMatch<'p>>,
    /// The first dry-run ALLOW rule that matched.
    pub allow: Option<RuleMatch<'p>>,
    /// Whether any dry-run ALLOW policy applies.
    pub has_allow: bool,
    /// The verdict if the dry-run policies were enforced along with the others.
    pub would_be: Verdict,
}

/// An authorization decision.
#[derive(Debug, Clone)]
pub struct Decision<'p> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Which policy and rule decided, and why.
    pub reason: Reason<'p>,
    /// The CUSTOM rule whose provider allowed the request, if one matched.
    pub custom: Option<RuleMatch<'p>>,
    /// The first AUDIT rule that matched: the request should be audited.
    pub audit: Option<RuleMatch<'p>>,
    /// What dry-run policies would have done (`None` when none apply).
    pub dry_run: Option<DryRun<'p>>,
}

impl<'p> Decision<'p> {
    /// Whether the request may go through.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// The HTTP status for a denied request: the provider's for a CUSTOM denial, else 403.
    pub fn http_status(&self) -> u16 {
        match &self.reason {
            Reason::CustomDenied { denial, .. } => denial.status,
            _ => 403,
        }
    }

    /// The rule that decided, if a rule did.
    pub fn deciding_rule(&self) -> Option<RuleMatch<'p>> {
        match &self.reason {
            Reason::Allowed(m) | Reason::Denied(m) => Some(*m),
            Reason::CustomDenied { matched, .. }
            | Reason::CustomFailed { matched, .. }
            | Reason::CustomConflict { matched, .. } => Some(*matched),
            Reason::NoAllowPolicies | Reason::NoAllowMatched { .. } => None,
        }
    }
}

impl fmt::Display for Decision<'_> {
    /// One line, e.g. `denied by ns/deny-bad rule 0: header x-bad matched "yes"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Reason::NoAllowPolicies => f.write_str("allowed: no ALLOW policy applies")?,
            Reason::Allowed(m) => write!(f, "allowed by {m}: {}", m.explanation())?,
            Reason::Denied(m) => write!(f, "denied by {m}: {}", m.explanation())?,
            Reason::NoAllowMatched { policies } => {
                write!(f, "no ALLOW policy matched ({} applied: ", policies.len())?;
                for (i, p) in policies.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", p.id)?;
                }
                f.write_str(")")?;
            }
            Reason::CustomDenied { matched, denial } => write!(
                f,
                "denied by ext-authz provider {:?} ({}, CUSTOM {matched}): {}",
                matched.policy.provider.as_deref().unwrap_or(""),
                denial.status,
                if denial.reason.is_empty() {
                    "no reason given"
                } else {
                    &denial.reason
                }
            )?,
            Reason::CustomFailed { matched, error } => {
                write!(f, "denied: CUSTOM {matched} matched and {error}")?
            }
            Reason::CustomConflict { matched, providers } => {
                write!(
                    f,
                    "denied by CUSTOM {matched}: the workload has CUSTOM policies for {} providers (",
                    providers.len()
                )?;
                for (i, p) in providers.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p:?}")?;
                }
                f.write_str("); Istio allows one per workload")?
            }
        }
        Ok(())
    }
}
