//! Where the policies come from and the bounds of every fetch: the settings, checked
//! before anything is contacted (no credentials in URLs, no clear-text tokens except to
//! loopback, exact refs), and the origin credentials are offered to.

use super::*;

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
pub(super) fn redact_url(url: &str) -> String {
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
pub(super) struct Origin {
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) has_credentials: bool,
}

impl Origin {
    /// `None` for non-http(s) remotes (ssh, file, scp-like, paths).
    pub(super) fn of(url: &str) -> Result<Option<Origin>, SourceError> {
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

    pub(super) fn loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    pub(super) fn same(&self, other: &Origin) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }
}
