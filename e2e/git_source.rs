//! The Git source against hostile repositories and real Git servers: the real binary
//! (`palisade run`, no target reconciled), real repositories built with the `git` CLI
//! (including plumbing that writes trees Git itself would never make), `sshd` and
//! `git http-backend` behind nginx + fcgiwrap over TLS, all on loopback.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Controller, GitRepo};

/// `git --git-dir <bare>` with a clean configuration.
fn git_in(bare: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(bare)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Mallory")
        .env("GIT_AUTHOR_EMAIL", "mallory@example.com")
        .env("GIT_COMMITTER_NAME", "Mallory")
        .env("GIT_COMMITTER_EMAIL", "mallory@example.com")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("git runs");
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tree object written literally (no name checks, as a hostile pusher would).
fn literal_tree(bare: &Path, entries: &[(&str, &[u8], &str)]) -> String {
    let mut entries: Vec<_> = entries.to_vec();
    entries.sort_by(|a, b| a.1.cmp(b.1));
    let mut raw = Vec::new();
    for (mode, name, oid) in entries {
        raw.extend_from_slice(mode.as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(name);
        raw.push(0);
        raw.extend_from_slice(&hex::decode(oid).unwrap());
    }
    git_in(
        bare,
        &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
        Some(&raw),
    )
}

fn blob(bare: &Path, content: &[u8]) -> String {
    git_in(bare, &["hash-object", "-w", "--stdin"], Some(content))
}

/// The entries of `treeish` as (mode, name, oid).
fn ls_tree(bare: &Path, treeish: &str) -> Vec<(String, Vec<u8>, String)> {
    git_in(bare, &["ls-tree", treeish], None)
        .lines()
        .map(|l| {
            let (meta, name) = l.split_once('\t').unwrap();
            let mut p = meta.split_whitespace();
            let mode = p.next().unwrap().to_string();
            let _kind = p.next();
            let oid = p.next().unwrap().to_string();
            (mode, name.as_bytes().to_vec(), oid)
        })
        .collect()
}

/// A commit on top of `parent` whose `policies/` holds the parent's policies plus
/// `extra` entries; pushed to `main` of the bare remote. Returns the commit id.
fn hostile_commit(bare: &Path, parent: &str, extra: &[(&str, &[u8], &str)], msg: &str) -> String {
    let mut policies = ls_tree(bare, &format!("{parent}:policies"));
    for (mode, name, oid) in extra {
        policies.push((mode.to_string(), name.to_vec(), oid.to_string()));
    }
    let refs: Vec<(&str, &[u8], &str)> = policies
        .iter()
        .map(|(m, n, o)| (m.as_str(), n.as_slice(), o.as_str()))
        .collect();
    let sub = literal_tree(bare, &refs);
    let root = literal_tree(bare, &[("40000", b"policies", &sub)]);
    let commit = git_in(bare, &["commit-tree", &root, "-p", parent, "-m", msg], None);
    git_in(bare, &["update-ref", "refs/heads/main", &commit], None);
    commit
}

fn remote(repo: &GitRepo) -> PathBuf {
    repo.dir.path().join("remote.git")
}

fn rejection(c: &Controller, commit: &str) -> Option<Value> {
    c.status()["rejected"]
        .as_array()?
        .iter()
        .find(|r| r["commit"] == commit)
        .cloned()
}

/// Every file under `dir` (relative), except the mirror's object store and refs and the
/// files the controller itself keeps (logs, history).
fn files_outside_the_mirror(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("git/mirror.git") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.retain(|f| !f.starts_with("history.db") && f != "palisade.log" && f != "stdout");
    out.sort();
    out
}

#[test]
fn hostile_trees_are_rejected_with_the_path_and_nothing_is_written_outside_the_mirror() {
    let repo = GitRepo::with_example();
    let bare = remote(&repo);
    let good = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], None);
    c.wait(60, "the good revision enforced", |c| {
        c.enforced().as_deref() == Some(good.as_str())
    });
    let before = files_outside_the_mirror(&c.data);
    assert_eq!(before, vec!["git/enforced.json".to_string()], "{before:?}");

    let yaml = blob(&bare, b"apiVersion: palisade.dev/v1alpha1\n");
    let escape_abs =
        std::env::temp_dir().join(format!("palisade-escape-{}.yaml", std::process::id()));
    let abs_name = escape_abs.to_string_lossy().into_owned();
    let config = blob(
        &bare,
        b"[url \"http://127.0.0.1:9/\"]\n\tinsteadOf = file://\n",
    );
    let dotgit = literal_tree(&bare, &[("100644", b"config", &config)]);
    let out_link = blob(&bare, b"../../../../../../etc/passwd");
    // (entry, what the rejection must say)
    let cases: Vec<(&str, Vec<u8>, String, &[&str])> = vec![
        (
            "100644",
            b"../../../x-escaped.yaml".to_vec(),
            yaml.clone(),
            &["x-escaped.yaml", "contains /"],
        ),
        (
            "100644",
            abs_name.as_bytes().to_vec(),
            yaml.clone(),
            &["palisade-escape-", "contains /"],
        ),
        (
            "100644",
            b"a/b.yaml".to_vec(),
            yaml.clone(),
            &["b.yaml", "contains /"],
        ),
        ("40000", b"..".to_vec(), dotgit.clone(), &["is . or .."]),
        ("40000", b".git".to_vec(), dotgit.clone(), &["is .git"]),
        (
            "100644",
            b"bad\\name.yaml".to_vec(),
            yaml.clone(),
            &["name.yaml", "contains \\"],
        ),
        (
            "100644",
            b"\xff\xfe.yaml".to_vec(),
            yaml.clone(),
            &["is not UTF-8"],
        ),
        (
            "120000",
            b"escape.yaml".to_vec(),
            out_link.clone(),
            &["escape.yaml", "outside the policy tree"],
        ),
    ];
    for (mode, name, oid, expect) in &cases {
        let commit = hostile_commit(&bare, &good, &[(mode, name, oid)], "hostile entry");
        c.wait(30, &format!("the revision with {expect:?} rejected"), |c| {
            rejection(c, &commit).is_some()
        });
        let r = rejection(&c, &commit).unwrap();
        assert_eq!(r["reason"], "invalid", "{r}");
        let details: Vec<String> = serde_json::from_value(r["details"].clone()).unwrap();
        let text = details.join("\n");
        for e in *expect {
            assert!(text.contains(e), "{e:?} not in: {text}");
        }
        assert_eq!(
            c.enforced().as_deref(),
            Some(good.as_str()),
            "the last good revision stays"
        );
    }
    assert!(!escape_abs.exists(), "an absolute entry name was written");
    assert!(!c.data.join("x-escaped.yaml").exists());
    assert_eq!(
        files_outside_the_mirror(&c.data),
        before,
        "nothing written outside the mirror"
    );
    let mirror_config = std::fs::read_to_string(c.data.join("git/mirror.git/config")).unwrap();
    assert!(!mirror_config.contains("insteadOf"), "{mirror_config}");

    // A 50 MB blob is refused by its header, never inflated by the loader. (Over file://
    // libgit2 packs the remote's objects inside this process, so the bound here is loose;
    // git_servers.rs measures the same over HTTPS, where the server packs.)
    let big: Vec<u8> = b"# padding\n"
        .iter()
        .copied()
        .cycle()
        .take(50 * 1024 * 1024)
        .collect();
    let big = blob(&bare, &big);
    let commit = hostile_commit(&bare, &good, &[("100644", b"big.yaml", &big)], "50 MB");
    c.wait(60, "the 50 MB revision rejected", |c| {
        rejection(c, &commit).is_some()
    });
    let r = rejection(&c, &commit).unwrap();
    assert!(
        r["details"].to_string().contains("big.yaml")
            && r["details"].to_string().contains("52428800 bytes"),
        "{r}"
    );
    let peak = c.peak_rss();
    eprintln!("peak RSS after the 50 MB revision: {peak} bytes");
    assert!(
        peak < 200 * 1024 * 1024,
        "peak RSS {peak} bytes: the blob was inflated"
    );

    // 200,000 entries are refused by count.
    let one = blob(&bare, b"x");
    let names: Vec<Vec<u8>> = (0..200_000)
        .map(|i| format!("f{i:06}.txt").into_bytes())
        .collect();
    let mut raw = Vec::new();
    for n in &names {
        raw.extend_from_slice(b"100644 ");
        raw.extend_from_slice(n);
        raw.push(0);
        raw.extend_from_slice(&hex::decode(&one).unwrap());
    }
    let wide = git_in(
        &bare,
        &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"],
        Some(&raw),
    );
    let commit = hostile_commit(
        &bare,
        &good,
        &[("40000", b"wide", &wide)],
        "200,000 entries",
    );
    c.wait(60, "the 200,000-entry revision rejected", |c| {
        rejection(c, &commit).is_some()
    });
    let r = rejection(&c, &commit).unwrap();
    assert!(
        r["details"].to_string().contains("more than 50000 entries"),
        "{r}"
    );
    assert_eq!(c.enforced().as_deref(), Some(good.as_str()));
    assert_eq!(files_outside_the_mirror(&c.data), before);
}

#[test]
fn a_branch_never_shadows_the_tracked_tag_and_an_ambiguous_name_is_refused() {
    let repo = GitRepo::with_example();
    let bare = remote(&repo);
    let tagged = repo.git(&["rev-parse", "HEAD"]);
    repo.git(&["tag", "-a", "v3", "-m", "release v3"]);
    repo.git(&["push", "-q", "origin", "refs/tags/v3"]);
    // A branch named like the tag, and one literally named refs/tags/v3, elsewhere.
    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/8444 ]",
    );
    let other = repo.commit("not the release", &[]);
    git_in(&bare, &["update-ref", "refs/heads/v3", &other], None);
    git_in(
        &bare,
        &["update-ref", "refs/heads/refs/tags/v3", &other],
        None,
    );

    let c = Controller::source_only(
        &repo.url(),
        &["--git-path", "policies", "--git-ref", "refs/tags/v3"],
        None,
    );
    c.wait(60, "the tag enforced", |c| c.enforced().is_some());
    assert_eq!(
        c.enforced().as_deref(),
        Some(tagged.as_str()),
        "the tag, not a branch"
    );
    drop(c);

    let c = Controller::source_only(
        &repo.url(),
        &["--git-path", "policies", "--git-ref", "v3"],
        None,
    );
    c.wait(30, "the ambiguous name refused", |c| {
        c.status()["sourceError"]
            .as_str()
            .is_some_and(|e| e.contains("names both the branch"))
    });
    assert!(c.enforced().is_none());
    assert!(c.metric("palisade_source_fetch_errors_total{reason=\"reference\"}") >= 1.0);
}

#[test]
fn with_signatures_required_a_rollback_to_an_older_signed_commit_is_rejected() {
    let (repo, signers) = GitRepo::with_signing();
    let old = repo.commit("signed, before the rule was tightened", &["-S"]);
    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/8444 ]",
    );
    let new = repo.commit("signed, tightened", &["-S"]);
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().to_path_buf();
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--git-path",
            "policies",
            "--allowed-signers",
            signers.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Controller::source_only(&repo.url(), &args, Some(data.clone()))
    };
    let c = start(&[]);
    c.wait(60, "the signed tip enforced", |c| {
        c.enforced().as_deref() == Some(new.as_str())
    });
    git_in(
        &remote(&repo),
        &["update-ref", "refs/heads/main", &old],
        None,
    );
    c.wait(30, "the rollback rejected", |c| {
        rejection(c, &old).is_some_and(|r| r["reason"] == "not-a-descendant")
    });
    assert_eq!(c.enforced().as_deref(), Some(new.as_str()));
    assert!(c.metric("palisade_revisions_rejected_total{reason=\"not-a-descendant\"}") >= 1.0);
    let events = c.status()["recentEvents"].to_string();
    assert!(
        events.contains("not-a-descendant"),
        "recorded in the history: {events}"
    );
    let mut c = c;
    assert_eq!(c.terminate(), Some(0));
    drop(c);

    // The enforced commit is persisted: a restart still refuses the rollback...
    let c = start(&[]);
    c.wait(30, "the rollback rejected after a restart", |c| {
        rejection(c, &old).is_some_and(|r| r["reason"] == "not-a-descendant")
    });
    assert_eq!(c.enforced().as_deref(), Some(new.as_str()));
    let mut c = c;
    assert_eq!(c.terminate(), Some(0));
    drop(c);
    // ...unless the operator says the rewrite is deliberate.
    let c = start(&["--allow-history-rewrite"]);
    c.wait(30, "the rewrite accepted", |c| {
        c.enforced().as_deref() == Some(old.as_str())
    });
    assert!(
        c.status()["recentEvents"]
            .to_string()
            .contains("history-rewritten")
    );
}

#[test]
fn without_signatures_a_force_push_is_followed_and_recorded() {
    let repo = GitRepo::with_example();
    let first = repo.git(&["rev-parse", "HEAD"]);
    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/8444 ]",
    );
    let second = repo.commit("second", &[]);
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], None);
    c.wait(60, "the tip enforced", |c| {
        c.enforced().as_deref() == Some(second.as_str())
    });
    git_in(
        &remote(&repo),
        &["update-ref", "refs/heads/main", &first],
        None,
    );
    c.wait(30, "the force-push followed", |c| {
        c.enforced().as_deref() == Some(first.as_str())
    });
    assert!(
        c.status()["recentEvents"]
            .to_string()
            .contains("history-rewritten")
    );
    assert!(c.metric("palisade_source_history_rewrites_total") >= 1.0);
}

#[test]
fn a_restart_with_an_unreachable_remote_enforces_the_persisted_revision() {
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().to_path_buf();
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], Some(data.clone()));
    c.wait(60, "enforced", |c| {
        c.enforced().as_deref() == Some(head.as_str())
    });
    let mut c = c;
    assert_eq!(c.terminate(), Some(0));
    drop(c);
    std::fs::rename(remote(&repo), repo.dir.path().join("gone.git")).unwrap();
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], Some(data));
    c.wait(30, "the persisted revision enforced", |c| {
        c.enforced().as_deref() == Some(head.as_str())
    });
    c.wait(30, "the fetch error shown", |c| {
        c.status()["sourceError"].is_string()
    });
    assert!(c.metric("palisade_source_fetch_errors_total") >= 1.0);
    assert_eq!(c.status()["lastFetchSuccessAt"], Value::Null);
}

/// A TCP server that accepts connections and never answers.
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (port, h)
}

#[test]
fn a_stalled_remote_times_out_and_sigterm_still_exits_in_time() {
    let (port, _h) = black_hole();
    let url = format!("http://127.0.0.1:{port}/policies.git");
    // The socket timeout is long: only the fetch deadline can end the wait.
    let mut c = Controller::source_only(
        &url,
        &[
            "--git-fetch-timeout",
            "2s",
            "--git-io-timeout",
            "1h",
            "--git-connect-timeout",
            "5s",
            "--poll-interval",
            "1s",
        ],
        None,
    );
    c.wait(30, "the fetch deadline reported", |c| {
        c.metric("palisade_source_fetch_errors_total{reason=\"timeout\"}") >= 1.0
    });
    let err = c.status()["sourceError"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("deadline") || err.contains("still running"),
        "{err}"
    );
    assert_eq!(
        c.http("GET", "/healthz", &[], "").0,
        200,
        "the loop is alive"
    );
    assert_eq!(
        c.metric("palisade_source_last_fetch_success_timestamp_seconds"),
        0.0
    );
    assert!(c.status()["sourceStaleSeconds"].as_u64().is_some());
    let started = Instant::now();
    assert_eq!(c.terminate(), Some(0), "{}", c.logs());
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "SIGTERM waited for the stalled fetch"
    );

    // With a short socket timeout libgit2 itself gives up.
    let c = Controller::source_only(
        &url,
        &[
            "--git-fetch-timeout",
            "1h",
            "--git-io-timeout",
            "1s",
            "--poll-interval",
            "1s",
        ],
        None,
    );
    c.wait(30, "the socket timeout reported", |c| {
        c.status()["sourceError"]
            .as_str()
            .is_some_and(|e| e.contains("timed out"))
    });
}

#[test]
fn credentials_in_the_url_and_empty_webhook_secrets_fail_start_up() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(support::bin())
            .args(["run", "--listen", "127.0.0.1:0", "--target", "none"])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .output()
            .unwrap()
    };
    for url in [
        "https://user:hunter2@git.example.com/p.git",
        "ssh://git:hunter2@git.example.com/p.git",
    ] {
        let out = run(&["--git-url", url]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("holds a password") && !err.contains("hunter2"),
            "{err}"
        );
    }
    let out = run(&["--git-url", "https://user@git.example.com/p.git"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds credentials"), "{err}");
    for flag in ["--github-webhook-secret", "--gitlab-webhook-token"] {
        let out = run(&["--git-url", "file:///nonexistent", flag, ""]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(flag) && err.contains("is empty"), "{err}");
    }
    let token = data.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let out = run(&[
        "--git-url",
        "http://git.example.com/p.git",
        "--git-token-file",
        token.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in clear over http://"), "{err}");
}

#[test]
fn webhooks_act_once_per_delivery_and_bursts_are_coalesced() {
    let repo = GitRepo::with_example();
    let c = Controller::source_only(
        &repo.url(),
        &[
            "--git-path",
            "policies",
            "--poll-interval",
            "1h",
            "--webhook-min-interval",
            "5s",
        ],
        None,
    );
    c.wait(60, "enforced", |c| c.enforced().is_some());
    let fetches = |c: &Controller| c.metric("palisade_source_fetches_total{trigger=\"webhook\"}");
    assert_eq!(c.github_push("d-1", "refs/heads/main"), 202);
    c.wait(10, "one webhook fetch", |c| fetches(c) == 1.0);
    // GitHub redelivers: the same id does nothing.
    assert_eq!(c.github_push("d-1", "refs/heads/main"), 200);
    // A push to another branch does nothing.
    assert_eq!(c.github_push("d-2", "refs/heads/feature"), 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fetches(&c), 1.0);
    assert!(c.metric("palisade_webhooks_ignored_total{reason=\"duplicate\"}") == 1.0);
    assert!(c.metric("palisade_webhooks_ignored_total{reason=\"other-ref\"}") == 1.0);

    // 100 signed pushes within about a second: coalesced into one more fetch.
    let started = Instant::now();
    for i in 0..100 {
        assert_eq!(c.github_push(&format!("burst-{i}"), "refs/heads/main"), 202);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the burst itself took too long to send"
    );
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(fetches(&c), 2.0, "one fetch for the burst");

    // Refusals are counted, and logged at most once a minute.
    for _ in 0..20 {
        assert_eq!(
            c.http(
                "POST",
                "/webhook/github",
                &[("X-Hub-Signature-256", "sha256=00")],
                "{}"
            )
            .0,
            401
        );
    }
    assert_eq!(
        c.metric("palisade_webhooks_refused_total{reason=\"bad-signature\"}"),
        20.0
    );
    assert_eq!(
        c.logs().matches("webhook refused").count(),
        1,
        "{}",
        c.logs()
    );

    // Every response carries the security headers.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent.get(&format!("{}/", c.base)).call().unwrap();
    let h = r.headers();
    assert!(
        h.get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use std::io::{Read as _, Write as _};
    let repo = GitRepo::with_example();
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], None);
    c.wait(60, "serving", |c| {
        c.http("GET", "/healthz", &[], "").0 == 200
    });
    let addr = c.base.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // The server closed the connection (possibly with a 408) instead of waiting forever.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the connection was held"
    );
}

#[test]
fn a_changed_policy_path_never_reuses_what_was_loaded_for_the_old_one() {
    let repo = GitRepo::with_example();
    // The same commit holds a second, broken policy directory.
    std::fs::create_dir_all(repo.work().join("other")).unwrap();
    std::fs::write(
        repo.work().join("other/broken.yaml"),
        "apiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: { name: broken }\nspec:\n  target: nowhere\n  functions: { names: [x] }\n",
    )
    .unwrap();
    let head = repo.commit("a second directory", &[]);
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().to_path_buf();
    let mut c =
        Controller::source_only(&repo.url(), &["--git-path", "policies"], Some(data.clone()));
    c.wait(60, "policies/ enforced", |c| {
        c.enforced().as_deref() == Some(head.as_str())
    });
    assert_eq!(c.terminate(), Some(0));
    drop(c);
    let c = Controller::source_only(&repo.url(), &["--git-path", "other"], Some(data));
    c.wait(30, "the same commit under other/ rejected", |c| {
        rejection(c, &head).is_some_and(|r| {
            r["reason"] == "invalid" && r["details"].to_string().contains("broken.yaml")
        })
    });
    assert!(
        c.enforced().is_none(),
        "nothing loaded for policies/ is enforced for other/"
    );
}

#[test]
fn an_oversized_commit_object_is_refused_before_it_is_read() {
    let repo = GitRepo::with_example();
    let bare = remote(&repo);
    let good = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::source_only(&repo.url(), &["--git-path", "policies"], None);
    c.wait(60, "enforced", |c| {
        c.enforced().as_deref() == Some(good.as_str())
    });
    // A commit with a 4 MB message: a few kilobytes on the wire.
    let tree = git_in(&bare, &["rev-parse", &format!("{good}^{{tree}}")], None);
    let message = "x".repeat(4 * 1024 * 1024);
    let bomb = git_in(
        &bare,
        &["commit-tree", &tree, "-p", &good, "-F", "-"],
        Some(message.as_bytes()),
    );
    git_in(&bare, &["update-ref", "refs/heads/main", &bomb], None);
    c.wait(30, "the oversized commit refused", |c| {
        c.metric("palisade_source_fetch_errors_total{reason=\"object\"}") >= 1.0
    });
    let err = c.status()["sourceError"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("bytes; at most 1048576 are read"), "{err}");
    assert_eq!(c.enforced().as_deref(), Some(good.as_str()));
}
