//! `warden`: the command-line entry point. Thin: it parses flags and calls into the crates.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod certs;
mod check;
mod control;
mod gateway;
mod inject;
mod iptables;
mod proxy_status;
mod quickstart;
mod sidecar;
mod signal;

/// Warden: a service-mesh proxy that speaks Istio's configuration.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, propagate_version = true)]
struct Cli {
    /// Log filter in `tracing` syntax (overrides `RUST_LOG`), e.g. `info,warden_proxy=debug`.
    #[arg(long, global = true, env = "WARDEN_LOG")]
    log: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make and inspect mesh certificates: root CA, cluster intermediates, workload certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Explain what Istio security policy decides for a workload and a request.
    Check(Box<check::CheckArgs>),
    /// Same as `warden control status`: the proxies connected to a control plane.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Run the control plane (mesh CA on port 15012), or administer it: tokens, revocation,
    /// root rotation.
    Control(Box<control::ControlArgs>),
    /// Run the sidecar proxy for one workload (mTLS, policy, metrics, drain).
    Sidecar(sidecar::SidecarArgs),
    /// Install istio-iptables-compatible traffic capture rules (the pod's init step).
    Iptables(Box<iptables::IptablesArgs>),
    /// Add the Warden init and sidecar containers to Kubernetes workloads (like istioctl kube-inject).
    Inject(inject::InjectArgs),
    /// Wait until the local sidecar is ready (the postStart hook of injected pods).
    Wait(inject::WaitArgs),
    /// Start a demo mesh on loopback (control plane, two sidecars, two apps), show an allowed and
    /// a denied request through mTLS, and keep it running until Ctrl-C.
    Quickstart(quickstart::QuickstartArgs),
    /// Run an ingress or egress gateway (Istio Gateway, VirtualService, DestinationRule).
    Gateway(gateway::GatewayArgs),
}

fn init_logging(filter: Option<&str>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The sidecar installs its own subscriber (its log level changes at runtime).
    if !matches!(cli.command, Command::Sidecar(_) | Command::Quickstart(_)) {
        init_logging(cli.log.as_deref(), cli.log_format);
    }
    match cli.command {
        Command::Certs(cmd) => certs::run(cmd),
        Command::Check(args) => std::process::exit(check::run(*args)),
        Command::ProxyStatus(args) => proxy_status::run(args),
        Command::Control(args) => control::run(*args),
        Command::Iptables(args) => iptables::run(*args),
        Command::Inject(args) => inject::run(args),
        Command::Wait(args) => inject::wait(args),
        Command::Quickstart(args) => quickstart::run(args, cli.log.as_deref()),
        Command::Sidecar(args) => sidecar::run(
            args,
            cli.log.as_deref(),
            matches!(cli.log_format, LogFormat::Json),
        ),
        Command::Gateway(args) => gateway::run(args),
    }
}
