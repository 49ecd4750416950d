//! The original destination of a captured connection.
//!
//! With iptables `REDIRECT`, the kernel keeps the address the client dialled; `SO_ORIGINAL_DST`
//! (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read it back. Behind [`OriginalDst`] so tests
//! without iptables give it with [`StaticOriginalDst`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Finds where an accepted connection was going.
pub trait OriginalDst: Send + Sync + 'static {
    /// The original destination of `stream`, accepted on `listener`.
    fn original_dst(&self, stream: &TcpStream, listener: SocketAddr) -> io::Result<SocketAddr>;
}

/// The kernel's answer (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), for connections
/// redirected by iptables. For a connection that was not NATed the kernel answers with the
/// address as dialled when conntrack tracks it, or fails (`ENOENT`) when it does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOriginalDst;

impl OriginalDst for SocketOriginalDst {
    fn original_dst(&self, stream: &TcpStream, _listener: SocketAddr) -> io::Result<SocketAddr> {
        let sock = socket2::SockRef::from(stream);
        let local = stream.local_addr()?;
        let addr = if local.is_ipv4() {
            sock.original_dst_v4()?
        } else {
            sock.original_dst_v6()?
        };
        addr.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        })
    }
}

/// A fixed answer per listener address, for tests and for running without capture: every
/// connection accepted on a listener "was going" to its mapped target.
#[derive(Debug, Clone, Default)]
pub struct StaticOriginalDst {
    map: HashMap<SocketAddr, SocketAddr>,
}

impl StaticOriginalDst {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections accepted on `listener` go to `target`.
    pub fn with(mut self, listener: SocketAddr, target: SocketAddr) -> Self {
        self.map.insert(listener, target);
        self
    }
}

impl OriginalDst for StaticOriginalDst {
    fn original_dst(&self, _stream: &TcpStream, listener: SocketAddr) -> io::Result<SocketAddr> {
        self.map.get(&listener).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no static original destination for listener {listener}"),
            )
        })
    }
}
