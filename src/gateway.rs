//! `warden gateway`: run an ingress or egress gateway.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_proxy::gateway::{AdminListeners, GatewayConfig, GatewayMode, GatewayShared};

/// Flags of `warden gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Ingress (the mesh entrance) or egress (the mesh exit).
    #[arg(long, value_enum)]
    mode: Mode,
    /// Gateway config file (YAML); POD_NAMESPACE, SERVICE_ACCOUNT, TRUST_DOMAIN,
    /// WARDEN_CERT_DIR, WARDEN_CONFIG_DIR, CA_ADDR override it. See docs/gateway.md.
    #[arg(long, short = 'c', env = "WARDEN_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    Ingress,
    Egress,
}

/// Runs the gateway until SIGTERM / SIGINT and the drain finish.
pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let mode = match args.mode {
        Mode::Ingress => GatewayMode::Ingress,
        Mode::Egress => GatewayMode::Egress,
    };
    let config = GatewayConfig::load(mode, &args.config)?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let tls = TlsProvider::new(TlsSettings::default()).context("TLS settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let admin = AdminListeners::bind(&config).await?;
        let shared = Arc::new(GatewayShared::new(config, tls));
        tracing::info!(
            mode = shared.config.mode.as_str(),
            identity = %shared.config.spiffe_id(),
            stats = %admin.stats.local_addr()?,
            health = %admin.health.local_addr()?,
            "gateway started"
        );
        let drain = shared.drain.clone();
        tokio::spawn(async move {
            crate::signal::terminated().await;
            tracing::info!("signal received: draining");
            drain.start();
        });
        let abandoned = warden_proxy::gateway::run(shared, admin)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(abandoned, "gateway stopped");
        anyhow::Ok(())
    })
}
