//! Unit tests of the source: names, settings, origins, symlinks, host keys, signatures.

use super::*;

#[test]
fn key_validity_times_read_like_ssh_keygen() {
    assert_eq!(key_time("19700102"), Some(86_400));
    assert_eq!(key_time("197001020001Z"), Some(86_460));
    assert_eq!(key_time("19700102000001"), Some(86_401));
    for bad in ["", "2026", "20261301", "2026-01-01", "+1d", "20260101x"] {
        assert_eq!(key_time(bad), None, "{bad:?}");
    }
}

#[test]
fn unsafe_tree_entry_names_are_named() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"payments.yaml", None),
        (b".github", None),
        (b"", Some("is empty")),
        (b".", Some("is . or ..")),
        (b"..", Some("is . or ..")),
        (b"a/b", Some("contains /")),
        (b"/abs", Some("contains /")),
        (b"a\\b", Some("contains \\")),
        (b"a\0b", Some("contains NUL")),
        (b".git", Some("is .git")),
        (b".GIT", Some("is .git")),
        (b"\xff", Some("is not UTF-8")),
    ];
    for (name, want) in cases {
        assert_eq!(
            unsafe_name(name),
            *want,
            "{:?}",
            String::from_utf8_lossy(name)
        );
    }
}

#[test]
fn settings_refuse_credentials_in_urls_clear_text_tokens_and_loose_refs() {
    let base = |url: &str, reference: &str| {
        GitSettings::new(url, reference, Path::new("policies"), Path::new("/tmp/x"))
    };
    let token = || Some(Secret::new("t", "tok").unwrap());
    let bad = |s: GitSettings| matches!(s.check(), Err(SourceError::Settings(_)));
    assert!(
        base("https://git.example.com/p.git", "main")
            .check()
            .is_ok()
    );
    assert!(
        base("git@github.com:org/p.git", "refs/tags/v3")
            .check()
            .is_ok()
    );
    assert!(bad(base("https://u:p@git.example.com/p.git", "main")));
    assert!(bad(base("https://u@git.example.com/p.git", "main")));
    let mut s = base("http://git.example.com/p.git", "main");
    s.token = token();
    assert!(bad(s), "a token over plain http to a remote host");
    for loopback in [
        "http://127.0.0.1:8080/p.git",
        "http://localhost/p.git",
        "http://[::1]/p.git",
    ] {
        let mut s = base(loopback, "main");
        s.token = token();
        assert!(s.check().is_ok(), "{loopback}");
    }
    for r in [
        "",
        "refs/remotes/origin/main",
        "refs/heads/",
        "a..b",
        "a b",
        "a:b",
        "refs/pull/1/head",
    ] {
        assert!(bad(base("https://h/p.git", r)), "{r:?}");
    }
    let mut s = base("https://h/p.git", "main");
    s.path = PathBuf::from("../elsewhere");
    assert!(bad(s));
    let mut s = base("https://h/p.git", "main");
    s.path = PathBuf::from("/abs");
    assert!(bad(s));
    assert_eq!(
        base("https://h/p.git", "main").tracked_ref(),
        "refs/heads/main"
    );
    assert_eq!(
        base("https://h/p.git", "refs/tags/v3").tracked_ref(),
        "refs/tags/v3"
    );
    assert!(
        !base("https://u:hunter2@h/p.git", "main")
            .display_url()
            .contains("hunter2")
    );
}

#[test]
fn the_token_origin_is_scheme_host_and_port() {
    let o = |u: &str| Origin::of(u).unwrap().unwrap();
    let configured = o("https://git.example.com/org/p.git");
    assert!(configured.same(&o("https://git.example.com:443/org/p.git/info/refs")));
    assert!(configured.same(&o("https://GIT.example.com/other")));
    assert!(!configured.same(&o("http://git.example.com/org/p.git")));
    assert!(!configured.same(&o("https://git.example.com:8443/org/p.git")));
    assert!(!configured.same(&o("https://evil.example.com/org/p.git")));
    assert!(Origin::of("ssh://git@h/p.git").unwrap().is_none());
    assert!(Origin::of("git@h:p.git").unwrap().is_none());
}

/// A bare repository holding `files` (path → (mode, content)) as one tree.
fn tree_of(dir: &Path, files: &[(&str, i32, &str)]) -> (Repository, Oid) {
    /// (path components, mode, content)
    type Entry<'a> = (Vec<&'a str>, i32, &'a str);
    fn build(repo: &Repository, files: &[Entry<'_>]) -> Oid {
        let mut tb = repo.treebuilder(None).unwrap();
        let mut subdirs: std::collections::BTreeMap<&str, Vec<Entry<'_>>> = Default::default();
        for (parts, mode, content) in files {
            if parts.len() == 1 {
                let blob = repo.blob(content.as_bytes()).unwrap();
                tb.insert(parts[0], blob, *mode).unwrap();
            } else {
                subdirs
                    .entry(parts[0])
                    .or_default()
                    .push((parts[1..].to_vec(), *mode, content));
            }
        }
        for (name, inner) in subdirs {
            let id = build(repo, &inner);
            tb.insert(name, id, 0o040000).unwrap();
        }
        tb.write().unwrap()
    }
    let repo = Repository::init_bare(dir).unwrap();
    let split: Vec<Entry<'_>> = files
        .iter()
        .map(|(p, m, c)| (p.split('/').collect(), *m, *c))
        .collect();
    let id = build(&repo, &split);
    (repo, id)
}

#[test]
fn symlinks_resolve_inside_the_tree_and_never_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, root) = tree_of(
        dir.path(),
        &[
            ("aws/payments.yaml", 0o100644, "a: 1\n"),
            ("link.yaml", 0o120000, "aws/payments.yaml"),
            ("chain.yaml", 0o120000, "./link.yaml"),
            ("dirlink", 0o120000, "aws"),
            ("aws/up.yaml", 0o120000, "../link.yaml"),
            ("out.yaml", 0o120000, "../outside.yaml"),
            ("abs.yaml", 0o120000, "/etc/passwd"),
            ("dangling.yaml", 0o120000, "nowhere.yaml"),
            ("loop.yaml", 0o120000, "loop.yaml"),
            ("aws/self", 0o120000, ".."),
            // Resolved from the link's real directory, also when reached through
            // the directory link (as in a checkout).
            ("aws/y.yaml", 0o100644, "b: 2\n"),
            ("aws/x.yaml", 0o120000, "y.yaml"),
        ],
    );
    let abort = Abort::default();
    let files = TreeFiles {
        repo: &repo,
        root: repo.find_tree(root).unwrap(),
        abort: &abort,
    };
    let mut diags = Vec::new();
    let mut listed: Vec<String> = files
        .list(&Limits::default(), &mut diags)
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "aws/payments.yaml",
            "aws/up.yaml",
            "aws/x.yaml",
            "aws/y.yaml",
            "chain.yaml",
            "dirlink/payments.yaml",
            "dirlink/up.yaml",
            "dirlink/x.yaml",
            "dirlink/y.yaml",
            "link.yaml"
        ]
    );
    let mut escapes: Vec<String> = diags
        .iter()
        .map(|d| d.location.as_ref().unwrap().file.display().to_string())
        .collect();
    escapes.sort();
    assert_eq!(
        escapes,
        ["abs.yaml", "dangling.yaml", "loop.yaml", "out.yaml"],
        "{diags:?}"
    );
    assert!(
        diags
            .iter()
            .all(|d| d.kind == DiagnosticKind::SymlinkEscape)
    );
}

#[test]
fn known_hosts_matches_plain_and_bracketed_entries() {
    use base64::Engine as _;
    let key = b"\x00\x00\x00\x0bssh-ed25519keybytes";
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let text = format!(
        "# comment\ngit.example.com,10.0.0.1 ssh-ed25519 {b64}\n[other]:2222 ssh-ed25519 {b64}\n"
    );
    assert!(known_host(&text, "git.example.com", 22, key));
    assert!(known_host(&text, "other", 2222, key));
    assert!(
        !known_host(&text, "other", 22, key),
        "a bracketed entry is for its port only"
    );
    assert!(
        !known_host(&text, "git.example.com", 2222, key),
        "a plain entry is port 22"
    );
    assert!(!known_host(&text, "evil.example.com", 22, key));
    assert!(!known_host(&text, "git.example.com", 22, b"different"));
    let revoked = format!("{text}@revoked * ssh-ed25519 {b64}\n");
    assert!(!known_host(&revoked, "git.example.com", 22, key));
    assert_eq!(ssh_port("ssh://git@h:2222/p.git"), 2222);
    assert_eq!(ssh_port("git@h:p.git"), 22);
}

#[test]
fn garbage_and_pgp_signatures_are_untrusted() {
    for sig in [
        "nonsense",
        "-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----",
    ] {
        assert!(matches!(
            verify_ssh(sig, b"data", "", "a@b", 0),
            SignatureStatus::Untrusted { .. }
        ));
    }
}
