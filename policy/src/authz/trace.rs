//! A full, allocating account of every policy and rule for one request: what `warden check`
//! prints. Not for the hot path.

use serde::Serialize;

use super::compile::{CompiledPolicy, CompiledRule, Protocol};
use super::test::{Clause, Conj, Part};
use crate::error::ResourceId;
use crate::request::Request;
use crate::resource::Action;

/// The outcome of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RuleOutcome {
    /// Every part matched; the parts and the values that matched.
    Matched {
        /// One line per matching part.
        why: Vec<String>,
    },
    /// The first part that did not match.
    NotMatched {
        /// What did not match.
        why: String,
    },
    /// The rule is not part of this protocol's policy (Istio drops it).
    Dropped {
        /// Istio's reason.
        why: String,
    },
}

/// One rule of a policy, evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// The index in `spec.rules`.
    pub rule: usize,
    /// What happened.
    #[serde(flatten)]
    pub outcome: RuleOutcome,
    /// Parts that were ignored when compiling (they widened the rule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// One policy, evaluated rule by rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTrace {
    /// `namespace/name`.
    pub policy: ResourceId,
    /// The action.
    pub action: Action,
    /// Whether the policy is dry-run.
    pub dry_run: bool,
    /// The ext-authz provider of a CUSTOM policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Every rule in order.
    pub rules: Vec<RuleTrace>,
}

impl PolicyTrace {
    /// The first rule that matched.
    pub fn matched_rule(&self) -> Option<usize> {
        self.rules
            .iter()
            .find(|r| matches!(r.outcome, RuleOutcome::Matched { .. }))
            .map(|r| r.rule)
    }
}

fn quoted_list(values: &[std::borrow::Cow<'_, str>]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", items.join(", "))
}

fn clause_name(conj: &Conj, c: &Clause) -> String {
    if conj.part == Part::When {
        format!("when {}", c.label)
    } else {
        let field = if c.test.counts().0 == 0 {
            c.fields.1
        } else {
            c.fields.0
        };
        format!("{}.{}", conj.part, field)
    }
}

/// `Ok(lines)` when every clause matches, else `Err(first failure)`.
fn conj(conj: &Conj, req: &Request<'_>) -> Result<Vec<String>, String> {
    let mut why = Vec::new();
    for c in conj.clauses.iter() {
        let hit = c.test.hit(req);
        let (pos_raw, neg_raw) = c.test.raw();
        let name = clause_name(conj, c);
        let actual = c.test.actual(req);
        if hit.matched {
            let mut line = format!("{name}: {actual}");
            if let Some(i) = hit.pos {
                line.push_str(&format!(" matched {:?}", pos_raw[i]));
            }
            if !neg_raw.is_empty() {
                line.push_str(&format!(
                    "{} not in {} {}",
                    if hit.pos.is_some() { "," } else { "" },
                    c.fields.1,
                    quoted_list(&neg_raw)
                ));
            }
            why.push(line);
        } else if let Some(i) = hit.neg {
            return Err(format!(
                "{name}: {actual} matched {} {:?}",
                c.fields.1, neg_raw[i]
            ));
        } else {
            return Err(format!("{name}: {actual} not in {}", quoted_list(&pos_raw)));
        }
    }
    Ok(why)
}

/// Any of the entries (or none at all) must match.
fn entries(list: &[Conj], what: &str, req: &Request<'_>) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut failures = Vec::new();
    for c in list {
        match conj(c, req) {
            Ok(why) => return Ok(why),
            Err(e) => failures.push(e),
        }
    }
    if failures.len() == 1 {
        Err(failures.remove(0))
    } else {
        Err(format!("no {what} entry matched ({})", failures.join("; ")))
    }
}

fn rule(r: &CompiledRule, protocol: Protocol, req: &Request<'_>) -> RuleOutcome {
    let result = entries(&r.from, "from", req).and_then(|mut why| {
        why.extend(entries(&r.to, "to", req)?);
        why.extend(conj(&r.when, req)?);
        Ok(why)
    });
    match result {
        Ok(mut why) => {
            if why.is_empty() {
                why.push(format!(
                    "no conditions left: matches every {}",
                    match protocol {
                        Protocol::Http => "request",
                        Protocol::Tcp => "connection",
                    }
                ));
            }
            RuleOutcome::Matched { why }
        }
        Err(why) => RuleOutcome::NotMatched { why },
    }
}

/// Evaluates every rule of a policy.
pub(crate) fn policy(p: &CompiledPolicy, protocol: Protocol, req: &Request<'_>) -> PolicyTrace {
    let compiled = p.rules(protocol);
    let rules = (0..p.rule_count)
        .map(|index| {
            if let Some(r) = compiled.iter().find(|r| r.index == index) {
                RuleTrace {
                    rule: index,
                    outcome: rule(r, protocol, req),
                    ignored: r.ignored.to_vec(),
                }
            } else {
                let why = p
                    .dropped
                    .iter()
                    .find(|d| d.rule == index && d.protocol == protocol)
                    .map_or_else(|| "dropped".to_owned(), |d| d.reason.clone());
                RuleTrace {
                    rule: index,
                    outcome: RuleOutcome::Dropped {
                        why: format!("{why} (rule dropped for {protocol})"),
                    },
                    ignored: Vec::new(),
                }
            }
        })
        .collect();
    PolicyTrace {
        policy: p.id.clone(),
        action: p.action,
        dry_run: p.dry_run,
        provider: p.provider.as_deref().map(str::to_owned),
        rules,
    }
}
