//! `palisade-armfake`: the ARM fake as a process, for the demo and end-to-end tests.
//!
//! ```text
//! palisade-armfake [--listen 127.0.0.1:0] [--seed estate.json] [--example-estate N] [--static-token T]
//!                  [--in-progress-polls N] [--throttle-every N] [--retry-after S] [--page-size N]
//! ```
//! Prints `endpoint=http://127.0.0.1:PORT` and `pid=…` once it listens, then serves until
//! SIGTERM or Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;

use palisade_armfake::{Config, Fake};

fn usage(msg: &str) -> ! {
    eprintln!("palisade-armfake: {msg}");
    eprintln!(
        "usage: palisade-armfake [--listen 127.0.0.1:0] [--seed FILE] [--example-estate N] [--static-token T] [--in-progress-polls N] [--throttle-every N] [--retry-after S] [--page-size N]"
    );
    std::process::exit(2)
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let mut seed = None;
    let mut estate = None;
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| usage("--listen needs ADDR:PORT"));
                if !listen.ip().is_loopback() {
                    usage("--listen must be a loopback address (127.0.0.1 or ::1)");
                }
            }
            "--example-estate" => {
                estate = Some(number::<usize>(&flag, args.next()));
            }
            "--seed" => seed = Some(args.next().unwrap_or_else(|| usage("--seed needs a file"))),
            "--static-token" => {
                config.static_token = Some(
                    args.next()
                        .unwrap_or_else(|| usage("--static-token needs a value")),
                );
            }
            "--in-progress-polls" => config.in_progress_polls = number(&flag, args.next()),
            "--throttle-every" => config.throttle_every = number(&flag, args.next()),
            "--retry-after" => config.retry_after_secs = number(&flag, args.next()),
            "--page-size" => config.page_size = number::<usize>(&flag, args.next()).max(1),
            "-h" | "--help" => usage("a stateful fake of Azure Resource Manager"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let fake = Fake::new(config);
    if let Some(path) = seed {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| usage(&format!("cannot read {path}: {e}")));
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| usage(&format!("{path}: not JSON: {e}")));
        if let Err(e) = fake.seed(&value) {
            usage(&format!("{path}: {e}"));
        }
    }
    if let Some(n) = estate {
        fake.seed(&palisade_armfake::example_estate(n))
            .unwrap_or_else(|e| usage(&format!("example estate: {e}")));
    }
    let running = fake
        .serve(listen)
        .await
        .unwrap_or_else(|e| usage(&format!("cannot listen on {listen}: {e}")));
    println!("endpoint={}", running.endpoint);
    println!("pid={}", std::process::id());
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
