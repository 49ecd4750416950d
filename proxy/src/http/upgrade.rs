//! HTTP/1.1 upgrades (WebSocket, and any `Connection: upgrade` protocol): once the upstream
//! answered `101 Switching Protocols`, both upgraded connections are spliced byte for byte.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Waits for both sides to finish upgrading, then copies both ways until both ended. The
/// upgraded connection counts as in flight for drain (`guard`).
pub fn splice(downstream: OnUpgrade, upstream: OnUpgrade, guard: crate::drain::ConnGuard) {
    tokio::spawn(async move {
        let _guard = guard;
        let (d, u) = match tokio::try_join!(downstream, upstream) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut d = TokioIo::new(d);
        let mut u = TokioIo::new(u);
        // Buffers exist only while bytes move (an idle WebSocket holds none).
        let size = crate::limits::Limits::default().l4_buffer_per_direction();
        if let Err(e) = crate::copy::copy_bidirectional_lazy(&mut d, &mut u, size).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
