//! The policy source: a Git repository mirrored locally with `git2`, one exact branch or
//! tag tracked in it, and a sub-path that holds the policies.
//!
//! # Guarantees
//! The order is fixed: fetch (the tracked ref only) → resolve exactly → verify the
//! signature → check ancestry → load the policy set straight from the Git tree. Nothing
//! of a revision is written to disk: tree entry names are never used as paths, and a
//! rejected revision leaves only objects in the mirror's object store. Every budget
//! (bytes fetched, entries walked, file sizes, total bytes) is checked before the data
//! is inflated. The controller ([`crate::reconcile`]) validates what was loaded and decides
//! whether it replaces the enforced revision; the last accepted commit is persisted
//! here ([`GitSource::persist`]) and enforced again at start-up.
//!
//! Credentials: the token is offered only to the scheme, host and port of the
//! configured URL (a redirect elsewhere gets no credentials), never over plain `http://`
//! except to loopback; URLs with embedded credentials are refused; `url.*.insteadOf` rewrites are
//! refused; the mirror's own configuration is rewritten at every start.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, ObjectType, Oid,
    RemoteCallbacks, RemoteRedirect, Repository,
};
use serde::{Deserialize, Serialize};

use crate::policy::{
    self, Diagnostic, DiagnosticKind, FileEntry, Limits, MAX_DIR_DEPTH, PolicyFiles, PolicySet,
    SourceLocation,
};
use crate::secret::Secret;

/// How signatures on the tracked commit are treated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Not checked.
    #[default]
    Off,
    /// SSH signatures (`gpg.format=ssh`) against an OpenSSH allowed-signers file.
    Ssh {
        /// `principal[,principal] [options] keytype base64-key` per line.
        allowed_signers: PathBuf,
    },
}

/// Where the policies come from, and the bounds of every fetch.
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// `https://…`, `ssh://…`, `git@host:…` or `file://…` (a local path works too).
    pub url: String,
    /// `refs/heads/X`, `refs/tags/X`, or a bare branch name.
    pub reference: String,
    /// Directory inside the repository that holds the policies (`""` = the root).
    pub path: PathBuf,
    /// Where the mirror and the persisted last good revision live.
    pub cache_dir: PathBuf,
    /// HTTPS token (sent as the password; user `x-access-token`).
    pub token: Option<Secret>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// OpenSSH known_hosts file; required for SSH remotes (host keys are checked).
    pub known_hosts: Option<PathBuf>,
    /// Signature verification.
    pub signatures: SignaturePolicy,
    /// With signatures required: accept a new tip that does not descend from the
    /// enforced commit (a force-push). Without signatures force-pushes are always
    /// followed (and recorded).
    pub allow_history_rewrite: bool,
    /// Most bytes one fetch may receive.
    pub max_fetch_bytes: u64,
    /// Budgets of the policy tree (entries, files, sizes, YAML).
    pub limits: Limits,
}

impl GitSettings {
    /// Settings with the default budgets.
    pub fn new(url: &str, reference: &str, path: &Path, cache_dir: &Path) -> GitSettings {
        GitSettings {
            url: url.to_string(),
            reference: reference.to_string(),
            path: path.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            token: None,
            ssh_key: None,
            known_hosts: None,
            signatures: SignaturePolicy::Off,
            allow_history_rewrite: false,
            max_fetch_bytes: 64 * 1024 * 1024,
            limits: Limits::default(),
        }
    }

    /// The full ref tracked: `refs/…` as given, a bare name as a branch.
    pub fn tracked_ref(&self) -> String {
        if self.reference.starts_with("refs/") {
            self.reference.clone()
        } else {
            format!("refs/heads/{}", self.reference)
        }
    }

    /// Check what can be checked before anything is fetched.
    ///
    /// # Errors
    /// [`SourceError::Settings`] naming the setting and what was expected.
    pub fn check(&self) -> Result<(), SourceError> {
        let bad = |m: String| Err(SourceError::Settings(m));
        let r = &self.reference;
        if r.is_empty()
            || r.ends_with('/')
            || r.contains("..")
            || r.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c))
        {
            return bad(format!(
                "--git-ref {r:?}: expected a branch name, refs/heads/NAME or refs/tags/NAME"
            ));
        }
        if r.starts_with("refs/") && !r.starts_with("refs/heads/") && !r.starts_with("refs/tags/") {
            return bad(format!(
                "--git-ref {r:?}: only refs/heads/… and refs/tags/… can be tracked"
            ));
        }
        if self
            .path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return bad(format!(
                "--git-path {:?}: expected a relative path inside the repository, without . or ..",
                self.path.display().to_string()
            ));
        }
        if url::Url::parse(&self.url).is_ok_and(|u| u.password().is_some()) {
            return bad("--git-url holds a password; remove it from the URL and use --git-token-file (or an SSH key)".into());
        }
        if let Some(origin) = Origin::of(&self.url)? {
            if origin.has_credentials {
                return bad("--git-url holds credentials; remove them from the URL and use --git-token-file (or an SSH key)".into());
            }
            if self.token.is_some() && origin.scheme == "http" && !origin.loopback() {
                return bad(format!(
                    "a token would be sent in clear over http:// to {}; use https:// (plain http is allowed only to loopback)",
                    origin.host
                ));
            }
        }
        Ok(())
    }

    /// The URL as it may be logged (credentials, if any, removed).
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// `scheme://[user[:password]@]host…` with the user part replaced.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            format!("{u} (credentials removed)")
        }
        Ok(_) => url.to_string(),
        // scp-like `git@host:path` is no URL; the user part is no secret.
        Err(_) => url.to_string(),
    }
}

/// Scheme, host and port of an http(s) URL: where a token may go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    has_credentials: bool,
}

impl Origin {
    /// `None` for non-http(s) remotes (ssh, file, scp-like, paths).
    fn of(url: &str) -> Result<Option<Origin>, SourceError> {
        let Ok(u) = url::Url::parse(url) else {
            return Ok(None);
        };
        if u.scheme() != "http" && u.scheme() != "https" {
            return Ok(None);
        }
        let Some(host) = u.host_str() else {
            return Err(SourceError::Settings(format!(
                "--git-url {}: no host",
                redact_url(url)
            )));
        };
        Ok(Some(Origin {
            scheme: u.scheme().to_string(),
            host: host.to_ascii_lowercase(),
            port: u.port_or_known_default(),
            has_credentials: !u.username().is_empty() || u.password().is_some(),
        }))
    }

    fn loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn same(&self, other: &Origin) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }
}

/// What the signature of a revision says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum SignatureStatus {
    /// Verification is off.
    NotChecked,
    /// The commit carries no signature.
    Unsigned,
    /// Signed, but not by a trusted key (or not verifiable); the reason says which.
    Untrusted {
        /// Why.
        reason: String,
    },
    /// Signed by a key of the allowed signers.
    Verified {
        /// The principals the key belongs to.
        signer: String,
    },
}

impl SignatureStatus {
    /// Whether a revision with this status may be enforced under `policy`.
    pub fn acceptable(&self, policy: &SignaturePolicy) -> bool {
        *policy == SignaturePolicy::Off || matches!(self, SignatureStatus::Verified { .. })
    }
}

/// One fetched revision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Commit id.
    pub commit: String,
    /// Author `Name <email>`.
    pub author: String,
    /// Committer email.
    pub committer: String,
    /// Commit time (seconds since the epoch).
    pub time: i64,
    /// First line of the message.
    pub summary: String,
    /// Signature verification result.
    pub signature: SignatureStatus,
}

/// Why a revision is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectReason {
    /// A signature is required and the commit has none that is trusted.
    Unsigned,
    /// Signatures are required and the tip does not descend from the enforced commit.
    NotADescendant,
    /// The policy path does not exist in the commit.
    PathMissing,
    /// The policy set does not load or validate (file:line in the details).
    Invalid,
    /// The revision defines no policy at all.
    Empty,
}

impl RejectReason {
    /// The label used in metrics, status and history.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unsigned => "unsigned",
            RejectReason::NotADescendant => "not-a-descendant",
            RejectReason::PathMissing => "path-missing",
            RejectReason::Invalid => "invalid",
            RejectReason::Empty => "empty",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal with what is wrong (`file:line` where it applies).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why.
    pub reason: RejectReason,
    /// Details.
    pub details: Vec<String>,
}

/// A fetched revision after the source's checks (signature, ancestry, loading).
#[derive(Debug)]
pub struct Examined {
    /// The commit.
    pub revision: Revision,
    /// The tip does not descend from the enforced commit and that was allowed (no
    /// signatures required, or `--allow-history-rewrite`): the controller records it.
    pub rewritten_from: Option<String>,
    /// The policy set as loaded (with the loader's diagnostics), or why not.
    pub loaded: Result<(PolicySet, Vec<Diagnostic>), Refusal>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Git said no (network, authentication, timeout…).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// Palisade refused the remote during the fetch (host key, certificate, credentials);
    /// libgit2 replaces the callback's message with a generic one, so it is kept here.
    #[error("{message}")]
    Refused {
        /// `certificate` or `auth`.
        kind: &'static str,
        /// What was refused and why.
        message: String,
        /// What libgit2 said.
        #[source]
        source: git2::Error,
    },
    /// The local cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A setting cannot work.
    #[error("{0}")]
    Settings(String),
    /// A Git object is not what a policy repository holds (an oversized commit or tag,
    /// a ref naming a tree or blob).
    #[error("{0}")]
    Object(String),
    /// The tracked reference does not exist in the remote.
    #[error("reference {reference} not found in the remote{hint}")]
    NoSuchRef {
        /// The full ref looked for.
        reference: String,
        /// What exists instead, if anything useful.
        hint: String,
    },
    /// A bare name matches both a branch and a tag.
    #[error(
        "--git-ref {0:?} names both the branch refs/heads/{0} and the tag refs/tags/{0}; say which with refs/heads/{0} or refs/tags/{0}"
    )]
    AmbiguousRef(String),
    /// The fetch would receive more than the configured bound.
    #[error("the fetch exceeded {limit} bytes (--git-max-fetch-bytes); aborted")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// The fetch was stopped (deadline or shutdown).
    #[error("the fetch was aborted ({0})")]
    Aborted(&'static str),
    /// A previous fetch has not returned yet (stalled remote).
    #[error("a previous fetch is still running (the remote stalls); not starting another")]
    Busy,
}

impl SourceError {
    /// The metric label of this error.
    pub fn label(&self) -> &'static str {
        match self {
            SourceError::Git(e) if e.class() == git2::ErrorClass::Net => "network",
            SourceError::Git(e) if e.code() == git2::ErrorCode::Auth => "auth",
            SourceError::Git(e) if e.code() == git2::ErrorCode::Certificate => "certificate",
            SourceError::Git(_) => "git",
            SourceError::Refused { kind, .. } => kind,
            SourceError::Io { .. } => "io",
            SourceError::Settings(_) => "settings",
            SourceError::Object(_) => "object",
            SourceError::NoSuchRef { .. } | SourceError::AmbiguousRef(_) => "reference",
            SourceError::TooLarge { .. } => "too-large",
            SourceError::Aborted(_) | SourceError::Busy => "timeout",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Asks a running fetch to stop (deadline, shutdown).
#[derive(Debug, Default)]
pub struct Abort {
    flag: AtomicBool,
    why: Mutex<Option<&'static str>>,
}

impl Abort {
    /// Stop the fetch at its next callback, saying why.
    pub fn abort(&self, why: &'static str) {
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.flag.store(true, Ordering::SeqCst);
    }

    fn aborted(&self) -> Option<&'static str> {
        if self.flag.load(Ordering::SeqCst) {
            Some(
                self.why
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or("aborted"),
            )
        } else {
            None
        }
    }
}

/// The last accepted revision, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Persisted {
    url: String,
    reference: String,
    path: String,
    commit: String,
}

/// Refs the mirror keeps (objects stay reachable; nothing else is written).
const FETCHED_REF: &str = "refs/palisade/fetched";
const ENFORCED_REF: &str = "refs/palisade/enforced";
/// The mirror's whole configuration, rewritten at every start: nothing a fetched
/// repository or an earlier version could have put there survives.
const MIRROR_CONFIG: &str =
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";
/// Largest tree object read (a tree of 50,000 entries is about 2 MB).
const MAX_TREE_BYTES: usize = 16 * 1024 * 1024;
/// Largest symlink target read.
const MAX_LINK_BYTES: usize = 4096;
/// Symlinks followed in a row before giving up.
const MAX_LINK_HOPS: usize = 8;

/// A tracked repository.
pub struct GitSource {
    settings: GitSettings,
    mirror: PathBuf,
    /// Held for the whole fetch: a stalled fetch makes the next one fail fast instead of
    /// piling up threads.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.settings.display_url())
            .field("reference", &self.settings.reference)
            .field("path", &self.settings.path)
            .finish_non_exhaustive()
    }
}

impl GitSource {
    /// Check the settings and open (or create) the local mirror.
    ///
    /// # Errors
    /// A setting cannot work, or the cache cannot be created or opened.
    pub fn open(settings: GitSettings) -> Result<GitSource, SourceError> {
        settings.check()?;
        let mirror = settings.cache_dir.join("mirror.git");
        std::fs::create_dir_all(&settings.cache_dir).map_err(io(&settings.cache_dir))?;
        // Earlier versions materialised revisions here; such a cache is not trusted.
        let legacy = settings.cache_dir.join("revisions");
        if legacy.exists() {
            std::fs::remove_dir_all(&legacy).map_err(io(&legacy))?;
        }
        if Repository::open_bare(&mirror).is_err() {
            Repository::init_bare(&mirror)?;
        }
        let config = mirror.join("config");
        std::fs::write(&config, MIRROR_CONFIG).map_err(io(&config))?;
        Ok(GitSource {
            settings,
            mirror,
            fetching: Mutex::new(()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &GitSettings {
        &self.settings
    }

    fn repo(&self) -> Result<Repository, SourceError> {
        Ok(Repository::open_bare(&self.mirror)?)
    }

    fn callbacks<'a>(
        &'a self,
        abort: &'a Abort,
        too_large: &'a Cell<bool>,
        refused: &'a RefCell<Option<(&'static str, String)>>,
    ) -> Result<RemoteCallbacks<'a>, SourceError> {
        let refuse = move |kind: &'static str, message: String| {
            *refused.borrow_mut() = Some((kind, message.clone()));
            git2::Error::from_str(&message)
        };
        let mut cb = RemoteCallbacks::new();
        let s = &self.settings;
        let origin = Origin::of(&s.url)?;
        let mut tried = BTreeSet::new();
        cb.credentials(move |url, user, allowed| {
            if let Some(why) = abort.aborted() {
                return Err(git2::Error::from_str(why));
            }
            // libgit2 asks again after a refusal; offer each kind of credential once.
            if allowed.contains(CredentialType::SSH_KEY)
                && tried.insert("ssh")
                && let Some(key) = &s.ssh_key
            {
                return Cred::ssh_key(user.unwrap_or("git"), None, key, None);
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && s.token.is_some()
                && tried.contains("token")
            {
                return Err(refuse(
                    "auth",
                    "the remote refused the token (--git-token-file); check it and its permissions"
                        .into(),
                ));
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && tried.insert("token")
                && let Some(token) = &s.token
            {
                let asking = Origin::of(url).ok().flatten();
                return match (&origin, &asking) {
                    (Some(o), Some(a)) if o.same(a) => {
                        Cred::userpass_plaintext("x-access-token", token.expose())
                    }
                    (_, a) => Err(refuse("auth", format!(
                        "{} asked for credentials; the token is only sent to the configured --git-url's scheme, host and port",
                        a.as_ref()
                            .map_or("a non-http remote".to_string(), |a| format!(
                                "{}://{}:{}",
                                a.scheme,
                                a.host,
                                a.port.unwrap_or(0)
                            ))
                    ))),
                };
            }
            Err(refuse(
                "auth",
                "the remote asked for credentials and none are configured (--git-token-file / --git-ssh-key)"
                    .into(),
            ))
        });
        cb.certificate_check(move |cert, host| {
            if let Some(why) = abort.aborted() {
                return Err(git2::Error::from_str(why));
            }
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2 has verified the chain against the trusted CAs already.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(key) = hostkey.hostkey() else {
                return Err(refuse("certificate", "the SSH server sent no host key".into()));
            };
            let Some(path) = &s.known_hosts else {
                return Err(refuse(
                    "certificate",
                    "SSH remote but no --git-known-hosts file: refusing an unverified host key"
                        .into(),
                ));
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| refuse("certificate", format!("{}: {e}", path.display())))?;
            if known_host(&text, host, ssh_port(&s.url), key) {
                Ok(CertificateCheckStatus::CertificateOk)
            } else {
                Err(refuse("certificate", format!(
                    "host key of {host} is not in {} (plain host entries are supported, hashed ones are not)",
                    path.display()
                )))
            }
        });
        let max = s.max_fetch_bytes;
        cb.transfer_progress(move |p| {
            if p.received_bytes() as u64 > max {
                too_large.set(true);
                return false;
            }
            abort.aborted().is_none()
        });
        cb.sideband_progress(move |_| abort.aborted().is_none());
        Ok(cb)
    }

    /// One turn of the source: fetch the tracked ref and, when it points at a commit
    /// other than `last_seen`, examine that commit ([`GitSource::examine`]). `None`: the
    /// ref still points at `last_seen`. Only one poll runs at a time: while an abandoned
    /// one is still stuck, the next fails fast with [`SourceError::Busy`].
    ///
    /// # Errors
    /// [`SourceError`] when the remote cannot be read, the ref does not exist or is
    /// ambiguous, a bound is exceeded, or `abort` fired.
    ///
    /// `running` holds the Unix second the poll took the lock while it runs (0 after):
    /// a value far in the past is a fetch stuck inside libgit2.
    pub fn poll(
        &self,
        abort: &Abort,
        last_seen: Option<&str>,
        enforced: Option<&str>,
        running: &AtomicU64,
    ) -> Result<Option<Examined>, SourceError> {
        let Ok(_guard) = self.fetching.try_lock() else {
            return Err(SourceError::Busy);
        };
        struct Running<'a>(&'a AtomicU64);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Relaxed);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        running.store(now.max(1), Ordering::Relaxed);
        let _running = Running(running);
        let commit = self.fetch(abort)?;
        if last_seen == Some(commit.as_str()) {
            return Ok(None);
        }
        self.examine(&commit, enforced, abort).map(Some)
    }

    /// Fetch the tracked ref (and nothing else) and resolve it exactly to a commit.
    fn fetch(&self, abort: &Abort) -> Result<String, SourceError> {
        let repo = self.repo()?;
        let url = &self.settings.url;
        let mut remote = repo.remote_anonymous(url)?;
        if remote.url() != Some(url.as_str()) {
            return Err(SourceError::Settings(
                "the Git configuration rewrites --git-url (url.*.insteadOf); refusing to fetch from anywhere else"
                    .into(),
            ));
        }
        let wanted = self.settings.tracked_ref();
        let bare = (!self.settings.reference.starts_with("refs/"))
            .then_some(self.settings.reference.as_str());
        // A bare name is a branch; the tag of the same name is fetched too, only to
        // refuse the ambiguity.
        let mut specs = vec![format!("+{wanted}:{FETCHED_REF}")];
        if let Some(name) = &bare {
            specs.push(format!("+refs/tags/{name}:refs/palisade/shadow"));
        }
        let too_large = Cell::new(false);
        let refused = RefCell::new(None);
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(self.callbacks(abort, &too_large, &refused)?);
        opts.download_tags(AutotagOption::None);
        opts.prune(git2::FetchPrune::Off);
        // libgit2 (1.9) still follows the first redirect of the ref listing; the origin
        // check in the credentials callback is what keeps the token from other hosts.
        opts.follow_redirects(RemoteRedirect::None);
        let fetched = remote.fetch(&specs, Some(&mut opts), Some("palisade fetch"));
        if too_large.get() {
            return Err(SourceError::TooLarge {
                limit: self.settings.max_fetch_bytes,
            });
        }
        if let Some(why) = abort.aborted() {
            return Err(SourceError::Aborted(why));
        }
        if let Err(source) = fetched {
            return Err(match refused.take() {
                Some((kind, message)) => SourceError::Refused {
                    kind,
                    message,
                    source,
                },
                None => SourceError::Git(source),
            });
        }
        let heads: Vec<(String, Oid)> = remote
            .list()?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let find = |name: &str| heads.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
        // The bare name, when a tag of that name exists too.
        let shadowed = bare.filter(|name| find(&format!("refs/tags/{name}")).is_some());
        let Some(oid) = find(&wanted) else {
            let hint = shadowed.map_or_else(String::new, |name| format!(
                " (a tag refs/tags/{name} exists: a bare name means a branch; track the tag with --git-ref refs/tags/{name})"
            ));
            return Err(SourceError::NoSuchRef {
                reference: wanted,
                hint,
            });
        };
        if let Some(name) = shadowed {
            return Err(SourceError::AmbiguousRef(name.to_string()));
        }
        let commit = peel_to_commit(&repo, oid)?;
        Ok(commit.to_string())
    }

    /// The commit of the persisted last good revision, if it was accepted under these
    /// settings (URL, ref and path) and its objects are in the mirror.
    pub fn persisted(&self) -> Option<String> {
        let p = self.read_persisted()?;
        let s = &self.settings;
        let same =
            p.url == s.url && p.reference == s.reference && p.path == s.path.to_string_lossy();
        let repo = self.repo().ok()?;
        let oid = Oid::from_str(&p.commit).ok()?;
        (same && read_commit(&repo, oid).is_ok()).then_some(p.commit)
    }

    fn read_persisted(&self) -> Option<Persisted> {
        let text = std::fs::read(self.settings.cache_dir.join("enforced.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Remember `commit` as the last accepted revision (atomically, durably).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn persist(&self, commit: &str) -> Result<(), SourceError> {
        let s = &self.settings;
        let p = Persisted {
            url: s.url.clone(),
            reference: s.reference.clone(),
            path: s.path.to_string_lossy().into_owned(),
            commit: commit.to_string(),
        };
        if let Ok(repo) = self.repo()
            && let Ok(oid) = Oid::from_str(commit)
        {
            // Keeps the commit reachable for ancestry checks and start-up.
            let _ = repo.reference(ENFORCED_REF, oid, true, "palisade: enforced");
        }
        let path = s.cache_dir.join("enforced.json");
        let tmp = s.cache_dir.join("enforced.json.tmp");
        let bytes = serde_json::to_vec_pretty(&p).unwrap_or_default();
        (|| {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&s.cache_dir)?.sync_all()
        })()
        .map_err(io(&path))
    }

    /// The enforced commit that ancestry is checked against: the persisted one when it
    /// was accepted from the same URL and ref (the path may have changed).
    pub fn ancestry_base(&self) -> Option<String> {
        let p = self.read_persisted()?;
        (p.url == self.settings.url && p.reference == self.settings.reference).then_some(p.commit)
    }

    /// Everything between the fetch and the controller's validation, in this order:
    /// verify the signature, check ancestry against `enforced`, load the policy set
    /// from the tree. Nothing is written.
    ///
    /// # Errors
    /// The commit is not in the mirror.
    pub fn examine(
        &self,
        commit: &str,
        enforced: Option<&str>,
        abort: &Abort,
    ) -> Result<Examined, SourceError> {
        let repo = self.repo()?;
        let oid = Oid::from_str(commit)?;
        let c = read_commit(&repo, oid)?;
        let signature = self.verify(&repo, &c)?;
        let author = c.author();
        let revision = Revision {
            commit: commit.to_string(),
            author: format!(
                "{} <{}>",
                author.name().unwrap_or("?"),
                author.email().unwrap_or("?")
            ),
            committer: c.committer().email().unwrap_or_default().to_string(),
            time: c.time().seconds(),
            summary: c.summary().unwrap_or_default().to_string(),
            signature,
        };
        let refuse = |reason, details: Vec<String>| Refusal { reason, details };
        if !revision.signature.acceptable(&self.settings.signatures) {
            let detail = match &revision.signature {
                SignatureStatus::Untrusted { reason } => reason.clone(),
                SignatureStatus::Unsigned => "the commit is not signed".into(),
                SignatureStatus::NotChecked | SignatureStatus::Verified { .. } => String::new(),
            };
            return Ok(Examined {
                revision,
                rewritten_from: None,
                loaded: Err(refuse(
                    RejectReason::Unsigned,
                    vec![format!("signature required: {detail}")],
                )),
            });
        }
        let mut rewritten_from = None;
        if let Some(base) = enforced
            && base != commit
        {
            let descends = match Oid::from_str(base) {
                Ok(b) => descends_from(&repo, oid, b, abort)?,
                Err(_) => false,
            };
            if !descends {
                let required = self.settings.signatures != SignaturePolicy::Off;
                if required && !self.settings.allow_history_rewrite {
                    return Ok(Examined {
                        revision,
                        rewritten_from: None,
                        loaded: Err(refuse(
                            RejectReason::NotADescendant,
                            vec![format!(
                                "{commit} does not descend from the enforced commit {base}: a force-push or another branch's commit; refusing a rollback (--allow-history-rewrite to permit)"
                            )],
                        )),
                    });
                }
                rewritten_from = Some(base.to_string());
            }
        }
        let loaded = match self.policy_tree(&repo, &c)? {
            None => Err(refuse(
                RejectReason::PathMissing,
                vec![format!(
                    "the policy path {:?} does not exist in this commit (or is not a directory); refusing to treat that as \"delete everything\"",
                    self.settings.path.display().to_string()
                )],
            )),
            Some(tree) => {
                let loaded = policy::load(
                    &TreeFiles {
                        repo: &repo,
                        root: tree,
                        abort,
                    },
                    &self.settings.limits,
                );
                if let Some(why) = abort.aborted() {
                    return Err(SourceError::Aborted(why));
                }
                Ok(loaded)
            }
        };
        Ok(Examined {
            revision,
            rewritten_from,
            loaded,
        })
    }

    /// The tree at the policy path of `commit`, every tree on the way size-checked
    /// before it is read.
    fn policy_tree<'r>(
        &self,
        repo: &'r Repository,
        commit: &git2::Commit<'r>,
    ) -> Result<Option<git2::Tree<'r>>, SourceError> {
        let mut tree = match read_tree(repo, commit.tree_id()) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        for part in self.settings.path.components() {
            let Component::Normal(name) = part else {
                return Ok(None);
            };
            let id = match tree.get_name(&name.to_string_lossy()) {
                Some(e) if e.kind() == Some(ObjectType::Tree) => e.id(),
                _ => return Ok(None),
            };
            tree = match read_tree(repo, id) {
                Ok(t) => t,
                Err(_) => return Ok(None),
            };
        }
        Ok(Some(tree))
    }

    /// The signature status of `commit`. An allowed-signers file that cannot be read is
    /// an error of the source (retried at the next poll), not a verdict on the commit.
    fn verify(
        &self,
        repo: &Repository,
        commit: &git2::Commit<'_>,
    ) -> Result<SignatureStatus, SourceError> {
        let SignaturePolicy::Ssh { allowed_signers } = &self.settings.signatures else {
            return Ok(SignatureStatus::NotChecked);
        };
        let signers = std::fs::read_to_string(allowed_signers).map_err(io(allowed_signers))?;
        let (sig, data) = match repo.extract_signature(&commit.id(), None) {
            Ok(s) => s,
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Ok(SignatureStatus::Unsigned);
            }
            Err(e) => {
                return Ok(SignatureStatus::Untrusted {
                    reason: format!("cannot read the signature: {e}"),
                });
            }
        };
        let committer = commit.committer().email().unwrap_or_default().to_string();
        Ok(verify_ssh(
            sig.as_str().unwrap_or_default(),
            &data,
            &signers,
            &committer,
            commit.time().seconds(),
        ))
    }
}

/// A tree read after its size was checked.
fn read_tree(repo: &Repository, id: Oid) -> Result<git2::Tree<'_>, String> {
    let (size, kind) = repo
        .odb()
        .and_then(|o| o.read_header(id))
        .map_err(|e| e.to_string())?;
    if kind != ObjectType::Tree {
        return Err(format!("{id} is a {kind}, not a tree"));
    }
    if size > MAX_TREE_BYTES {
        return Err(format!(
            "a tree object of {size} bytes (at most {MAX_TREE_BYTES} are read)"
        ));
    }
    repo.find_tree(id).map_err(|e| e.to_string())
}

/// Largest commit or tag object read (a commit message of a megabyte is no commit a
/// person wrote; a hostile one of a gigabyte compresses to a few kilobytes).
const MAX_COMMIT_BYTES: usize = 1024 * 1024;
/// Most commits walked to decide ancestry.
const MAX_ANCESTRY_COMMITS: usize = 200_000;

/// Check an object's kind and size from its header before it is read.
fn checked_header(repo: &Repository, id: Oid) -> Result<ObjectType, SourceError> {
    let (size, kind) = repo.odb()?.read_header(id)?;
    if size > MAX_COMMIT_BYTES {
        return Err(SourceError::Object(format!(
            "the {kind} object {id} is {size} bytes; at most {MAX_COMMIT_BYTES} are read"
        )));
    }
    Ok(kind)
}

/// A commit read after its size was checked.
fn read_commit(repo: &Repository, id: Oid) -> Result<git2::Commit<'_>, SourceError> {
    match checked_header(repo, id)? {
        ObjectType::Commit => Ok(repo.find_commit(id)?),
        kind => Err(SourceError::Object(format!(
            "{id} is a {kind}, not a commit"
        ))),
    }
}

/// The commit a ref's object (a commit, or an annotated tag of one) names.
fn peel_to_commit(repo: &Repository, mut id: Oid) -> Result<Oid, SourceError> {
    for _ in 0..8 {
        match checked_header(repo, id)? {
            ObjectType::Commit => return Ok(id),
            ObjectType::Tag => id = repo.find_tag(id)?.target_id(),
            kind => {
                return Err(SourceError::Object(format!(
                    "the tracked ref names a {kind}, not a commit"
                )));
            }
        }
    }
    Err(SourceError::Object(
        "the tracked ref names a chain of more than 8 tags".into(),
    ))
}

/// Whether `tip` descends from `base`: a walk of the tip's history, every commit
/// size-checked before it is read, at most [`MAX_ANCESTRY_COMMITS`] of them (beyond
/// that: not proven, so not a descendant).
fn descends_from(
    repo: &Repository,
    tip: Oid,
    base: Oid,
    abort: &Abort,
) -> Result<bool, SourceError> {
    let mut queue = std::collections::VecDeque::from([tip]);
    let mut seen = std::collections::HashSet::from([tip]);
    while let Some(id) = queue.pop_front() {
        if id == base {
            return Ok(true);
        }
        if seen.len() > MAX_ANCESTRY_COMMITS {
            return Ok(false);
        }
        if let Some(why) = abort.aborted() {
            return Err(SourceError::Aborted(why));
        }
        // A commit missing from the mirror (a shallow remote) ends that line.
        let Ok(commit) = read_commit(repo, id) else {
            continue;
        };
        for parent in commit.parent_ids() {
            if seen.insert(parent) {
                queue.push_back(parent);
            }
        }
    }
    Ok(false)
}

/// Why a tree entry name cannot be a policy file name, if it cannot.
pub fn unsafe_name(name: &[u8]) -> Option<&'static str> {
    let Ok(s) = std::str::from_utf8(name) else {
        return Some("is not UTF-8");
    };
    if s.is_empty() {
        Some("is empty")
    } else if s == "." || s == ".." {
        Some("is . or ..")
    } else if s.contains('/') {
        Some("contains /")
    } else if s.contains('\\') {
        Some("contains \\")
    } else if s.contains('\0') {
        Some("contains NUL")
    } else if s.eq_ignore_ascii_case(".git") {
        Some("is .git")
    } else {
        None
    }
}

/// A policy tree inside a Git commit, read from the object store (never from disk).
/// Symlinks are resolved inside the tree; a link that leaves it is an error.
pub struct TreeFiles<'r> {
    repo: &'r Repository,
    root: git2::Tree<'r>,
    /// Checked while walking: a deadline or shutdown stops the walk.
    abort: &'r Abort,
}

impl std::fmt::Debug for TreeFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeFiles")
            .field("root", &self.root.id())
            .finish()
    }
}

impl PolicyFiles for TreeFiles<'_> {
    type Key = Oid;

    fn list(&self, limits: &Limits, diags: &mut Vec<Diagnostic>) -> Vec<FileEntry<Oid>> {
        let mut walk = TreeWalk {
            files: self,
            out: Vec::new(),
            entries: 0,
            stack: Vec::new(),
            stopped: false,
            limits,
            diags,
        };
        walk.tree(&self.root, Path::new(""), &[], 0);
        walk.out
    }

    fn read(&self, entry: &FileEntry<Oid>) -> Result<Vec<u8>, String> {
        self.repo
            .find_blob(entry.key)
            .map(|b| b.content().to_vec())
            .map_err(|e| format!("cannot read the Git object: {e}"))
    }
}

struct TreeWalk<'a, 'r> {
    files: &'a TreeFiles<'r>,
    out: Vec<FileEntry<Oid>>,
    /// Entries walked and path components looked up for symlinks: both count against
    /// `max_entries`, so links cannot buy unbounded work.
    entries: usize,
    /// Trees being walked (a link back to one of them is a loop, skipped).
    stack: Vec<Oid>,
    stopped: bool,
    limits: &'a Limits,
    diags: &'a mut Vec<Diagnostic>,
}

impl TreeWalk<'_, '_> {
    fn error(&mut self, kind: DiagnosticKind, at: &Path, message: String) {
        self.diags.push(Diagnostic::error(
            kind,
            Some(SourceLocation::new(at, 0, 0)),
            message,
        ));
    }

    fn size(&self, id: Oid) -> Result<u64, String> {
        let (size, _) = self
            .files
            .repo
            .odb()
            .and_then(|o| o.read_header(id))
            .map_err(|e| e.to_string())?;
        Ok(size as u64)
    }

    /// Count `n` units of work; false (and the walk stops) past the budget or on abort.
    fn spend(&mut self, n: usize, at: &Path) -> bool {
        self.entries += n;
        if self.entries > self.limits.max_entries {
            if !self.stopped {
                self.diags.push(policy::too_many_entries(at, self.limits));
            }
            self.stopped = true;
        }
        if self.files.abort.aborted().is_some() {
            self.stopped = true;
        }
        !self.stopped
    }

    /// Walk `tree`, shown as `rel`, which is at `phys` (its real path from the policy
    /// root: symlinks inside it resolve from there, as they would in a checkout).
    fn tree(&mut self, tree: &git2::Tree<'_>, rel: &Path, phys: &[String], depth: usize) {
        if self.stopped || self.stack.contains(&tree.id()) {
            return;
        }
        if depth > MAX_DIR_DEPTH {
            let msg = format!("directories nest deeper than {MAX_DIR_DEPTH} levels");
            self.error(DiagnosticKind::SourceTooLarge, rel, msg);
            return;
        }
        if !self.spend(tree.len(), rel) {
            return;
        }
        self.stack.push(tree.id());
        for entry in tree.iter() {
            let lossy = String::from_utf8_lossy(entry.name_bytes()).into_owned();
            if let Some(why) = unsafe_name(entry.name_bytes()) {
                let at = rel.join(lossy.replace(['/', '\0'], "?"));
                self.error(
                    DiagnosticKind::UnsafeName,
                    &at,
                    format!("tree entry {lossy:?} {why}; the whole revision is refused"),
                );
                continue;
            }
            if lossy.starts_with('.') {
                continue;
            }
            let path = rel.join(&lossy);
            match entry.filemode() {
                0o040000 => match read_tree(self.files.repo, entry.id()) {
                    Ok(t) => {
                        let mut inner = phys.to_vec();
                        inner.push(lossy.clone());
                        self.tree(&t, &path, &inner, depth + 1);
                    }
                    Err(e) => self.error(DiagnosticKind::SourceTooLarge, &path, e),
                },
                0o100644 | 0o100755 | 0o100664 => {
                    if policy::is_yaml(&lossy) {
                        self.file(entry.id(), path);
                    }
                }
                0o120000 => self.link(entry.id(), phys, &path, &lossy, depth),
                0o160000 => {} // submodules are not part of a policy tree
                mode => self.error(
                    DiagnosticKind::Io,
                    &path,
                    format!("unknown tree entry mode {mode:o}"),
                ),
            }
            if self.stopped {
                break;
            }
        }
        self.stack.pop();
    }

    fn file(&mut self, id: Oid, path: PathBuf) {
        match self.size(id) {
            Ok(size) => self.out.push(FileEntry {
                path,
                size,
                key: id,
            }),
            Err(e) => self.error(DiagnosticKind::Io, &path, format!("cannot read: {e}")),
        }
    }

    /// Resolve the link shown at `path`, which is in the directory `dir` (real path),
    /// inside the policy tree.
    fn link(&mut self, blob: Oid, dir: &[String], path: &Path, name: &str, depth: usize) {
        match self.resolve(blob, dir.to_vec(), path) {
            Ok(Some((id, 0o040000, real))) => match read_tree(self.files.repo, id) {
                Ok(t) => self.tree(&t, path, &real, depth + 1),
                Err(e) => self.error(DiagnosticKind::SourceTooLarge, path, e),
            },
            Ok(Some((id, _, _))) => {
                if policy::is_yaml(name) {
                    self.file(id, path.to_path_buf());
                }
            }
            Ok(None) => {} // the budget ran out (reported once) or the walk was aborted
            Err((kind, message)) => self.error(kind, path, message),
        }
    }

    /// Follow the link `blob` from directory `dir`: the target's (id, mode, real path).
    #[allow(clippy::type_complexity, reason = "private, one caller")]
    fn resolve(
        &mut self,
        mut blob: Oid,
        mut dir: Vec<String>,
        path: &Path,
    ) -> Result<Option<(Oid, i32, Vec<String>)>, (DiagnosticKind, String)> {
        let escape = |m: String| (DiagnosticKind::SymlinkEscape, m);
        for _ in 0..MAX_LINK_HOPS {
            let size = self.size(blob).map_err(escape)?;
            if size > MAX_LINK_BYTES as u64 {
                return Err(escape(format!("symlink target of {size} bytes")));
            }
            let bytes = self
                .files
                .repo
                .find_blob(blob)
                .map(|b| b.content().to_vec())
                .map_err(|e| escape(e.to_string()))?;
            let target = String::from_utf8(bytes)
                .map_err(|_| escape("symlink target is not UTF-8".into()))?;
            if target.starts_with('/') {
                return Err(escape(format!(
                    "symlink points to the absolute path {target:?}; expected a path inside the policy tree"
                )));
            }
            let mut parts = dir.clone();
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        if parts.pop().is_none() {
                            return Err(escape(format!(
                                "symlink points outside the policy tree (to {target:?}); expected a file or directory inside it"
                            )));
                        }
                    }
                    p => {
                        if let Some(why) = unsafe_name(p.as_bytes()) {
                            return Err((
                                DiagnosticKind::UnsafeName,
                                format!("symlink target component {p:?} {why}"),
                            ));
                        }
                        parts.push(p.to_string());
                    }
                }
            }
            if !self.spend(parts.len().max(1), path) {
                return Ok(None);
            }
            let entry = (|| {
                let mut tree = self.files.root.clone();
                let Some((last, init)) = parts.split_last() else {
                    // The policy root itself.
                    return Some((tree.id(), 0o040000));
                };
                for p in init {
                    let id = tree.get_name(p)?.id();
                    tree = read_tree(self.files.repo, id).ok()?;
                }
                let e = tree.get_name(last)?;
                Some((e.id(), e.filemode()))
            })();
            let Some((id, mode)) = entry else {
                return Err(escape(format!(
                    "symlink target {target:?} does not exist in the policy tree"
                )));
            };
            if mode == 0o120000 {
                blob = id;
                parts.pop();
                dir = parts;
                continue;
            }
            return Ok(Some((id, mode, parts)));
        }
        Err(escape(format!(
            "more than {MAX_LINK_HOPS} symlinks in a row"
        )))
    }
}

/// Whether `known_hosts` lists `key` (raw SSH wire bytes) for `host` on `port`: a
/// plain `host` entry means port 22, `[host]:port` that port. A `@revoked` line with the
/// key refuses it whatever else the file says; `@cert-authority` lines are not used.
fn known_host(known_hosts: &str, host: &str, port: u16, key: &[u8]) -> bool {
    use base64::Engine as _;
    let mut trusted = false;
    for line in known_hosts.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace().peekable();
        let marker = parts.next_if(|p| p.starts_with('@'));
        let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !base64::engine::general_purpose::STANDARD
            .decode(blob)
            .is_ok_and(|b| b == key)
        {
            continue;
        }
        match marker {
            Some("@revoked") => return false,
            Some(_) => continue,
            None => {}
        }
        trusted |= hosts.split(',').any(|h| {
            if let Some(rest) = h.strip_prefix('[') {
                rest.split_once("]:")
                    .is_some_and(|(n, p)| n == host && p.parse() == Ok(port))
            } else {
                h == host && port == 22
            }
        });
    }
    trusted
}

/// The SSH port of a remote URL (`ssh://host:2222/…`; 22 otherwise).
fn ssh_port(url: &str) -> u16 {
    url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "ssh")
        .and_then(|u| u.port())
        .unwrap_or(22)
}

/// Verify an SSH signature (`-----BEGIN SSH SIGNATURE-----`, namespace `git`) over
/// `data` against an OpenSSH allowed-signers file; the key's principals must include the
/// committer's email (or `*`).
pub fn verify_ssh(
    signature: &str,
    data: &[u8],
    allowed_signers: &str,
    committer: &str,
    signed_at: i64,
) -> SignatureStatus {
    let untrusted = |reason: String| SignatureStatus::Untrusted { reason };
    if signature.contains("BEGIN PGP SIGNATURE") {
        return untrusted(
            "the commit has an OpenPGP signature; this controller verifies SSH signatures only"
                .into(),
        );
    }
    let sig = match ssh_key::SshSig::from_pem(signature) {
        Ok(s) => s,
        Err(e) => return untrusted(format!("not an SSH signature: {e}")),
    };
    let mut why = "the signing key is not in the allowed signers file".to_string();
    'lines: for line in allowed_signers.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((principals, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        // Options (namespaces="git", valid-after=…) may come before the key.
        let rest = rest.trim_start();
        let (options, key_text) = match rest.split_once(char::is_whitespace) {
            Some((first, tail))
                if !first.starts_with("ssh-")
                    && !first.starts_with("ecdsa-")
                    && !first.starts_with("sk-") =>
            {
                (first, tail.trim_start())
            }
            _ => ("", rest),
        };
        let Ok(key) = ssh_key::PublicKey::from_openssh(key_text) else {
            continue;
        };
        if key.key_data() != sig.public_key() {
            continue;
        }
        let namespaces = options
            .split(',')
            .find_map(|o| o.strip_prefix("namespaces="))
            .map(|v| v.trim_matches('"'));
        if namespaces.is_some_and(|ns| !ns.split(',').any(|n| n == "git")) {
            continue;
        }
        if options.split(',').any(|o| o == "cert-authority") {
            continue; // certificate authorities: not supported, never trusted
        }
        // valid-after / valid-before bound when the key may sign (checked against the
        // commit's time, as `git verify-commit` does); unreadable bounds fail closed.
        for (opt, after) in [("valid-after=", true), ("valid-before=", false)] {
            let Some(v) = options.split(',').find_map(|o| o.strip_prefix(opt)) else {
                continue;
            };
            // As OpenSSH: a line whose bounds exclude the signing time does not apply
            // (a later line may list the same key for another period).
            match key_time(v.trim_matches('"')) {
                Some(t) if after && signed_at < t => {
                    why = format!("the key is valid only after {v} ({principals})");
                    continue 'lines;
                }
                Some(t) if !after && signed_at > t => {
                    why = format!("the key expired at {v} ({principals})");
                    continue 'lines;
                }
                Some(_) => {}
                None => {
                    why = format!(
                        "cannot read {opt}{v} in the allowed signers file; expected YYYYMMDD[HHMM[SS]][Z]"
                    );
                    continue 'lines;
                }
            }
        }
        if let Err(e) = key.verify("git", data, &sig) {
            return untrusted(format!("the signature does not verify: {e}"));
        }
        let allowed = principals
            .split(',')
            .any(|p| p == "*" || p.eq_ignore_ascii_case(committer));
        if allowed {
            return SignatureStatus::Verified {
                signer: principals.to_string(),
            };
        }
        // Another line may list the same key for the committer.
        why = format!("signed by a key of {principals}, but committed by {committer}");
    }
    untrusted(why)
}

/// `YYYYMMDD[HHMM[SS]][Z]` (ssh-keygen's time format; read as UTC) in Unix seconds.
fn key_time(v: &str) -> Option<i64> {
    let v = v.strip_suffix('Z').unwrap_or(v);
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| v.get(r).map(|x| x.parse::<i16>().ok());
    let (y, mo, d) = (n(0..4)??, n(4..6)?? as i8, n(6..8)?? as i8);
    let (h, mi, sec) = match v.len() {
        8 => (0, 0, 0),
        12 => (n(8..10)?? as i8, n(10..12)?? as i8, 0),
        14 => (n(8..10)?? as i8, n(10..12)?? as i8, n(12..14)?? as i8),
        _ => return None,
    };
    let dt = jiff::civil::DateTime::new(y, mo, d, h, mi, sec, 0).ok()?;
    Some(
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second(),
    )
}

#[cfg(test)]
mod tests {
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
                    subdirs.entry(parts[0]).or_default().push((
                        parts[1..].to_vec(),
                        *mode,
                        content,
                    ));
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
}
