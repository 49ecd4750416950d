//! `warden control status` (alias `warden proxy-status`): the proxies connected to a control
//! plane, their identity, config version, last ACK/NACK and certificate expiry, like
//! `istioctl proxy-status`.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

/// Flags of `warden control status` and `warden proxy-status`.
#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// The control plane's debug endpoint (`warden control --debug-addr`).
    #[arg(
        long,
        default_value = "127.0.0.1:15014",
        env = "WARDEN_CONTROL_DEBUG_ADDR"
    )]
    pub debug_addr: SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: ProxyStatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let proxies = rt
        .block_on(warden_control::status::fetch(args.debug_addr))
        .context(
            "the status endpoint runs in `warden control --config-dir DIR` (flag --debug-addr)",
        )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&proxies)?);
    } else {
        print!("{}", warden_control::status::render_table(&proxies));
    }
    Ok(())
}
