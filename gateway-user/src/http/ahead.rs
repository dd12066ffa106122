//! The frames of an upstream response body that are already on their way when its head
//! arrives, taken before the head is handed to the agent's side.
//!
//! hyper's client passes a body frame to the response only when the one before it has been
//! taken, so a small chunked response (head, one data chunk, the terminating chunk, all in
//! one read from the upstream) would leave the proxy in two writes: the head with the data,
//! then the end once the client connection's task has decoded it. Every extra write wakes
//! the agent once more (and on a loaded machine the woken agent preempts the proxy before
//! its second write). Taking what is ready first, within a few scheduler turns and a byte
//! cap, lets hyper's server write head, body and end at once, with a `Content-Length` when
//! the whole body was taken. Streams (SSE, large downloads) are not held: taking stops at
//! the first frame that is not ready after [`TURNS`] yields, or past [`CAP`] bytes.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Bytes taken at most before the head goes.
pub const CAP: usize = 64 * 1024;
/// Scheduler turns granted to the upstream connection's task for each frame: hyper's client
/// decodes the next frame on its connection task once the previous one was taken; with the
/// bytes already read, the end of a 1 KiB chunked response came after three yields
/// (bench/README.md, session 14).
pub const TURNS: u32 = 3;

/// A body whose first frames were taken ahead (see the module's documentation).
pub struct Ahead<B: Body> {
    frames: VecDeque<Frame<Bytes>>,
    /// Data bytes in `frames`.
    buffered: u64,
    /// What follows the frames: the rest of the body, an error met while taking, or nothing.
    rest: Rest<B>,
}

enum Rest<B: Body> {
    Body(B),
    Error(B::Error),
    Done,
}

impl<B> Ahead<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Takes the frames of `body` that are ready, giving its producer up to [`TURNS`]
    /// scheduler turns for each, until the body ends, `cap` bytes are held, or a frame does
    /// not come.
    pub async fn take(mut body: B, cap: usize) -> Self {
        let mut ahead = Self {
            frames: VecDeque::new(),
            buffered: 0,
            rest: Rest::Done,
        };
        let mut turns = 0;
        loop {
            if body.is_end_stream() {
                return ahead;
            }
            if ahead.buffered >= cap as u64 {
                break;
            }
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        ahead.buffered += data.len() as u64;
                    }
                    ahead.frames.push_back(frame);
                    turns = 0;
                }
                Poll::Ready(Some(Err(error))) => {
                    ahead.rest = Rest::Error(error);
                    return ahead;
                }
                Poll::Ready(None) => return ahead,
                Poll::Pending if turns < TURNS => {
                    turns += 1;
                    tokio::task::yield_now().await;
                }
                Poll::Pending => break,
            }
        }
        ahead.rest = Rest::Body(body);
        ahead
    }
}

impl<B> Body for Ahead<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            if let Some(data) = frame.data_ref() {
                this.buffered -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match std::mem::replace(&mut this.rest, Rest::Done) {
            Rest::Body(mut body) => {
                let polled = Pin::new(&mut body).poll_frame(cx);
                if !matches!(polled, Poll::Ready(None)) {
                    this.rest = Rest::Body(body);
                }
                polled
            }
            Rest::Error(error) => Poll::Ready(Some(Err(error))),
            Rest::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && match &self.rest {
                Rest::Body(body) => body.is_end_stream(),
                Rest::Error(_) => false,
                Rest::Done => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.rest {
            // Trailers need chunked framing on HTTP/1.1: no exact length then.
            Rest::Done if self.frames.iter().all(Frame::is_data) => {
                SizeHint::with_exact(self.buffered)
            }
            Rest::Body(body) => {
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + self.buffered);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + self.buffered);
                }
                hint
            }
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.buffered);
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, Full, StreamBody};

    use super::*;

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test]
    async fn a_ready_body_is_taken_whole_with_its_length() {
        let frames: Frames = vec![Ok(data("head ")), Ok(data("and end"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let ahead = Ahead::take(body, CAP).await;
        assert!(matches!(ahead.rest, Rest::Done));
        assert_eq!(ahead.size_hint().exact(), Some(12));
        assert!(!ahead.is_end_stream());
        let bytes = ahead.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"head and end");
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let ahead = Ahead::take(Full::new(Bytes::new()), CAP).await;
        assert!(ahead.is_end_stream());
        assert_eq!(ahead.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn trailers_keep_the_length_open() {
        let frames: Frames = vec![Ok(data("x")), Ok(Frame::trailers(http::HeaderMap::new()))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let ahead = Ahead::take(body, CAP).await;
        assert_eq!(ahead.size_hint().exact(), None);
        let collected = ahead.collect().await.expect("body");
        assert!(collected.trailers().is_some());
    }

    #[tokio::test]
    async fn taking_stops_at_the_cap_and_the_rest_follows() {
        let frames: Frames = (0..10).map(|_| Ok(data("0123456789"))).collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let ahead = Ahead::take(body, 25).await;
        assert_eq!(ahead.frames.len(), 3);
        assert_eq!(ahead.size_hint().exact(), None);
        let bytes = ahead.collect().await.expect("body").to_bytes();
        assert_eq!(bytes.len(), 100);
    }

    #[tokio::test]
    async fn a_frame_that_does_not_come_is_not_waited_for() {
        let (sender, mut receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        sender.try_send(Ok(data("first"))).expect("send");
        let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
        let ahead = Ahead::take(StreamBody::new(stream), CAP).await;
        assert_eq!(ahead.frames.len(), 1);
        assert!(matches!(ahead.rest, Rest::Body(_)));
        sender.try_send(Ok(data(" second"))).expect("send");
        drop(sender);
        let bytes = ahead.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"first second");
    }

    #[tokio::test]
    async fn an_error_comes_after_the_frames_before_it() {
        let frames: Frames = vec![Ok(data("ok")), Err(std::io::Error::other("reset"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut ahead = Ahead::take(body, CAP).await;
        let first = ahead.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "ok");
        assert!(ahead.frame().await.expect("frame").is_err());
    }
}
