//! Small responses leave with their first body chunk: for a response whose `content-length`
//! is at most [`PREFETCH_MAX_BYTES`], the proxy waits for the first body frame before it hands
//! the response on, so the head and the body go out in one write (one HTTP/2 flush, one TLS
//! record, one wakeup of the receiver) instead of a head-only write followed by the body.
//!
//! hyper returns a response as soon as its head is parsed and reads the body only once the
//! body is polled, so without this the head is almost always written alone. The wait is for
//! bytes the upstream has already promised in `content-length`; streaming responses (no
//! length, or a larger one: SSE, gRPC, downloads) pass through untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Responses up to this `content-length` are prefetched.
pub const PREFETCH_MAX_BYTES: u64 = 16 * 1024;

/// A body whose first frame was already read.
pub struct Prefetched<B: HttpBody> {
    first: Option<Result<Frame<B::Data>, B::Error>>,
    inner: B,
}

impl<B: HttpBody> Prefetched<B> {
    /// A body that yields its inner frames unchanged (nothing prefetched).
    pub fn passthrough(inner: B) -> Self {
        Self { first: None, inner }
    }
}

/// Whether `headers` announce a body of at most [`PREFETCH_MAX_BYTES`].
fn small(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0 && n <= PREFETCH_MAX_BYTES)
}

/// Reads the first body frame of `resp` if it announces a small body (see the module docs);
/// any other response is returned as it is. An error reading the frame is kept and yielded
/// by the body, so the caller's accounting sees it where it would have seen it anyway.
pub async fn first_frame<B>(resp: Response<B>) -> Response<Prefetched<B>>
where
    B: HttpBody + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    if body.is_end_stream() || !small(&parts.headers) {
        return Response::from_parts(parts, Prefetched::passthrough(body));
    }
    let first = body.frame().await;
    Response::from_parts(parts, Prefetched { first, inner: body })
}

impl<B> HttpBody for Prefetched<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(f));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(Ok(f)) = &self.first
            && let Some(d) = f.data_ref()
        {
            let n = d.remaining() as u64;
            // Upper first: `set_lower` asserts lower <= upper.
            if let Some(u) = hint.upper() {
                hint.set_upper(u + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A body that never yields (`Pending`) or fails at once.
    enum Odd {
        Never,
        Fails,
    }

    impl HttpBody for Odd {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            match *self {
                Odd::Never => Poll::Pending,
                Odd::Fails => Poll::Ready(Some(Err("reset"))),
            }
        }
    }

    fn with_length<B>(n: u64, body: B) -> Response<B> {
        Response::builder()
            .header(header::CONTENT_LENGTH, n.to_string())
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn a_small_body_is_read_ahead_and_yielded_whole() {
        let resp = first_frame(with_length(5, Full::new(Bytes::from_static(b"hello")))).await;
        assert!(
            resp.body().first.is_some(),
            "the first frame was read ahead"
        );
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        assert!(!resp.body().is_end_stream());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }

    #[tokio::test]
    async fn streaming_and_large_bodies_are_not_waited_for() {
        // No content-length: a body that never yields must not be awaited.
        let resp = first_frame(Response::new(Odd::Never)).await;
        assert!(resp.body().first.is_none());
        let big = first_frame(with_length(PREFETCH_MAX_BYTES + 1, Odd::Never)).await;
        assert!(big.body().first.is_none());
    }

    #[tokio::test]
    async fn an_error_on_the_first_frame_is_yielded_by_the_body() {
        let mut body = first_frame(with_length(10, Odd::Fails)).await.into_body();
        assert_eq!(body.frame().await.unwrap().unwrap_err(), "reset");
    }
}
