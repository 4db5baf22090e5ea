//! The policy source: a Git repository mirrored locally with `git2`, a branch, tag or ref
//! tracked in it, and a sub-path that holds the policies.
//!
//! Each fetch force-updates the mirror (force-pushes and rewritten history are followed),
//! resolves the tracked ref to a commit, optionally verifies the commit's signature, and
//! materialises the sub-path of that commit into its own directory, which the loader then
//! reads like any policy directory. Nothing here decides whether a revision is good: the
//! controller loads and validates it as a whole before it replaces the enforced one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, Oid,
    RemoteCallbacks, Repository, TreeWalkMode, TreeWalkResult,
};
use serde::Serialize;

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

/// Where the policies come from.
#[derive(Debug, Clone)]
pub struct GitSettings {
    /// `https://…`, `ssh://…`, `git@host:…` or `file://…` (a local path works too).
    pub url: String,
    /// Branch name, tag name, or a full ref (`refs/heads/main`, `refs/tags/v3`).
    pub reference: String,
    /// Directory inside the repository that holds the policies (`""` = the root).
    pub path: PathBuf,
    /// Where the mirror and the checked-out revisions live.
    pub cache_dir: PathBuf,
    /// HTTPS token (sent as the password; user `x-access-token`).
    pub token: Option<String>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// OpenSSH known_hosts file; required for SSH remotes (host keys are checked).
    pub known_hosts: Option<PathBuf>,
    /// Signature verification.
    pub signatures: SignaturePolicy,
}

/// What the signature of a revision says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// The policy sub-path of this commit, materialised.
    #[serde(skip)]
    pub dir: PathBuf,
    /// Whether the sub-path exists in this commit.
    pub path_exists: bool,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Git said no (network, authentication, missing ref…).
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    /// The local cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The tracked reference does not exist in the remote.
    #[error("reference {0:?} not found in the remote (tried the branch, the tag and the full ref)")]
    NoSuchRef(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A tracked repository.
pub struct GitSource {
    settings: GitSettings,
    repo: Repository,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &self.settings.url)
            .field("reference", &self.settings.reference)
            .field("path", &self.settings.path)
            .finish_non_exhaustive()
    }
}

impl GitSource {
    /// Open (or create) the local mirror.
    ///
    /// # Errors
    /// The cache directory cannot be created or the mirror cannot be opened.
    pub fn open(settings: GitSettings) -> Result<GitSource, SourceError> {
        let mirror = settings.cache_dir.join("mirror.git");
        std::fs::create_dir_all(&settings.cache_dir).map_err(io(&settings.cache_dir))?;
        let repo = match Repository::open_bare(&mirror) {
            Ok(r) => r,
            Err(_) => Repository::init_bare(&mirror)?,
        };
        Ok(GitSource { settings, repo })
    }

    /// The settings.
    pub fn settings(&self) -> &GitSettings {
        &self.settings
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        let s = &self.settings;
        let mut tried = BTreeSet::new();
        cb.credentials(move |_url, user, allowed| {
            // libgit2 asks again after a refusal; offer each kind of credential once.
            if allowed.contains(CredentialType::SSH_KEY)
                && tried.insert("ssh")
                && let Some(key) = &s.ssh_key
            {
                return Cred::ssh_key(user.unwrap_or("git"), None, key, None);
            }
            if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                && tried.insert("token")
                && let Some(token) = &s.token
            {
                return Cred::userpass_plaintext("x-access-token", token);
            }
            Err(git2::Error::from_str(
                "the remote asked for credentials and none are configured (--git-token / --git-ssh-key)",
            ))
        });
        cb.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2 has verified the chain against the system CAs already.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(key) = hostkey.hostkey() else {
                return Err(git2::Error::from_str("the SSH server sent no host key"));
            };
            let Some(path) = &s.known_hosts else {
                return Err(git2::Error::from_str(
                    "SSH remote but no --git-known-hosts file: refusing an unverified host key",
                ));
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| git2::Error::from_str(&format!("{}: {e}", path.display())))?;
            if known_host(&text, host, key) {
                Ok(CertificateCheckStatus::CertificateOk)
            } else {
                Err(git2::Error::from_str(&format!(
                    "host key of {host} is not in {} (plain host entries are supported, hashed ones are not)",
                    path.display()
                )))
            }
        });
        cb
    }

    /// Fetch the remote and return the tracked revision, materialised.
    ///
    /// # Errors
    /// [`SourceError`] when the remote cannot be read or the ref does not exist.
    pub fn fetch(&self) -> Result<Revision, SourceError> {
        let mut remote = self.repo.remote_anonymous(&self.settings.url)?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(self.callbacks());
        opts.download_tags(AutotagOption::None);
        opts.prune(git2::FetchPrune::On);
        // Forced refspecs: a force-push or rewritten history replaces what we had.
        remote.fetch(
            &[
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Some(&mut opts),
            None,
        )?;
        let oid = self.resolve()?;
        self.revision(oid)
    }

    fn resolve(&self) -> Result<Oid, SourceError> {
        let r = &self.settings.reference;
        let candidates = [
            format!(
                "refs/remotes/origin/{}",
                r.trim_start_matches("refs/heads/")
            ),
            format!("refs/tags/{}", r.trim_start_matches("refs/tags/")),
            r.clone(),
        ];
        for c in &candidates {
            if let Ok(reference) = self.repo.find_reference(c) {
                return Ok(reference.peel_to_commit()?.id());
            }
        }
        Err(SourceError::NoSuchRef(r.clone()))
    }

    fn revision(&self, oid: Oid) -> Result<Revision, SourceError> {
        let commit = self.repo.find_commit(oid)?;
        let signature = self.verify(&commit);
        let author = commit.author();
        let committer = commit.committer();
        let dir = self
            .settings
            .cache_dir
            .join("revisions")
            .join(oid.to_string());
        let tree = commit.tree()?;
        let sub = if self.settings.path.as_os_str().is_empty() {
            Some(tree)
        } else {
            match tree.get_path(&self.settings.path) {
                Ok(e) if e.kind() == Some(git2::ObjectType::Tree) => {
                    Some(e.to_object(&self.repo)?.peel_to_tree()?)
                }
                _ => None,
            }
        };
        let path_exists = sub.is_some();
        if !dir.exists() {
            let tmp = dir.with_extension("partial");
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            if let Some(sub) = &sub {
                self.materialise(sub, &tmp)?;
            }
            std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        }
        self.prune_revisions(&oid.to_string());
        Ok(Revision {
            commit: oid.to_string(),
            author: format!(
                "{} <{}>",
                author.name().unwrap_or("?"),
                author.email().unwrap_or("?")
            ),
            committer: committer.email().unwrap_or_default().to_string(),
            time: commit.time().seconds(),
            summary: commit.summary().unwrap_or_default().to_string(),
            signature,
            dir,
            path_exists,
        })
    }

    /// Write a tree's files under `dir` (symlinks stay symlinks, so the loader's
    /// "no link out of the root" rule applies to them).
    fn materialise(&self, tree: &git2::Tree<'_>, dir: &Path) -> Result<(), SourceError> {
        let mut failure: Option<SourceError> = None;
        tree.walk(TreeWalkMode::PreOrder, |root, entry| {
            let Some(name) = entry.name() else {
                return TreeWalkResult::Skip;
            };
            let path = dir.join(root).join(name);
            let result = (|| -> Result<(), SourceError> {
                match entry.kind() {
                    Some(git2::ObjectType::Tree) => {
                        std::fs::create_dir_all(&path).map_err(io(&path))?;
                    }
                    Some(git2::ObjectType::Blob) => {
                        let blob = self.repo.find_blob(entry.id())?;
                        if entry.filemode() == 0o120000 {
                            let target = String::from_utf8_lossy(blob.content()).to_string();
                            std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
                        } else {
                            std::fs::write(&path, blob.content()).map_err(io(&path))?;
                        }
                    }
                    _ => {} // submodules: not part of a policy tree
                }
                Ok(())
            })();
            match result {
                Ok(()) => TreeWalkResult::Ok,
                Err(e) => {
                    failure = Some(e);
                    TreeWalkResult::Abort
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Keep the few most recent materialised revisions; the rest are cache.
    fn prune_revisions(&self, keep: &str) {
        let root = self.settings.cache_dir.join("revisions");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy() != keep)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        dirs.sort();
        let excess = dirs.len().saturating_sub(4);
        for (_, d) in dirs.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    fn verify(&self, commit: &git2::Commit<'_>) -> SignatureStatus {
        let SignaturePolicy::Ssh { allowed_signers } = &self.settings.signatures else {
            return SignatureStatus::NotChecked;
        };
        let (sig, data) = match self.repo.extract_signature(&commit.id(), None) {
            Ok(s) => s,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return SignatureStatus::Unsigned,
            Err(e) => {
                return SignatureStatus::Untrusted {
                    reason: format!("cannot read the signature: {e}"),
                };
            }
        };
        let signers = match std::fs::read_to_string(allowed_signers) {
            Ok(t) => t,
            Err(e) => {
                return SignatureStatus::Untrusted {
                    reason: format!("{}: {e}", allowed_signers.display()),
                };
            }
        };
        let committer = commit.committer().email().unwrap_or_default().to_string();
        verify_ssh(
            sig.as_str().unwrap_or_default(),
            &data,
            &signers,
            &committer,
        )
    }
}

/// Whether `known_hosts` lists `key` (raw SSH wire bytes) for `host`.
fn known_host(known_hosts: &str, host: &str, key: &[u8]) -> bool {
    use base64::Engine as _;
    known_hosts.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let host_match = hosts.split(',').any(|h| {
            h == host || h.strip_prefix('[').and_then(|h| h.split(']').next()) == Some(host)
        });
        host_match
            && base64::engine::general_purpose::STANDARD
                .decode(blob)
                .is_ok_and(|b| b == key)
    })
}

/// Verify an SSH signature (`-----BEGIN SSH SIGNATURE-----`, namespace `git`) over
/// `data` against an OpenSSH allowed-signers file; the key's principals must include the
/// committer's email (or `*`).
pub fn verify_ssh(
    signature: &str,
    data: &[u8],
    allowed_signers: &str,
    committer: &str,
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
    for line in allowed_signers.lines().map(str::trim) {
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
        if let Err(e) = key.verify("git", data, &sig) {
            return untrusted(format!("the signature does not verify: {e}"));
        }
        let allowed = principals
            .split(',')
            .any(|p| p == "*" || p.eq_ignore_ascii_case(committer));
        return if allowed {
            SignatureStatus::Verified {
                signer: principals.to_string(),
            }
        } else {
            untrusted(format!(
                "signed by a key of {principals}, but committed by {committer}"
            ))
        };
    }
    untrusted("the signing key is not in the allowed signers file".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_matches_plain_and_bracketed_entries() {
        use base64::Engine as _;
        let key = b"\x00\x00\x00\x0bssh-ed25519keybytes";
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let text = format!(
            "# comment\ngit.example.com,10.0.0.1 ssh-ed25519 {b64}\n[other]:2222 ssh-ed25519 {b64}\n"
        );
        assert!(known_host(&text, "git.example.com", key));
        assert!(known_host(&text, "other", key));
        assert!(!known_host(&text, "evil.example.com", key));
        assert!(!known_host(&text, "git.example.com", b"different"));
    }

    #[test]
    fn garbage_and_pgp_signatures_are_untrusted() {
        for sig in [
            "nonsense",
            "-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----",
        ] {
            assert!(matches!(
                verify_ssh(sig, b"data", "", "a@b"),
                SignatureStatus::Untrusted { .. }
            ));
        }
    }
}
