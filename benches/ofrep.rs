//! OFREP evaluation from the agent (`make bench`): the real `hotconf agent` binary serving
//! `--ofrep-addr` for a document of 50 flags, over localhost with keep-alive connections:
//! single-flag evaluation latency (p50/p99), bulk evaluation latency, and bulk throughput with
//! four connections, each beside a floor measured in the same run: an axum handler on the same
//! server stack (axum on hyper and tokio) that answers a constant body of the same size without
//! evaluating anything.
//!
//! `cargo bench --bench ofrep` runs 5,000 requests per latency row and 3 s per throughput row;
//! under `cargo test --benches` (no `--bench` argument) a short smoke version. It prints one
//! table and writes `target/bench/ofrep.json`.

#[path = "../tests/agent_common/mod.rs"]
mod agent_common;

use std::time::{Duration, Instant};

use agent_common::{free_addr, spawn_agent};
use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const FLAGS: usize = 50;

fn document() -> Value {
    let mut flags = serde_json::Map::new();
    for i in 0..FLAGS {
        let flag = if i % 2 == 0 {
            json!({"variants": {"a": "one", "b": "two", "c": "three"}, "defaultVariant": "a",
                   "fractional": {"a": 40, "b": 40, "c": 20}, "targets": {"c": ["vip"]},
                   "enabled": true, "bucketing": "flagd"})
        } else {
            json!({"enabled": true, "rolloutPercentage": 30, "allow": ["vip"], "deny": [],
                   "bucketing": "flagd"})
        };
        flags.insert(format!("flag_{i:02}"), flag);
    }
    json!({"values": {}, "featureFlags": flags, "maintenance": {"enabled": false, "reason": "", "until": null}})
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// POSTs `body` to `path` and reads the whole answer; returns its status.
    async fn post(&mut self, path: &str, body: &str) -> u16 {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if self.buf.len() >= end + 4 + length {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn latency(addr: &str, path: &str, body: &str, n: usize) -> (Duration, Duration) {
    let mut conn = Conn::open(addr).await;
    for _ in 0..50 {
        assert_eq!(conn.post(path, body).await, 200);
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let body = body.replace("SUBJECT", &format!("user-{i}"));
        let t = Instant::now();
        assert_eq!(conn.post(path, &body).await, 200);
        samples.push(t.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn throughput(addr: &str, path: &str, body: &str, window: Duration) -> f64 {
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..4)
        .map(|c| {
            let (addr, path, body) = (addr.to_string(), path.to_string(), body.to_string());
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let body = body.replace("SUBJECT", &format!("c{c}-{done}"));
                    assert_eq!(conn.post(&path, &body).await, 200);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / window.as_secs_f64()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (n, window) = if bench {
        (5000, Duration::from_secs(3))
    } else {
        (200, Duration::from_millis(300))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(n, window));
}

async fn run(n: usize, window: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    let doc = document();
    let text = hotconf::document::render(&doc, hotconf::crd::Format::Yaml);
    hotconf::agent::volume::kubelet_write(&dir, "1", &[("config.yaml", &text)]).unwrap();
    let ofrep = free_addr();
    let _agent = spawn_agent(
        "bench-ofrep",
        &[
            format!("--watch-dir={}", dir.display()),
            format!("--ofrep-addr={ofrep}"),
            "--admin-addr=off".into(),
        ],
        &[],
    );
    let one = "/ofrep/v1/evaluate/flags/flag_00";
    let all = "/ofrep/v1/evaluate/flags";
    let body = r#"{"context": {"targetingKey": "SUBJECT"}}"#;
    // Ready once the agent answers with the document.
    let started = Instant::now();
    loop {
        if let Ok(mut c) = tokio::time::timeout(Duration::from_secs(1), async {
            let stream = TcpStream::connect(&ofrep).await?;
            Ok::<_, std::io::Error>(Conn {
                stream,
                buf: Vec::new(),
            })
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timeout")))
            && c.post(one, &body.replace("SUBJECT", "probe")).await == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never served OFREP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The floor: the same server stack answering constant bodies of the same sizes.
    let mut probe = Conn::open(&ofrep).await;
    probe.post(one, &body.replace("SUBJECT", "x")).await;
    let one_body = body_of(&probe.buf);
    probe.post(all, &body.replace("SUBJECT", "x")).await;
    let all_body = body_of(&probe.buf);
    let floor_addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (one_body, all_body) = (one_body.clone(), all_body.clone());
        let app = Router::new()
            .route(
                "/ofrep/v1/evaluate/flags/{key}",
                post(move || {
                    let b = one_body.clone();
                    async move { ([("content-type", "application/json")], b) }
                }),
            )
            .route(
                "/ofrep/v1/evaluate/flags",
                post(move || {
                    let b = all_body.clone();
                    async move { ([("content-type", "application/json")], b) }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    };

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut report = serde_json::Map::new();
    for (name, path) in [("single flag", one), ("bulk (50 flags)", all)] {
        let (p50, p99) = latency(&ofrep, path, body, n).await;
        let (f50, f99) = latency(&floor_addr, path, body, n).await;
        rows.push((
            format!("{name} latency"),
            format!("p50 {} / p99 {}", us(p50), us(p99)),
            format!("p50 {} / p99 {}", us(f50), us(f99)),
            format!("{:.1}x p50", p50.as_secs_f64() / f50.as_secs_f64()),
        ));
        report.insert(
            format!("{name} latency"),
            json!({"p50_us": micros(p50), "p99_us": micros(p99), "floor_p50_us": micros(f50), "floor_p99_us": micros(f99)}),
        );
    }
    let agent = throughput(&ofrep, all, body, window).await;
    let floor = throughput(&floor_addr, all, body, window).await;
    rows.push((
        "bulk throughput (4 connections)".into(),
        format!("{agent:.0} req/s ({:.0} flags/s)", agent * FLAGS as f64),
        format!("{floor:.0} req/s"),
        format!("{:.0}% of floor", 100.0 * agent / floor),
    ));
    report.insert(
        "bulk throughput".into(),
        json!({"agent_rps": agent, "floor_rps": floor, "flags": FLAGS}),
    );

    println!();
    println!(
        "{:<34} {:<36} {:<30} vs floor",
        "OFREP (agent, localhost)", "agent", "floor: constant axum handler"
    );
    println!("{}", "-".repeat(112));
    for (a, b, c, d) in &rows {
        println!("{a:<34} {b:<36} {c:<30} {d}");
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ofrep.json"),
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
}

fn body_of(response: &[u8]) -> String {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&response[end + 4..]).into_owned()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", micros(d))
}
