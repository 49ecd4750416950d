//! `warden iptables`: the init step that installs istio-iptables-compatible capture rules in the
//! pod's network namespace (or removes them with `--cleanup`).

use anyhow::Context;
use clap::Args;
use warden_iptables::config::{
    parse_cidrs, parse_ids, parse_inbound_ports, parse_outbound_cidrs, parse_port, parse_ports,
};
use warden_iptables::{Backend, CaptureConfig, Iptables, dry_run_text};

/// Flags of `warden iptables` (istio-iptables' names; defaults are what `istioctl kube-inject`
/// passes: `-p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020`).
#[derive(Debug, Args)]
pub struct IptablesArgs {
    /// Outbound capture port of the proxy.
    #[arg(short = 'p', long = "envoy-port", default_value = "15001")]
    outbound_port: String,
    /// Inbound capture port of the proxy.
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006")]
    inbound_port: String,
    /// UID(s) of the proxy (comma-separated); their traffic is never captured.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    uid: String,
    /// GID(s) of the proxy (comma-separated).
    #[arg(short = 'g', long = "proxy-gid", default_value = "1337")]
    gid: String,
    /// Inbound interception mode: REDIRECT or TPROXY.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    mode: String,
    /// Inbound ports to capture (comma-separated), `*` for all, empty for none.
    #[arg(
        short = 'b',
        long = "istio-inbound-ports",
        default_value = "*",
        allow_hyphen_values = true
    )]
    inbound_ports: String,
    /// Inbound ports never captured (with `-b '*'`).
    #[arg(
        short = 'd',
        long = "istio-local-exclude-ports",
        default_value = "15090,15021,15020"
    )]
    inbound_exclude: String,
    /// Outbound destination ranges to capture (CIDRs, comma-separated), `*` for all, empty for none.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    outbound_cidrs: String,
    /// Outbound destination ranges never captured.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    outbound_exclude_cidrs: String,
    /// Outbound ports always captured.
    #[arg(short = 'q', long = "outbound-ports", default_value = "")]
    outbound_include_ports: String,
    /// Outbound ports never captured.
    #[arg(short = 'o', long = "outbound-exclude-ports", default_value = "")]
    outbound_exclude_ports: String,
    /// TPROXY: mark of diverted packets.
    #[arg(short = 't', long = "inbound-tproxy-mark", default_value = "1337")]
    tproxy_mark: u32,
    /// TPROXY: routing table of marked packets.
    #[arg(
        short = 'r',
        long = "inbound-tproxy-route-table",
        default_value = "133"
    )]
    tproxy_route_table: u32,
    /// Also install IPv6 rules with ip6tables.
    #[arg(long, env = "ENABLE_INBOUND_IPV6")]
    ipv6: bool,
    /// Print the iptables-restore input instead of applying it.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Remove Warden's (and istio-iptables') chains and the rules leading to them; nothing else.
    #[arg(long)]
    cleanup: bool,
    /// iptables backend: auto (detect as istio-iptables does), nft, legacy, or system
    /// (plain `iptables-restore`).
    #[arg(long, default_value = "auto")]
    backend: String,
}

fn config(a: &IptablesArgs) -> anyhow::Result<CaptureConfig> {
    let c = CaptureConfig {
        outbound_port: parse_port("-p", &a.outbound_port)?,
        inbound_port: parse_port("-z", &a.inbound_port)?,
        proxy_uids: parse_ids("-u", &a.uid)?,
        proxy_gids: parse_ids("-g", &a.gid)?,
        mode: a.mode.parse()?,
        inbound_ports: parse_inbound_ports(&a.inbound_ports)?,
        inbound_exclude_ports: parse_ports("-d", &a.inbound_exclude)?,
        outbound_cidrs: parse_outbound_cidrs(&a.outbound_cidrs)?,
        outbound_exclude_cidrs: parse_cidrs("-x", &a.outbound_exclude_cidrs)?,
        outbound_include_ports: parse_ports("-q", &a.outbound_include_ports)?,
        outbound_exclude_ports: parse_ports("-o", &a.outbound_exclude_ports)?,
        tproxy_mark: a.tproxy_mark,
        tproxy_route_table: a.tproxy_route_table,
        ipv6: a.ipv6,
        ..CaptureConfig::default()
    };
    c.validate()?;
    Ok(c)
}

/// Runs `warden iptables`.
pub fn run(args: IptablesArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    if args.dry_run && !args.cleanup {
        print!("{}", dry_run_text(&config));
        return Ok(());
    }
    let ipt = match args.backend.as_str() {
        "auto" => Iptables::detect(),
        b => Iptables::new(b.parse::<Backend>()?),
    };
    if args.cleanup {
        if args.dry_run {
            for family in families(args.ipv6) {
                let save = ipt.save(family)?;
                match warden_iptables::restore::cleanup_input(&save) {
                    Some(input) => print!(
                        "# {family} ({} --noflush)\n{input}",
                        ipt.backend().restore_tool(family)
                    ),
                    None => println!("# {family}: nothing to remove"),
                }
            }
            return Ok(());
        }
        let report = ipt.cleanup(&config).context("removing capture rules")?;
        eprintln!(
            "warden iptables: removed capture rules ({} backend, {} transaction(s))",
            report.backend,
            report.transactions.len()
        );
        return Ok(());
    }
    let report = ipt.apply(&config).context("installing capture rules")?;
    for (family, input) in &report.transactions {
        eprintln!(
            "warden iptables: {family}: applied with {} --noflush:\n{input}",
            report.backend.restore_tool(*family)
        );
    }
    Ok(())
}

fn families(ipv6: bool) -> Vec<warden_iptables::Family> {
    let mut v = vec![warden_iptables::Family::V4];
    if ipv6 {
        v.push(warden_iptables::Family::V6);
    }
    v
}
