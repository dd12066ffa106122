//! Masking on the data path end to end: the official `openai` package, `requests` and curl in
//! governed cgroups talk HTTPS through the daemon to `mock-upstream`. Prompts leave the node
//! masked (e-mail addresses tokenized, cards redacted), the mock's streamed and JSON answers
//! reach the agent with the mock's own PII masked (values split over SSE events and over body
//! frames, gzip-compressed bodies too) and the agent's own tokenized values restored. Run
//! with `cargo xtask test` (as root).

use std::time::Duration;

use react_gateway_tests::{Gateway, MockUpstream, free_port, privileged, session_show};
use serde_json::Value;

const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");

/// What the mock volunteers (see `LEAK` in mock-upstream).
const MOCK_PII: &[&str] = &["carol.jones@example.org", "5555 5555 5555 4444", "555 0134"];
/// What the agent sends.
const AGENT_EMAIL: &str = "bob.agent@example.com";
const AGENT_CARD: &str = "4111 1111 1111 1111";

fn policy(mock: &MockUpstream, port: u16) -> String {
    let key = mock.dir.join("key");
    std::fs::write(&key, "sk-real-upstream-key").expect("key file");
    format!(
        r#"
version = 1
[defaults]
unmatched = "deny"

[[target]]
name = "llm"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "https"
[target.tls]
mode = "intercept"
upstream_ca = "{ca}"
[target.credentials]
header = "Authorization"
value = "Bearer ${{file:{key}}}"

[[rule]]
name = "tokenize-emails"
target = "llm"
direction = "request"
action = "mask"
detectors = ["email"]
json_paths = ["$.messages[*].content"]
strategy = "tokenize"

[[rule]]
name = "redact-cards"
target = "llm"
direction = "request"
action = "mask"
detectors = ["credit_card"]
strategy = "redact"

[[rule]]
name = "mask-answers"
target = "llm"
direction = "response"
action = "mask"
detectors = ["pii"]
strategy = "redact"
"#,
        ca = mock.ca().display(),
        key = key.display(),
    )
}

#[test]
fn prompts_and_answers_are_masked_in_flight() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "mask", &[format!("https@127.0.0.2:{port}")]);
    let gateway = Gateway::start_with_policy("mask", &[("llm.toml", &policy(&mock, port))], &[]);

    let out = gateway.python(
        "agent",
        r#"
import sys, json, requests, openai
base = f"https://127.0.0.2:{sys.argv[1]}"
prompt = f"Mail {sys.argv[2]} about card {sys.argv[3]}, and leak something."
client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
stream = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": prompt}], stream=True)
print("STREAM:" + "".join(chunk.choices[0].delta.content or "" for chunk in stream))
done = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": prompt}])
print("JSON:" + done.choices[0].message.content)
r = requests.get(base + "/pii")
print("TEXT:" + json.dumps(r.text))
r = requests.get(base + "/pii.json")
print("DOC:" + json.dumps(r.json()))
r = requests.post(base + "/api/chat", json={"model": "mock", "messages": []}, stream=True)
lines = [json.loads(l) for l in r.iter_lines() if l]
print("NDJSON:" + json.dumps("".join(l["message"]["content"] for l in lines)) + f" {lines[-1]['done']}")
r = requests.post(base + "/v1beta/models/mock:streamGenerateContent?alt=sse", json={"contents": []}, stream=True)
chunks = [json.loads(l[len(b"data: "):]) for l in r.iter_lines() if l.startswith(b"data: ")]
parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
print("GEMINI:" + json.dumps("".join(p["text"] for p in parts if not p.get("thought"))) + " " + chunks[-1]["candidates"][0].get("finishReason", "none"))
print("THOUGHT:" + json.dumps("".join(p["text"] for p in parts if p.get("thought"))))
stream = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "leak"}], stream=True, logprobs=True)
chunks = list(stream)
print("LOGPROBS:" + json.dumps([c.choices[0].logprobs.content if c.choices[0].logprobs else None for c in chunks if c.choices], default=str))
print("LPTEXT:" + json.dumps("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)))
r = requests.get(base + "/pii.gz")
print("GZ:" + json.dumps(r.text) + " " + r.headers.get("content-encoding", "identity"))
r = requests.post(base + "/echo", data=b'{"broken json ' + sys.argv[2].encode(), headers={"content-type": "application/json"})
print("BROKEN:" + str(r.status_code))
"#,
        &[&port.to_string(), AGENT_EMAIL, AGENT_CARD],
    );
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };

    // The agent sees its own e-mail address back (restored), never the mock's PII, and the
    // masked values as placeholders, on the streamed and the JSON answer alike.
    for answer in [line("STREAM:"), line("JSON:")] {
        assert!(answer.contains(AGENT_EMAIL), "token restored: {answer}");
        assert!(answer.contains("[REDACTED:CREDIT_CARD]"), "{answer}");
        assert!(answer.contains("[REDACTED:EMAIL]"), "{answer}");
        for value in MOCK_PII {
            assert!(
                !answer.contains(value),
                "{value} reached the agent: {answer}"
            );
        }
    }
    // Ollama's native stream: values split over lines of 3 characters, masked.
    let ndjson = line("NDJSON:");
    assert!(
        ndjson.contains("[REDACTED:EMAIL]") && ndjson.contains("[REDACTED:CREDIT_CARD]"),
        "{ndjson}"
    );
    assert!(
        ndjson.ends_with(" True"),
        "the done line stays last: {ndjson}"
    );
    // Gemini's stream: the card split over its last chunk, which stays last with
    // `finishReason`; the thought part is masked too.
    let gemini = line("GEMINI:");
    assert!(
        gemini.contains("[REDACTED:EMAIL]")
            && gemini.contains("[REDACTED:CREDIT_CARD].")
            && gemini.ends_with(" STOP"),
        "{gemini}"
    );
    assert_eq!(line("THOUGHT:"), "\"The user wants [REDACTED:EMAIL]\"");
    // Token log probabilities would spell the values out a token at a time: removed.
    let logprobs = line("LOGPROBS:");
    assert!(
        !logprobs.contains("5555") && !logprobs.contains("carol"),
        "{logprobs}"
    );
    assert!(line("LPTEXT:").contains("[REDACTED:CREDIT_CARD]"));
    // Bodies in frames of 7 bytes, JSON and gzip alike.
    for what in ["TEXT:", "DOC:", "GZ:", "NDJSON:", "GEMINI:", "LPTEXT:"] {
        let body = line(what);
        for value in MOCK_PII {
            assert!(!body.contains(value), "{what} {value}: {body}");
        }
        assert!(body.contains("[REDACTED:EMAIL]"), "{what} {body}");
    }
    let doc: Value = serde_json::from_str(&line("DOC:")).expect("JSON stays JSON");
    assert_eq!(doc["customer"]["id"], 42);
    assert!(line("GZ:").ends_with(" identity"), "decoded, header fixed");
    assert_eq!(line("BROKEN:"), "200");

    // The upstream never saw the agent's values: tokens and redactions only, with bodies of
    // the right length (the mock parsed them).
    let requests = mock.requests();
    let chats: Vec<&Value> = requests
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    // The two prompts with the agent's values, and the one asking for logprobs ("leak").
    assert_eq!(chats.len(), 3, "{requests:#?}");
    for request in &chats[..2] {
        let body: Value =
            serde_json::from_str(request["body"].as_str().unwrap()).expect("valid JSON body");
        let content = body["messages"][0]["content"].as_str().unwrap();
        assert_eq!(
            content,
            "Mail [TOKEN:EMAIL:1] about card [REDACTED:CREDIT_CARD], and leak something."
        );
    }
    let all = serde_json::to_string(&requests).unwrap();
    assert!(
        !all.contains(AGENT_EMAIL) && !all.contains(AGENT_CARD),
        "{all}"
    );

    // Counts per detector in the session, per rule and fallbacks in its masking event; never
    // a raw value.
    // The openai client's sessions and one per `requests` call.
    let sessions = gateway.ended_sessions(8, Duration::from_secs(10));
    let total = |detector: &str| -> u64 {
        sessions
            .iter()
            .filter_map(|s| s["masked"][detector].as_u64())
            .sum()
    };
    // Requests: 2 prompts; responses: 2 answers and 3 bodies of 4 lines each.
    assert!(total("email") >= 2 + 2 + 12, "{sessions:#?}");
    assert!(total("credit_card") >= 2 + 2 + 12, "{sessions:#?}");
    assert!(total("phone") >= 2 + 12, "{sessions:#?}");
    let chat = sessions
        .iter()
        .find(|s| s["masked"]["credit_card"].as_u64() >= Some(2))
        .unwrap_or_else(|| panic!("no chat session with masked counts: {sessions:#?}"));
    for rule in ["tokenize-emails", "redact-cards", "mask-answers"] {
        assert!(
            chat["rules"].as_array().unwrap().iter().any(|r| r == rule),
            "{rule}: {chat}"
        );
    }
    // Replayed, the streamed answer reads as the text the model sent, as recorded: the
    // agent's value as its placeholder again, the card redacted.
    let out = gateway
        .cli()
        .args(["sessions", "replay", chat["id"].as_str().unwrap()])
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{replay}");
    let stream = replay
        .find("event stream:")
        .unwrap_or_else(|| panic!("no stream text in the replay: {replay}"));
    assert!(
        replay[stream..].contains("[choice 0]")
            && replay[stream..].contains("Mail [TOKEN:EMAIL:1] about card [REDACTED:CREDIT_CARD]"),
        "{replay}"
    );
    // Ollama's stream, replayed, reads as its text too (one session per `requests` call).
    let replays: Vec<String> = sessions
        .iter()
        .map(|s| {
            let out = gateway
                .cli()
                .args(["sessions", "replay", s["id"].as_str().unwrap()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let ollama = replays
        .iter()
        .find(|r| r.contains("POST /api/chat"))
        .unwrap_or_else(|| panic!("no /api/chat session: {replays:#?}"));
    assert!(
        ollama.contains(" lines, the text of each stream joined")
            && ollama.contains("[message]")
            && ollama.contains("Reach [REDACTED:EMAIL] or [REDACTED:PHONE]")
            && ollama.contains("done (stop)"),
        "{ollama}"
    );
    let masking: Vec<Value> = sessions
        .iter()
        .flat_map(|s| {
            let shown = session_show(&gateway, s["id"].as_str().unwrap());
            shown["events"].as_array().cloned().unwrap_or_default()
        })
        .filter(|e| e["kind"] == "masking")
        .collect();
    assert!(
        masking
            .iter()
            .any(|m| m["by_rule"]["rule:mask-answers"].as_u64() >= Some(4)),
        "{masking:#?}"
    );
    assert!(
        masking
            .iter()
            .any(|m| m["notes"].to_string().contains("did not parse")),
        "{masking:#?}"
    );
    gateway.assert_not_in_store(&[AGENT_EMAIL, AGENT_CARD]);
    gateway.assert_not_in_store(MOCK_PII);
}

/// Amazon Bedrock's streamed answers through the proxy, read by the real `boto3` client
/// (which checks every frame's CRCs): `ConverseStream` and `InvokeModelWithResponseStream`
/// (Anthropic's events, base64 in `chunk` frames), with the mock's values split over frames
/// of 5 characters, reach the agent masked and in order.
#[test]
fn bedrock_event_streams_are_masked_frame_by_frame() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "bedrock", &[format!("https@127.0.0.2:{port}")]);
    let gateway = Gateway::start_with_policy("bedrock", &[("llm.toml", &policy(&mock, port))], &[]);
    let out = gateway.python(
        "agent",
        r#"
import sys, json, boto3
client = boto3.client("bedrock-runtime", region_name="us-east-1",
    endpoint_url=f"https://127.0.0.2:{sys.argv[1]}",
    aws_access_key_id="AKIDMOCK", aws_secret_access_key="mock-secret")
r = client.converse_stream(modelId="mock", messages=[{"role": "user", "content": [{"text": "hi"}]}])
text, stop, events = "", None, []
for event in r["stream"]:
    name = next(iter(event))
    events.append(name)
    if name == "contentBlockDelta":
        text += event[name]["delta"]["text"]
    if name == "messageStop":
        stop = event[name]["stopReason"]
print("CONVERSE:" + json.dumps(text) + f" {stop} {events[0]} {events[-1]}")
r = client.invoke_model_with_response_stream(modelId="mock", body=json.dumps({"messages": []}))
text, kinds = "", []
for event in r["body"]:
    chunk = json.loads(event["chunk"]["bytes"])
    kinds.append(chunk["type"])
    text += chunk.get("delta", {}).get("text", "")
print("INVOKE:" + json.dumps(text) + f" {kinds[0]} {kinds[-1]}")
"#,
        &[&port.to_string()],
    );
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };
    assert!(
        line("CONVERSE:").ends_with(" end_turn messageStart metadata"),
        "{out}"
    );
    assert!(
        line("INVOKE:").ends_with(" message_start message_stop"),
        "{out}"
    );
    for what in ["CONVERSE:", "INVOKE:"] {
        let text = line(what);
        assert!(
            text.contains(
                "Reach [REDACTED:EMAIL] or [REDACTED:PHONE], card [REDACTED:CREDIT_CARD]."
            ),
            "{what} {text}"
        );
        for value in MOCK_PII {
            assert!(!text.contains(value), "{what} {value}: {text}");
        }
    }
    let sessions = gateway.ended_sessions(1, Duration::from_secs(10));
    assert!(
        sessions
            .iter()
            .filter_map(|s| s["masked"]["email"].as_u64())
            .sum::<u64>()
            >= 2,
        "{sessions:#?}"
    );
    // Recorded as the text of its frames: replay reads the answers as streams, as masked.
    let replays: String = sessions
        .iter()
        .map(|s| {
            let out = gateway
                .cli()
                .args(["sessions", "replay", s["id"].as_str().unwrap()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert!(
        replays.contains(" frames, the text of each stream joined")
            && replays.contains("[content block 0]")
            && replays.contains("Reach [REDACTED:EMAIL] or [REDACTED:PHONE]")
            && replays.contains("messageStop"),
        "{replays}"
    );
    for value in MOCK_PII {
        assert!(!replays.contains(value), "{value}: {replays}");
    }
}

/// A WebSocket to a target with mask rules (the transport of realtime LLM APIs), with the real
/// `websockets` client: its messages are masked both ways, the text the mock streams
/// over `response.output_text.delta` messages of 5 characters reaches the agent masked, the
/// upstream never receives the agent's card number nor a compression offer, and the session
/// lasts until the WebSocket closes, with its masking counted and every message recorded as
/// it crossed.
#[test]
fn websocket_messages_are_masked_both_ways() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "websocket", &[format!("https@127.0.0.2:{port}")]);
    let gateway =
        Gateway::start_with_policy("websocket", &[("llm.toml", &policy(&mock, port))], &[]);
    let out = gateway.python(
        "agent",
        r#"
import sys, json, time
from websockets.sync.client import connect
started = time.monotonic()
with connect(f"wss://127.0.0.2:{sys.argv[1]}/v1/realtime?model=mock") as ws:
    ws.send(json.dumps({"type": "conversation.item.create", "item": {"type": "message",
        "role": "user", "content": [{"type": "input_text", "text": f"pay with {sys.argv[2]}"}]}}))
    print("ECHO:" + json.dumps(json.loads(ws.recv())["text"]))
    ws.send(json.dumps({"type": "response.create"}))
    text, done = "", None
    while done is None:
        event = json.loads(ws.recv())
        if event["type"] == "response.output_text.delta":
            text += event["delta"]
        if event["type"] == "response.output_text.done":
            done = event["text"]
    print("REALTIME:" + json.dumps(text))
    print("DONE:" + json.dumps(done))
print(f"SECONDS:{time.monotonic() - started:.1f}")
"#,
        &[&port.to_string(), AGENT_CARD],
    );
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };
    for what in ["REALTIME:", "DONE:"] {
        let text = line(what);
        assert!(
            text.contains(
                "Reach [REDACTED:EMAIL] or [REDACTED:PHONE], card [REDACTED:CREDIT_CARD]."
            ),
            "{what} {text}"
        );
        for value in MOCK_PII {
            assert!(!text.contains(value), "{what} {value}: {text}");
        }
    }
    // The close handshake ends both legs at once (the client waits for the server's side).
    let seconds: f64 = line("SECONDS:").parse().unwrap();
    assert!(seconds < 5.0, "the WebSocket took {seconds} s");
    // What the upstream received: the card redacted, no compression offered.
    let received: Vec<Value> = mock
        .requests()
        .into_iter()
        .filter(|r| r["ws_message"].is_string())
        .collect();
    assert_eq!(received.len(), 2, "{received:#?}");
    assert!(
        received[0]["ws_message"]
            .as_str()
            .unwrap()
            .contains("pay with [REDACTED:CREDIT_CARD]"),
        "{received:#?}"
    );
    assert!(received[0]["extensions"].is_null(), "{received:#?}");
    assert!(
        line("ECHO:").contains("pay with [REDACTED:CREDIT_CARD]"),
        "{out}"
    );
    assert!(
        !serde_json::to_string(&received)
            .unwrap()
            .contains(AGENT_CARD)
    );
    // The session ended with the WebSocket, its masking counted.
    let sessions = gateway.ended_sessions(1, Duration::from_secs(10));
    let session = &sessions[0];
    assert!(
        session["masked"]["credit_card"].as_u64() >= Some(3),
        "{session:#}"
    );
    assert!(
        session["masked"]["email"].as_u64() >= Some(2),
        "{session:#}"
    );
    assert!(session["bytes_down"].as_u64() > Some(1000), "{session:#}");
    websocket_recorded_as_masked(&gateway, session["id"].as_str().unwrap());
}

/// At `record = "full"` a WebSocket is read as messages even without mask rules, so that
/// each is recorded; nothing is changed in it.
#[test]
fn websocket_messages_are_recorded_at_full_without_mask_rules() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "ws-record", &[format!("https@127.0.0.2:{port}")]);
    let policy = format!(
        r#"
version = 1
[defaults]
unmatched = "deny"
record = "full"

[[target]]
name = "tools"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "https"
[target.tls]
mode = "intercept"
upstream_ca = "{ca}"
"#,
        ca = mock.ca().display()
    );
    let gateway = Gateway::start_with_policy("ws-record", &[("tools.toml", &policy)], &[]);
    let out = gateway.python(
        "agent",
        r#"
import sys
from websockets.sync.client import connect
with connect(f"wss://127.0.0.2:{sys.argv[1]}/tools") as ws:
    ws.send("order 42 shipped")
    print("ECHO:" + ws.recv())
"#,
        &[&port.to_string()],
    );
    assert!(
        out.contains(r#"ECHO:{"type": "echo", "text": "order 42 shipped"}"#)
            || out.contains(r#"ECHO:{"type":"echo","text":"order 42 shipped"}"#),
        "{out}"
    );
    let sessions = gateway.ended_sessions(1, Duration::from_secs(10));
    let out = gateway
        .cli()
        .args(["sessions", "replay", sessions[0]["id"].as_str().unwrap()])
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(
        replay.contains("> ws message 16 bytes\n      | order 42 shipped")
            && replay.contains("< ws message"),
        "{replay}"
    );
    let received = mock.requests();
    assert!(
        received
            .iter()
            .any(|r| r["ws_message"] == "order 42 shipped" && r["extensions"].is_null()),
        "{received:#?}"
    );
}

/// Every message of the WebSocket session `id` is recorded as it crossed, after the `101`:
/// replay shows them, and no raw value is in the replay or anywhere in the store.
fn websocket_recorded_as_masked(gateway: &Gateway, id: &str) {
    let out = gateway
        .cli()
        .args(["sessions", "replay", id])
        .output()
        .expect("sessions replay");
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(
        replay.find("< 101") < replay.find("> ws message")
            && replay.contains("pay with [REDACTED:CREDIT_CARD]")
            && replay.matches("< ws message").count() >= 16
            && replay.contains("response.output_text.done"),
        "{replay}"
    );
    for value in MOCK_PII.iter().chain(&[AGENT_CARD]) {
        assert!(!replay.contains(value), "{value}: {replay}");
    }
    gateway.assert_not_in_store(&[AGENT_CARD]);
    gateway.assert_not_in_store(MOCK_PII);
}

/// Compressed bodies that inflate to gigabytes: a gzip request body (256 MiB of zeros in
/// 255 KiB) is refused with 413 once it decodes past the inspection limit, and a brotli
/// response (1 GiB in ~1 KiB, from the mock) fails as a decompression bomb, and the daemon
/// holds neither whole: its peak memory grows by far less than either body, and it goes on
/// serving. An agent asking for zstd (decoded only whole) is not answered in it.
#[test]
fn decompression_bombs_are_refused_without_being_inflated() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "bombs", &[format!("http@127.0.0.2:{port}")]);
    let policy = format!(
        r#"
version = 1
[defaults]
unmatched = "deny"

[[target]]
name = "api"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "http"

[[rule]]
name = "mask-both-ways"
target = "api"
action = "mask"
detectors = ["email"]
"#
    );
    let gateway = Gateway::start_with_policy("bombs", &[("api.toml", &policy)], &[]);
    let before = gateway.peak_kib();

    let out = gateway.python(
        "agent",
        r#"
import sys, gzip, requests
base = f"http://127.0.0.2:{sys.argv[1]}"
bomb = gzip.compress(b"\0" * (256 << 20), 9)
r = requests.post(base + "/echo", data=bomb, headers={"content-type": "text/plain", "content-encoding": "gzip"})
print(f"REQUEST:{r.status_code} {len(bomb)} {r.text}")
try:
    r = requests.get(base + "/bomb.br")
    print(f"RESPONSE:{r.status_code} {len(r.content)}")
except requests.exceptions.RequestException as e:
    print(f"RESPONSE:failed {type(e).__name__}")
r = requests.get(base + "/pii")
print(f"AFTER:{r.status_code} {'[REDACTED:EMAIL]' in r.text}")
requests.get(base + "/codings", headers={"accept-encoding": "zstd, br, gzip"})
"#,
        &[&port.to_string()],
    );
    let grown = gateway.peak_kib().saturating_sub(before);
    println!("the daemon's peak memory grew by {grown} KiB");
    assert!(
        grown < 256 << 10,
        "the daemon's peak memory grew by {grown} KiB (bodies of 256 MiB and 1 GiB)"
    );
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {out}"))
            .to_string()
    };
    let request = line("REQUEST:");
    assert!(
        request.starts_with("413 ") && request.contains("once decoded"),
        "{request}"
    );
    assert!(line("RESPONSE:").starts_with("failed "), "{out}");
    assert_eq!(line("AFTER:"), "200 True");
    // Neither body reached the other side whole: the upstream never saw the request.
    let requests = mock.requests();
    assert!(
        !requests.iter().any(|r| r["path"] == "/echo"),
        "{requests:?}"
    );
    // zstd, decoded only whole, is not asked for (a streamed answer would wait for its end).
    let codings = requests
        .iter()
        .find(|r| r["path"] == "/codings")
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert_eq!(codings["headers"]["accept-encoding"], "br, gzip");
    let sessions = gateway.ended_sessions(3, Duration::from_secs(10));
    assert!(
        sessions
            .iter()
            .any(|s| s.to_string().contains("decompression bomb")),
        "{sessions:#?}"
    );
}

/// `sessions verify` reads a recorded stream as its text: an answer recorded unmasked
/// (Ollama's stream, three characters a line, for a target without mask rules) is checked
/// against a policy that masks `pii`, and the e-mail address, card and phone number the model
/// spread over many lines are reported (exit 1), though no single line holds one.
#[test]
fn sessions_verify_finds_values_spread_over_streamed_lines() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "verify-stream", &[format!("http@127.0.0.2:{port}")]);
    let policy = |rule: &str| {
        format!(
            r#"
version = 1
[defaults]
unmatched = "deny"
record = "full"

[[target]]
name = "ollama"
addresses = ["127.0.0.2/32"]
ports = [{port}]
protocol = "http"
{rule}"#
        )
    };
    let gateway = Gateway::start_with_policy("verify-stream", &[("ollama.toml", &policy(""))], &[]);
    let out = gateway.python(
        "agent",
        r#"
import sys, json, requests
r = requests.post(f"http://127.0.0.2:{sys.argv[1]}/api/chat", json={"model": "mock"}, stream=True)
print("".join(json.loads(l)["message"]["content"] for l in r.iter_lines() if l))
"#,
        &[&port.to_string()],
    );
    assert!(
        out.contains("carol.jones@example.org"),
        "recorded unmasked: {out}"
    );
    gateway.ended_sessions(1, Duration::from_secs(10));

    let strict = mock.dir.join("strict");
    std::fs::create_dir_all(&strict).unwrap();
    let rule = r#"
[[rule]]
name = "mask-answers"
target = "ollama"
direction = "response"
action = "mask"
detectors = ["pii"]
"#;
    std::fs::write(strict.join("ollama.toml"), policy(rule)).unwrap();
    let verify = gateway
        .cli()
        .args(["--json", "sessions", "verify", "--all", "--policy-dir"])
        .arg(&strict)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{report}");
    let leaks: Vec<Value> = serde_json::from_str(&report).expect("a JSON report");
    let found: Vec<(&str, &str)> = leaks
        .iter()
        .map(|l| {
            (
                l["field"].as_str().unwrap(),
                l["detector"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("body (message)", "email"),
            ("body (message)", "phone"),
            ("body (message)", "credit_card")
        ],
        "{report}"
    );
    assert!(
        !report.contains("5555 5555 5555 4444") && !report.contains("carol.jones"),
        "the report leaks: {report}"
    );
    // Under the policy that recorded it, nothing is missing.
    let verify = gateway
        .cli()
        .args(["sessions", "verify", "--all"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
