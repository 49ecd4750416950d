//! Bidirectional copy with half-close whose buffers exist only while data is moving: a
//! direction allocates its buffer when it reads and frees it as soon as the buffer is drained
//! and the source has nothing more (`Pending`). An idle connection holds no copy buffer, so
//! 10,000 idle connections cost kilobytes each, not `2 x buffer`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One direction's state.
struct Direction {
    size: usize,
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
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
            need_flush: false,
            done: false,
            total: 0,
        }
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
                let size = self.size;
                let buf = self
                    .buf
                    .get_or_insert_with(|| vec![0u8; size].into_boxed_slice());
                let mut rb = ReadBuf::new(buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing buffered and nothing to read: give the memory back.
                        self.buf = None;
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_ref() else {
                    break;
                };
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero bytes into writer",
                    )));
                }
                self.pos += n;
                self.total += n as u64;
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                self.buf = None;
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.total));
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions ended; an EOF is passed on as a
/// write shutdown. Buffers of `size` bytes per direction, allocated only while data moves.
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
    let mut ab = Direction::new(size);
    let mut ba = Direction::new(size);
    poll_fn(|cx| {
        let r1 = ab.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let r2 = ba.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
