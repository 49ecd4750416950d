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
        if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
            &mut d,
            &mut u,
            crate::l4::BUFFER_SIZE,
            crate::l4::BUFFER_SIZE,
        )
        .await
        {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
