//! The fetch: libgit2's callbacks (credentials only for the configured origin, host keys
//! against `known_hosts`, byte and deadline budgets, abort) and the fetch of the tracked
//! ref alone, resolved exactly to a commit.

use super::*;

impl GitSource {
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

    /// Fetch the tracked ref (and nothing else) and resolve it exactly to a commit.
    pub(super) fn fetch(&self, abort: &Abort) -> Result<String, SourceError> {
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
}
