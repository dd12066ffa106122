//! Encryption in transit and the HTTP data path end to end: real clients (curl, `openssl
//! s_client`, Python `requests`, `httpx`, `openai`) in governed cgroups, the real daemon, and
//! `mock-upstream` servers with their own CA. Run with `cargo xtask test` (as root).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use react_gateway_tests::{Gateway, MockUpstream, free_port, privileged, session_show};
use serde_json::Value;

const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");
const REAL_KEY: &str = "sk-real-upstream-key";

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A policy with one intercepted target on `addr:port` trusting the mock's CA, holding the
/// real key in a file, and blocking `/admin/*`.
fn intercept_policy(mock: &MockUpstream, addresses: &str, port: u16, tls_extra: &str) -> String {
    let key_file = mock.dir.join("key");
    std::fs::write(&key_file, format!("{REAL_KEY}\n")).expect("key file");
    format!(
        r#"
version = 1
[defaults]
unmatched = "deny"

[[target]]
name = "api"
addresses = [{addresses}]
ports = [{port}]
protocol = "https"
[target.tls]
mode = "intercept"
upstream_ca = "{ca}"
{tls_extra}
[target.credentials]
header = "Authorization"
value = "Bearer ${{file:{key}}}"

[[rule]]
name = "no-admin"
target = "api"
action = "block"
[rule.match]
http_path = ["/admin/*"]
"#,
        ca = mock.ca().display(),
        key = key_file.display(),
    )
}

fn wait_for(gateway: &Gateway, n: usize) -> Vec<Value> {
    let sessions = gateway.ended_sessions(n, Duration::from_secs(10));
    assert!(
        sessions.len() >= n,
        "expected {n} ended sessions, got {sessions:#?}\n{}",
        gateway.log()
    );
    sessions
}

/// curl (HTTP/1.1 and HTTP/2), requests, httpx and the openai SDK reach an HTTPS upstream
/// through interception: both legs verified and recorded, ALPN mirrored, the real key injected
/// and never seen by the agent or written to any record.
#[test]
fn intercepted_clients_get_verified_tls_on_both_legs_and_injected_credentials() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "intercept", &[format!("https@127.0.0.2:{port}")]);
    let policy = intercept_policy(&mock, r#""127.0.0.2/32""#, port, "");
    let gateway = Gateway::start_with_policy("tls-intercept", &[("api.toml", &policy)], &[]);
    let url = format!("https://api.example.test:{port}/v1/models");
    let resolve = format!("api.example.test:{port}:127.0.0.2");

    // exec points curl at the bundle with the node CA: no --cacert, no -k.
    let h1 = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--http1.1",
            "--resolve",
            &resolve,
            "-H",
            "Authorization: Bearer placeholder",
            &url,
        ],
    );
    assert!(h1.status.success(), "curl http/1.1: {}", out_text(&h1));
    let echo: Value = serde_json::from_slice(&h1.stdout).expect("echo json");
    assert_eq!(echo["tls"], true);
    assert_eq!(echo["alpn"], "http/1.1", "ALPN mirrored: {echo}");

    let h2 = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--http2",
            "-w",
            "\n%{http_version}",
            "--resolve",
            &resolve,
            &url,
        ],
    );
    assert!(h2.status.success(), "curl --http2: {}", out_text(&h2));
    let text = String::from_utf8_lossy(&h2.stdout);
    assert!(text.ends_with("\n2"), "HTTP/2 with the agent: {text}");
    assert!(text.contains(r#""alpn":"h2""#), "HTTP/2 upstream: {text}");

    let python = gateway.python(
        "agent",
        r#"
import sys, requests, httpx, openai
base = f"https://127.0.0.2:{sys.argv[1]}"
r = requests.get(base + "/requests", headers={"Authorization": "Bearer placeholder"})
assert r.status_code == 200 and r.json()["tls"], r.text
with httpx.Client(http2=True) as c:
    r = c.get(base + "/httpx")
    assert r.http_version == "HTTP/2" and r.json()["alpn"] == "h2", r.text
client = openai.OpenAI(base_url=base + "/v1", api_key="placeholder-not-a-key")
done = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hello gateway"}])
print(done.choices[0].message.content)
stream = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "streamed reply"}], stream=True)
print("".join(chunk.choices[0].delta.content or "" for chunk in stream))
"#,
        &[&port.to_string()],
    );
    assert!(python.contains("You said: hello gateway"), "{python}");
    assert!(python.contains("You said: streamed reply"), "{python}");

    // The upstream saw the real key on every request, never the placeholder.
    let requests = mock.requests();
    assert!(requests.len() >= 6, "{requests:#?}");
    for request in &requests {
        assert_eq!(
            request["headers"]["authorization"],
            format!("Bearer {REAL_KEY}"),
            "{request}"
        );
    }
    assert!(
        !serde_json::to_string(&requests)
            .unwrap()
            .contains("placeholder")
    );

    let sessions = wait_for(&gateway, 5);
    for session in &sessions {
        assert_eq!(session["protocol"], "https", "{session}");
        assert_eq!(session["outcome"], "ok", "{session}");
        assert_eq!(session["target"], "api");
        for leg in ["client", "upstream"] {
            let version = session["tls"][leg]["version"].as_str().unwrap_or("");
            assert!(
                version == "TLSv1.3" || version == "TLSv1.2",
                "{leg}: {session}"
            );
            assert!(
                session["tls"][leg]["cipher"].is_string(),
                "{leg}: {session}"
            );
        }
    }
    assert!(
        sessions
            .iter()
            .any(|s| s["destination"]["host"] == "api.example.test"),
        "SNI recorded as the host"
    );
    // Requests are events, with the Authorization header redacted.
    let shown = session_show(&gateway, sessions[0]["id"].as_str().unwrap());
    let events = shown["events"].as_array().expect("events");
    let request = events
        .iter()
        .find(|e| e["kind"] == "http_request")
        .expect("http_request event");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["headers"]["authorization"], "[REDACTED]");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "http_response" && e["status"] == 200)
    );
    // The key is in no recording and no log: not in the store file, not in the daemon's output.
    gateway.assert_not_in_store(&[REAL_KEY]);
    assert!(
        !gateway.log().contains(REAL_KEY),
        "the real key is in the log"
    );

    // `ca export` prints the CA the agent's bundle trusts.
    let export = gateway
        .cli()
        .args(["ca", "export"])
        .output()
        .expect("ca export");
    assert!(export.status.success());
    let pem = String::from_utf8_lossy(&export.stdout);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let bundle = std::fs::read_to_string(gateway.state.join("ca-bundle.pem")).expect("bundle");
    assert!(
        bundle.contains(pem.trim()),
        "exec's bundle holds the node CA"
    );
    assert!(bundle.len() > pem.len() * 10, "and the system roots");
}

/// A TLS 1.1-only client and a client offering only disallowed suites get an alert, nothing
/// reaches the upstream, and the session records what was offered.
#[test]
fn old_versions_and_disallowed_ciphers_are_refused_and_recorded() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "refuse", &[format!("https@127.0.0.3:{port}")]);
    let policy = intercept_policy(
        &mock,
        r#""127.0.0.3/32""#,
        port,
        r#"min_version = "1.3"
cipher_suites = ["TLS13_AES_256_GCM_SHA384"]"#,
    );
    let gateway = Gateway::start_with_policy("tls-refuse", &[("api.toml", &policy)], &[]);
    let connect = format!("127.0.0.3:{port}");
    let s_client = |extra: &[&str]| {
        let mut args = vec![
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "api.example.test",
        ];
        args.extend(extra);
        let out = gateway.exec(
            "agent",
            &["sh", "-c", &format!("{} < /dev/null", args.join(" "))],
        );
        out_text(&out)
    };
    let old = s_client(&["-tls1_1"]);
    assert!(
        old.contains("alert protocol version") || old.contains("no protocols available"),
        "TLS 1.1: {old}"
    );
    let tls12 = s_client(&["-tls1_2"]);
    assert!(
        tls12.contains("alert protocol version"),
        "TLS 1.2 under a 1.3 floor: {tls12}"
    );
    let weak = s_client(&["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]);
    assert!(
        weak.contains("alert handshake failure"),
        "disallowed suite: {weak}"
    );
    let good = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &format!("api.example.test:{port}:127.0.0.3"),
            &format!("https://api.example.test:{port}/ok"),
        ],
    );
    assert!(
        good.status.success(),
        "allowed suite works: {}",
        out_text(&good)
    );

    let sessions = wait_for(&gateway, 4);
    let rejected: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["outcome"] == "tls_rejected")
        .collect();
    // openssl may refuse TLS 1.1 itself (security level) before sending a hello; the 1.2 and
    // weak-suite attempts always reach us.
    assert!(rejected.len() >= 2, "{sessions:#?}");
    let texts: Vec<String> = rejected.iter().map(|s| s["error"].to_string()).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("TLSv1.2") && t.contains("TLS 1.3")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("no offered cipher suite")),
        "{texts:?}"
    );
    let shown = session_show(&gateway, rejected[0]["id"].as_str().unwrap());
    let hello = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "tls_client_hello")
        .expect("offer recorded");
    assert_eq!(hello["sni"], "api.example.test");
    assert!(hello["versions"].as_array().is_some_and(|v| !v.is_empty()));
    assert!(
        hello["cipher_suites"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    // Only the allowed client reached the upstream.
    assert_eq!(mock.requests().len(), 1, "{:#?}", mock.requests());
}

/// An upstream with a certificate for another name, or from an unknown CA, is refused: the
/// agent gets a clear 502 and the session records why.
#[test]
fn upstream_certificates_are_verified() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(
        MOCK,
        "verify",
        &[
            format!("https-wrongname@127.0.0.4:{port}"),
            format!("https-unknownca@127.0.0.5:{port}"),
        ],
    );
    let policy = intercept_policy(&mock, r#""127.0.0.4/32", "127.0.0.5/32""#, port, "");
    let gateway = Gateway::start_with_policy("tls-verify", &[("api.toml", &policy)], &[]);
    for (ip, expected) in [
        ("127.0.0.4", "not valid for name"),
        ("127.0.0.5", "UnknownIssuer"),
    ] {
        let out = gateway.exec(
            "agent",
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("https://{ip}:{port}/secret"),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("\n502"), "{ip}: {}", out_text(&out));
        assert!(text.contains(expected), "{ip}: {text}");
    }
    let sessions = wait_for(&gateway, 2);
    for session in &sessions {
        assert_eq!(session["outcome"], "error", "{session}");
        assert!(
            session["error"]
                .as_str()
                .unwrap()
                .contains("invalid peer certificate"),
            "{session}"
        );
        assert!(
            session["tls"]["upstream"].is_null(),
            "no upstream leg: {session}"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "nothing sent to an unverified upstream"
    );
}

/// Agents that open a connection per call (curl, `requests.get`) share the gateway's
/// upstream connections: the second and third sessions take the first one's verified TLS
/// connection from the pool, and each records the upstream leg it used. A pooled connection
/// the upstream closed is never used: after the upstream restarts, the next call dials anew.
#[test]
fn upstream_connections_are_pooled_across_sessions() {
    if !privileged() {
        return;
    }
    let (port, plain) = (free_port(), free_port());
    let mock = MockUpstream::start(MOCK, "pool", &[format!("https@127.0.0.2:{port}")]);
    let plain_spec = [format!("http@127.0.0.3:{plain}")];
    let mut plain_mock = MockUpstream::start(MOCK, "pool-plain", &plain_spec);
    let policy = format!(
        "{}\n[[target]]\nname = \"plain\"\naddresses = [\"127.0.0.3/32\"]\nports = [{plain}]\nprotocol = \"http\"\n",
        intercept_policy(&mock, r#""127.0.0.2/32""#, port, "")
    );
    let gateway = Gateway::start_with_policy("tls-pool", &[("api.toml", &policy)], &[]);
    let call = |url: &str| -> Value {
        let out = gateway.exec(
            "agent",
            &["curl", "-sS", "--max-time", "5", "--http1.1", url],
        );
        assert!(out.status.success(), "{url}: {}", out_text(&out));
        serde_json::from_slice(&out.stdout).expect("echo json")
    };

    let url = format!("https://127.0.0.2:{port}/v1/models");
    let mut peers = Vec::new();
    for n in 1..=3 {
        let echo = call(&url);
        assert_eq!(echo["tls"], true, "{echo}");
        peers.push(echo["peer"].as_str().expect("peer").to_string());
        // The session has ended (its connection is back in the pool) before the next call.
        wait_for(&gateway, n);
    }
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "three agent connections, one upstream connection: {peers:?}"
    );
    let sessions = wait_for(&gateway, 3);
    for session in &sessions {
        assert_eq!(session["outcome"], "ok", "{session}");
        assert_eq!(
            session["tls"]["upstream"]["version"], "TLSv1.3",
            "each session records the upstream leg it used: {session}"
        );
        assert_eq!(session["tls"]["client"]["version"], "TLSv1.3", "{session}");
    }
    let reused = gateway.status()["proxy"]["upstream_reused"].as_u64();
    assert_eq!(reused, Some(2), "{}", gateway.status());

    // HTTP/2 from the agent: another key (ALPN), and the same sharing.
    let mut h2_peers = Vec::new();
    for n in 4..=5 {
        let out = gateway.exec(
            "agent",
            &["curl", "-sS", "--max-time", "5", "--http2", &url],
        );
        assert!(out.status.success(), "curl --http2: {}", out_text(&out));
        let echo: Value = serde_json::from_slice(&out.stdout).expect("echo json");
        assert_eq!(echo["alpn"], "h2", "{echo}");
        assert_ne!(
            echo["peer"],
            peers[0].as_str(),
            "not the HTTP/1.1 connection"
        );
        h2_peers.push(echo["peer"].clone());
        wait_for(&gateway, n);
    }
    assert_eq!(h2_peers[0], h2_peers[1], "one HTTP/2 upstream connection");

    // Plain HTTP is pooled the same way; the upstream then restarts on the same port.
    let plain_url = format!("http://127.0.0.3:{plain}/plain");
    let first = call(&plain_url);
    wait_for(&gateway, 6);
    assert_eq!(call(&plain_url)["peer"], first["peer"], "reused");
    wait_for(&gateway, 7);
    drop(plain_mock);
    plain_mock = MockUpstream::start(MOCK, "pool-plain", &plain_spec);
    thread::sleep(Duration::from_millis(300));
    let after = call(&plain_url);
    assert_ne!(
        after["peer"], first["peer"],
        "a new connection after the restart"
    );
    assert_eq!(
        plain_mock.requests().len(),
        1,
        "the restarted upstream saw the one call"
    );
    let sessions = wait_for(&gateway, 6);
    assert!(
        sessions.iter().all(|s| s["outcome"] == "ok"),
        "{sessions:#?}"
    );
}

/// `originate`: the agent speaks HTTP, the upstream sees verified TLS. `passthrough`: no
/// decryption, SNI recorded. Clear text to an HTTPS target with mode `none` is refused.
#[test]
fn originate_passthrough_and_clear_text_refusal() {
    if !privileged() {
        return;
    }
    let (tls_port, plain_port, pass_port, none_port) =
        (free_port(), free_port(), free_port(), free_port());
    let mock = MockUpstream::start(
        MOCK,
        "modes",
        &[
            format!("https@127.0.0.2:{tls_port}"),
            format!("https@127.0.0.2:{pass_port}"),
            format!("https@127.0.0.2:{none_port}"),
        ],
    );
    let policy = format!(
        r#"
[defaults]
unmatched = "deny"

[[target]]
name = "internal-api"
addresses = ["127.0.0.2/32"]
ports = [{plain_port}]
protocol = "https"
[target.tls]
mode = "originate"
upstream_port = {tls_port}
upstream_ca = "{ca}"

[[target]]
name = "opaque"
addresses = ["127.0.0.2/32"]
ports = [{pass_port}]
protocol = "https"
[target.tls]
mode = "passthrough"

[[target]]
name = "clear-forbidden"
addresses = ["127.0.0.2/32"]
ports = [{none_port}]
protocol = "https"
[target.tls]
mode = "none"
"#,
        ca = mock.ca().display()
    );
    let gateway = Gateway::start_with_policy("tls-modes", &[("modes.toml", &policy)], &[]);

    let out = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &format!("api.example.test:{plain_port}:127.0.0.2"),
            &format!("http://api.example.test:{plain_port}/plain"),
        ],
    );
    assert!(out.status.success(), "originate: {}", out_text(&out));
    let echo: Value = serde_json::from_slice(&out.stdout).expect("echo");
    assert_eq!(echo["tls"], true, "the upstream saw TLS: {echo}");

    let ca = mock.ca();
    let out = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("api.example.test:{pass_port}:127.0.0.2"),
            &format!("https://api.example.test:{pass_port}/pass"),
        ],
    );
    assert!(
        out.status.success(),
        "passthrough end to end with the upstream's own cert: {}",
        out_text(&out)
    );

    let out = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.2:{none_port}/clear"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("\n403"),
        "clear text refused: {}",
        out_text(&out)
    );

    let sessions = wait_for(&gateway, 3);
    let originate = sessions
        .iter()
        .find(|s| s["target"] == "internal-api")
        .expect("originate session");
    assert_eq!(originate["protocol"], "http");
    assert_eq!(originate["destination"]["host"], "api.example.test");
    assert!(
        originate["tls"]["upstream"]["version"].is_string(),
        "{originate}"
    );
    let pass = sessions
        .iter()
        .find(|s| s["target"] == "opaque")
        .expect("passthrough session");
    assert_eq!(pass["protocol"], "tls-passthrough");
    assert_eq!(pass["destination"]["host"], "api.example.test");
    assert!(pass["bytes_up"].as_u64().unwrap() > 200 && pass["bytes_down"].as_u64().unwrap() > 200);
    let offered = session_show(&gateway, pass["id"].as_str().unwrap());
    assert!(
        offered["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "tls_client_hello" && e["versions"][0] == "TLSv1.3")
    );
    let refused = sessions
        .iter()
        .find(|s| s["target"] == "clear-forbidden")
        .expect("refused session");
    assert_eq!(refused["outcome"], "denied", "{refused}");
    let requests = mock.requests();
    let paths: Vec<&str> = requests.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        ["/plain", "/pass"],
        "originate and passthrough reached the upstream, clear text did not"
    );
}

/// `block` on HTTP: 403 with the JSON contract; the upstream never sees the request, the
/// attempt is recorded. A 1 GiB download streams through with flat memory. WebSocket-style
/// upgrades are relayed.
#[test]
fn http_block_streaming_and_upgrades() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "http", &[format!("https@127.0.0.2:{port}")]);
    let policy = intercept_policy(&mock, r#""127.0.0.2/32""#, port, "");
    let gateway = Gateway::start_with_policy("http-path", &[("api.toml", &policy)], &[]);

    let out = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            &format!("https://127.0.0.2:{port}/admin/drop"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n403"), "{}", out_text(&out));
    let body: Value = serde_json::from_str(text.lines().next().unwrap()).expect("json body");
    assert_eq!(body["error"], "blocked by policy");
    assert_eq!(body["rule"], "no-admin");
    assert!(body["session"].is_string());
    assert!(
        mock.requests().iter().all(|r| r["path"] != "/admin/drop"),
        "upstream never saw it"
    );

    // 1 GiB through interception: the daemon's peak memory stays flat.
    let before = gateway.peak_kib();
    let out = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("https://127.0.0.2:{port}/bytes/1073741824"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1073741824",
        "{}",
        out_text(&out)
    );
    let grown = gateway.peak_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "peak memory grew by {grown} KiB for a 1 GiB download"
    );

    // An upgrade (WebSocket-style): 101, then bytes both ways through the gateway.
    let upgraded = gateway.python(
        "agent",
        r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
raw = socket.create_connection(("127.0.0.2", int(sys.argv[1])))
s = ctx.wrap_socket(raw, server_hostname="api.example.test")
s.sendall(b"GET /ws HTTP/1.1\r\nHost: api.example.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
assert head.startswith(b"HTTP/1.1 101"), head
s.sendall(b"ping through the tunnel")
got = b""
while len(got) < 23:
    got += s.recv(100)
print(got.decode())
"#,
        &[&port.to_string()],
    );
    assert!(upgraded.contains("ping through the tunnel"), "{upgraded}");

    let sessions = wait_for(&gateway, 3);
    let blocked = sessions
        .iter()
        .find(|s| s["outcome"] == "blocked")
        .expect("blocked session");
    assert_eq!(blocked["rules"], serde_json::json!(["no-admin"]));
    let shown = session_show(&gateway, blocked["id"].as_str().unwrap());
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "blocked"
                && e["rule"] == "no-admin"
                && e["path"] == "/admin/drop")
    );
    let big = sessions
        .iter()
        .find(|s| s["bytes_down"].as_u64().unwrap_or(0) > 1 << 30)
        .expect("download session");
    assert_eq!(big["outcome"], "ok");
}

/// Garbage after a valid ClientHello, truncated handshakes, silent and slowloris clients: each
/// ends in its own session while the daemon keeps serving others.
#[test]
fn bad_clients_do_not_disturb_others() {
    if !privileged() {
        return;
    }
    let port = free_port();
    let mock = MockUpstream::start(MOCK, "bad", &[format!("https@127.0.0.2:{port}")]);
    let policy = intercept_policy(&mock, r#""127.0.0.2/32""#, port, "");
    let gateway = Gateway::start_with_policy("tls-bad", &[("api.toml", &policy)], &[]);
    let script = r#"
import socket, ssl, sys, time, threading
port = int(sys.argv[1])
# A real ClientHello, captured from Python's own TLS stack.
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname="api.example.test")
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
def conn():
    return socket.create_connection(("127.0.0.2", port), timeout=20)
held = []
# 1. garbage after a valid hello
s = conn(); s.sendall(hello + b"\x17\x03\x03\x00\x10" + b"\xff" * 300); held.append(s)
# 2. truncated hello, then close
s = conn(); s.sendall(hello[: len(hello) // 2]); s.close()
# 3. truncated hello, then silence (held open)
s = conn(); s.sendall(hello[:20]); held.append(s)
# 4. slowloris: TLS done, then headers one byte at a time, never finished
s = ctx.wrap_socket(conn(), server_hostname="api.example.test")
s.sendall(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n"); held.append(s)
# 5. pure garbage
s = conn(); s.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 50); held.append(s)
# Meanwhile a normal client is served, quickly.
t0 = time.time()
ok = ctx.wrap_socket(conn(), server_hostname="api.example.test")
ok.sendall(b"GET /normal HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
reply = b""
while True:
    chunk = ok.recv(4096)
    if not chunk:
        break
    reply += chunk
assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
print("served in %.2fs" % (time.time() - t0))
time.sleep(1)
"#;
    let started = Instant::now();
    let out = gateway.python("agent", script, &[&port.to_string()]);
    assert!(out.contains("served in"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The daemon is alive and still serves.
    let again = gateway.exec(
        "agent",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("https://127.0.0.2:{port}/after"),
        ],
    );
    assert!(again.status.success(), "{}", out_text(&again));
    // Bad sessions end (header timeout and handshake timeouts), each recorded.
    thread::sleep(Duration::from_secs(1));
    let sessions = wait_for(&gateway, 5);
    assert!(
        sessions
            .iter()
            .any(|s| s["outcome"] == "tls_rejected" || s["outcome"] == "error"),
        "{sessions:#?}"
    );
    // Raw bytes on a socket, not through TLS, straight to the daemon's port: closed at once.
    let mut direct = TcpStream::connect(("127.0.0.1", gateway.port)).expect("proxy port");
    let _ = direct.write_all(b"hello?");
    let mut buf = [0u8; 8];
    let _ = direct.set_read_timeout(Some(Duration::from_secs(5)));
    assert!(matches!(direct.read(&mut buf), Ok(0) | Err(_)));
}
