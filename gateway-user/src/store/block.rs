//! How events are stored: in blocks, one row of `event_blocks` per session per recorder batch
//! (migration `0005_event_blocks.sql`). A block's `data` is a JSON array of the batch's events
//! of that session, in order:
//!
//! ```json
//! [{"seq":0,"at":"2026-11-22T06:52:31.123Z","kind":"http_request","hash":"9f2c…","data":{…}}, …]
//! ```
//!
//! `data` is the event's object exactly as it was chained (see `audit::chain_event`), so a
//! block is readable with the database's own JSON functions and every stored byte stays
//! greppable. One row per block instead of one per event is what makes `record = "full"`
//! cheap: at 1 KiB exchanges a batch of 600 events of 16 sessions is 16 B-tree inserts
//! instead of 1,200 (the row and its primary-key index, per event).

use std::{borrow::Cow, fmt::Write as _};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::audit::{Hash, StoredEvent};

/// The events of one session that one batch writes.
#[derive(Debug, Clone)]
pub struct EventBlock {
    pub session: String,
    /// `seq` of the first event.
    pub seq: u64,
    /// How many events the block holds.
    pub events: u64,
    /// The JSON array (complete once [`Self::finish`] ran).
    pub data: String,
}

impl EventBlock {
    pub fn new(session: String, seq: u64) -> Self {
        let mut data = String::with_capacity(4096);
        data.push('[');
        Self {
            session,
            seq,
            events: 0,
            data,
        }
    }

    /// Appends the next event (its `seq` follows the previous one's).
    pub fn push(&mut self, seq: u64, at: &str, kind: &str, hash: &Hash, data: &str) {
        debug_assert_eq!(
            seq,
            self.seq + self.events,
            "a block holds consecutive events"
        );
        let out = &mut self.data;
        if self.events > 0 {
            out.push(',');
        }
        // Writing into a `String` cannot fail.
        let _ = write!(out, "{{\"seq\":{seq},\"at\":");
        push_json_str(out, at);
        out.push_str(",\"kind\":");
        push_json_str(out, kind);
        out.push_str(",\"hash\":\"");
        crate::push_hex(out, hash);
        out.push_str("\",\"data\":");
        out.push_str(data);
        out.push('}');
        self.events += 1;
    }

    pub fn finish(&mut self) {
        self.data.push(']');
    }
}

/// A JSON string: as it is when nothing in it needs escaping (timestamps, event kinds).
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

#[derive(Deserialize)]
struct Element<'a> {
    seq: u64,
    #[serde(borrow)]
    at: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The events a stored block holds, in order, or why it does not read as a block (it was
/// edited by hand).
pub fn events(session: &str, text: &str) -> Result<Vec<StoredEvent>, String> {
    let elements: Vec<Element<'_>> =
        serde_json::from_str(text).map_err(|e| format!("not a block of events: {e}"))?;
    Ok(elements
        .into_iter()
        .map(|e| StoredEvent {
            session: session.to_string(),
            seq: e.seq,
            at: e.at.into_owned(),
            kind: e.kind.into_owned(),
            data: e.data.get().to_string(),
            hash: e.hash.into_owned(),
        })
        .collect())
}

/// [`events`] for `audit verify`: a block that does not read gives one event that cannot
/// verify (no hash), so the session is reported as altered at the block's first `seq` and
/// the rest of the store is still checked.
pub fn events_or_unreadable(session: &str, seq: u64, text: String) -> Vec<StoredEvent> {
    events(session, &text).unwrap_or_else(|problem| {
        vec![StoredEvent {
            session: session.to_string(),
            seq,
            at: String::new(),
            kind: format!("unreadable event block ({problem})"),
            data: text,
            hash: String::new(),
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_back_the_events_written_into_it() {
        let mut block = EventBlock::new("01S".into(), 4);
        let data = [
            r#"{"method":"GET","path":"/a?q=\"x\"","body":"é\n"}"#,
            r#"{"status":200,"headers":{"a":"b, c"}}"#,
        ];
        block.push(
            4,
            "2026-11-22T06:52:31.123Z",
            "http_request",
            &[0xab; 32],
            data[0],
        );
        block.push(5, "odd \"time\"", "http_response", &[0x01; 32], data[1]);
        block.finish();
        assert_eq!(block.events, 2);
        let value: serde_json::Value = serde_json::from_str(&block.data).unwrap();
        assert_eq!(value[1]["data"]["headers"]["a"], "b, c");
        let events = events("01S", &block.data).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (
                events[0].seq,
                events[0].kind.as_str(),
                events[0].data.as_str()
            ),
            (4, "http_request", data[0])
        );
        assert_eq!(events[0].hash, "ab".repeat(32));
        assert_eq!(
            (
                events[1].seq,
                events[1].at.as_str(),
                events[1].data.as_str()
            ),
            (5, "odd \"time\"", data[1])
        );
    }

    #[test]
    fn an_edited_block_is_one_event_that_cannot_verify() {
        let unreadable = events_or_unreadable("01S", 7, "[{\"seq\":7,".into());
        assert_eq!(unreadable.len(), 1);
        assert_eq!((unreadable[0].seq, unreadable[0].hash.as_str()), (7, ""));
        assert!(
            unreadable[0].kind.starts_with("unreadable event block"),
            "{}",
            unreadable[0].kind
        );
        assert!(events("01S", "{}").is_err());
    }
}
