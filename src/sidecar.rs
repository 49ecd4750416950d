//! `warden sidecar`: run the sidecar data plane for one workload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_proxy::config::LogFormat;
use warden_proxy::orig_dst::{OriginalDst, SocketOriginalDst, StaticOriginalDst};
use warden_proxy::{Listeners, Shared, SidecarConfig};

/// Flags of `warden sidecar`.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// Sidecar config file (YAML); environment variables (POD_NAMESPACE, SERVICE_ACCOUNT,
    /// TRUST_DOMAIN, CA_ADDR, ...) override it. See docs/sidecar.md.
    #[arg(long, short = 'c', env = "WARDEN_SIDECAR_CONFIG")]
    config: Option<PathBuf>,
    /// Run without traffic capture: connections accepted on LISTENER were going to TARGET
    /// (`127.0.0.1:15001=10.0.0.5:8080`). Repeatable. Without it, SO_ORIGINAL_DST is used.
    #[arg(long = "static-original-dst", value_name = "LISTENER=TARGET")]
    static_original_dst: Vec<String>,
    /// Worker threads of the data plane (overrides `concurrency` in the file; 0 = one per
    /// CPU). Istio's `--concurrency` / `proxy.istio.io/config: {concurrency: N}`.
    #[arg(long, env = "WARDEN_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

fn parse_static(pairs: &[String]) -> anyhow::Result<StaticOriginalDst> {
    let mut map = StaticOriginalDst::new();
    for p in pairs {
        let (l, t) = p
            .split_once('=')
            .with_context(|| format!("--static-original-dst {p:?}: expected LISTENER=TARGET"))?;
        let l: SocketAddr = l
            .parse()
            .with_context(|| format!("--static-original-dst {p:?}: bad listener address {l:?}"))?;
        let t: SocketAddr = t
            .parse()
            .with_context(|| format!("--static-original-dst {p:?}: bad target address {t:?}"))?;
        map = map.with(l, t);
    }
    Ok(map)
}

/// Runs the sidecar until SIGTERM / SIGINT / `POST /quitquitquit` and the drain finish.
/// Logging is set up here (not in main) so the admin port can change the level at runtime.
pub fn run(args: SidecarArgs, log: Option<&str>, json_logs: bool) -> anyhow::Result<()> {
    let mut config = SidecarConfig::load(args.config.as_deref())?;
    if let Some(n) = args.concurrency {
        config.concurrency = warden_proxy::config::resolve_concurrency(n);
    }
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let filter = log
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let json = json_logs || config.log_format == LogFormat::Json;
    let log_control = warden_proxy::logging::init(&filter, json);
    let orig: Arc<dyn OriginalDst> = if args.static_original_dst.is_empty() {
        Arc::new(SocketOriginalDst)
    } else {
        Arc::new(parse_static(&args.static_original_dst)?)
    };
    let tls = TlsProvider::new(TlsSettings::default()).context("TLS settings")?;
    // The control runtime (certificate agent, config subscriber, admin ports) is one thread;
    // traffic runs on `concurrency` worker threads of their own (`warden_proxy::worker`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let shared = Arc::new(Shared::new(config, tls, orig, Some(log_control)));
        let listeners = Listeners::bind(&shared).await?;
        tracing::info!(
            identity = %shared.config.identity.spiffe_id(),
            outbound = %listeners.outbound.local_addr()?,
            inbound = %listeners.inbound.local_addr()?,
            admin = %listeners.admin.local_addr()?,
            "sidecar started"
        );
        let drain = shared.drain.clone();
        tokio::spawn(async move {
            crate::signal::terminated().await;
            tracing::info!("signal received: draining");
            drain.start();
        });
        let outcome = warden_proxy::run(shared, listeners).await?;
        tracing::info!(abandoned = outcome.abandoned, "sidecar stopped");
        anyhow::Ok(())
    })
}
