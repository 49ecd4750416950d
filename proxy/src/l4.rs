//! L4 forwarding: bidirectional copy with half-close, bounded buffers, an idle timeout and
//! live byte counters.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use warden_identity::tls::{RECORDS_AT_ONCE, SendSlots};

use crate::copy::{BufReadVectored, LendingWrite, ReadVectored};

use crate::limits::LimitCounters;
use crate::metrics::TcpCounters;
use crate::state::Shared;

/// What bounds one forwarded connection.
#[derive(Debug, Clone, Copy)]
pub struct ForwardLimits<'a> {
    /// Copy buffer per direction.
    pub buffer_per_direction: usize,
    /// Closed when no byte moved in either direction for this long.
    pub idle_timeout: Duration,
    /// Where idle timeouts are counted.
    pub counters: &'a LimitCounters,
}

impl<'a> ForwardLimits<'a> {
    /// The configured `limits:` of this proxy.
    pub fn of(shared: &'a Shared) -> Self {
        let l = &shared.config.limits;
        Self {
            buffer_per_direction: l.l4_buffer_per_direction(),
            idle_timeout: l.idle_timeout,
            counters: &shared.metrics.limits,
        }
    }
}

/// Stamps the time of the last byte moved (milliseconds since `base`).
struct Activity<'a, S> {
    inner: S,
    base: Instant,
    last: &'a AtomicU64,
}

impl<S> Activity<'_, S> {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncBufRead + Unpin> AsyncBufRead for Activity<'_, S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        if amt > 0 {
            self.touch();
        }
        Pin::new(&mut self.inner).consume(amt);
    }
}

impl<S: BufReadVectored + Unpin> BufReadVectored for Activity<'_, S> {
    fn poll_fill_bufs<'a>(
        self: Pin<&'a mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSlice<'a>; RECORDS_AT_ONCE],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_bufs(cx, bufs)
    }
}

impl<S: ReadVectored + Unpin> ReadVectored for Activity<'_, S> {
    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
}

impl<S: LendingWrite + Unpin> LendingWrite for Activity<'_, S> {
    fn poll_lend(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<SendSlots<'_>>> {
        Pin::new(&mut self.get_mut().inner).poll_lend(cx)
    }

    fn commit(mut self: Pin<&mut Self>, n: usize) -> io::Result<()> {
        Pin::new(&mut self.inner).commit(n)?;
        if n > 0 {
            self.touch();
        }
        Ok(())
    }

    fn unlend(mut self: Pin<&mut Self>) {
        Pin::new(&mut self.inner).unlend();
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client-side stream, counting what is read from it (received) and written to it (sent).
struct Counted<S> {
    inner: S,
    counters: Arc<TcpCounters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.counters.add_received(n as u64);
        }
        r
    }
}

impl<S: AsyncBufRead + Unpin> AsyncBufRead for Counted<S> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        if amt > 0 {
            self.counters.add_received(amt as u64);
        }
        Pin::new(&mut self.inner).consume(amt);
    }
}

impl<S: BufReadVectored + Unpin> BufReadVectored for Counted<S> {
    fn poll_fill_bufs<'a>(
        self: Pin<&'a mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSlice<'a>; RECORDS_AT_ONCE],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_bufs(cx, bufs)
    }
}

impl<S: ReadVectored + Unpin> ReadVectored for Counted<S> {
    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.counters.add_received(n as u64);
        }
        r
    }
}

impl<S: LendingWrite + Unpin> LendingWrite for Counted<S> {
    fn poll_lend(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<SendSlots<'_>>> {
        Pin::new(&mut self.get_mut().inner).poll_lend(cx)
    }

    fn commit(mut self: Pin<&mut Self>, n: usize) -> io::Result<()> {
        Pin::new(&mut self.inner).commit(n)?;
        self.counters.add_sent(n as u64);
        Ok(())
    }

    fn unlend(mut self: Pin<&mut Self>) {
        Pin::new(&mut self.inner).unlend();
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.add_sent(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.add_sent(*n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The body of the `forward` functions, which differ only in how the two sides are copied
/// (`$copy`, given the wrapped client and upstream and the buffer size) and so in their trait
/// bounds.
macro_rules! forward_with {
    ($client:ident, $upstream:ident, $counters:ident, $limits:ident,
     |$c:ident, $u:ident, $size:ident| $copy:expr) => {{
        let base = Instant::now();
        let last = AtomicU64::new(0);
        let (mut client, mut upstream) = wrap($client, $upstream, $counters, base, &last);
        let $size = $limits.buffer_per_direction.max(1024);
        let ($c, $u) = (&mut client, &mut upstream);
        let copy = $copy;
        idle_bounded(copy, base, &last, $limits).await
    }};
}

/// Copies both ways until both directions ended. An EOF in one direction is passed on as a
/// write shutdown (half-close), the other direction keeps flowing. Returns the bytes
/// (client to upstream, upstream to client); counters are updated as bytes flow. When no byte
/// moves for `limits.idle_timeout` the connection ends with a `TimedOut` error (both streams are
/// dropped, so closed).
pub async fn forward<C, U>(
    client: C,
    upstream: U,
    counters: Arc<TcpCounters>,
    limits: ForwardLimits<'_>,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    forward_with!(client, upstream, counters, limits, |c, u, size| {
        crate::copy::copy_bidirectional_lazy(c, u, size)
    })
}

/// [`forward`] from an in-place TLS client stream ([`warden_identity::tls::InPlaceTls`], the
/// inbound side) to a plain upstream, with no copy buffer: the client's plaintext is written
/// from where it was decrypted, the upstream is read straight into the client's record slots.
pub async fn forward_in_place<C, U>(
    client: C,
    upstream: U,
    counters: Arc<TcpCounters>,
    limits: ForwardLimits<'_>,
) -> io::Result<(u64, u64)>
where
    C: BufReadVectored + LendingWrite + Unpin,
    U: ReadVectored + AsyncWrite + Unpin,
{
    forward_with!(client, upstream, counters, limits, |c, u, _size| {
        crate::copy::copy_bidirectional_in_place(c, u)
    })
}

/// [`forward`] from a plain client to an in-place TLS upstream (the outbound side), with no
/// copy buffer: the client is read straight into the upstream's record slots, the upstream's
/// plaintext is written from where it was decrypted.
pub async fn forward_sealing<C, U>(
    client: C,
    upstream: U,
    counters: Arc<TcpCounters>,
    limits: ForwardLimits<'_>,
) -> io::Result<(u64, u64)>
where
    C: ReadVectored + AsyncWrite + Unpin,
    U: BufReadVectored + LendingWrite + Unpin,
{
    forward_with!(client, upstream, counters, limits, |c, u, _size| {
        crate::copy::copy_bidirectional_sealing(c, u)
    })
}

type Wrapped<'a, C, U> = (Activity<'a, Counted<C>>, Activity<'a, U>);

fn wrap<C, U>(
    client: C,
    upstream: U,
    counters: Arc<TcpCounters>,
    base: Instant,
    last: &AtomicU64,
) -> Wrapped<'_, C, U> {
    let client = Activity {
        inner: Counted {
            inner: client,
            counters,
        },
        base,
        last,
    };
    let upstream = Activity {
        inner: upstream,
        base,
        last,
    };
    (client, upstream)
}

/// Runs `copy` until it ends, or until no byte moved for `limits.idle_timeout`.
async fn idle_bounded<F>(
    copy: F,
    base: Instant,
    last: &AtomicU64,
    limits: ForwardLimits<'_>,
) -> io::Result<(u64, u64)>
where
    F: Future<Output = io::Result<(u64, u64)>>,
{
    tokio::pin!(copy);
    loop {
        let deadline =
            base + Duration::from_millis(last.load(Ordering::Relaxed)) + limits.idle_timeout;
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep_until(deadline) => {
                let idle_since = base + Duration::from_millis(last.load(Ordering::Relaxed));
                if idle_since + limits.idle_timeout <= Instant::now() {
                    limits.counters.idle_timeout();
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}
