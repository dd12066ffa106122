//! `loadgen URL [--connections C] [--seconds S] [--rate R] [--new-conn] [--cacert FILE]`: the
//! HTTP/1.1 load generator of `cargo xtask bench http`, run the same way against every peer.
//!
//! `C` connections send GET requests back to back (saturation) or, with `--rate`, on a fixed
//! schedule of `R` requests/s in all, latency counted from each send: from the scheduled time
//! when the previous response overran the schedule (no coordinated omission), else from the
//! moment the request is sent (tokio's timer wakes up to 1 ms late, which is not the peer's).
//! `--new-conn` opens a new connection (a full TLS handshake, no client-side resumption) for
//! every request. Prints one JSON line: requests, errors, rps, p50/p99 µs.
//! Bounded: at most `S` seconds and 10 million requests.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

const MAX_REQUESTS: u64 = 10_000_000;

struct Args {
    url: hyper::Uri,
    connections: usize,
    seconds: f64,
    rate: f64,
    new_conn: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn parse() -> Args {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().expect("URL").parse().expect("URL");
    let (mut connections, mut seconds, mut rate, mut new_conn, mut cacert) =
        (16, 5.0_f64, 0.0_f64, false, None);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--connections" => connections = args.next().and_then(|v| v.parse().ok()).expect("C"),
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).expect("S"),
            "--rate" => rate = args.next().and_then(|v| v.parse().ok()).expect("R"),
            "--new-conn" => new_conn = true,
            "--cacert" => cacert = args.next(),
            other => panic!("unknown flag {other}"),
        }
    }
    let tls = (url.scheme_str() == Some("https")).then(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            CertificateDer::pem_file_iter(cacert.expect("--cacert for https")).expect("cacert")
        {
            roots.add(cert.expect("cert")).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every new connection is a full handshake, for every peer alike.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    });
    Args {
        url,
        connections,
        seconds: seconds.min(120.0),
        rate,
        new_conn,
        tls,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(args: &Args) -> Result<Sender, String> {
    let host = args.url.host().expect("host").trim_matches(['[', ']']);
    let port = args
        .url
        .port_u16()
        .unwrap_or(if args.tls.is_some() { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let sender = if let Some(config) = &args.tls {
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender
    };
    Ok(sender)
}

async fn request(sender: &mut Sender, args: &Args) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::get(args.url.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", args.url.authority().map_or("", |a| a.as_str()))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(parse());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..args.connections {
        let (args, sent, errors) = (Arc::clone(&args), Arc::clone(&sent), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let interval = (args.rate > 0.0)
                .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate));
            // Spread the fixed-rate schedules of the connections over one interval.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / args.connections as f64)
                });
            let mut sender = None;
            loop {
                // Fixed rate: a send that is late because the previous response overran the
                // schedule counts from its scheduled time (no coordinated omission); one that
                // is late only by the timer's wake-up (tokio timers fire up to 1 ms late)
                // counts from when it is really sent, so the timer is not charged to the peer.
                let overran = interval.is_some() && Instant::now() > next;
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let at = if overran { next } else { Instant::now() };
                if at >= deadline || sent.fetch_add(1, Ordering::Relaxed) >= MAX_REQUESTS {
                    break;
                }
                if args.new_conn || sender.is_none() {
                    sender = match connect(&args).await {
                        Ok(s) => Some(s),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            None
                        }
                    };
                }
                if let Some(s) = sender.as_mut() {
                    match request(s, &args).await {
                        Ok(()) => latencies.push(at.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            sender = None;
                        }
                    }
                }
                if let Some(interval) = interval {
                    next += interval;
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": latencies.len(),
            "errors": errors.load(Ordering::Relaxed),
            "rps": latencies.len() as f64 / elapsed,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
        })
    );
}
