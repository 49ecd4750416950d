//! Running the rules: backend detection (nft or legacy), one `iptables-restore --noflush`
//! transaction per family, TPROXY routing, cleanup, and errors that say how to fix the host.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::{CaptureConfig, ConfigError, Family};
use crate::restore::{apply_input, cleanup_input, own_state, verify_nat};
use crate::rules::{RuleSet, render_all};

/// Which iptables implementation writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy-*` (x_tables in the kernel).
    Legacy,
    /// `iptables-nft-*` (nf_tables in the kernel, iptables syntax).
    Nft,
    /// Plain `iptables-*`: whatever the host's alternatives point at (used when the
    /// variant-specific tools are not installed).
    System,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::System => "system",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "legacy" => Ok(Backend::Legacy),
            "nft" => Ok(Backend::Nft),
            "system" => Ok(Backend::System),
            _ => Err(ConfigError {
                flag: "--backend",
                value: s.to_owned(),
                reason: "expected auto, nft, legacy or system".to_owned(),
            }),
        }
    }
}

impl Backend {
    fn tool(self, family: Family, what: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self {
            Backend::Legacy => format!("{base}-legacy-{what}"),
            Backend::Nft => format!("{base}-nft-{what}"),
            Backend::System => format!("{base}-{what}"),
        }
    }

    /// The `*-save` tool of this backend for a family.
    pub fn save_tool(self, family: Family) -> String {
        self.tool(family, "save")
    }

    /// The `*-restore` tool of this backend for a family.
    pub fn restore_tool(self, family: Family) -> String {
        self.tool(family, "restore")
    }
}

/// What went wrong applying or removing rules. Each message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A flag value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An iptables or ip tool is not installed.
    #[error(
        "{tool}: not found: install the iptables package (and iproute2 for TPROXY), or choose another backend with --backend"
    )]
    ToolMissing {
        /// The missing program.
        tool: String,
    },
    /// No CAP_NET_ADMIN.
    #[error(
        "{tool}: permission denied: {stderr}\nfix: run as root, or give the container the NET_ADMIN and NET_RAW capabilities"
    )]
    PermissionDenied {
        /// The program.
        tool: String,
        /// What it said.
        stderr: String,
    },
    /// The kernel has no usable nat (or mangle) table for this backend.
    #[error(
        "{tool}: the {table} table cannot be used: {stderr}\nfix: load the kernel modules (legacy: `modprobe iptable_nat ip6table_nat iptable_mangle xt_REDIRECT xt_owner`; nft: `modprobe nft_chain_nat nft_compat xt_REDIRECT xt_owner`) on the node, or select the other backend with --backend nft|legacy"
    )]
    TableUnavailable {
        /// The program.
        tool: String,
        /// `nat` or `mangle`.
        table: &'static str,
        /// What it said.
        stderr: String,
    },
    /// A tool failed for another reason.
    #[error("{tool} failed ({status}): {stderr}{input}")]
    Failed {
        /// The program and arguments.
        tool: String,
        /// The exit status.
        status: String,
        /// What it said.
        stderr: String,
        /// The restore input, when there was one (so the failing line can be found).
        input: String,
    },
    /// The rules in the kernel after applying differ from the wanted ones.
    #[error("{family} rules differ after applying:\n{}", problems.join("\n"))]
    Verify {
        /// The family.
        family: Family,
        /// One line per difference.
        problems: Vec<String>,
    },
}

/// Runs a tool, feeding `stdin`, and returns its stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApplyError::ToolMissing {
                tool: program.to_owned(),
            });
        }
        Err(e) => {
            return Err(ApplyError::Failed {
                tool: program.to_owned(),
                status: "not started".to_owned(),
                stderr: e.to_string(),
                input: String::new(),
            });
        }
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its status and stderr tell why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| ApplyError::Failed {
        tool: program.to_owned(),
        status: "no status".to_owned(),
        stderr: e.to_string(),
        input: String::new(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let tool = format!("{program} {}", args.join(" ")).trim().to_owned();
    Err(classify(tool, out.status.to_string(), stderr, stdin))
}

fn classify(tool: String, status: String, stderr: String, input: Option<&str>) -> ApplyError {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("operation not permitted")
        || lower.contains("must be root")
    {
        return ApplyError::PermissionDenied { tool, stderr };
    }
    if lower.contains("table does not exist")
        || lower.contains("can't initialize")
        || lower.contains("insmod")
        || (lower.contains("no chain/target/match by that name")
            && (lower.contains("redirect") || lower.contains("tproxy")))
    {
        let table = if lower.contains("mangle") || lower.contains("tproxy") {
            "mangle"
        } else {
            "nat"
        };
        return ApplyError::TableUnavailable {
            tool,
            table,
            stderr,
        };
    }
    ApplyError::Failed {
        tool,
        status,
        stderr,
        input: input.map(|i| format!("\ninput:\n{i}")).unwrap_or_default(),
    }
}

fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Picks the backend as istio-iptables does: the variant that already holds rules in this
/// network namespace wins (the one with more if both do); on a clean namespace, the one
/// `iptables --version` reports (`nf_tables` or `legacy`); [`Backend::System`] when the
/// variant-specific tools are not installed.
pub fn detect_backend() -> Backend {
    let nft = run("iptables-nft-save", &[], None).ok();
    let legacy = run("iptables-legacy-save", &[], None).ok();
    match (&nft, &legacy) {
        (Some(n), Some(l)) if count_rules(n) > 0 || count_rules(l) > 0 => {
            return if count_rules(l) > count_rules(n) {
                Backend::Legacy
            } else {
                Backend::Nft
            };
        }
        (Some(n), None) if count_rules(n) > 0 => return Backend::Nft,
        (None, Some(l)) if count_rules(l) > 0 => return Backend::Legacy,
        _ => {}
    }
    let version = run("iptables", &["--version"], None).unwrap_or_default();
    if version.contains("nf_tables") && nft.is_some() {
        Backend::Nft
    } else if version.contains("legacy") && legacy.is_some() {
        Backend::Legacy
    } else {
        Backend::System
    }
}

/// What an apply or cleanup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The backend used.
    pub backend: Backend,
    /// Per family: the restore input that was applied (empty when nothing was to be done).
    pub transactions: Vec<(Family, String)>,
}

/// Applies and removes capture rules through one backend, in the current network namespace.
#[derive(Debug, Clone, Copy)]
pub struct Iptables {
    backend: Backend,
}

impl Iptables {
    /// Uses the given backend.
    pub fn new(backend: Backend) -> Self {
        Iptables { backend }
    }

    /// Uses the detected backend ([`detect_backend`]).
    pub fn detect() -> Self {
        Iptables::new(detect_backend())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The current `*-save` output of a family (all tables).
    pub fn save(&self, family: Family) -> Result<String, ApplyError> {
        run(&self.backend.save_tool(family), &[], None)
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ApplyError> {
        run(
            &self.backend.restore_tool(family),
            &["--noflush"],
            Some(input),
        )
        .map(|_| ())
    }

    /// Installs the rules of `config` (IPv4, and IPv6 when asked), replacing any earlier
    /// Warden/istio-iptables rules: one restore transaction per family, then the TPROXY routing,
    /// then a check that the nat table holds exactly the wanted rules.
    pub fn apply(&self, config: &CaptureConfig) -> Result<Report, ApplyError> {
        config.validate()?;
        let mut report = Report {
            backend: self.backend,
            transactions: Vec::new(),
        };
        for set in render_all(config) {
            let before = self.save(set.family)?;
            let input = apply_input(&set, &before);
            self.restore(set.family, &input)?;
            apply_routes(&set)?;
            let after = self.save(set.family)?;
            let problems = verify_nat(&set, &after);
            if !problems.is_empty() {
                return Err(ApplyError::Verify {
                    family: set.family,
                    problems,
                });
            }
            tracing::info!(family = %set.family, backend = %self.backend, rules = set.rules.len(), "capture rules applied");
            report.transactions.push((set.family, input));
        }
        Ok(report)
    }

    /// Removes Warden's (and istio-iptables') chains and the built-in rules leading to them, in
    /// one transaction per family (IPv6 too when `config.ipv6`), and the TPROXY routing rule
    /// of `config` (its mark and table). Other rules stay.
    pub fn cleanup(&self, config: &CaptureConfig) -> Result<Report, ApplyError> {
        let mut report = Report {
            backend: self.backend,
            transactions: Vec::new(),
        };
        let families: &[Family] = if config.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        };
        for &family in families {
            let before = self.save(family)?;
            if let Some(input) = cleanup_input(&before) {
                self.restore(family, &input)?;
                report.transactions.push((family, input));
            }
            remove_routes(config, family);
            let left = own_state(&self.save(family)?);
            if !left.is_empty() {
                return Err(ApplyError::Verify {
                    family,
                    problems: left,
                });
            }
        }
        Ok(report)
    }
}

/// Adds TPROXY's `ip rule` (once) and `ip route` (replace: idempotent).
fn apply_routes(set: &RuleSet) -> Result<(), ApplyError> {
    for args in &set.routes {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        if a.get(2) == Some(&"rule") {
            // Delete first so a second run leaves one rule, not two.
            let mut del = a.clone();
            del[3] = "del";
            while run("ip", &del, None).is_ok() {}
        }
        run("ip", &a, None)?;
    }
    Ok(())
}

fn remove_routes(config: &CaptureConfig, family: Family) {
    let f = match family {
        Family::V4 => "inet",
        Family::V6 => "inet6",
    };
    let mark = config.tproxy_mark.to_string();
    let table = config.tproxy_route_table.to_string();
    while run(
        "ip",
        &["-f", f, "rule", "del", "fwmark", &mark, "lookup", &table],
        None,
    )
    .is_ok()
    {}
    let _ = run("ip", &["-f", f, "route", "flush", "table", &table], None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_with_a_fix() {
        let e = classify(
            "iptables-restore --noflush".into(),
            "exit status: 4".into(),
            "iptables-restore v1.8.9 (legacy): can't initialize iptables table `nat': Table does not exist (do you need to insmod?)".into(),
            Some("*nat\nCOMMIT\n"),
        );
        assert!(matches!(
            e,
            ApplyError::TableUnavailable { table: "nat", .. }
        ));
        assert!(e.to_string().contains("modprobe iptable_nat"));
        let e = classify(
            "iptables-restore --noflush".into(),
            "exit status: 4".into(),
            "iptables-restore: line 2 failed: Permission denied (you must be root)".into(),
            None,
        );
        assert!(matches!(e, ApplyError::PermissionDenied { .. }));
        assert!(e.to_string().contains("NET_ADMIN"));
        let e = classify(
            "iptables-restore --noflush".into(),
            "exit status: 2".into(),
            "iptables-restore: line 3 failed".into(),
            Some("*nat\n-A X\nCOMMIT\n"),
        );
        assert!(e.to_string().contains("input:\n*nat"));
    }

    #[test]
    fn missing_tool_is_named() {
        let e = run("warden-no-such-tool-xyz", &[], None).unwrap_err();
        assert!(
            matches!(e, ApplyError::ToolMissing { ref tool } if tool == "warden-no-such-tool-xyz")
        );
    }

    #[test]
    fn tool_names_per_backend() {
        assert_eq!(
            Backend::Nft.restore_tool(Family::V6),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.save_tool(Family::V4),
            "iptables-legacy-save"
        );
        assert_eq!(Backend::System.restore_tool(Family::V4), "iptables-restore");
    }
}
