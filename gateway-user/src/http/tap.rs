//! Recording of HTTP bodies as they cross the boundary (after masking): a body wrapper keeps
//! the first `record_body_limit` bytes and summarises the whole by size and SHA-256. When the
//! body ends (or is cut), the summary joins the event of its message (`http_request` /
//! `http_response`: `body`, `body_size`, `body_sha256`, …), which held its place in the
//! session's [`Queue`] until then: one event per message, written in order.
//!
//! A response in which tokens were restored holds the agent's original values again: its
//! recording gets the placeholders back ([`MaskContext::retokenize`]) and no hash, so no
//! masked value reaches the store.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use sha2::{Digest as _, Sha256};

use crate::{
    mask::MaskContext,
    session::{JsonObject, Record},
};

/// Extra bytes captured past the limit, so a restored value cut by the limit is still
/// recognised and re-tokenized before the cut.
const SLACK: usize = 512;

/// Events of a session waiting to be written, shared with the bodies being recorded.
pub type Pending = Arc<Mutex<Queue>>;

/// Most events waiting behind a held message. Past it (a long stream on one HTTP/2 stream
/// while others go on), the oldest held message is let go without its body, which follows as
/// an event of its own (`request_body` / `response_body`) when it ends.
const WAITING: usize = 64;

/// A session's events in the order they happened. A message whose body is being recorded
/// holds its place (and the events after it) until the body ends and joins it.
#[derive(Default)]
pub struct Queue {
    next: u64,
    entries: VecDeque<Entry>,
}

struct Entry {
    id: u64,
    event: Record,
    held: bool,
}

/// A held message's place in its session's [`Queue`].
pub struct Held {
    id: u64,
    /// `None` once the body joined the message.
    pending: Option<Pending>,
}

impl Drop for Held {
    /// A message whose body was not recorded (an early answer, no body): it goes as it is.
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            crate::lock(&pending).release(self.id);
        }
    }
}

impl Queue {
    fn add(&mut self, event: Record, held: bool) -> u64 {
        let id = self.next;
        self.next += 1;
        self.entries.push_back(Entry { id, event, held });
        if self.entries.len() > WAITING
            && let Some(first) = self.entries.iter_mut().find(|e| e.held)
        {
            first.held = false;
        }
        id
    }

    pub fn push(&mut self, event: Record) {
        self.add(event, false);
    }

    /// Queues `event`, held until the returned place is dropped or its body joins it.
    pub fn hold(pending: &Pending, event: Record) -> Held {
        let id = crate::lock(pending).add(event, true);
        Held {
            id,
            pending: Some(Arc::clone(pending)),
        }
    }

    fn release(&mut self, id: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.id == id) {
            entry.held = false;
        }
    }

    /// Joins a body's summary (written by `summary` at the end of the message's data) to its
    /// held message; `false` when the message already went.
    fn join(&mut self, id: u64, summary: impl FnOnce(&mut JsonObject)) -> bool {
        let Some(entry) = self.entries.iter_mut().find(|e| e.id == id && e.held) else {
            return false;
        };
        let mut data = JsonObject::reopen(std::mem::take(&mut entry.event.data));
        summary(&mut data);
        entry.event.data = data.finish();
        entry.held = false;
        true
    }

    /// The events that can be written now: those before the first held message.
    pub fn ready(&mut self) -> Vec<Record> {
        let n = self
            .entries
            .iter()
            .position(|e| e.held)
            .unwrap_or(self.entries.len());
        self.entries.drain(..n).map(|e| e.event).collect()
    }

    /// Everything (the session ends): a message still held goes without its body.
    pub fn drain(&mut self) -> Vec<Record> {
        self.entries.drain(..).map(|e| e.event).collect()
    }
}

pub struct Capture {
    kind: &'static str,
    /// The message this body belongs to, until the body joins it.
    held: Option<Held>,
    limit: usize,
    /// The body's content type says binary: nothing of it is kept (the recording holds its
    /// size and hash only), so a large download costs no copy.
    binary: bool,
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
        held: Option<Held>,
        limit: u64,
        content_type: Option<String>,
        pending: Pending,
        mask: Option<Arc<Mutex<MaskContext>>>,
    ) -> Self {
        Self {
            kind,
            held,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            binary: crate::http::masking::is_binary_type(content_type.as_deref()),
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
        if self.binary {
            return;
        }
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
            return; // no body: the message goes as it is (`held` dropped)
        }
        let mut kept = std::mem::take(&mut self.kept);
        // Bedrock's event stream (binary frames with CRCs) is kept as the SSE text of its
        // events: replay and `sessions verify` read it as an LLM's stream, and its text is
        // searchable; the hash and size stay the bytes'.
        let rendered = self.content_type.as_deref().is_some_and(|t| {
            t.split(';').next().is_some_and(|e| {
                e.trim()
                    .eq_ignore_ascii_case(crate::mask::eventstream::CONTENT_TYPE)
            })
        });
        // Frames past the limit are not rendered: the bytes kept said so.
        let cut = rendered && self.size > kept.len() as u64;
        if rendered {
            kept = crate::mask::eventstream::render_sse(&kept);
        }
        let mut restored = false;
        if let Some(mask) = &self.mask {
            let ctx = crate::lock(mask);
            if ctx.has_tokens() {
                kept = ctx.retokenize(&kept);
                restored = true;
            }
        }
        let truncated = if self.binary {
            self.size > self.limit as u64
        } else if rendered {
            cut || kept.len() > self.limit
        } else {
            kept.len() > self.limit || self.size > kept.len() as u64
        };
        kept.truncate(self.limit);
        let held = self.held.take();
        let sha256 = (!restored).then(|| crate::hex(&std::mem::take(&mut self.sha).finalize()));
        let body = if self.binary {
            None
        } else {
            match std::str::from_utf8(&kept) {
                Ok(text) => Some(text),
                // Cut inside a character at the limit: keep the valid prefix.
                Err(e) if e.error_len().is_none() => {
                    std::str::from_utf8(&kept[..e.valid_up_to()]).ok()
                }
                Err(_) => None,
            }
        };
        // Joined to its message, the fields are named `body_*` (the text stays `body`);
        // on their own, as an event of `kind`, they keep their short names.
        let summary = |data: &mut JsonObject, prefix: &str| {
            data.key(prefix, "size").value(&self.size);
            data.key(prefix, "truncated").value(&truncated);
            if let Some(sha256) = &sha256 {
                data.key(prefix, "sha256").value(sha256);
            }
            if !complete {
                data.key(prefix, "complete").value(&false);
            }
            if let Some(ct) = &self.content_type {
                data.key(prefix, "content_type").value(ct);
            }
            match body {
                Some(text) => data.field("body", text),
                None => data.key(prefix, "binary").value(&true),
            };
            if rendered && body.is_some() {
                data.key(prefix, "rendered").value("sse");
            }
        };
        let mut queue = crate::lock(&self.pending);
        let joined = match held {
            Some(mut held) => {
                // Settled here, under this lock (`Held::drop` would lock again).
                held.pending = None;
                queue.join(held.id, |data| summary(data, "body_"))
            }
            None => false,
        };
        if !joined {
            let mut data = JsonObject::new();
            summary(&mut data, "");
            queue.push(Record::encoded(self.kind, data.finish()));
        }
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

impl<B: Body> Tap<B> {
    pub fn new(inner: B, mut capture: Capture) -> Self {
        // A body that ended before it began (a GET's) is never polled: its message goes as
        // it is, not as a cut body of 0 bytes.
        if inner.is_end_stream() {
            capture.finish(true);
        }
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
                // hyper stops polling a body that says it ended (a known length reached),
                // so the end is seen here, not only as `None`.
                if this.inner.is_end_stream() {
                    this.capture.finish(true);
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
                None,
                10,
                Some("text/plain".into()),
                Arc::clone(&pending),
                None,
            ),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 100);
        let events = pending.lock().unwrap().drain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, "response_body");
        let e = &data(&events[0]);
        assert_eq!(e["size"], 100);
        assert_eq!(e["truncated"], true);
        assert_eq!(e["body"], "aaaaaaaaaa");
        assert_eq!(e["sha256"].as_str().unwrap().len(), 64);
    }

    /// Bedrock's event stream is recorded as the SSE text of its frames (a `chunk`'s provider
    /// event decoded), which replay reads as a stream; size and hash are the bytes'. Cut by
    /// the limit, the frames that fit are kept and the body says it is truncated.
    #[test]
    fn an_aws_event_stream_is_recorded_as_the_text_of_its_events() {
        use crate::mask::eventstream::{CONTENT_TYPE, event_frame};
        use sha2::{Digest as _, Sha256};
        let mut bytes = Vec::new();
        for piece in ["Hel", "lo"] {
            let v = serde_json::json!({"contentBlockIndex": 0, "delta": {"text": piece}});
            bytes.extend(event_frame("contentBlockDelta", v.to_string().as_bytes()));
        }
        bytes.extend(event_frame("messageStop", br#"{"stopReason":"end_turn"}"#));
        let pending = Pending::default();
        for (limit, truncated) in [(4096, false), (100, true)] {
            let mut c = Capture::new(
                "response_body",
                None,
                limit,
                Some(CONTENT_TYPE.into()),
                Arc::clone(&pending),
                None,
            );
            c.update(&bytes);
            c.finish(true);
            let events = pending.lock().unwrap().drain();
            let e = &data(&events[0]);
            assert_eq!(e["size"], bytes.len());
            assert_eq!(e["truncated"], truncated, "limit {limit}");
            assert_eq!(e["rendered"], "sse");
            assert_eq!(e["sha256"], crate::hex(&Sha256::digest(&bytes)));
            let body = e["body"].as_str().unwrap();
            if truncated {
                assert!(body.len() <= 100, "{body}");
                continue;
            }
            assert!(
                body.starts_with("event: contentBlockDelta\ndata: {"),
                "{body}"
            );
            let text = crate::mask::sse::reassemble(body).unwrap();
            assert_eq!(
                text.streams,
                [("content block 0".to_string(), "Hello".to_string())]
            );
            assert_eq!(text.other, [("messageStop".to_string(), 1)]);
        }
    }

    #[test]
    fn a_binary_body_is_summarised_without_a_copy() {
        use sha2::{Digest as _, Sha256};
        let pending = Pending::default();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        for (limit, truncated) in [(4096, false), (3000, false), (2999, true)] {
            let mut c = Capture::new(
                "response_body",
                None,
                limit,
                Some("application/octet-stream".into()),
                Arc::clone(&pending),
                None,
            );
            for chunk in bytes.chunks(1000) {
                c.update(chunk);
            }
            assert!(c.kept.is_empty(), "nothing of a binary body is kept");
            c.finish(true);
            let events = pending.lock().unwrap().drain();
            let e = &data(&events[0]);
            assert_eq!(
                (&e["size"], &e["truncated"], &e["binary"]),
                (&3000.into(), &truncated.into(), &true.into()),
                "limit {limit}"
            );
            assert!(e.get("body").is_none());
            assert_eq!(e["sha256"], crate::hex(&Sha256::digest(&bytes)));
        }
    }

    #[test]
    fn a_cut_body_is_recorded_as_incomplete() {
        let pending = Pending::default();
        {
            let mut c = Capture::new("request_body", None, 1024, None, Arc::clone(&pending), None);
            c.update(b"{\"partial\":");
        }
        let events = pending.lock().unwrap().drain();
        assert_eq!(data(&events[0])["complete"], false);
        assert_eq!(data(&events[0])["body"], "{\"partial\":");
    }

    #[tokio::test]
    async fn a_body_read_to_its_known_end_is_complete() {
        let pending = Pending::default();
        let mut body = Tap::new(
            Full::new(Bytes::from_static(b"hello")),
            Capture::new("request_body", None, 1024, None, Arc::clone(&pending), None),
        );
        // As hyper does: one frame, then `is_end_stream`, never the final `None`.
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream());
        drop(body);
        let events = pending.lock().unwrap().drain();
        assert_eq!(events.len(), 1);
        assert!(
            data(&events[0]).get("complete").is_none(),
            "{:?}",
            events[0]
        );
        assert_eq!(data(&events[0])["size"], 5);
    }

    fn event(kind: &'static str) -> Record {
        Record::new(kind, &serde_json::json!({}))
    }

    fn kinds(events: &[Record]) -> Vec<&str> {
        events.iter().map(|e| e.kind).collect()
    }

    fn data(event: &Record) -> serde_json::Value {
        serde_json::from_str(&event.data).expect("a recorded event is a JSON object")
    }

    #[tokio::test]
    async fn a_body_joins_its_message_and_later_events_wait_for_it() {
        let pending = Pending::default();
        let held = Queue::hold(&pending, event("http_response"));
        pending.lock().unwrap().push(event("masking"));
        assert!(pending.lock().unwrap().ready().is_empty(), "held in order");
        let body = Tap::new(
            Full::new(Bytes::from_static(b"{\"ok\":true}")),
            Capture::new(
                "response_body",
                Some(held),
                1024,
                Some("application/json".into()),
                Arc::clone(&pending),
                None,
            ),
        );
        body.collect().await.unwrap();
        let events = pending.lock().unwrap().ready();
        assert_eq!(kinds(&events), ["http_response", "masking"]);
        let d = &data(&events[0]);
        assert_eq!(d["body"], "{\"ok\":true}");
        assert_eq!(d["body_size"], 11);
        assert_eq!(d["body_truncated"], false);
        assert_eq!(d["body_content_type"], "application/json");
        assert_eq!(d["body_sha256"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn a_message_without_a_recorded_body_goes_as_it_is() {
        let pending = Pending::default();
        let held = Queue::hold(&pending, event("http_request"));
        pending.lock().unwrap().push(event("blocked"));
        drop(held);
        let events = pending.lock().unwrap().ready();
        assert_eq!(kinds(&events), ["http_request", "blocked"]);
        assert!(data(&events[0]).get("body_size").is_none());
        let request_body = || {
            let held = Queue::hold(&pending, event("http_request"));
            Capture::new(
                "request_body",
                Some(held),
                10,
                None,
                Arc::clone(&pending),
                None,
            )
        };
        // An empty body adds nothing either, nor does a body that has ended before anyone
        // reads it (hyper never polls it).
        request_body().finish(true);
        drop(Tap::new(
            http_body_util::Empty::<Bytes>::new(),
            request_body(),
        ));
        let events = pending.lock().unwrap().ready();
        assert_eq!(kinds(&events), ["http_request", "http_request"]);
        assert_eq!(
            (events[0].data.as_str(), events[1].data.as_str()),
            ("{}", "{}")
        );
    }

    #[test]
    fn a_long_held_message_lets_the_queue_go_and_its_body_follows() {
        let pending = Pending::default();
        let held = Queue::hold(&pending, event("http_response"));
        for _ in 0..WAITING {
            pending.lock().unwrap().push(event("http_request"));
        }
        let events = pending.lock().unwrap().ready();
        assert_eq!(events.len(), WAITING + 1);
        assert_eq!(events[0].kind, "http_response");
        let mut c = Capture::new(
            "response_body",
            Some(held),
            10,
            None,
            Arc::clone(&pending),
            None,
        );
        c.update(b"late");
        c.finish(true);
        let events = pending.lock().unwrap().ready();
        assert_eq!(kinds(&events), ["response_body"]);
        assert_eq!(data(&events[0])["body"], "late");
    }
}
