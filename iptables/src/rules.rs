//! Rendering a [`CaptureConfig`] into the rules istio-iptables installs.
//!
//! The output is a plain list (`-A CHAIN spec`, in the order the rules sit in each chain), so it
//! can be compared line by line with istio-iptables' output, printed by `--dry-run`, and turned
//! into `iptables-restore` input by [`crate::restore`].

use std::fmt;

use crate::config::{CaptureConfig, Family, InboundPorts, InterceptMode, OutboundCidrs};

/// Chain for inbound traffic (nat, and mangle with TPROXY).
pub const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
/// nat chain redirecting to the outbound capture port.
pub const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
/// nat chain redirecting to the inbound capture port.
pub const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// nat chain for the pod's outgoing traffic.
pub const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";
/// mangle chain marking packets of established TPROXY connections.
pub const ISTIO_DIVERT: &str = "ISTIO_DIVERT";
/// mangle chain with the TPROXY target.
pub const ISTIO_TPROXY: &str = "ISTIO_TPROXY";

/// The mark istio-iptables puts on proxy-to-app packets on loopback with TPROXY.
pub const TPROXY_OUTBOUND_MARK: u32 = 1338;

/// The comment on rules Warden adds to built-in chains that do not jump to one of its chains
/// (TPROXY's mangle `MARK`/`CONNMARK` rules), so `--cleanup` finds exactly those.
pub const RULE_COMMENT: &str = "warden";

/// An iptables table Warden writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `nat`: REDIRECT capture.
    Nat,
    /// `mangle`: TPROXY capture.
    Mangle,
}

impl Table {
    /// The table's name (`nat`, `mangle`).
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Mangle => "mangle",
        }
    }

    /// Every table Warden may write to.
    pub const ALL: [Table; 2] = [Table::Nat, Table::Mangle];

    /// The chains Warden owns in this table: exactly these are flushed and deleted.
    pub fn own_chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &[
                ISTIO_INBOUND,
                ISTIO_REDIRECT,
                ISTIO_IN_REDIRECT,
                ISTIO_OUTPUT,
            ],
            Table::Mangle => &[ISTIO_DIVERT, ISTIO_TPROXY, ISTIO_INBOUND],
        }
    }

    /// True for one of Warden's chains in this table.
    pub fn is_own_chain(self, chain: &str) -> bool {
        self.own_chains().contains(&chain)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rule: `-A <chain> <spec>` in `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The table.
    pub table: Table,
    /// The chain the rule is appended to.
    pub chain: String,
    /// The match and target, as istio-iptables writes them.
    pub spec: String,
}

impl Rule {
    fn new(table: Table, chain: &str, spec: impl Into<String>) -> Self {
        Rule {
            table,
            chain: chain.to_owned(),
            spec: spec.into(),
        }
    }

    /// True when the rule sits in a built-in chain (PREROUTING, OUTPUT, ...).
    pub fn in_builtin_chain(&self) -> bool {
        !self.table.is_own_chain(&self.chain)
    }

    /// True when the rule's target is one of Warden's chains.
    pub fn jumps_to_own_chain(&self) -> bool {
        target(&self.spec).is_some_and(|t| self.table.is_own_chain(t))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

/// The `-j`/`-g` target of a rule spec.
pub(crate) fn target(spec: &str) -> Option<&str> {
    let mut it = spec.split_whitespace();
    while let Some(tok) = it.next() {
        if tok == "-j" || tok == "-g" || tok == "--jump" || tok == "--goto" {
            return it.next();
        }
    }
    None
}

/// Everything one address family needs: rules per table, and (TPROXY) the policy routing
/// commands (`ip` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// IPv4 or IPv6.
    pub family: Family,
    /// The rules, nat first then mangle, each chain's rules in order.
    pub rules: Vec<Rule>,
    /// `ip` invocations (without the `ip` itself) for TPROXY's routing of marked packets.
    pub routes: Vec<Vec<String>>,
}

impl RuleSet {
    /// The rules of one table, in order.
    pub fn table(&self, table: Table) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.table == table)
    }

    /// The rules of one table as `-A CHAIN spec` lines (the golden-test form).
    pub fn lines(&self, table: Table) -> Vec<String> {
        self.table(table).map(Rule::to_string).collect()
    }

    /// The tables this set writes to.
    pub fn tables(&self) -> Vec<Table> {
        Table::ALL
            .into_iter()
            .filter(|t| self.rules.iter().any(|r| r.table == *t))
            .collect()
    }
}

/// Renders the rules for one family. `config` should have passed [`CaptureConfig::validate`].
pub fn render(config: &CaptureConfig, family: Family) -> RuleSet {
    let lo = family.localhost();
    let mut nat = Chains::default();
    let mut mangle = Chains::default();
    let inbound_enabled = !matches!(&config.inbound_ports, InboundPorts::Only(p) if p.is_empty());

    nat.push(
        ISTIO_INBOUND,
        format!("-p tcp --dport {} -j RETURN", config.hbone_port),
    );
    nat.push(
        ISTIO_IN_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.inbound_port),
    );
    nat.push(
        ISTIO_REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.outbound_port),
    );

    // Inbound.
    match config.mode {
        InterceptMode::Redirect => {
            if inbound_enabled {
                nat.push("PREROUTING", "-p tcp -j ISTIO_INBOUND");
            }
            match &config.inbound_ports {
                InboundPorts::All => {
                    for p in &config.inbound_exclude_ports {
                        nat.push(ISTIO_INBOUND, format!("-p tcp --dport {p} -j RETURN"));
                    }
                    nat.push(ISTIO_INBOUND, "-p tcp -j ISTIO_IN_REDIRECT");
                }
                InboundPorts::Only(ports) => {
                    for p in ports {
                        nat.push(
                            ISTIO_INBOUND,
                            format!("-p tcp --dport {p} -j ISTIO_IN_REDIRECT"),
                        );
                    }
                }
            }
        }
        InterceptMode::Tproxy => {
            let mark = config.tproxy_mark;
            mangle.push(ISTIO_DIVERT, format!("-j MARK --set-mark {mark}"));
            mangle.push(ISTIO_DIVERT, "-j ACCEPT");
            mangle.push(
                ISTIO_TPROXY,
                format!(
                    "! -d {lo} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {}",
                    config.inbound_port
                ),
            );
            if inbound_enabled {
                mangle.push("PREROUTING", "-p tcp -j ISTIO_INBOUND");
            }
            // Never divert the proxy's own packets, nor its connections to the app.
            mangle.push(
                ISTIO_INBOUND,
                format!("-p tcp -m mark --mark {mark} -j RETURN"),
            );
            mangle.push(
                ISTIO_INBOUND,
                format!(
                    "-p tcp -s {} -i lo -j RETURN",
                    family.inbound_passthrough_source()
                ),
            );
            mangle.push(
                ISTIO_INBOUND,
                format!("-p tcp -i lo -m mark ! --mark {TPROXY_OUTBOUND_MARK} -j RETURN"),
            );
            match &config.inbound_ports {
                InboundPorts::All => {
                    for p in &config.inbound_exclude_ports {
                        mangle.push(ISTIO_INBOUND, format!("-p tcp --dport {p} -j RETURN"));
                    }
                    mangle.push(
                        ISTIO_INBOUND,
                        "-p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
                    );
                    mangle.push(ISTIO_INBOUND, "-p tcp -j ISTIO_TPROXY");
                }
                InboundPorts::Only(ports) => {
                    for p in ports {
                        mangle.push(
                            ISTIO_INBOUND,
                            format!(
                                "-p tcp --dport {p} -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
                            ),
                        );
                        mangle.push(ISTIO_INBOUND, format!("-p tcp --dport {p} -j ISTIO_TPROXY"));
                    }
                }
            }
            mangle.push(
                "PREROUTING",
                format!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark"),
            );
            mangle.push(
                "OUTPUT",
                format!("-p tcp -o lo -m mark --mark {mark} -j RETURN"),
            );
            for (opt, id) in owners(config) {
                mangle.push(
                    "OUTPUT",
                    format!(
                        "! -d {lo} -p tcp -o lo -m owner --{opt}-owner {id} -j MARK --set-mark {TPROXY_OUTBOUND_MARK}"
                    ),
                );
            }
            mangle.push(
                "OUTPUT",
                format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark"),
            );
        }
    }

    // Outbound.
    nat.push("OUTPUT", "-p tcp -j ISTIO_OUTPUT");
    for p in &config.outbound_exclude_ports {
        nat.push(ISTIO_OUTPUT, format!("-p tcp --dport {p} -j RETURN"));
    }
    nat.push(
        ISTIO_OUTPUT,
        format!("-o lo -s {} -j RETURN", family.inbound_passthrough_source()),
    );
    for (opt, id) in owners(config) {
        // The app calling itself through a service VIP: back in through the proxy.
        nat.push(
            ISTIO_OUTPUT,
            format!("-o lo ! -d {lo} -m owner --{opt}-owner {id} -j ISTIO_IN_REDIRECT"),
        );
        // The app calling its own endpoint address: not captured.
        nat.push(
            ISTIO_OUTPUT,
            format!("-o lo -m owner ! --{opt}-owner {id} -j RETURN"),
        );
        // The proxy's own traffic: never captured again (no loop).
        nat.push(
            ISTIO_OUTPUT,
            format!("-m owner --{opt}-owner {id} -j RETURN"),
        );
    }
    nat.push(ISTIO_OUTPUT, format!("-d {lo} -j RETURN"));
    for net in config.exclude_cidrs(family) {
        nat.push(ISTIO_OUTPUT, format!("-d {net} -j RETURN"));
    }
    for p in &config.outbound_include_ports {
        nat.push(
            ISTIO_OUTPUT,
            format!("-p tcp --dport {p} -j ISTIO_REDIRECT"),
        );
    }
    match &config.outbound_cidrs {
        OutboundCidrs::All => nat.push(ISTIO_OUTPUT, "-j ISTIO_REDIRECT"),
        OutboundCidrs::Only(_) => {
            for net in config.include_cidrs(family).unwrap_or_default() {
                nat.push(ISTIO_OUTPUT, format!("-d {net} -j ISTIO_REDIRECT"));
            }
        }
    }

    let mut rules = nat.into_rules(Table::Nat, NAT_ORDER);
    rules.extend(mangle.into_rules(Table::Mangle, MANGLE_ORDER));
    let routes = if config.mode == InterceptMode::Tproxy {
        let (f, local) = match family {
            Family::V4 => ("inet", "default"),
            Family::V6 => ("inet6", "::/0"),
        };
        let table = config.tproxy_route_table.to_string();
        vec![
            strings(&[
                "-f",
                f,
                "rule",
                "add",
                "fwmark",
                &config.tproxy_mark.to_string(),
                "lookup",
                &table,
            ]),
            strings(&[
                "-f", f, "route", "replace", "local", local, "dev", "lo", "table", &table,
            ]),
        ]
    } else {
        Vec::new()
    };
    RuleSet {
        family,
        rules,
        routes,
    }
}

/// Renders every family the config asks for: IPv4, and IPv6 when `config.ipv6`.
pub fn render_all(config: &CaptureConfig) -> Vec<RuleSet> {
    let mut out = vec![render(config, Family::V4)];
    if config.ipv6 {
        out.push(render(config, Family::V6));
    }
    out
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn owners(config: &CaptureConfig) -> impl Iterator<Item = (&'static str, u32)> + '_ {
    config
        .proxy_uids
        .iter()
        .map(|u| ("uid", *u))
        .chain(config.proxy_gids.iter().map(|g| ("gid", *g)))
}

/// The order chains are listed in (the reference's order: built-in jumps first).
const NAT_ORDER: &[&str] = &[
    "PREROUTING",
    "OUTPUT",
    ISTIO_INBOUND,
    ISTIO_IN_REDIRECT,
    ISTIO_REDIRECT,
    ISTIO_OUTPUT,
];
const MANGLE_ORDER: &[&str] = &[
    "PREROUTING",
    "OUTPUT",
    ISTIO_INBOUND,
    ISTIO_DIVERT,
    ISTIO_TPROXY,
];

#[derive(Default)]
struct Chains(Vec<(&'static str, String)>);

impl Chains {
    fn push(&mut self, chain: &'static str, spec: impl Into<String>) {
        self.0.push((chain, spec.into()));
    }

    fn into_rules(self, table: Table, order: &[&str]) -> Vec<Rule> {
        let mut out = Vec::with_capacity(self.0.len());
        for chain in order {
            for (c, spec) in &self.0 {
                if c == chain {
                    out.push(Rule::new(table, c, spec.clone()));
                }
            }
        }
        out
    }
}
