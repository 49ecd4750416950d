//! `iptables-restore --noflush` input: apply a [`RuleSet`] or remove Warden's rules, each in one
//! transaction, computed from the current `iptables-save` output.
//!
//! Idempotence: Warden's chains are declared (`:CHAIN - [0:0]`), which creates them or flushes
//! them; Warden's rules in built-in chains found in the current state are deleted (`-D`) in the
//! same transaction before the new ones are appended. So running twice, or after istio-iptables,
//! leaves one copy of each rule. Nothing else in the tables is touched.

use std::collections::BTreeMap;

use crate::rules::{RULE_COMMENT, RuleSet, Table, target};

/// What `iptables-save` shows of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    /// Chains declared in the table (built-in and user), in order.
    pub chains: Vec<String>,
    /// `(chain, spec)` of every rule, in order.
    pub rules: Vec<(String, String)>,
}

impl SavedTable {
    /// The rules of one chain, in order.
    pub fn chain_rules<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules
            .iter()
            .filter(move |(c, _)| c == chain)
            .map(|(_, s)| s.as_str())
    }

    /// True when the table declares `chain`.
    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }
}

/// Parses `iptables-save` output into tables (by name).
pub fn parse_save(save: &str) -> BTreeMap<String, SavedTable> {
    let mut tables: BTreeMap<String, SavedTable> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in save.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('*') {
            let name = name.trim().to_owned();
            tables.entry(name.clone()).or_default();
            current = Some(name);
        } else if line == "COMMIT" {
            current = None;
        } else if let Some(t) = current.as_ref().and_then(|n| tables.get_mut(n)) {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.push(name.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
                t.rules.push((chain.to_owned(), spec.trim().to_owned()));
            }
        }
    }
    tables
}

/// True when a rule in a built-in chain is Warden's (or istio-iptables'): it jumps to one of the
/// own chains, or carries Warden's comment.
fn is_own_builtin_rule(table: Table, spec: &str) -> bool {
    if target(spec).is_some_and(|t| table.is_own_chain(t)) {
        return true;
    }
    let mut it = spec.split_whitespace();
    while let Some(tok) = it.next() {
        if tok == "--comment" {
            return it.next().map(|c| c.trim_matches('"')) == Some(RULE_COMMENT);
        }
    }
    false
}

/// The spec as Warden writes it into iptables: built-in chain rules that do not jump to an own
/// chain get Warden's comment so cleanup can find them.
fn applied_spec(rule: &crate::rules::Rule) -> String {
    if rule.in_builtin_chain() && !rule.jumps_to_own_chain() {
        format!("-m comment --comment {RULE_COMMENT} {}", rule.spec)
    } else {
        rule.spec.clone()
    }
}

/// Input for `iptables-restore --noflush` that makes the tables hold exactly `set` (plus
/// whatever is not Warden's), given the current `iptables-save` output.
pub fn apply_input(set: &RuleSet, current_save: &str) -> String {
    let current = parse_save(current_save);
    let mut out = String::new();
    for table in Table::ALL {
        let saved = current.get(table.name());
        let wanted: Vec<_> = set.table(table).collect();
        let mut keep: Vec<&str> = Vec::new();
        for rule in &wanted {
            if !rule.in_builtin_chain() && !keep.contains(&rule.chain.as_str()) {
                keep.push(&rule.chain);
            }
        }
        let removals = removal_lines(table, saved, &keep);
        if wanted.is_empty() && removals.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name()));
        for chain in &keep {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for line in removals {
            out.push_str(&line);
            out.push('\n');
        }
        for rule in wanted {
            out.push_str(&format!("-A {} {}\n", rule.chain, applied_spec(rule)));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Input for `iptables-restore --noflush` that removes Warden's chains and the rules of built-in
/// chains that lead to them; `None` when there is nothing to remove.
pub fn cleanup_input(current_save: &str) -> Option<String> {
    let current = parse_save(current_save);
    let mut out = String::new();
    for table in Table::ALL {
        let lines = removal_lines(table, current.get(table.name()), &[]);
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name()));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// `-D` for Warden's rules in built-in chains, then `-F`/`-X` for own chains not in `keep`.
fn removal_lines(table: Table, saved: Option<&SavedTable>, keep: &[&str]) -> Vec<String> {
    let Some(saved) = saved else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (chain, spec) in &saved.rules {
        if !table.is_own_chain(chain) && is_own_builtin_rule(table, spec) {
            lines.push(format!("-D {chain} {spec}"));
        }
    }
    let drop: Vec<&str> = table
        .own_chains()
        .iter()
        .copied()
        .filter(|c| saved.has_chain(c) && !keep.contains(c))
        .collect();
    for c in &drop {
        lines.push(format!("-F {c}"));
    }
    for c in &drop {
        lines.push(format!("-X {c}"));
    }
    lines
}

/// Warden's state in a saved ruleset: own chains present and built-in rules leading to them.
/// Empty when the host is clean (what `--cleanup` guarantees).
pub fn own_state(current_save: &str) -> Vec<String> {
    let current = parse_save(current_save);
    let mut out = Vec::new();
    for table in Table::ALL {
        let Some(saved) = current.get(table.name()) else {
            continue;
        };
        for c in table.own_chains() {
            if saved.has_chain(c) {
                out.push(format!("{table}: chain {c}"));
            }
        }
        for (chain, spec) in &saved.rules {
            if !table.is_own_chain(chain) && is_own_builtin_rule(table, spec) {
                out.push(format!("{table}: -A {chain} {spec}"));
            }
        }
    }
    out
}

/// Compares the nat rules of `set` with what `iptables-save` shows (after normalising the
/// spelling differences of the save output: option order, implicit `-m tcp`). Returns one line
/// per difference; empty when the kernel holds exactly the wanted rules in Warden's chains and
/// the wanted jumps in the built-in chains.
pub fn verify_nat(set: &RuleSet, current_save: &str) -> Vec<String> {
    let current = parse_save(current_save);
    let empty = SavedTable::default();
    let saved = current.get("nat").unwrap_or(&empty);
    let mut problems = Vec::new();
    let mut chains: Vec<&str> = Vec::new();
    for r in set.table(Table::Nat) {
        if !chains.contains(&r.chain.as_str()) {
            chains.push(&r.chain);
        }
    }
    for chain in chains {
        let want: Vec<Vec<String>> = set
            .table(Table::Nat)
            .filter(|r| r.chain == chain)
            .map(|r| normalise(&r.spec))
            .collect();
        let have: Vec<Vec<String>> = saved
            .chain_rules(chain)
            .filter(|s| Table::Nat.is_own_chain(chain) || is_own_builtin_rule(Table::Nat, s))
            .map(normalise)
            .collect();
        if want != have {
            problems.push(format!(
                "nat {chain}: expected {} rule(s) {:?}, found {} {:?}",
                want.len(),
                want,
                have.len(),
                have
            ));
        }
    }
    problems
}

/// Splits a rule spec into its options (`[!] -x args`), drops `-m tcp`/`-m udp` (implicit in
/// `-p`), strips quotes and sorts them, so equal rules compare equal however iptables prints them.
pub fn normalise(spec: &str) -> Vec<String> {
    let mut groups: Vec<Vec<&str>> = Vec::new();
    let mut negate = false;
    for tok in spec.split_whitespace() {
        if tok == "!" {
            negate = true;
        } else if tok.starts_with('-') && tok.len() > 1 && !tok[1..].starts_with(char::is_numeric) {
            let mut g = Vec::new();
            if negate {
                g.push("!");
            }
            g.push(tok);
            groups.push(g);
            negate = false;
        } else if let Some(g) = groups.last_mut() {
            if negate {
                // `-m owner ! --uid-owner` style is handled above; a bare `!` before an
                // argument belongs to the option.
                g.push("!");
                negate = false;
            }
            g.push(tok.trim_matches('"'));
        }
    }
    let mut out: Vec<String> = groups
        .into_iter()
        .map(|g| g.join(" "))
        .filter(|g| g != "-m tcp" && g != "-m udp")
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CaptureConfig, Family};
    use crate::rules::render;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A KUBE-SERVICES -d 10.0.0.1/32 -j RETURN
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p tcp -m connmark --mark 1337 -m comment --comment \"warden\" -j CONNMARK --restore-mark
-A OUTPUT -p tcp -j MARK --set-mark 7
COMMIT
";

    #[test]
    fn apply_replaces_own_rules_and_leaves_others() {
        let set = render(&CaptureConfig::default(), Family::V4);
        let input = apply_input(&set, SAVED);
        assert!(input.contains(":ISTIO_INBOUND - [0:0]\n"));
        assert!(input.contains("-D PREROUTING -p tcp -j ISTIO_INBOUND\n"));
        assert!(input.contains("-D OUTPUT -p tcp -j ISTIO_OUTPUT\n"));
        assert!(!input.contains("KUBE-SERVICES"), "{input}");
        // The old TPROXY rule in mangle is removed, the foreign one kept.
        assert!(input.contains("*mangle\n-D OUTPUT -p tcp -m connmark"));
        assert!(!input.contains("set-mark 7"));
        assert_eq!(input.matches("COMMIT").count(), 2);
        // Deletions come before the appends.
        let d = input.find("-D PREROUTING").unwrap();
        let a = input.find("-A PREROUTING").unwrap();
        assert!(d < a);
    }

    #[test]
    fn cleanup_removes_exactly_own_state() {
        let input = cleanup_input(SAVED).unwrap();
        assert_eq!(
            input,
            "*nat\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -p tcp -j ISTIO_OUTPUT\n\
             -F ISTIO_INBOUND\n-F ISTIO_OUTPUT\n-X ISTIO_INBOUND\n-X ISTIO_OUTPUT\nCOMMIT\n\
             *mangle\n-D OUTPUT -p tcp -m connmark --mark 1337 -m comment --comment \"warden\" -j CONNMARK --restore-mark\nCOMMIT\n"
        );
        assert_eq!(own_state(SAVED).len(), 5);
        assert!(cleanup_input("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n").is_none());
    }

    #[test]
    fn normalise_ignores_spelling() {
        assert_eq!(
            normalise("-o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"),
            normalise("! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT")
        );
        assert_eq!(
            normalise("-p tcp --dport 15008 -j RETURN"),
            normalise("-p tcp -m tcp --dport 15008 -j RETURN")
        );
        assert_ne!(
            normalise("-m owner ! --uid-owner 1337 -j RETURN"),
            normalise("-m owner --uid-owner 1337 -j RETURN")
        );
    }
}
