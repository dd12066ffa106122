//! Masking of Server-Sent Events from LLM APIs, event by event and without buffering the
//! response.
//!
//! The text a model streams is spread over many events: OpenAI `chat.completions`
//! (`choices[].delta.content`, `choices[].delta.tool_calls[].function.arguments`), OpenAI
//! `responses` (`response.*.delta` events) and Anthropic `messages` (`content_block_delta`
//! with `text_delta`, `input_json_delta`, `thinking_delta`). Each such text stream is fed to
//! its own [`StreamMasker`], so a value split over several events is found; every event goes
//! out as a valid SSE event with valid JSON carrying the settled part of its delta. What is
//! still held back when a stream ends (`finish_reason`, `content_block_stop`, a `.done`
//! event, `[DONE]` or the end of the body) goes out in one extra event of the same shape,
//! just before the event that ended it. Other events are masked whole, as JSON or as text.
//!
//! Newline-delimited JSON streams (`application/x-ndjson`: Ollama's `/api/chat` and
//! `/api/generate`, `message.content` / `response` and their `thinking`) are read the same way
//! ([`SseMasker::ndjson`]): each line is an event's data, and a line with `"done": true`
//! ends the streams.

use serde_json::Value;

use super::{
    MaskContext, PathStep,
    stream::{Step, StreamMasker},
};

/// Longest SSE line buffered; past it the rest of the body is masked as plain text.
pub const MAX_LINE: usize = 1 << 20;

/// Said in the session when [`strip_token_logprobs`] removed anything.
pub const LOGPROBS_NOTE: &str =
    "token logprobs removed: their tokens would repeat the masked text unmasked";

/// Whether a content type's essence (lower-case, no parameters) is newline-delimited JSON,
/// read by [`SseMasker::ndjson`].
pub fn is_ndjson_type(essence: &str) -> bool {
    matches!(
        essence,
        "application/x-ndjson" | "application/ndjson" | "application/jsonl"
    )
}

/// One text stream inside the events.
struct TextStream {
    key: String,
    masker: StreamMasker,
    /// The last event carrying this stream, its delta emptied: the shape of a flush event.
    template: Option<(Vec<Vec<u8>>, Value, String)>,
}

/// The SSE masker of one response body.
pub struct SseMasker {
    steps: Vec<Step>,
    /// Newline-delimited JSON: each line is an event's data, written back as a line.
    ndjson: bool,
    line: Vec<u8>,
    /// A `\r` ended the last line; a `\n` right after it belongs to it.
    after_cr: bool,
    /// Non-data lines of the current event, as received.
    fields: Vec<Vec<u8>>,
    data: Vec<u8>,
    has_data: bool,
    streams: Vec<TextStream>,
    /// Past an over-long line everything goes through this text masker.
    overflow: Option<StreamMasker>,
    /// Short strings masking left unchanged (see [`mask_strings`]).
    clean: Vec<Box<str>>,
}

impl SseMasker {
    /// `steps` are the masking steps that apply to the response (and `Restore` for a session
    /// with tokens).
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            ndjson: false,
            line: Vec::new(),
            after_cr: false,
            fields: Vec::new(),
            data: Vec::new(),
            has_data: false,
            streams: Vec::new(),
            overflow: None,
            clean: Vec::new(),
        }
    }

    /// The masker of a newline-delimited JSON stream (`application/x-ndjson`).
    pub fn ndjson(steps: Vec<Step>) -> Self {
        Self {
            ndjson: true,
            ..Self::new(steps)
        }
    }

    pub fn push(&mut self, chunk: &[u8], ctx: &mut MaskContext) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(text) = &mut self.overflow {
            return text.push(chunk, ctx);
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(at) => {
                    self.line.extend_from_slice(&rest[..at]);
                    self.after_cr = rest[at] == b'\r';
                    rest = &rest[at + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.line(line, ctx, &mut out);
                }
                None => {
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
            if self.line.len() > MAX_LINE {
                ctx.note("sse line over 1 MiB: rest of the stream masked as text");
                return self.overflow(rest, ctx, out);
            }
        }
        out
    }

    /// Everything held so far goes out masked as text, and so will the rest.
    fn overflow(&mut self, rest: &[u8], ctx: &mut MaskContext, mut out: Vec<u8>) -> Vec<u8> {
        self.flush_all(ctx, &mut out);
        let mut text = StreamMasker::new(self.steps.iter().cloned());
        let mut held = Vec::new();
        for field in self.fields.drain(..) {
            held.extend_from_slice(&field);
            held.push(b'\n');
        }
        if self.has_data {
            if !self.ndjson {
                held.extend_from_slice(b"data: ");
            }
            held.extend_from_slice(&self.data);
            held.push(b'\n');
        }
        held.append(&mut self.line);
        held.extend_from_slice(rest);
        out.extend(text.push(&held, ctx));
        self.overflow = Some(text);
        out
    }

    pub fn finish(&mut self, ctx: &mut MaskContext) -> Vec<u8> {
        if let Some(text) = &mut self.overflow {
            return text.finish(ctx);
        }
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line(line, ctx, &mut out);
        }
        if self.has_data || !self.fields.is_empty() {
            self.dispatch(ctx, &mut out);
        }
        self.flush_all(ctx, &mut out);
        out
    }

    fn line(&mut self, line: Vec<u8>, ctx: &mut MaskContext, out: &mut Vec<u8>) {
        if self.ndjson {
            if line.trim_ascii().is_empty() {
                out.extend_from_slice(&line);
                out.push(b'\n');
            } else {
                self.data = line;
                self.has_data = true;
                self.dispatch(ctx, out);
            }
            return;
        }
        if line.is_empty() {
            self.dispatch(ctx, out);
            return;
        }
        if let Some(value) = line.strip_prefix(b"data") {
            if value.is_empty() || value[0] == b':' {
                let value = value.get(1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
                return;
            }
        }
        self.fields.push(line);
    }

    /// One complete event.
    fn dispatch(&mut self, ctx: &mut MaskContext, out: &mut Vec<u8>) {
        let fields = std::mem::take(&mut self.fields);
        let data = std::mem::take(&mut self.data);
        let has_data = std::mem::take(&mut self.has_data);
        if !has_data {
            self.emit(out, &fields, None);
            return;
        }
        if data.trim_ascii() == b"[DONE]" {
            self.flush_all(ctx, out);
            self.emit(out, &fields, Some(&data));
            return;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(&data) else {
            let masked = self.mask_whole_text(&data, ctx);
            self.emit(out, &fields, Some(&masked));
            return;
        };
        let event_name = event_name(&fields, &value);
        let ends = ends(&event_name, &value);
        let deltas = deltas(&event_name, &value);
        if self.masks() && strip_token_logprobs(&mut value) {
            ctx.note(LOGPROBS_NOTE);
        }
        // The texts are taken out first; everything else in the event (a tool call's
        // arguments beside the text, citations, whole function calls) is masked as JSON.
        let texts: Vec<Option<Value>> = deltas
            .iter()
            .map(|(_, pointer)| {
                slot_mut(&mut value, pointer)
                    .map(|slot| std::mem::replace(slot, Value::String(String::new())))
            })
            .collect();
        self.mask_whole_json(&mut value, ctx);
        let ending = |key: &str| ends.iter().any(|end| key.starts_with(end.as_str()));
        let mut settled: Vec<(usize, Vec<u8>)> = Vec::new();
        for (at, ((key, pointer), text)) in deltas.iter().zip(texts).enumerate() {
            let Some(Value::String(text)) = text else {
                continue;
            };
            let index = self.stream(key, pointer);
            let stream = &mut self.streams[index];
            settled.push((at, stream.masker.push(text.as_bytes(), ctx)));
            if !ending(key) {
                let (template, at) = flush_template(&value, pointer, self.ndjson);
                stream.template = Some((fields.clone(), template, at));
            }
        }
        // A stream that ends in an event carrying its text (Gemini's last chunk, Ollama's
        // `"done": true` line, a server that sends the last token with `finish_reason`)
        // ends in that event: its held text joins the event's last piece of it, so a value
        // split over the end is masked whole, and nothing of it comes after the end.
        for (key, _) in &deltas {
            if !ending(key) {
                continue;
            }
            let Some(index) = self.streams.iter().position(|s| s.key == *key) else {
                continue; // finished by an earlier delta of this event
            };
            let mut stream = self.streams.remove(index);
            let rest = stream.masker.finish(ctx);
            let last = deltas.iter().rposition(|(k, _)| k == key);
            if let Some((_, text)) = settled.iter_mut().rev().find(|(at, _)| Some(*at) == last) {
                text.extend(rest);
            }
        }
        // Streams this event ends that carry no text in it: their rest goes out just
        // before it.
        for key in &ends {
            self.flush(key, ctx, out);
        }
        for (at, text) in settled {
            if let Some(slot) = slot_mut(&mut value, &deltas[at].1) {
                *slot = Value::String(String::from_utf8_lossy(&text).into_owned());
            }
        }
        let json = serde_json::to_vec(&value).unwrap_or(data);
        self.emit(out, &fields, Some(&json));
    }

    /// Whether any step masks (a session's `Restore` alone changes no value of the model's).
    fn masks(&self) -> bool {
        self.steps.iter().any(|step| matches!(step, Step::Mask(_)))
    }

    fn stream(&mut self, key: &str, pointer: &str) -> usize {
        if let Some(index) = self.streams.iter().position(|s| s.key == key) {
            return index;
        }
        let at = pointer_steps(pointer);
        let steps = self.steps.iter().filter(|step| match step {
            Step::Mask(masker) => masker.selects(&at),
            Step::Restore => true,
        });
        self.streams.push(TextStream {
            key: key.to_string(),
            masker: StreamMasker::new(steps.cloned()),
            template: None,
        });
        self.streams.len() - 1
    }

    /// Ends the text streams whose key starts with `prefix`, emitting what they held.
    fn flush(&mut self, prefix: &str, ctx: &mut MaskContext, out: &mut Vec<u8>) {
        let mut index = 0;
        while index < self.streams.len() {
            if !self.streams[index].key.starts_with(prefix) {
                index += 1;
                continue;
            }
            let mut stream = self.streams.remove(index);
            let rest = stream.masker.finish(ctx);
            if let (false, Some((fields, mut template, pointer))) =
                (rest.is_empty(), stream.template)
            {
                if let Some(slot) = slot_mut(&mut template, &pointer) {
                    *slot = Value::String(String::from_utf8_lossy(&rest).into_owned());
                }
                let fields: Vec<Vec<u8>> = fields
                    .into_iter()
                    .filter(|f| !f.starts_with(b"id"))
                    .collect();
                let json = serde_json::to_vec(&template).unwrap_or_default();
                self.emit(out, &fields, Some(&json));
            }
        }
    }

    /// Writes an event: SSE fields and `data:` lines, or a line of JSON.
    fn emit(&self, out: &mut Vec<u8>, fields: &[Vec<u8>], data: Option<&[u8]>) {
        if !self.ndjson {
            write_event(out, fields, data);
        } else if let Some(data) = data {
            out.extend_from_slice(data);
            out.push(b'\n');
        }
    }

    fn flush_all(&mut self, ctx: &mut MaskContext, out: &mut Vec<u8>) {
        self.flush("", ctx, out);
    }

    fn mask_whole_json(&mut self, value: &mut Value, ctx: &mut MaskContext) {
        let plain = self
            .steps
            .iter()
            .all(|step| matches!(step, Step::Mask(masker) if masker.json_paths.is_empty()));
        if plain {
            mask_strings(&self.steps, &mut self.clean, value, ctx);
            return;
        }
        for step in &self.steps {
            match step {
                Step::Mask(masker) => masker.mask_json(value, ctx),
                Step::Restore => restore_json(value, ctx),
            }
        }
    }

    fn mask_whole_text(&self, data: &[u8], ctx: &mut MaskContext) -> Vec<u8> {
        let mut text = StreamMasker::new(self.steps.iter().cloned());
        let mut out = text.push(data, ctx);
        out.extend(text.finish(ctx));
        out
    }
}

/// Longest string [`mask_strings`] remembers as clean, and how many it remembers (a stream
/// repeats a handful; a short list is searched faster than a hash is computed).
const CLEAN_LEN: usize = 64;
const CLEAN_MAX: usize = 16;

/// Masks every string of `value` with `steps` (masks without `json_paths`). A short string
/// they left as it was is remembered in `clean` and not looked at again: the events of a
/// stream repeat their ids, model names and roles, each a trigger pass per event otherwise,
/// and masking gives a string the same result every time.
fn mask_strings(
    steps: &[Step],
    clean: &mut Vec<Box<str>>,
    value: &mut Value,
    ctx: &mut MaskContext,
) {
    match value {
        Value::String(text) => {
            let short = text.len() <= CLEAN_LEN;
            if short && clean.iter().any(|c| **c == **text) {
                return;
            }
            let mut changed = false;
            for step in steps {
                if let Step::Mask(masker) = step
                    && let std::borrow::Cow::Owned(masked) = masker.mask_text(text, ctx)
                {
                    *text = masked;
                    changed = true;
                }
            }
            if short && !changed {
                if clean.len() >= CLEAN_MAX {
                    clean.remove(0);
                }
                clean.push(text.as_str().into());
            }
        }
        Value::Array(items) => {
            for item in items {
                mask_strings(steps, clean, item, ctx);
            }
        }
        Value::Object(fields) => {
            for inner in fields.values_mut() {
                mask_strings(steps, clean, inner, ctx);
            }
        }
        _ => {}
    }
}

/// Restores this session's placeholders in every string of a JSON value.
pub fn restore_json(value: &mut Value, ctx: &MaskContext) {
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(restored) = ctx.restore(text) {
                *text = restored;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| restore_json(v, ctx)),
        Value::Object(fields) => fields.values_mut().for_each(|v| restore_json(v, ctx)),
        _ => {}
    }
}

/// The event's name: its `event:` field, else the `type` of its JSON.
fn event_name(fields: &[Vec<u8>], value: &Value) -> String {
    for field in fields {
        if let Some(name) = field.strip_prefix(b"event:") {
            return String::from_utf8_lossy(name.trim_ascii()).into_owned();
        }
    }
    value["type"].as_str().unwrap_or_default().to_string()
}

fn index_of(value: &Value, key: &str, fallback: usize) -> u64 {
    value[key].as_u64().unwrap_or(fallback as u64)
}

/// The text streams of an event: (stream key, JSON pointer of the delta text).
fn deltas(name: &str, value: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // OpenAI chat.completions (and legacy completions).
    if let Some(choices) = value["choices"].as_array() {
        for (i, choice) in choices.iter().enumerate() {
            let c = index_of(choice, "index", i);
            let delta = &choice["delta"];
            for field in ["content", "refusal", "reasoning_content"] {
                if delta[field].is_string() {
                    found.push((
                        format!("c{c}.{field}"),
                        format!("/choices/{i}/delta/{field}"),
                    ));
                }
            }
            if let Some(calls) = delta["tool_calls"].as_array() {
                for (j, call) in calls.iter().enumerate() {
                    if call["function"]["arguments"].is_string() {
                        let t = index_of(call, "index", j);
                        found.push((
                            format!("c{c}.tool{t}"),
                            format!("/choices/{i}/delta/tool_calls/{j}/function/arguments"),
                        ));
                    }
                }
            }
            if delta["audio"]["transcript"].is_string() {
                found.push((
                    format!("c{c}.audio"),
                    format!("/choices/{i}/delta/audio/transcript"),
                ));
            }
            if choice["text"].is_string() {
                found.push((format!("c{c}.text"), format!("/choices/{i}/text")));
            }
        }
        return found;
    }
    // Gemini (`streamGenerateContent?alt=sse`, Vertex AI too): every chunk is a whole
    // response whose candidates carry the next parts; a part's `text` is the answer, or
    // with `"thought": true` the model's thinking. Function calls come whole.
    if let Some(candidates) = value["candidates"].as_array() {
        for (i, candidate) in candidates.iter().enumerate() {
            let c = index_of(candidate, "index", i);
            let parts = candidate["content"]["parts"].as_array();
            for (j, part) in parts.into_iter().flatten().enumerate() {
                if part["text"].is_string() {
                    let stream = if part["thought"] == true {
                        "thought"
                    } else {
                        "text"
                    };
                    found.push((
                        format!("g{c}.{stream}"),
                        format!("/candidates/{i}/content/parts/{j}/text"),
                    ));
                }
            }
        }
        return found;
    }
    // OpenAI responses.
    if name.starts_with("response.") && name.ends_with(".delta") && value["delta"].is_string() {
        let item = value["item_id"].as_str().map_or_else(
            || index_of(value, "output_index", 0).to_string(),
            str::to_string,
        );
        let part = index_of(value, "content_index", 0);
        found.push((format!("r{item}.{part}"), "/delta".to_string()));
        return found;
    }
    // Ollama (`/api/chat`, `/api/generate`): every line says whether it is the last.
    if value["done"].is_boolean() {
        for (key, pointer) in [
            ("o.content", "/message/content"),
            ("o.thinking", "/message/thinking"),
            ("o.response", "/response"),
            ("o.rthinking", "/thinking"),
        ] {
            if value.pointer(pointer).is_some_and(Value::is_string) {
                found.push((key.to_string(), pointer.to_string()));
            }
        }
        return found;
    }
    // Amazon Bedrock's `ConverseStream` (frames of an AWS event stream, see
    // `eventstream.rs`): a content block's text, tool input or reasoning.
    if name == "contentBlockDelta" {
        let b = index_of(value, "contentBlockIndex", 0);
        for pointer in [
            "/delta/text",
            "/delta/toolUse/input",
            "/delta/reasoningContent/text",
        ] {
            if value.pointer(pointer).is_some_and(Value::is_string) {
                found.push((format!("b{b}"), pointer.to_string()));
            }
        }
        return found;
    }
    // Anthropic messages.
    if name == "content_block_delta" {
        let b = index_of(value, "index", 0);
        for field in ["text", "partial_json", "thinking"] {
            if value["delta"][field].is_string() {
                found.push((format!("a{b}"), format!("/delta/{field}")));
            }
        }
    }
    found
}

/// Stream keys that end with this event (their held text must go out before it).
fn ends(name: &str, value: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(choices) = value["choices"].as_array() {
        for (i, choice) in choices.iter().enumerate() {
            if !choice["finish_reason"].is_null() {
                keys.push(format!("c{}.", index_of(choice, "index", i)));
            }
        }
    } else if name.starts_with("response.") && name.ends_with(".done") {
        let item = value["item_id"].as_str().map_or_else(
            || index_of(value, "output_index", 0).to_string(),
            str::to_string,
        );
        keys.push(format!("r{item}.{}", index_of(value, "content_index", 0)));
    } else if matches!(
        name,
        "response.completed" | "message_stop" | "error" | "messageStop"
    ) {
        keys.push(String::new());
    } else if name == "content_block_stop" {
        keys.push(format!("a{}", index_of(value, "index", 0)));
    } else if name == "contentBlockStop" {
        keys.push(format!("b{}", index_of(value, "contentBlockIndex", 0)));
    } else if let Some(candidates) = value["candidates"].as_array() {
        for (i, candidate) in candidates.iter().enumerate() {
            if !candidate["finishReason"].is_null() {
                keys.push(format!("g{}.", index_of(candidate, "index", i)));
            }
        }
    } else if value["done"] == Value::Bool(true) {
        keys.push("o.".to_string()); // Ollama's last line
    }
    keys
}

/// The shape of a flush event for the text at `pointer` of `value`: the event's own scalar
/// fields (`id`, `model`, `type`…), and on the way to the text only what places it (`index`,
/// `type`, Gemini's `thought`), each array cut to the one element on the way. Nothing that a
/// client accumulates is sent twice: SDKs concatenate every string of a delta (the `openai`
/// package's `accumulate_delta`), so a repeated `role`, tool call `id` or function `name`
/// would come out doubled, and a repeated `finish_reason`, usage or whole tool call would
/// count twice. Returns the template and the pointer of its text.
///
/// Ollama's clients read each line on its own and want a message's `role` (`keep_role`).
fn flush_template(value: &Value, pointer: &str, keep_role: bool) -> (Value, String) {
    let steps: Vec<&str> = pointer.split('/').skip(1).collect();
    let mut at = String::new();
    let template = match value {
        Value::Object(fields) => {
            let mut kept: serde_json::Map<String, Value> = fields
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some((first, rest)) = steps.split_first()
                && let Some(inner) = fields.get(*first)
            {
                at.push('/');
                at.push_str(first);
                kept.insert(
                    (*first).to_string(),
                    path_only(inner, rest, keep_role, &mut at),
                );
            }
            Value::Object(kept)
        }
        other => other.clone(),
    };
    (template, at)
}

/// [`flush_template`] below the top: the way down `steps` and what places it.
fn path_only(value: &Value, steps: &[&str], keep_role: bool, at: &mut String) -> Value {
    let Some((step, rest)) = steps.split_first() else {
        return Value::String(String::new()); // the text itself, filled in at the flush
    };
    match value {
        Value::Array(items) => {
            let item = step.parse::<usize>().ok().and_then(|i| items.get(i));
            at.push_str("/0");
            Value::Array(
                item.map(|v| path_only(v, rest, keep_role, at))
                    .into_iter()
                    .collect(),
            )
        }
        Value::Object(fields) => {
            // Picked in one pass over the fields (a lookup hashes its key).
            let places = |key: &str| match key {
                "index" | "type" | "thought" => true,
                "role" => keep_role,
                _ => false,
            };
            let mut kept: serde_json::Map<String, Value> = fields
                .iter()
                .filter(|(k, v)| {
                    places(k) && k.as_str() != *step && !v.is_object() && !v.is_array()
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(inner) = fields.get(*step) {
                at.push('/');
                at.push_str(step);
                kept.insert((*step).to_string(), path_only(inner, rest, keep_role, at));
            }
            Value::Object(kept)
        }
        _ => Value::String(String::new()),
    }
}

/// Removes the per-token log probabilities of an LLM's answer (`logprobs`, `top_logprobs`,
/// Gemini's `logprobsResult`), streamed or whole: their tokens are the model's text cut at
/// token bounds, so a value masked in the text would go out beside it a token at a time,
/// where no detector can see it. Only log probabilities that hold tokens (a `token` or
/// `tokens` key) go; arrays become empty and objects `null`, as the APIs send when none were
/// asked for. Returns whether anything was removed.
pub fn strip_token_logprobs(value: &mut Value) -> bool {
    match value {
        Value::Object(fields) => {
            let mut removed = false;
            for (key, inner) in fields.iter_mut() {
                if matches!(key.as_str(), "logprobs" | "top_logprobs" | "logprobsResult") {
                    if has_tokens(inner) {
                        *inner = if inner.is_array() {
                            Value::Array(Vec::new())
                        } else {
                            Value::Null
                        };
                        removed = true;
                    }
                } else {
                    removed |= strip_token_logprobs(inner);
                }
            }
            removed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |removed, item| strip_token_logprobs(item) | removed),
        _ => false,
    }
}

/// Whether a log probabilities value names tokens anywhere inside.
fn has_tokens(value: &Value) -> bool {
    match value {
        Value::Object(fields) => fields
            .iter()
            .any(|(key, inner)| key == "token" || key == "tokens" || has_tokens(inner)),
        Value::Array(items) => items.iter().any(has_tokens),
        _ => false,
    }
}

/// The value at a pointer of [`deltas`] (keys without `~` or `/`, so unescaped), without
/// the allocations of `Value::pointer_mut`, which unescapes every step into a new string.
fn slot_mut<'a>(value: &'a mut Value, pointer: &str) -> Option<&'a mut Value> {
    let mut at = value;
    for step in pointer.split('/').skip(1) {
        at = match at {
            Value::Object(fields) => fields.get_mut(step)?,
            Value::Array(items) => items.get_mut(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn pointer_steps(pointer: &str) -> Vec<PathStep> {
    pointer
        .split('/')
        .skip(1)
        .map(|step| match step.parse() {
            Ok(index) => PathStep::Index(index),
            Err(_) => PathStep::Key(step.replace("~1", "/").replace("~0", "~")),
        })
        .collect()
}

fn write_event(out: &mut Vec<u8>, fields: &[Vec<u8>], data: Option<&[u8]>) {
    for field in fields {
        out.extend_from_slice(field);
        out.push(b'\n');
    }
    if let Some(data) = data {
        for line in data.split(|&b| b == b'\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

/// The events an [`SseMasker`] wrote, as `(event name, data)`: its own output (`event:` and
/// `data:` lines), for framings that hand their messages to it as events (AWS event
/// streams, WebSocket messages).
pub fn written_events(out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut events = Vec::new();
    for event in out
        .split(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .split(|line| line.is_empty())
    {
        let mut name = String::new();
        let mut data: Option<Vec<u8>> = None;
        for line in event {
            if let Some(value) = line.strip_prefix(b"event: ") {
                name = String::from_utf8_lossy(value).into_owned();
            } else if let Some(value) = line.strip_prefix(b"data: ") {
                let data = data.get_or_insert_with(Vec::new);
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
            }
        }
        if let Some(data) = data {
            events.push((name, data));
        }
    }
    events
}

/// A recorded SSE body read back for `sessions replay`: the text of each stream the
/// masker would follow (the same [`deltas`]), put back together.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reassembled {
    /// Events in the body (a cut last one included).
    pub events: usize,
    /// Each text stream's label and text, in the order the streams began.
    pub streams: Vec<(String, String)>,
    /// Events that carry no text, by name (`finish_reason stop` for a choice that ended), with
    /// how many times each came, in the order of their first.
    pub other: Vec<(String, usize)>,
    /// Events whose data is neither JSON nor `[DONE]` (a body cut by the recording limit).
    pub unreadable: usize,
    /// The stream ended with `data: [DONE]`.
    pub done: bool,
}

/// Reads a recorded SSE body back into its text streams; `None` when no event carries one
/// (not an LLM stream: the body is better shown as it is).
pub fn reassemble(body: &str) -> Option<Reassembled> {
    let mut out = Reassembled::default();
    let mut keys: Vec<String> = Vec::new();
    // As the masker reads an event: its other fields' lines, and its data.
    let (mut fields, mut data, mut has_data) = (Vec::new(), String::new(), false);
    // Lines end with `\r\n`, `\n` or `\r`; an empty line ends an event, and so does the end
    // of the body (a recording cut inside an event).
    let body = body.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        if !line.is_empty() {
            match line.split_once(':').unwrap_or((line, "")) {
                ("data", value) => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    has_data = true;
                }
                _ => fields.push(line.as_bytes().to_vec()), // `event`, `id`, comments
            }
            if lines.peek().is_some() {
                continue;
            }
        }
        if has_data {
            out.events += 1;
            read_event(&fields, &data, &mut out, &mut keys);
        }
        fields.clear();
        data.clear();
        has_data = false;
    }
    (!out.streams.is_empty()).then_some(out)
}

/// A recorded newline-delimited JSON stream (Ollama's) read back like [`reassemble`]: each
/// line is an event.
pub fn reassemble_lines(body: &str) -> Option<Reassembled> {
    let mut out = Reassembled::default();
    let mut keys: Vec<String> = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        out.events += 1;
        read_event(&[], line, &mut out, &mut keys);
    }
    (!out.streams.is_empty()).then_some(out)
}

fn read_event(fields: &[Vec<u8>], data: &str, out: &mut Reassembled, keys: &mut Vec<String>) {
    if data.trim() == "[DONE]" {
        out.done = true;
        return;
    }
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        out.unreadable += 1;
        return;
    };
    let name = event_name(fields, &value);
    let name = name.as_str();
    let mut other = |what: String| match out.other.iter_mut().find(|(n, _)| *n == what) {
        Some((_, count)) => *count += 1,
        None => out.other.push((what, 1)),
    };
    let found = deltas(name, &value);
    // Anthropic names the tool a block calls when the block starts.
    if name == "content_block_start"
        && let Some(tool) = value["content_block"]["name"].as_str()
    {
        let key = format!("a{}", index_of(&value, "index", 0));
        if !keys.contains(&key) {
            out.streams
                .push((format!("{} ({tool})", stream_label(&key)), String::new()));
            keys.push(key);
        }
    }
    let finished: Vec<&str> = (value["choices"].as_array().into_iter().flatten())
        .filter_map(|choice| choice["finish_reason"].as_str())
        .chain(
            (value["candidates"].as_array().into_iter().flatten())
                .filter_map(|candidate| candidate["finishReason"].as_str()),
        )
        .collect();
    // A chunk that only ends its choice is said by its reason.
    if found.is_empty() && finished.is_empty() {
        let name = Some(name)
            .filter(|n| !n.is_empty())
            .or_else(|| value["object"].as_str())
            .unwrap_or("(unnamed)");
        other(name.to_string());
    }
    for reason in finished {
        other(format!("finish_reason {reason}"));
    }
    // Ollama: tool calls come whole, and the last line says why it ended.
    for call in value["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = call["function"]["name"].as_str().unwrap_or("?");
        other(format!(
            "tool call {name} {}",
            call["function"]["arguments"]
        ));
    }
    if value["done"] == Value::Bool(true) {
        other(match value["done_reason"].as_str() {
            Some(reason) => format!("done ({reason})"),
            None => "done".to_string(),
        });
    }
    for (key, pointer) in found {
        let text = value
            .pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(i) = keys.iter().position(|k| *k == key) {
            out.streams[i].1.push_str(text);
            continue;
        }
        let mut label = stream_label(&key);
        // The tool a model called is named in its call's first delta.
        let function = pointer
            .strip_suffix("/arguments")
            .map(|p| format!("{p}/name"));
        if let Some(tool) = function.and_then(|p| value.pointer(&p)?.as_str()) {
            label = format!("{label} ({tool})");
        }
        keys.push(key);
        out.streams.push((label, text.to_string()));
    }
}

/// A stream key of [`deltas`] as a reader says it: `c0.content` is `choice 0`.
fn stream_label(key: &str) -> String {
    if let Some(rest) = key.strip_prefix('c')
        && let Some((choice, field)) = rest.split_once('.')
    {
        return match field {
            "content" | "text" => format!("choice {choice}"),
            "reasoning_content" => format!("choice {choice} reasoning"),
            "audio" => format!("choice {choice} audio transcript"),
            _ => match field.strip_prefix("tool") {
                Some(t) => format!("choice {choice} tool call {t} arguments"),
                None => format!("choice {choice} {field}"),
            },
        };
    }
    if let Some(rest) = key.strip_prefix('r')
        && let Some((item, part)) = rest.rsplit_once('.')
    {
        return format!("output {item} part {part}");
    }
    if let Some(rest) = key.strip_prefix('g')
        && let Some((candidate, stream)) = rest.split_once('.')
    {
        return match stream {
            "thought" => format!("candidate {candidate} thoughts"),
            _ => format!("candidate {candidate}"),
        };
    }
    match key {
        "o.content" => return "message".to_string(),
        "o.thinking" => return "message thinking".to_string(),
        "o.response" => return "response".to_string(),
        "o.rthinking" => return "thinking".to_string(),
        _ => {}
    }
    match key.strip_prefix('a').or_else(|| key.strip_prefix('b')) {
        Some(block) => format!("content block {block}"),
        None => key.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mask::{Masker, Strategy, detectors};

    /// Masking e-mail addresses and card numbers with `strategy` (also the event-stream
    /// masker's tests).
    pub(crate) fn steps(strategy: Strategy) -> Vec<Step> {
        let detectors = ["email", "credit_card"]
            .iter()
            .flat_map(|n| detectors::expand(n))
            .collect();
        vec![Step::Mask(Arc::new(Masker::new(
            detectors,
            strategy,
            Vec::new(),
        )))]
    }

    fn ctx() -> MaskContext {
        MaskContext::new(Arc::from(&b"k"[..]))
    }

    /// `body` through `masker` in chunks of `size`: the output and the session's context.
    fn run(mut masker: SseMasker, body: &str, size: usize) -> (Vec<u8>, MaskContext) {
        let mut c = ctx();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(size) {
            out.extend(masker.push(chunk, &mut c));
        }
        out.extend(masker.finish(&mut c));
        (out, c)
    }

    fn chat_chunk(content: &str, finish: Option<&str>) -> String {
        let v = serde_json::json!({"id": "c1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    }

    fn events(out: &[u8]) -> Vec<Value> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("every event stays valid JSON"))
            .collect()
    }

    fn text_of(events: &[Value]) -> String {
        events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    #[test]
    fn openai_chat_value_split_over_events() {
        let mut body = String::new();
        for piece in [
            "Write to bob",
            "@exam",
            "ple.com and pay 4111 1111",
            " 1111 1111",
            ".",
        ] {
            body.push_str(&chat_chunk(piece, None));
        }
        body.push_str(&chat_chunk("", Some("stop")));
        body.push_str("data: [DONE]\n\n");
        for size in [1, 3, 17, body.len()] {
            let (out, c) = run(SseMasker::new(steps(Strategy::Redact)), &body, size);
            let events = events(&out);
            assert_eq!(
                text_of(&events),
                "Write to [REDACTED:EMAIL] and pay [REDACTED:CREDIT_CARD].",
                "chunks of {size}"
            );
            assert_eq!(
                events.last().unwrap()["choices"][0]["finish_reason"],
                "stop"
            );
            assert!(
                String::from_utf8(out)
                    .unwrap()
                    .ends_with("data: [DONE]\n\n")
            );
            assert_eq!(c.counts["email"], 1);
        }
    }

    /// An event carrying two text streams (an answer and its reasoning): the flush event of
    /// one carries neither stream's text but its own rest, so the other's unmasked text is
    /// not sent again.
    #[test]
    fn a_flush_event_carries_only_its_own_stream() {
        let first = serde_json::json!({"choices": [{"index": 0, "delta": {
            "content": "write to bob", "reasoning_content": "mail carol@example.org now"}}]});
        let body = format!(
            "data: {first}\n\n{}data: [DONE]\n\n",
            chat_chunk("", Some("stop"))
        );
        let (out, _) = run(SseMasker::new(steps(Strategy::Redact)), &body, body.len());
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("carol@example.org"), "{text}");
        let events = events(&out);
        let reasoning: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str())
            .collect();
        assert_eq!(reasoning, "mail [REDACTED:EMAIL] now", "{text}");
        assert_eq!(text_of(&events), "write to bob", "{text}");
    }

    /// Ollama's `/api/chat` stream: a token per line, the value split over five of them, a
    /// tool call's arguments whole in one line, and a last line (`"done": true`) that carries
    /// text of its own; each line stays one JSON object, the last stays last.
    #[test]
    fn ollama_ndjson_value_split_over_lines() {
        let line = |content: &str, done: bool| {
            let mut v = serde_json::json!({"model": "llama3", "created_at": "2026-12-07T10:00:00Z",
                "message": {"role": "assistant", "content": content}, "done": done});
            if content.is_empty() {
                v["message"]["tool_calls"] = serde_json::json!([{"function": {"name": "mail",
                    "arguments": {"to": "carol@example.org"}}}]);
            }
            if done {
                v["done_reason"] = "stop".into();
            }
            format!("{v}\n")
        };
        let tokens = [
            "Reach ",
            "bob",
            "@",
            "example",
            ".com",
            " or pay 4111 1111 ",
            "1111 ",
            "",
        ];
        let mut body: String = tokens.iter().map(|t| line(t, false)).collect();
        body.push_str(&line("1111.", true));
        let mut outs = Vec::new();
        for size in [1, 5, 64, body.len()] {
            let (out, c) = run(SseMasker::ndjson(steps(Strategy::Redact)), &body, size);
            let text = String::from_utf8(out.clone()).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("every line stays JSON"))
                .collect();
            let content: String = lines
                .iter()
                .filter_map(|l| l["message"]["content"].as_str())
                .collect();
            assert_eq!(
                content, "Reach [REDACTED:EMAIL] or pay [REDACTED:CREDIT_CARD].",
                "chunks of {size}"
            );
            assert!(!text.contains("carol@example.org"), "{text}");
            assert!(text.contains("[REDACTED:EMAIL]"), "{text}");
            assert_eq!(lines.last().unwrap()["done"], true, "{text}");
            assert_eq!(lines.iter().filter(|l| l["done"] == true).count(), 1);
            assert_eq!(c.counts["email"], 2);
            outs.push(out);
        }
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the output"
        );
    }

    /// Gemini's `streamGenerateContent?alt=sse`: thoughts and answer as parts of the
    /// candidates, a whole function call beside the text, and the last chunk carrying text
    /// and `finishReason` together, with a card number split over that end.
    #[test]
    fn gemini_value_split_over_chunks_and_over_the_end() {
        let chunk = |parts: Value, finish: Option<&str>| {
            let mut v = serde_json::json!({"candidates": [{"content": {"parts": parts,
                "role": "model"}, "index": 0}], "modelVersion": "gemini-mock"});
            if let Some(reason) = finish {
                v["candidates"][0]["finishReason"] = reason.into();
                v["usageMetadata"] = serde_json::json!({"totalTokenCount": 9});
            }
            format!("data: {v}\r\n\r\n")
        };
        let text = |t: &str| serde_json::json!([{"text": t}]);
        let mut body = chunk(
            serde_json::json!([{"text": "user wrote dave@example.net", "thought": true}]),
            None,
        );
        for piece in ["Reach bob", "@example.", "com, "] {
            body.push_str(&chunk(text(piece), None));
        }
        body.push_str(&chunk(
            serde_json::json!([{"text": "calling"}, {"functionCall": {"name": "mail",
                "args": {"to": "carol@example.org"}}, "thoughtSignature": "c2lnbmF0dXJl"}]),
            None,
        ));
        body.push_str(&chunk(text(" or pay 4111 1111 1111 111"), None));
        body.push_str(&chunk(text("1."), Some("STOP")));
        let mut outs = Vec::new();
        for size in [1, 7, 64, body.len()] {
            let (out, c) = run(SseMasker::new(steps(Strategy::Redact)), &body, size);
            let all = String::from_utf8(out.clone()).unwrap();
            let events = events(&out);
            let parts = |thought: bool| -> String {
                let parts = events.iter().flat_map(|e| {
                    e["candidates"][0]["content"]["parts"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                });
                parts
                    .filter(|p| (p["thought"] == true) == thought)
                    .filter_map(|p| p["text"].as_str().map(str::to_string))
                    .collect()
            };
            assert_eq!(
                parts(false),
                "Reach [REDACTED:EMAIL], calling or pay [REDACTED:CREDIT_CARD].",
                "chunks of {size}: {all}"
            );
            assert_eq!(parts(true), "user wrote [REDACTED:EMAIL]", "{all}");
            for value in ["carol@example.org", "4111", "dave@"] {
                assert!(!all.contains(value), "{value} in {all}");
            }
            assert_eq!(all.matches("functionCall").count(), 1, "{all}");
            assert_eq!(all.matches("c2lnbmF0dXJl").count(), 1, "{all}");
            // The last chunk stays last and ends the answer in itself.
            let last = events.last().unwrap();
            assert_eq!(last["candidates"][0]["finishReason"], "STOP", "{all}");
            assert_eq!(last["usageMetadata"]["totalTokenCount"], 9, "{all}");
            assert_eq!(c.counts["credit_card"], 1);
            outs.push(out);
        }
        assert!(
            outs.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the output"
        );
        let text = reassemble(&String::from_utf8(outs.remove(0)).unwrap()).unwrap();
        assert_eq!(text.streams[0].0, "candidate 0 thoughts");
        assert_eq!(
            text.streams[1],
            (
                "candidate 0".to_string(),
                "Reach [REDACTED:EMAIL], calling or pay [REDACTED:CREDIT_CARD].".to_string()
            )
        );
        assert!(text.other.contains(&("finish_reason STOP".to_string(), 1)));
    }

    /// Some OpenAI-compatible servers send the last token with `finish_reason`: a value split
    /// over that end is masked whole, and nothing of the text comes after it.
    #[test]
    fn a_last_token_sent_with_finish_reason_ends_its_stream_in_its_event() {
        let body = format!(
            "{}{}data: [DONE]\n\n",
            chat_chunk("pay 4111 1111 1111 111", None),
            chat_chunk("1.", Some("stop"))
        );
        for size in [1, 9, body.len()] {
            let (out, _) = run(SseMasker::new(steps(Strategy::Redact)), &body, size);
            let events = events(&out);
            let all = String::from_utf8(out).unwrap();
            assert_eq!(text_of(&events), "pay [REDACTED:CREDIT_CARD].", "{all}");
            assert_eq!(events.len(), 2, "{all}");
            assert_eq!(events[1]["choices"][0]["finish_reason"], "stop", "{all}");
        }
    }

    /// What an SDK builds from the deltas (the `openai` package's `accumulate_delta`): strings are
    /// concatenated, `index` and `type` replaced, lists of indexed objects merged.
    fn accumulate(acc: &mut Value, delta: &Value) {
        let (Some(acc), Some(delta)) = (acc.as_object_mut(), delta.as_object()) else {
            return;
        };
        for (key, d) in delta {
            let a = acc.entry(key.clone()).or_insert(Value::Null);
            match (a, d) {
                (a, d) if a.is_null() || key == "index" || key == "type" => *a = d.clone(),
                (Value::String(a), Value::String(d)) => a.push_str(d),
                (a @ Value::Object(_), d @ Value::Object(_)) => accumulate(a, d),
                (Value::Array(a), Value::Array(d)) => {
                    for entry in d {
                        let i = usize::try_from(entry["index"].as_u64().unwrap()).unwrap();
                        match a.get_mut(i) {
                            Some(found) => accumulate(found, entry),
                            None => a.push(entry.clone()),
                        }
                    }
                }
                (a, d) => *a = d.clone(),
            }
        }
    }

    /// A flush event repeats nothing a client adds up: a role, a tool call's id and name
    /// sent once (the whole call in one chunk, as many servers do) stay once.
    #[test]
    fn flush_events_repeat_nothing_a_client_accumulates() {
        let chunk = |delta: Value, finish: Value| {
            let v = serde_json::json!({"id": "c1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                "logprobs": null}]});
            format!("data: {v}\n\n")
        };
        let body = [
            chunk(
                serde_json::json!({"role": "assistant", "content": "Hi bob@example.com"}),
                Value::Null,
            ),
            chunk(
                serde_json::json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "mail", "arguments": "{\"to\":\"carol@example.org"}}]}),
                Value::Null,
            ),
            chunk(serde_json::json!({}), "tool_calls".into()),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        let (out, _) = run(SseMasker::new(steps(Strategy::Redact)), &body, body.len());
        let all = String::from_utf8(out.clone()).unwrap();
        let mut choice = serde_json::json!({});
        for event in events(&out) {
            accumulate(&mut choice, &event["choices"][0]);
        }
        let delta = &choice["delta"];
        assert_eq!(delta["role"], "assistant", "{all}");
        assert_eq!(delta["content"], "Hi [REDACTED:EMAIL]", "{all}");
        let call = &delta["tool_calls"][0];
        assert_eq!(
            (&call["id"], &call["function"]["name"]),
            (&"call_1".into(), &"mail".into()),
            "{all}"
        );
        assert_eq!(
            call["function"]["arguments"], "{\"to\":\"[REDACTED:EMAIL]",
            "{all}"
        );
        assert_eq!(choice["finish_reason"], "tool_calls", "{all}");
    }

    /// Token log probabilities repeat the text a token at a time: with masking they go, and
    /// the session says so; restoring placeholders alone keeps them.
    #[test]
    fn token_logprobs_are_removed_from_a_masked_stream() {
        let token = |t: &str| {
            serde_json::json!({"token": t, "logprob": -0.1,
            "bytes": t.as_bytes(), "top_logprobs": [{"token": t, "logprob": -0.1}]})
        };
        let mut body = String::new();
        for piece in ["4111 1111", " 1111 1111"] {
            let v = serde_json::json!({"choices": [{"index": 0, "delta": {"content": piece},
                "logprobs": {"content": [token(piece)]}, "finish_reason": null}]});
            body.extend(["data: ", &v.to_string(), "\n\n"]);
        }
        let done = serde_json::json!({"type": "response.output_text.done", "text": "4111 1111 1111 1111",
            "logprobs": [token("4111")]});
        body.extend([
            "event: response.output_text.done\ndata: ",
            &done.to_string(),
            "\n\n",
        ]);
        let (out, c) = run(SseMasker::new(steps(Strategy::Redact)), &body, body.len());
        let all = String::from_utf8(out.clone()).unwrap();
        assert!(!all.contains("4111") && !all.contains("1111"), "{all}");
        assert_eq!(text_of(&events(&out)), "[REDACTED:CREDIT_CARD]", "{all}");
        assert!(
            all.contains(r#""logprobs":null"#) && all.contains(r#""logprobs":[]"#),
            "{all}"
        );
        assert!(
            c.notes.iter().any(|n| n.contains("logprobs")),
            "{:?}",
            c.notes
        );

        let (out, c) = run(SseMasker::new(vec![Step::Restore]), &body, body.len());
        assert!(String::from_utf8(out).unwrap().contains("top_logprobs"));
        assert!(c.notes.is_empty());
    }

    /// An audio answer's transcript streams like text.
    #[test]
    fn an_audio_transcript_is_a_text_stream() {
        let body: String = ["mail bob@exa", "mple.com now"]
            .iter()
            .map(|t| {
                let v = serde_json::json!({"choices": [{"index": 0,
                    "delta": {"audio": {"id": "a1", "transcript": t}}}]});
                ["data: ", &v.to_string(), "\n\n"].concat()
            })
            .collect::<String>()
            + "data: [DONE]\n\n";
        let (out, _) = run(SseMasker::new(steps(Strategy::Redact)), &body, 5);
        let transcript: String = events(&out)
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["audio"]["transcript"].as_str())
            .collect();
        assert_eq!(transcript, "mail [REDACTED:EMAIL] now");
    }

    #[test]
    fn anthropic_and_tool_arguments() {
        let events_in = [
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"mail a@b"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":".io ok"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let body: String = events_in
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                format!("event: {}\ndata: {e}\n\n", v["type"].as_str().unwrap())
            })
            .collect();
        let (out, _) = run(SseMasker::new(steps(Strategy::Redact)), &body, body.len());
        let text = String::from_utf8(out).unwrap();
        let joined: String = text
            .split("\n\n")
            .filter_map(|e| e.split_once("data: ").map(|(_, d)| d))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(joined, "mail [REDACTED:EMAIL] ok");
        assert!(!text.contains("a@b"));
        // The held text comes out before the block ends.
        assert!(
            text.find("[REDACTED:EMAIL]").unwrap() < text.find("content_block_stop\n").unwrap()
        );
    }

    #[test]
    fn over_long_lines_fall_back_to_text() {
        let long = format!("data: {}a@b.io", "x ".repeat(MAX_LINE / 2 + 10));
        let (out, c) = run(SseMasker::new(steps(Strategy::Redact)), &long, long.len());
        assert!(c.notes.iter().any(|n| n.contains("1 MiB")));
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("[REDACTED:EMAIL]")
        );
    }

    /// A reassembled stream's (label, text) pairs, as expected.
    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    #[test]
    fn a_recorded_stream_reads_back_as_its_text() {
        // OpenAI chat: text split over events, a tool call named in its first delta, lines
        // ended by `\r\n`, a comment, the end of the choice and `[DONE]`.
        let mut body = chat_chunk("", None).replace('\n', "\r\n");
        body.push_str(": keep-alive\r\n\r\n");
        for piece in ["You s", "aid: ", "hi\nthere"] {
            body.push_str(&chat_chunk(piece, None));
        }
        for (i, args) in [(0, "{\"city\""), (1, ":\"Paris\"}")] {
            let function = if i == 0 {
                serde_json::json!({"name": "get_weather", "arguments": args})
            } else {
                serde_json::json!({"arguments": args})
            };
            let v = serde_json::json!({"choices": [{"index": 0, "delta":
                {"tool_calls": [{"index": 0, "function": function}]}, "finish_reason": null}]});
            body = body + "data: " + &v.to_string() + "\n\n";
        }
        body.push_str(&chat_chunk("", Some("stop")));
        body.push_str("data: [DONE]\n\n");
        let text = reassemble(&body).unwrap();
        assert_eq!(
            text.streams,
            owned(&[
                ("choice 0", "You said: hi\nthere"),
                (
                    "choice 0 tool call 0 arguments (get_weather)",
                    "{\"city\":\"Paris\"}"
                ),
            ])
        );
        assert_eq!(text.events, 8);
        assert_eq!(text.other, [("finish_reason stop".to_string(), 1)]);
        assert!(text.done);
        assert_eq!(text.unreadable, 0);
    }

    #[test]
    fn a_recorded_ollama_stream_reads_back_as_its_text() {
        let body = concat!(
            r#"{"model":"m","message":{"role":"assistant","content":"Mail [REDACTED:"},"done":false}"#,
            "\r\n",
            r#"{"model":"m","message":{"role":"assistant","content":"EMAIL] now","tool_calls":[{"function":{"name":"mail","arguments":{"to":"x"}}}]},"done":false}"#,
            "\n\n",
            r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
            "\n",
        );
        let text = reassemble_lines(body).expect("an Ollama stream");
        assert_eq!(text.events, 3);
        assert_eq!(
            text.streams,
            owned(&[("message", "Mail [REDACTED:EMAIL] now")])
        );
        assert_eq!(
            text.other,
            [
                (r#"tool call mail {"to":"x"}"#.to_string(), 1),
                ("done (stop)".to_string(), 1)
            ]
        );
        assert_eq!(reassemble_lines("{\"a\": 1}\nnot json\n"), None);
    }

    #[test]
    fn a_recorded_anthropic_or_responses_stream_reads_back_as_its_text() {
        // Anthropic messages: the tool named when its block starts; a body cut by the
        // recording limit inside its last event.
        let event = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
        let mut body = event(
            "message_start",
            serde_json::json!({"type": "message_start"}),
        );
        for (index, delta) in [
            (
                0,
                serde_json::json!({"type": "text_delta", "text": "Let me "}),
            ),
            (
                0,
                serde_json::json!({"type": "text_delta", "text": "check."}),
            ),
        ] {
            body.push_str(&event(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        body.push_str(&event(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "name": "lookup", "input": {}}}),
        ));
        body.push_str(&event(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": "{\"id\":7}"}}),
        ));
        body.push_str("event: message_delta\ndata: {\"type\":\"message_del");
        let text = reassemble(&body).unwrap();
        assert_eq!(
            text.streams,
            owned(&[
                ("content block 0", "Let me check."),
                ("content block 1 (lookup)", "{\"id\":7}"),
            ])
        );
        assert_eq!(
            text.other,
            [
                ("message_start".to_string(), 1),
                ("content_block_start".to_string(), 1)
            ]
        );
        assert_eq!((text.events, text.unreadable, text.done), (6, 1, false));

        // OpenAI responses: deltas of an output item.
        let body = ["Hel", "lo"]
            .iter()
            .map(|d| {
                event(
                    "response.output_text.delta",
                    serde_json::json!({"item_id": "msg_1", "content_index": 0, "delta": d}),
                )
            })
            .collect::<String>();
        let text = reassemble(&body).unwrap();
        assert_eq!(text.streams, owned(&[("output msg_1 part 0", "Hello")]));

        // Not an LLM stream: nothing to put together.
        assert_eq!(
            reassemble("event: tick\ndata: 1\n\ndata: {\"a\":2}\n\n"),
            None
        );
        assert_eq!(reassemble(""), None);
    }
}
