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
    /// The history (and ownership record) every `palisade` of this test shares, as the
    /// CLI and the controller share one in a deployment.
    pub state: tempfile::TempDir,
}

impl Moto {
    /// Start moto, or `None` (with the reason printed) when `python3` is missing — the
    /// only reason these tests may skip.
    pub fn start() -> Option<Moto> {
        if Command::new("python3").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("PALISADE_REQUIRE_MOTO").is_none(),
                "PALISADE_REQUIRE_MOTO is set but python3 is not installed"
            );
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
            state: tempfile::tempdir().unwrap(),
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

    /// Seed an estate Palisade did not make (`localstack/seed_estate.py`), `per_kind`
    /// functions of each kind.
    pub fn seed_estate(&self, per_kind: usize) -> Value {
        self.python("seed_estate.py", &["--functions", &per_kind.to_string()])
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
        shared_state(&mut c, self.state.path());
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

/// A Git repository of the policies: a work tree the test commits in, pushed to a bare
/// "remote" that the controller fetches over `file://`.
pub struct GitRepo {
    pub dir: tempfile::TempDir,
}

impl GitRepo {
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.path().join("remote.git").display())
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.work())
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.dir.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `policies-example` under `policies/`, committed and pushed to `main`.
    pub fn with_example() -> GitRepo {
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("remote.git");
        let ok = Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&remote)
            .status()
            .unwrap();
        assert!(ok.success());
        let repo = GitRepo { dir };
        std::fs::create_dir_all(repo.work()).unwrap();
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "Platform Team"]);
        repo.git(&["config", "user.email", "platform@example.com"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo.git(&["remote", "add", "origin", &repo.url()]);
        copy_dir(
            &root().join("policies-example"),
            &repo.work().join("policies"),
        );
        repo.commit("initial policies", &[]);
        repo
    }

    /// [`GitRepo::with_example`] whose commits can be SSH-signed (`commit(…, &["-S"])`)
    /// by a fresh key of platform@example.com; returns the allowed-signers file too.
    pub fn with_signing() -> (GitRepo, PathBuf) {
        let repo = GitRepo::with_example();
        let key = repo.dir.path().join("signing");
        let ok = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "platform@example.com",
                "-f",
            ])
            .arg(&key)
            .status()
            .expect("ssh-keygen runs");
        assert!(ok.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let signers = repo.dir.path().join("allowed_signers");
        std::fs::write(
            &signers,
            format!("platform@example.com namespaces=\"git\" {public}"),
        )
        .unwrap();
        repo.git(&["config", "gpg.format", "ssh"]);
        repo.git(&["config", "user.signingkey", key.to_str().unwrap()]);
        (repo, signers)
    }

    /// Commit everything and push; returns the commit id.
    pub fn commit(&self, message: &str, extra: &[&str]) -> String {
        self.git(&["add", "-A"]);
        let mut args = vec!["commit", "-q", "--allow-empty", "-m", message];
        args.extend_from_slice(extra);
        self.git(&args);
        self.git(&["push", "-q", "-f", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn edit(&self, file: &str, from: &str, to: &str) {
        let p = self.work().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The binary under test; `PALISADE_E2E_BIN` runs the source tests against another
/// build (e.g. an older one, to see a regression test fail there).
pub fn bin() -> PathBuf {
    std::env::var_os("PALISADE_E2E_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_palisade")),
        PathBuf::from,
    )
}

/// A free loopback port (the kernel's choice; released before the controller binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One history (ownership record) and one pinned installation id for every `palisade`
/// started against one emulator: `apply`, `plan` and `run` agree on what they own, and a
/// controller restarted with a fresh data directory is the same installation.
fn shared_state(c: &mut Command, dir: &std::path::Path) {
    c.env("PALISADE_HISTORY", dir.join("history.db"))
        .env("PALISADE_INSTALLATION_ID", "e2e");
}

/// `palisade run` as a child process; killed when dropped.
pub struct Controller {
    pub child: std::cell::RefCell<std::process::Child>,
    pub base: String,
    pub log: PathBuf,
    pub data: PathBuf,
    _data: Option<tempfile::TempDir>,
}

impl Controller {
    /// `palisade run` of `prod-azure` from `repo` against the ARM fake.
    pub fn start_azure(arm: &ArmFake, repo: &GitRepo, extra: &[&str]) -> Controller {
        let mut args = vec!["--git-path", "policies", "--target", "prod-azure"];
        args.extend_from_slice(extra);
        Controller::spawn(arm.palisade(), &repo.url(), &args, None)
    }

    pub fn start(moto: &Moto, repo: &GitRepo, extra: &[&str]) -> Controller {
        let mut args = vec!["--git-path", "policies", "--target", "prod-aws"];
        args.extend_from_slice(extra);
        Controller::spawn(moto.palisade(), &repo.url(), &args, None)
    }

    /// `palisade run` for source tests: no target is reconciled (`--target none`), and
    /// the clouds' endpoints point at a closed loopback port, so nothing leaves the
    /// machine. `data` keeps the data directory across restarts when given.
    pub fn source_only(url: &str, extra: &[&str], data: Option<PathBuf>) -> Controller {
        Controller::source_only_with_env(url, extra, data, &[])
    }

    /// [`Controller::source_only`] with more environment variables.
    pub fn source_only_with_env(
        url: &str,
        extra: &[&str],
        data: Option<PathBuf>,
        env: &[(&str, String)],
    ) -> Controller {
        let mut cmd = Command::new(bin());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
        let mut args = vec!["--target", "none"];
        args.extend_from_slice(extra);
        Controller::spawn(cmd, url, &args, data)
    }

    fn spawn(mut cmd: Command, url: &str, extra: &[&str], data: Option<PathBuf>) -> Controller {
        let (owned, dir) = match data {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let port = free_port();
        let log = dir.join("palisade.log");
        cmd.args(["run", "--git-url", url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--log-format", "json"])
            // Defaults through the environment, so that `extra` flags override them.
            .env("PALISADE_RESYNC", "2s")
            .env("PALISADE_POLL_INTERVAL", "1s")
            .env("PALISADE_GITHUB_WEBHOOK_SECRET", "s3cr3t")
            .env("PALISADE_GITLAB_WEBHOOK_TOKEN", "t0ken")
            .args(extra)
            .env("PALISADE_LOG", "info")
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("palisade run starts");
        Controller {
            child: std::cell::RefCell::new(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            data: dir,
            _data: owned,
        }
    }

    /// A GitHub push webhook for `reference`, signed with the tests' secret; the status.
    pub fn github_push(&self, delivery: &str, reference: &str) -> u16 {
        use hmac::Mac as _;
        let body = format!(r#"{{"ref":"{reference}"}}"#);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t").unwrap();
        mac.update(body.as_bytes());
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.http(
            "POST",
            "/webhook/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
            ],
            &body,
        )
        .0
    }

    /// Peak resident memory of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.borrow().id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// A metric's value summed over the series whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics", &[], "");
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET or POST; (status, body). Connection errors are status 0.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("{}{path}", self.base);
        let result = if method == "POST" {
            let mut req = agent.post(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send(body)
        } else {
            agent.get(&url).call()
        };
        match result {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.http("GET", "/api/status", &[], "");
        if code != 200 {
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// Wait (at most `secs`) until `f` holds; panics with the logs otherwise. A liveness
    /// bound, not a performance assertion: generous on purpose.
    pub fn wait(&self, secs: u64, what: &str, mut f: impl FnMut(&Controller) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if f(self) {
                return;
            }
            if let Ok(Some(exit)) = self.child.borrow_mut().try_wait() {
                panic!(
                    "palisade run exited ({exit}) while waiting for: {what}\nlogs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "timed out after {secs}s waiting for: {what}\nstatus: {}\nlogs:\n{}",
            self.status(),
            self.logs()
        );
    }

    pub fn enforced(&self) -> Option<String> {
        self.status()["revision"]["commit"]
            .as_str()
            .map(str::to_string)
    }

    pub fn ready_at(&self, commit: &str) -> bool {
        let s = self.status();
        s["converged"] == true && s["revision"]["commit"] == commit
    }

    /// `kill -9`, and wait for it to be gone.
    pub fn kill_9(self) {
        let pid = self.child.borrow().id();
        assert!(
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.borrow_mut().wait();
    }

    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.borrow().id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.borrow_mut().try_wait() {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The ARM fake (a real HTTP server on 127.0.0.1, in this test process) seeded with the
/// Azure estate of `policies-example`; dropped with the test.
pub struct ArmFake {
    pub endpoint: String,
    pub fake: palisade_armfake::Fake,
    /// See [`Moto::state`].
    pub state: tempfile::TempDir,
    _running: palisade_armfake::Running,
    _runtime: tokio::runtime::Runtime,
}

/// The token the tests use for changes made "by hand".
pub const HAND_TOKEN: &str = "hand-made";

impl ArmFake {
    pub fn start(config: palisade_armfake::Config, functions: usize) -> ArmFake {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let fake = palisade_armfake::Fake::new(palisade_armfake::Config {
            static_token: Some(HAND_TOKEN.into()),
            ..config
        });
        fake.seed(&palisade_armfake::example_estate(functions))
            .expect("seed");
        let running = runtime
            .block_on(fake.clone().serve("127.0.0.1:0".parse().unwrap()))
            .expect("listen");
        ArmFake {
            endpoint: running.endpoint.clone(),
            fake,
            state: tempfile::tempdir().unwrap(),
            _running: running,
            _runtime: runtime,
        }
    }

    /// The real binary with this fake as ARM endpoint and Entra ID authority, and a
    /// client secret in the environment (azure_identity's environment credential).
    pub fn palisade(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_palisade"));
        c.env("PALISADE_AZURE_ARM_ENDPOINT", &self.endpoint)
            .env("AZURE_AUTHORITY_HOST", &self.endpoint)
            .env("AZURE_TENANT_ID", "00000000-0000-0000-0000-00000000000a")
            .env("AZURE_CLIENT_ID", "palisade-e2e")
            .env("AZURE_CLIENT_SECRET", "not-a-secret")
            .env("PALISADE_AZURE_POLL_INTERVAL", "50ms")
            .env_remove("AZURE_CREDENTIAL_KIND");
        shared_state(&mut c, self.state.path());
        c
    }

    /// One ARM call made by hand (drift): (status, body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let version = if path.contains("Microsoft.Web") {
            palisade_armfake::WEB_API
        } else {
            palisade_armfake::NETWORK_API
        };
        let url = format!("{}{path}?api-version={version}", self.endpoint);
        let auth = format!("Bearer {HAND_TOKEN}");
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("authorization", &auth).call(),
            ("PUT", Some(b)) => agent
                .put(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(b.to_string()),
            ("PATCH", Some(b)) => agent
                .patch(&url)
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .send(b.to_string()),
            other => panic!("unsupported call {other:?}"),
        };
        let mut r = result.expect("ARM fake reachable");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// `palisade apply --auto-approve --format json` of `target` in policies-example, with
/// `cmd` (the binary, set up for an emulator); panics with the output when it fails.
pub fn apply(cmd: Command, target: &str) -> Value {
    apply_in(cmd, &root().join("policies-example"), target)
}

/// [`apply`] with the policies at `policies`.
pub fn apply_in(mut cmd: Command, policies: &Path, target: &str) -> Value {
    let out = cmd
        .args(["apply", "--policies"])
        .arg(policies)
        .args(["--target", target, "--auto-approve", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "apply failed: {}", text(&out));
    json(&out)
}

/// `palisade observe` of `target` (policies-example): the inventory snapshot.
pub fn observe(mut cmd: Command, target: &str) -> Value {
    let out = cmd
        .args(["observe", "--target", target, "--policies"])
        .arg(root().join("policies-example"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    json(&out)
}

/// The group named `name` of an inventory snapshot.
pub fn group<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name}"))
}

/// The function `name` of an inventory snapshot.
pub fn function<'a>(inv: &'a Value, name: &str) -> &'a Value {
    inv["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no function {name}"))
}

/// `palisade plan --format json --detailed-exitcode` of `target`: (exit code, plan).
pub fn plan(cmd: Command, target: &str) -> (Option<i32>, Value) {
    plan_in(cmd, &root().join("policies-example"), target)
}

/// [`plan`] with the policies at `policies`.
pub fn plan_in(mut cmd: Command, policies: &Path, target: &str) -> (Option<i32>, Value) {
    let out = cmd
        .args(["plan", "--policies"])
        .arg(policies)
        .args([
            "--target",
            target,
            "--format",
            "json",
            "--detailed-exitcode",
        ])
        .output()
        .unwrap();
    (out.status.code(), json(&out))
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What it answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 receiver on loopback (a thread, `std::net`): records every request
/// and answers with the status set (200 at first); dropped with the test.
pub struct Receiver {
    pub port: u16,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// 0: down (every connection is closed without an answer).
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    /// On `port` (0: any free one).
    pub fn start_on(port: u16) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        let port = listener.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (g, s) = (got.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if s.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    drop(conn);
                    continue;
                }
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let code = s.load(std::sync::atomic::Ordering::SeqCst);
                g.lock().unwrap().push(Received {
                    path,
                    headers,
                    body,
                    status: code,
                });
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got, status }
    }

    /// The status to answer; 0 makes it down (connections closed unanswered).
    pub fn set_status(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    /// What arrived at `path` (and was answered 2xx when `delivered`).
    pub fn at(&self, path: &str, delivered: bool) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path && (!delivered || (200..300).contains(&r.status)))
            .cloned()
            .collect()
    }
}
