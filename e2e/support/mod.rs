//! Test support: the moto server started through `localstack/moto-server`, seeded through
//! `localstack/seed_aws.py`, poked through `localstack/aws_call.py`, and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A moto server of this test's own; killed when dropped.
pub struct Moto {
    pub endpoint: String,
    pid: u32,
    python: PathBuf,
}

impl Moto {
    /// Start moto, or `None` (with the reason printed) when `python3` is missing — the
    /// only reason these tests may skip.
    pub fn start() -> Option<Moto> {
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("SKIPPED: python3 is not installed; the moto emulator tests cannot run");
            return None;
        }
        let out = Command::new(root().join("localstack/moto-server"))
            .output()
            .expect("localstack/moto-server runs");
        assert!(
            out.status.success(),
            "moto-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("moto-server printed no {k}: {text}"))
                .to_string()
        };
        let venv = std::env::var("PALISADE_MOTO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").expect("HOME"))
                    .join(".cache/palisade-moto-venv")
            });
        Some(Moto {
            endpoint: field("endpoint"),
            pid: field("pid").parse().expect("pid"),
            python: venv.join("bin/python"),
        })
    }

    fn python(&self, script: &str, args: &[&str]) -> Value {
        let out = Command::new(&self.python)
            .arg(root().join("localstack").join(script))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "{script} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON from the script")
    }

    /// Seed the estate of `policies-example`'s AWS target with `functions` functions.
    pub fn seed(&self, functions: usize) -> Value {
        self.python("seed_aws.py", &["--functions", &functions.to_string()])
    }

    /// One boto3 call (drift made behind Palisade's back).
    pub fn call(&self, service: &str, operation: &str, params: Value) -> Value {
        self.python("aws_call.py", &[service, operation, &params.to_string()])
    }

    /// The real binary with this moto's endpoint and fake credentials.
    pub fn palisade(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_palisade"));
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            // Generous limits: moto is local; the limiter itself has unit tests.
            .env(
                "PALISADE_AWS_RATE_LIMITS",
                "ec2-read=500/500,ec2-write=500/500,lambda-read=500/500,lambda-write=500/500,tagging=500/500",
            );
        c
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}
