//! Traffic capture for Warden sidecars, compatible with istio-iptables.
//!
//! - [`config`]: the typed settings (istio-iptables' flags `-p -z -u -g -m -b -d -i -x -q -o`).
//! - [`rules`]: rendering them into the exact rule list istio-iptables installs.
//! - [`restore`]: `iptables-restore --noflush` input that applies or removes the rules in one
//!   transaction, idempotently, computed from the current `iptables-save` output.
//! - [`apply`]: backend detection (nft / legacy), running the tools, errors that say how to fix
//!   the host.
//!
//! ```
//! use warden_iptables::{CaptureConfig, Family, Table, render};
//! let rules = render(&CaptureConfig::default(), Family::V4);
//! assert!(rules.lines(Table::Nat).contains(&"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001".to_owned()));
//! ```
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod restore;
pub mod rules;

pub use apply::{ApplyError, Backend, Iptables, Report, detect_backend};
pub use config::{CaptureConfig, ConfigError, Family, InboundPorts, InterceptMode, OutboundCidrs};
pub use rules::{Rule, RuleSet, Table, render, render_all};

/// What `--dry-run` prints: per family, the `iptables-restore --noflush` input that would be
/// applied to a namespace without capture rules, and the TPROXY `ip` commands.
pub fn dry_run_text(config: &CaptureConfig) -> String {
    let mut out = String::new();
    for set in render_all(config) {
        let tool = match set.family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        };
        out.push_str(&format!("# {} ({tool} --noflush)\n", set.family));
        out.push_str(&restore::apply_input(&set, ""));
        for r in &set.routes {
            out.push_str(&format!("# ip {}\n", r.join(" ")));
        }
    }
    out
}
