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
//!
//! Modules: this one owns the types and [`GitSource`] (open, poll, examine, persist);
//! `settings` the settings and their checks; `fetch` libgit2's callbacks and the fetch;
//! `tree` bounded reads of Git objects and the policy files in a tree; `trust` host keys
//! and commit signatures.

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

mod fetch;
mod settings;
mod tree;
mod trust;

use settings::Origin;
pub use settings::{GitSettings, SignaturePolicy};
use tree::*;
pub use tree::{TreeFiles, unsafe_name};
pub use trust::verify_ssh;
use trust::*;

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

#[cfg(test)]
mod tests;
