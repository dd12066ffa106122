//! `seed-store STATE_DIR STORE_URL SESSIONS EVENTS_PER_SESSION`: fills a store through the
//! daemon's own recorder (chained, ledgered and signed like real recordings) with varied
//! sessions, for `cargo xtask bench record` (`sessions list` over 1,000,000 sessions, `audit
//! verify` events/s). Prints `{"sessions": N, "events": M, "seconds": S}`.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use gateway_user::{
    audit::{Signer, anchor_path},
    policy::Policy,
    record::{Chain, Recorder},
    session::{Identity, Outcome, Record, Session, timestamp},
    store::{Store, Write},
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state, url, sessions, events] = args.as_slice() else {
        eprintln!("usage: seed-store STATE_DIR STORE_URL SESSIONS EVENTS_PER_SESSION");
        std::process::exit(2);
    };
    let state = std::path::PathBuf::from(state);
    std::fs::create_dir_all(&state).expect("state dir");
    let sessions: u32 = sessions.parse().expect("SESSIONS");
    let events: u32 = events.parse().expect("EVENTS_PER_SESSION");
    let started = Instant::now();
    let store = Store::open(url).await.expect("store");
    let signer = Arc::new(Signer::load_or_create(&state).expect("key"));
    let (chain, _) = Chain::resume(&store, signer, anchor_path(&state))
        .await
        .expect("chain");
    let (recorder, writer) = Recorder::spawn(store, chain);
    let policy = Policy::record_only();
    let targets = ["llm-api", "crm-db", "search", "tickets", "files"];
    let span = Duration::from_secs(30 * 86_400);
    let now = SystemTime::now();
    for i in 0..sessions {
        // Oldest first, spread over 30 days.
        let at = now - span + span.mul_f64(f64::from(i) / f64::from(sessions.max(1)));
        let identity = Identity {
            cgroup: Some(format!("/react-gateway/agent-{}", i % 20)),
            pid: Some(10_000 + i % 5_000),
            uid: Some(1_000 + i % 50),
            gid: Some(1_000),
            exe: Some("/usr/bin/python3.11".into()),
            comm: None,
        };
        let mut s = Session::open(identity, "127.0.0.2:443".parse().expect("addr"), &policy);
        s.started_at = timestamp(at);
        s.target = Some(targets[i as usize % targets.len()].to_string());
        recorder.write(Write::Session(Box::new(s.clone()))).await;
        for e in 0..events {
            let mut event = Record::new(
                if e % 2 == 0 {
                    "http_request"
                } else {
                    "http_response"
                },
                &serde_json::json!({"method": "POST", "path": format!("/v1/items/{i}/{e}"), "status": 200,
                    "headers": {"content-type": "application/json", "authorization": "[REDACTED]"}}),
            );
            event.at = timestamp(at);
            recorder
                .write(Write::Event {
                    session: s.id.clone(),
                    event,
                })
                .await;
        }
        s.ended_at = Some(timestamp(at + Duration::from_millis(120)));
        s.outcome = Some(if i % 97 == 0 {
            Outcome::Blocked
        } else {
            Outcome::Ok
        });
        s.bytes_up = 1_024;
        s.bytes_down = 4_096;
        recorder.write(Write::Session(Box::new(s))).await;
    }
    recorder.close();
    writer.await.expect("writer");
    println!(
        "{}",
        serde_json::json!({
            "sessions": sessions,
            "events": u64::from(sessions) * u64::from(events),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
}
