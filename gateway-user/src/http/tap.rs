//! Recording of HTTP bodies as they cross the boundary (after masking): a body wrapper keeps
//! the first `record_body_limit` bytes and summarises the whole by size and SHA-256. The
//! summary becomes a `request_body` / `response_body` event of the session when the body ends
//! (or is cut), queued on the session and written before its next event.
//!
//! A response in which tokens were restored holds the agent's original values again: its
//! recording gets the placeholders back ([`MaskContext::retokenize`]) and no hash, so no
//! masked value reaches the store.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest as _, Sha256};

use crate::{mask::MaskContext, session::Event};

/// Extra bytes captured past the limit, so a restored value cut by the limit is still
/// recognised and re-tokenized before the cut.
const SLACK: usize = 512;

/// Body events of a session waiting to be written in order.
pub type Pending = Arc<Mutex<Vec<Event>>>;

pub struct Capture {
    kind: &'static str,
    limit: usize,
    kept: Vec<u8>,
    size: u64,
    sha: Sha256,
    content_type: Option<String>,
    pending: Pending,
    /// Set for responses: restored tokens are put back into placeholders.
    mask: Option<Arc<Mutex<MaskContext>>>,
    done: bool,
}

impl Capture {
    pub fn new(
        kind: &'static str,
        limit: u64,
        content_type: Option<String>,
        pending: Pending,
        mask: Option<Arc<Mutex<MaskContext>>>,
    ) -> Self {
        Self {
            kind,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            kept: Vec::new(),
            size: 0,
            sha: Sha256::new(),
            content_type,
            pending,
            mask,
            done: false,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        self.sha.update(data);
        let room = (self.limit + SLACK).saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// Queues the summary event (once).
    pub fn finish(&mut self, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if self.size == 0 && complete {
            return;
        }
        let mut kept = std::mem::take(&mut self.kept);
        let mut restored = false;
        if let Some(mask) = &self.mask {
            let ctx = crate::lock(mask);
            if ctx.has_tokens() {
                kept = ctx.retokenize(&kept);
                restored = true;
            }
        }
        let truncated = kept.len() > self.limit || self.size > kept.len() as u64;
        kept.truncate(self.limit);
        let mut data = serde_json::json!({
            "size": self.size,
            "truncated": truncated,
        });
        if !restored {
            data["sha256"] = crate::hex(&std::mem::take(&mut self.sha).finalize()).into();
        }
        if !complete {
            data["complete"] = false.into();
        }
        if let Some(ct) = &self.content_type {
            data["content_type"] = ct.clone().into();
        }
        if crate::http::masking::is_binary_type(self.content_type.as_deref()) {
            data["binary"] = true.into();
        } else {
            match std::str::from_utf8(&kept) {
                Ok(text) => data["body"] = text.into(),
                // Cut inside a character at the limit: keep the valid prefix.
                Err(e) if e.error_len().is_none() => {
                    data["body"] = String::from_utf8_lossy(&kept[..e.valid_up_to()]).into();
                }
                Err(_) => data["binary"] = true.into(),
            }
        }
        crate::lock(&self.pending).push(Event::new(self.kind, data));
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// A body that records what passes through it.
pub struct Tap<B> {
    inner: B,
    capture: Capture,
}

impl<B> Tap<B> {
    pub fn new(inner: B, capture: Capture) -> Self {
        Self { inner, capture }
    }
}

impl<B> Body for Tap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.capture.update(data);
                }
            }
            Poll::Ready(None) => this.capture.finish(true),
            Poll::Ready(Some(Err(_))) => this.capture.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, Full};

    use super::*;

    #[tokio::test]
    async fn keeps_the_head_and_summarises_the_rest() {
        let pending = Pending::default();
        let body = Tap::new(
            Full::new(Bytes::from(vec![b'a'; 100])),
            Capture::new(
                "response_body",
                10,
                Some("text/plain".into()),
                Arc::clone(&pending),
                None,
            ),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 100);
        let events = pending.lock().unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0].data;
        assert_eq!(e["size"], 100);
        assert_eq!(e["truncated"], true);
        assert_eq!(e["body"], "aaaaaaaaaa");
        assert_eq!(e["sha256"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn a_cut_body_is_recorded_as_incomplete() {
        let pending = Pending::default();
        {
            let mut c = Capture::new("request_body", 1024, None, Arc::clone(&pending), None);
            c.update(b"{\"partial\":");
        }
        let events = pending.lock().unwrap();
        assert_eq!(events[0].data["complete"], false);
        assert_eq!(events[0].data["body"], "{\"partial\":");
    }
}
