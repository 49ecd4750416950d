//! Bidirectional copy with half-close whose buffers exist only while data is moving.
//!
//! A direction takes its buffer when it reads and gives it back as soon as the buffer is
//! drained and the source has nothing more (`Pending`), so an idle connection holds no copy
//! buffer: 10,000 idle connections cost kilobytes each, not `2 x buffer`. Given-back buffers
//! go to a small per-thread pool ([`pool`]), so a busy connection that drains its socket
//! thousands of times a second reuses the same memory instead of allocating and zeroing it
//! each time.
//!
//! A direction fills its buffer with as many reads as are ready before it writes: a TLS
//! reader yields one record (at most 16 KiB) per read, and a 64 KiB buffer filled from four
//! records goes out in one `send` instead of four. A read that would block ends the fill, so
//! an interactive exchange is written at once, never held back.
//!
//! With an in-place TLS stream ([`InPlaceTls`]) on one side, neither direction has a buffer of
//! its own: TLS to plain writes the plaintext from the buffer it was decrypted in, every record
//! already received in one vectored write (the source lends them, [`BufReadVectored`]); plain
//! to TLS reads the bytes straight into the slots of the next records ([`LendingWrite`]), one
//! vectored read for up to four records ([`ReadVectored`]), and the records are sealed where
//! they lie.

use std::future::poll_fn;
use std::io::{self, IoSlice, IoSliceMut};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use warden_identity::tls::{InPlaceTls, RECORDS_AT_ONCE, SendSlots};

/// A source that reads into several buffers at once, in order (a socket's `readv`).
pub trait ReadVectored {
    /// Reads into `bufs`, filling each before the next; `Ok(0)` at EOF.
    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>>;
}

impl ReadVectored for TcpStream {
    fn poll_read_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            match self.try_read_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// A writer that lends the space its next bytes go to (a TLS stream that seals records where
/// they lie): fill the slots in order, then commit what was written.
pub trait LendingWrite: AsyncWrite {
    /// The slots for the next bytes, once the writer has room for them.
    fn poll_lend(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<SendSlots<'_>>>;
    /// Takes the first `n` bytes written into the last lent slots.
    fn commit(self: Pin<&mut Self>, n: usize) -> io::Result<()>;
    /// The last lent slots were not used: the writer may free their space while idle.
    fn unlend(self: Pin<&mut Self>);
}

impl<S: AsyncRead + AsyncWrite + Unpin> LendingWrite for InPlaceTls<S> {
    fn poll_lend(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<SendSlots<'_>>> {
        self.get_mut().poll_lend(cx)
    }

    fn commit(self: Pin<&mut Self>, n: usize) -> io::Result<()> {
        self.get_mut().commit(n)
    }

    fn unlend(self: Pin<&mut Self>) {
        self.get_mut().unlend();
    }
}

/// A source that lends every chunk it has buffered at once (a TLS stream's opened records),
/// so they go out in one vectored write; [`AsyncBufRead::consume`] takes bytes across them.
pub trait BufReadVectored: AsyncBufRead {
    /// The buffered chunks as `bufs[..n]`, reading only when there is none; `Ok(0)` at EOF.
    fn poll_fill_bufs<'a>(
        self: Pin<&'a mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>; RECORDS_AT_ONCE],
    ) -> Poll<io::Result<usize>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin> BufReadVectored for InPlaceTls<S> {
    fn poll_fill_bufs<'a>(
        self: Pin<&'a mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSlice<'a>; RECORDS_AT_ONCE],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_fill_bufs(cx, bufs)
    }
}

/// Copy buffers given back by idle directions, kept per thread for the next busy one.
mod pool {
    use std::cell::RefCell;

    /// Buffers kept per thread: enough for a few busy connections in flight on a worker;
    /// the rest is freed. At 64 KiB per buffer that is at most 256 KiB per thread.
    const KEEP: usize = 4;

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of exactly `size` bytes: a kept one, or a new one.
    pub(super) fn take(size: usize) -> Box<[u8]> {
        let kept = FREE
            .try_with(|f| {
                let mut f = f.borrow_mut();
                // Buffers of another size (the limit changed) are dropped on the way.
                while let Some(b) = f.pop() {
                    if b.len() == size {
                        return Some(b);
                    }
                }
                None
            })
            .ok()
            .flatten();
        kept.unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
    }

    /// Gives `buf` back: kept for reuse on this thread, or freed when enough are kept.
    pub(super) fn give(buf: Box<[u8]>) {
        let _ = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(buf);
            }
        });
    }

    /// Buffers kept on this thread (for tests).
    #[cfg(test)]
    pub(super) fn kept() -> usize {
        FREE.with(|f| f.borrow().len())
    }
}

/// One direction's state.
struct Direction {
    size: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    /// A read error that came after some bytes were read: reported once those are written.
    read_err: Option<io::Error>,
    need_flush: bool,
    done: bool,
    total: u64,
}

impl Direction {
    fn new(size: usize) -> Self {
        Self {
            size,
            buf: None,
            pos: 0,
            cap: 0,
            read_done: false,
            read_err: None,
            need_flush: false,
            done: false,
            total: 0,
        }
    }

    /// Gives the buffer back to the pool (it holds no unwritten byte).
    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            pool::give(b);
        }
        self.pos = 0;
        self.cap = 0;
    }

    /// Reads into the empty buffer until it is full, the source ended, or a read would block.
    /// `Pending` only when nothing was read (the buffer is then given back).
    fn poll_fill<R>(&mut self, cx: &mut Context<'_>, mut r: Pin<&mut R>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        if let Some(e) = self.read_err.take() {
            return Poll::Ready(Err(e));
        }
        let mut buf = self.buf.take().unwrap_or_else(|| pool::take(self.size));
        let mut filled = 0;
        let outcome = loop {
            let mut rb = ReadBuf::new(&mut buf[filled..]);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.read_done = true;
                        break Poll::Ready(Ok(()));
                    }
                    filled += n;
                    if filled == buf.len() {
                        break Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) if filled == 0 => break Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    self.read_err = Some(e);
                    break Poll::Ready(Ok(()));
                }
                Poll::Pending if filled == 0 => break Poll::Pending,
                Poll::Pending => break Poll::Ready(Ok(())),
            }
        };
        self.pos = 0;
        self.cap = filled;
        if filled == 0 {
            // Nothing buffered and nothing to read: give the memory back.
            pool::give(buf);
        } else {
            self.buf = Some(buf);
        }
        outcome
    }

    /// Moves bytes from `r` to `w` until `r` ended (then shuts `w` down) or both would block.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                match self.poll_fill(cx, r.as_mut()) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        self.release();
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return self.poll_pending_after_flush(cx, w.as_mut()),
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_ref() else {
                    break;
                };
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                self.wrote(n)?;
                self.pos += n;
            }
            if self.pos == self.cap && self.read_done {
                self.release();
                return self.poll_finish(cx, w.as_mut());
            }
        }
    }
}

impl Direction {
    /// Like [`Self::poll_copy`] for a source that lends its buffered bytes
    /// ([`BufReadVectored`], like a TLS stream that decrypts in place): they are written from
    /// its buffer, every record already received in one vectored write, and this direction
    /// holds no buffer of its own.
    fn poll_copy_lent<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: BufReadVectored + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        while !self.read_done {
            let mut bufs = [IoSlice::new(&[]); RECORDS_AT_ONCE];
            let k = match r.as_mut().poll_fill_bufs(cx, &mut bufs) {
                Poll::Ready(Ok(k)) => k,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.poll_pending_after_flush(cx, w.as_mut()),
            };
            if k == 0 {
                self.read_done = true;
                break;
            }
            let n = ready!(w.as_mut().poll_write_vectored(cx, &bufs[..k]))?;
            self.wrote(n)?;
            r.as_mut().consume(n);
        }
        self.poll_finish(cx, w.as_mut())
    }

    /// Like [`Self::poll_copy`] into a writer that lends its space ([`LendingWrite`], like a
    /// TLS stream that seals in place): the source reads straight into it, and this direction
    /// holds no buffer of its own.
    fn poll_copy_sealed<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: ReadVectored + ?Sized,
        W: LendingWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        while !self.read_done {
            let read = {
                let mut slots = ready!(w.as_mut().poll_lend(cx))?;
                r.as_mut().poll_read_vectored(cx, slots.as_mut_slices())
            };
            match read {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => {
                    w.as_mut().commit(n)?;
                    self.wrote(n)?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle until the source has more: hold no send buffer meanwhile.
                    w.as_mut().unlend();
                    return self.poll_pending_after_flush(cx, w.as_mut());
                }
            }
        }
        self.poll_finish(cx, w.as_mut())
    }

    /// The source has nothing now: flush what was written since the last flush, then wait.
    fn poll_pending_after_flush<W>(
        &mut self,
        cx: &mut Context<'_>,
        w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        W: AsyncWrite + ?Sized,
    {
        if self.need_flush {
            ready!(w.poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }

    /// Counts `n` bytes taken by the writer; a writer that took none is an error.
    fn wrote(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write zero bytes into writer",
            ));
        }
        self.total += n as u64;
        self.need_flush = true;
        Ok(())
    }

    /// The source ended and all of it was written: flushes and shuts the writer down.
    fn poll_finish<W>(&mut self, cx: &mut Context<'_>, mut w: Pin<&mut W>) -> Poll<io::Result<u64>>
    where
        W: AsyncWrite + ?Sized,
    {
        ready!(w.as_mut().poll_flush(cx))?;
        ready!(w.as_mut().poll_shutdown(cx))?;
        self.done = true;
        Poll::Ready(Ok(self.total))
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.release();
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions ended; an EOF is passed on as a
/// write shutdown. Buffers of `size` bytes per direction, held only while data moves.
/// Returns (bytes `a`->`b`, bytes `b`->`a`).
pub async fn copy_bidirectional_lazy<A, B>(
    a: &mut A,
    b: &mut B,
    size: usize,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    both_ways(
        a,
        b,
        size,
        |d, cx, a, b| d.poll_copy(cx, a, b),
        |d, cx, b, a| d.poll_copy(cx, b, a),
    )
    .await
}

/// Between a plain stream `a` and an in-place TLS stream `b`, with no copy buffer: `a` is
/// read straight into `b`'s record slots, `b`'s plaintext is written to `a` from where it was
/// decrypted. Returns (bytes `a`->`b`, bytes `b`->`a`).
pub async fn copy_bidirectional_sealing<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: ReadVectored + AsyncWrite + Unpin + ?Sized,
    B: BufReadVectored + LendingWrite + Unpin + ?Sized,
{
    both_ways(
        a,
        b,
        0,
        |d, cx, a, b| d.poll_copy_sealed(cx, a, b),
        |d, cx, b, a| d.poll_copy_lent(cx, b, a),
    )
    .await
}

/// [`copy_bidirectional_sealing`] with the TLS stream first: returns (bytes `a`->`b`,
/// bytes `b`->`a`).
pub async fn copy_bidirectional_in_place<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: BufReadVectored + LendingWrite + Unpin + ?Sized,
    B: ReadVectored + AsyncWrite + Unpin + ?Sized,
{
    let (ba, ab) = copy_bidirectional_sealing(b, a).await?;
    Ok((ab, ba))
}

/// Runs `a_to_b` and `b_to_a` until both ended.
async fn both_ways<A, B, F, G>(
    a: &mut A,
    b: &mut B,
    size: usize,
    mut a_to_b: F,
    mut b_to_a: G,
) -> io::Result<(u64, u64)>
where
    A: Unpin + ?Sized,
    B: Unpin + ?Sized,
    F: FnMut(&mut Direction, &mut Context<'_>, Pin<&mut A>, Pin<&mut B>) -> Poll<io::Result<u64>>,
    G: FnMut(&mut Direction, &mut Context<'_>, Pin<&mut B>, Pin<&mut A>) -> Poll<io::Result<u64>>,
{
    let mut ab = Direction::new(size);
    let mut ba = Direction::new(size);
    poll_fn(|cx| {
        let r1 = a_to_b(&mut ab, cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let r2 = b_to_a(&mut ba, cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (r1, r2) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Yields its chunks one per read (like a TLS stream yields records), then `Pending`,
    /// or the error it was given.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        then_error: bool,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.chunks.pop_front() {
                Some(mut c) => {
                    let n = c.len().min(buf.remaining());
                    buf.put_slice(&c[..n]);
                    if n < c.len() {
                        self.chunks.push_front(c.split_off(n));
                    }
                    Poll::Ready(Ok(()))
                }
                None if self.then_error => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
                None => Poll::Pending,
            }
        }
    }

    /// Records the size of every write.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn chunks(n: usize, len: usize, then_error: bool) -> Chunks {
        Chunks {
            chunks: (0..n).map(|i| vec![i as u8; len]).collect(),
            then_error,
        }
    }

    #[test]
    fn ready_reads_are_coalesced_into_one_write_and_the_buffer_is_pooled_when_drained() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut r, mut w) = (chunks(4, 1000, false), Writes::default());
        let mut d = Direction::new(4096);
        let before = pool::kept();
        let p = d.poll_copy(&mut cx, Pin::new(&mut r), Pin::new(&mut w));
        assert!(p.is_pending());
        assert_eq!(w.0, vec![4000], "four ready reads, one write");
        assert!(
            d.buf.is_none(),
            "a drained, blocked direction holds no buffer"
        );
        assert_eq!(pool::kept(), before + 1);
        // A full buffer is written before reading on.
        let (mut r, mut w) = (chunks(10, 1000, false), Writes::default());
        assert!(
            d.poll_copy(&mut cx, Pin::new(&mut r), Pin::new(&mut w))
                .is_pending()
        );
        assert_eq!(w.0, vec![4096, 4096, 1808]);
        assert_eq!(d.total, 14_000);
        assert_eq!(pool::kept(), before + 1, "the pooled buffer was reused");
    }

    #[test]
    fn a_read_error_after_some_bytes_is_reported_once_they_are_written() {
        let mut cx = Context::from_waker(Waker::noop());
        let (mut r, mut w) = (chunks(2, 100, true), Writes::default());
        let mut d = Direction::new(4096);
        let p = d.poll_copy(&mut cx, Pin::new(&mut r), Pin::new(&mut w));
        assert!(matches!(p, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset));
        assert_eq!(w.0, vec![200]);
        assert!(d.buf.is_none());
    }

    #[test]
    fn the_pool_keeps_a_few_buffers_and_drops_other_sizes() {
        std::thread::spawn(|| {
            for _ in 0..10 {
                pool::give(vec![0u8; 64].into_boxed_slice());
            }
            assert_eq!(pool::kept(), 4);
            assert_eq!(pool::take(128).len(), 128);
            assert_eq!(pool::kept(), 0, "buffers of another size are dropped");
        })
        .join()
        .unwrap();
    }

    /// 10,000 bytes one way, then a reply after the half-close.
    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut c, mut p1) = tokio::io::duplex(64);
        let (mut p2, mut s) = tokio::io::duplex(64);
        let proxy = tokio::spawn(async move { copy_bidirectional_lazy(&mut p1, &mut p2, 7).await });
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let d = data.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&d).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        s.write_all(b"reply after half-close").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let (ab, ba) = proxy.await.unwrap().unwrap();
        assert_eq!((ab, ba), (10_000, 22));
    }
}
