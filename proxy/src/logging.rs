//! Process logging with a filter that can be changed at runtime (`/logging?level=`).

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt, reload};

use crate::state::LogControl;

/// The target of the per-connection access log lines.
pub const ACCESS_LOG_TARGET: &str = "warden::access";

/// Installs the global subscriber (stderr, text or JSON) with `filter` (tracing syntax) and
/// returns the handle that changes the filter. An invalid `filter` falls back to `info`.
pub fn init(filter: &str, json: bool) -> LogControl {
    let initial = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: invalid log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    let (layer, handle) = reload::Layer::new(initial);
    let registry = tracing_subscriber::registry().with(layer);
    if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init();
    }
    Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())?;
        tracing::info!(filter = level, "log filter changed");
        Ok(())
    })
}
