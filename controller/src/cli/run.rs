//! `palisade run`: the controller's flags, secrets and start-up.

use super::*;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Git repository of the policies: https://, ssh://, git@host:path, file:// or a path.
    /// Never with credentials in it (refused): use --git-token-file or an SSH key.
    #[arg(long, env = "PALISADE_GIT_URL")]
    pub(crate) git_url: String,
    /// What to track: refs/heads/NAME, refs/tags/NAME, or a bare branch name (refused
    /// when a tag of the same name exists too).
    #[arg(long, env = "PALISADE_GIT_REF", default_value = "main")]
    pub(crate) git_ref: String,
    /// Directory inside the repository that holds the policies.
    /// (Default: the repository's root. An empty default value would be refused by clap's
    /// path parser, so the flag is optional instead.)
    #[arg(long, env = "PALISADE_GIT_PATH")]
    pub(crate) git_path: Option<PathBuf>,
    /// HTTPS token (prefer --git-token-file or the environment over a flag).
    #[arg(long, env = "PALISADE_GIT_TOKEN", hide_env_values = true)]
    pub(crate) git_token: Option<String>,
    /// File holding the HTTPS token (e.g. a mounted Secret).
    #[arg(long, env = "PALISADE_GIT_TOKEN_FILE")]
    pub(crate) git_token_file: Option<PathBuf>,
    /// SSH private key for ssh remotes.
    #[arg(long, env = "PALISADE_GIT_SSH_KEY")]
    pub(crate) git_ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh remotes (required with them: host keys are verified).
    #[arg(long, env = "PALISADE_GIT_KNOWN_HOSTS")]
    pub(crate) git_known_hosts: Option<PathBuf>,
    /// Require the tracked commit to be SSH-signed by a key in this allowed-signers file.
    /// A new tip must then also descend from the enforced commit (no rollback).
    #[arg(long, env = "PALISADE_ALLOWED_SIGNERS")]
    pub(crate) allowed_signers: Option<PathBuf>,
    /// With --allowed-signers: accept a signed tip that does not descend from the
    /// enforced commit (a deliberate force-push); recorded as history-rewritten.
    #[arg(long, env = "PALISADE_ALLOW_HISTORY_REWRITE")]
    pub(crate) allow_history_rewrite: bool,
    /// Extra CA certificates (PEM) trusted for https remotes, e.g. a private Git server's.
    #[arg(long, env = "PALISADE_GIT_CA_FILE")]
    pub(crate) git_ca_file: Option<PathBuf>,
    /// Longest one fetch may take (connect, negotiate, download) before it is abandoned.
    #[arg(long, env = "PALISADE_GIT_FETCH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) git_fetch_timeout: Duration,
    /// TCP connect timeout of Git remotes.
    #[arg(long, env = "PALISADE_GIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) git_connect_timeout: Duration,
    /// Longest a Git remote may stay silent during a fetch (socket read/write timeout).
    #[arg(long, env = "PALISADE_GIT_IO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) git_io_timeout: Duration,
    /// Most bytes one fetch may receive.
    #[arg(long, env = "PALISADE_GIT_MAX_FETCH_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub(crate) git_max_fetch_bytes: u64,
    /// Most YAML files in the policy tree.
    #[arg(long, env = "PALISADE_GIT_MAX_FILES", default_value_t = Limits::default().max_files)]
    pub(crate) git_max_files: usize,
    /// Most entries (files and directories of any name, and symlink path lookups) in
    /// the policy tree.
    #[arg(long, env = "PALISADE_GIT_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    pub(crate) git_max_entries: usize,
    /// Most bytes of all policy files of a revision together.
    #[arg(long, env = "PALISADE_GIT_MAX_TOTAL_BYTES", default_value_t = Limits::default().max_total_bytes)]
    pub(crate) git_max_total_bytes: u64,
    /// Where the Git mirror and checked-out revisions are kept.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "palisade-data")]
    pub(crate) data_dir: PathBuf,
    /// How often the repository is fetched (webhooks fetch at once).
    #[arg(long, env = "PALISADE_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub(crate) poll_interval: Duration,
    /// How often every target is reconciled without any trigger (jittered ±10 %).
    #[arg(long, env = "PALISADE_RESYNC", default_value = "5m", value_parser = parse_duration)]
    pub(crate) resync: Duration,
    /// Longest one reconcile of one target may take.
    #[arg(long, env = "PALISADE_RECONCILE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub(crate) reconcile_timeout: Duration,
    /// Targets reconciled at the same time.
    #[arg(long, env = "PALISADE_MAX_CONCURRENT", default_value_t = 4)]
    pub(crate) max_concurrent: usize,
    /// Reconcile only these targets (repeatable; default: every target of the source).
    #[arg(long = "target", env = "PALISADE_TARGETS", value_delimiter = ',')]
    pub(crate) targets: Vec<String>,
    /// Address of the HTTP server (probes, metrics, webhooks, status).
    #[arg(long, env = "PALISADE_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// Secret of GitHub webhooks (X-Hub-Signature-256); must not be empty.
    #[arg(long, env = "PALISADE_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub(crate) github_webhook_secret: Option<String>,
    /// File holding the GitHub webhook secret (e.g. a mounted Secret).
    #[arg(long, env = "PALISADE_GITHUB_WEBHOOK_SECRET_FILE")]
    pub(crate) github_webhook_secret_file: Option<PathBuf>,
    /// Token of GitLab webhooks (X-Gitlab-Token); must not be empty.
    #[arg(long, env = "PALISADE_GITLAB_WEBHOOK_TOKEN", hide_env_values = true)]
    pub(crate) gitlab_webhook_token: Option<String>,
    /// File holding the GitLab webhook token.
    #[arg(long, env = "PALISADE_GITLAB_WEBHOOK_TOKEN_FILE")]
    pub(crate) gitlab_webhook_token_file: Option<PathBuf>,
    /// Webhooks trigger at most one fetch, and one reconcile per target, per interval;
    /// deliveries in between are coalesced.
    #[arg(long, env = "PALISADE_WEBHOOK_MIN_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub(crate) webhook_min_interval: Duration,
    /// Reverts of the same field of the same resource within --flap-window after which
    /// it is reported as flapping and no longer reverted.
    #[arg(long, env = "PALISADE_FLAP_THRESHOLD", default_value_t = 5)]
    pub(crate) flap_threshold: usize,
    /// See --flap-threshold.
    #[arg(long, env = "PALISADE_FLAP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub(crate) flap_window: Duration,
    /// History database (SQLite); default `<data-dir>/history.db`. It holds the
    /// ownership record too.
    #[arg(long, env = "PALISADE_HISTORY")]
    pub(crate) history: Option<PathBuf>,
    /// This installation's id (the `palisade:installation` tag on everything Palisade
    /// creates): generated once and kept in the history when not given. Pin it (e.g. in
    /// the Deployment) so that a lost data volume is recovered by the bootstrap, which
    /// adopts what carries this installation's tags.
    #[arg(long, env = "PALISADE_INSTALLATION_ID", value_parser = installation_id)]
    pub(crate) installation_id: Option<String>,
    /// Keep history events this long (`400d`); older ones are deleted — and that is
    /// recorded — at start and daily. Default: keep everything.
    #[arg(long, env = "PALISADE_HISTORY_RETENTION", value_parser = parse_duration)]
    pub(crate) history_retention: Option<Duration>,
    /// Notification sinks (CloudEvents, Slack-compatible webhooks): a YAML file, see
    /// README. Secrets are read from the files or environment variables it names.
    #[arg(long, env = "PALISADE_NOTIFY_CONFIG")]
    pub(crate) notify_config: Option<PathBuf>,
    /// SQS queue URLs of AWS change events (an EventBridge rule on CloudTrail management
    /// events; `palisade events setup` prints it). Each is long-polled with Palisade's
    /// own credentials in the region its URL names; an event reconciles the targets of
    /// its account and region within seconds. Repeatable.
    #[arg(
        long = "aws-events-queue",
        env = "PALISADE_AWS_EVENTS_QUEUES",
        value_delimiter = ','
    )]
    pub(crate) aws_events_queues: Vec<String>,
    /// A target woken by change events reconciles at most once per this interval
    /// (events meanwhile are coalesced).
    #[arg(long, env = "PALISADE_EVENTS_MIN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub(crate) events_min_interval: Duration,
    /// On SIGTERM, how long in-flight reconciles may take to finish.
    #[arg(long, env = "PALISADE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub(crate) shutdown_grace: Duration,
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
    #[command(flatten)]
    pub(crate) cloud: CloudArgs,
}

/// A secret from a flag/env value or a file; empty is an error that names the setting.
pub(crate) fn secret(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<palisade::secret::Secret>> {
    use palisade::secret::Secret;
    let text = match (value, file) {
        (Some(_), Some(_)) => bail!("give {flag} or {flag}-file, not both"),
        (Some(v), None) => v.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {flag}-file {}", f.display()))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Secret::new(flag, &text)?))
}

/// libgit2's process-wide options: socket timeouts and extra CA certificates.
#[allow(
    unsafe_code,
    reason = "git2 exposes libgit2's global options only as unsafe fns"
)]
pub(crate) fn set_libgit2_options(
    connect: Duration,
    io: Duration,
    ca_file: Option<&Path>,
) -> Result<()> {
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: called from main() before the async runtime, the HTTP server or any fetch
    // exists, so no other thread reads these globals while they are written.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect))?;
        git2::opts::set_server_timeout_in_milliseconds(ms(io))?;
        if let Some(ca) = ca_file {
            git2::opts::set_ssl_cert_file(ca)
                .with_context(|| format!("--git-ca-file {}", ca.display()))?;
        }
    }
    Ok(())
}

pub(crate) fn run_controller(args: RunArgs) -> Result<ExitCode> {
    use palisade::source::{GitSettings, GitSource, SignaturePolicy};
    let token = secret("--git-token", &args.git_token, &args.git_token_file)?;
    let github = secret(
        "--github-webhook-secret",
        &args.github_webhook_secret,
        &args.github_webhook_secret_file,
    )?;
    let gitlab = secret(
        "--gitlab-webhook-token",
        &args.gitlab_webhook_token,
        &args.gitlab_webhook_token_file,
    )?;
    set_libgit2_options(
        args.git_connect_timeout,
        args.git_io_timeout,
        args.git_ca_file.as_deref(),
    )?;
    let mut git = GitSettings::new(
        &args.git_url,
        &args.git_ref,
        args.git_path.as_deref().unwrap_or(Path::new("")),
        &args.data_dir.join("git"),
    );
    git.token = token;
    git.ssh_key = args.git_ssh_key.clone();
    git.known_hosts = args.git_known_hosts.clone();
    git.signatures = match &args.allowed_signers {
        Some(f) => SignaturePolicy::Ssh {
            allowed_signers: f.clone(),
        },
        None => SignaturePolicy::Off,
    };
    git.allow_history_rewrite = args.allow_history_rewrite;
    git.max_fetch_bytes = args.git_max_fetch_bytes;
    git.limits.max_entries = args.git_max_entries;
    git.limits.max_files = args.git_max_files;
    git.limits.max_total_bytes = args.git_max_total_bytes;
    let tracked_ref = git.tracked_ref();
    let display_url = git.display_url();
    let source = GitSource::open(git).context("cannot open the Git cache")?;
    let settings = palisade::reconcile::RunSettings {
        poll_interval: args.poll_interval,
        resync: args.resync,
        reconcile_timeout: args.reconcile_timeout,
        max_concurrent: args.max_concurrent,
        plan: args.settings.settings(),
        targets: args.targets.clone(),
        flap_threshold: args.flap_threshold,
        flap_window: args.flap_window,
        fetch_timeout: args.git_fetch_timeout,
        webhook_min_interval: args.webhook_min_interval,
        history_retention: args.history_retention,
        event_min_interval: args.events_min_interval,
        ..palisade::reconcile::RunSettings::default()
    };
    let secrets = palisade::http::WebhookSecrets { github, gitlab };
    let providers = args.cloud.providers()?;
    let history_path = args
        .history
        .clone()
        .unwrap_or_else(|| args.data_dir.join("history.db"));
    let sinks = match &args.notify_config {
        Some(path) => palisade::notify::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Vec::new(),
    };
    let mut settings = settings;
    let (history, installation, store_problem) =
        open_history(&history_path, args.installation_id.as_deref())?;
    let store_problem = match store_problem {
        Some(StoreProblem::Unavailable(p)) => {
            settings.observe_only = Some(p.clone());
            Some(p)
        }
        Some(StoreProblem::ReadOnly(p)) => {
            settings.history_read_only = true;
            Some(p)
        }
        None => None,
    };
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let shared = palisade::reconcile::Shared::new(settings, providers, history);
        if let Some(problem) = store_problem {
            // Shown in /api/status and counted until a write succeeds.
            shared.history_written(Err(problem));
        }
        // A received event stays hidden while its reconcile may still run: twice the
        // reconcile timeout (the backstop), the longest retry backoff, and a minute.
        let s = &shared.settings;
        let visibility = s.reconcile_timeout * 2 + s.retry_max + Duration::from_secs(60);
        for url in &args.aws_events_queues {
            let provider = shared
                .providers
                .get(palisade_providers::Cloud::Aws)
                .context("--aws-events-queue")?;
            let queue = provider
                .event_queue(url, visibility)
                .await
                .with_context(|| format!("--aws-events-queue {url}"))?;
            shared.add_event_queue(queue);
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(
            git = %display_url, reference = %tracked_ref, path = %args.git_path.as_deref().unwrap_or(Path::new("")).display(),
            listen = %args.listen, resync = ?args.resync, poll = ?args.poll_interval,
            history = %history_path.display(),
            installation = %installation,
            signatures = args.allowed_signers.is_some(), "palisade run starting"
        );
        if let Some(h) = &shared.history {
            palisade::notify::init_cursors(h, &sinks, shared.clock.now_ms());
        }
        let notifier = tokio::spawn(palisade::notify::run(
            shared.clone(),
            sinks,
            installation.clone(),
        ));
        let server = tokio::spawn(palisade::http::serve(
            listener,
            shared.clone(),
            secrets,
            tracked_ref.clone(),
            palisade::http::ServerLimits::default(),
        ));
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                "signal received: finishing in-flight work (a second signal exits at once)"
            );
            cancel.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        palisade::reconcile::run(shared.clone(), source, args.shutdown_grace).await;
        shared.cancel.cancel();
        // Deliveries stop at once (a request in flight is dropped); what was not
        // delivered stays after the cursor.
        if tokio::time::timeout(Duration::from_secs(5), notifier).await.is_err() {
            tracing::warn!("notifications did not stop within 5 s; leaving them");
        }
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
            Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
        }
        let s = shared.status();
        tracing::info!(
            revision = s
                .revision
                .as_ref()
                .map(|r| r.commit.as_str())
                .unwrap_or("-"),
            targets = s.targets.len(),
            "stopped cleanly"
        );
        Ok(ExitCode::SUCCESS)
    });
    // A fetch stuck in a stalled remote is abandoned, not waited for (the runtime would
    // otherwise wait for its blocking thread).
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The history store at start-up. Enforcement must not depend on the evidence store
/// being healthy, but ownership is proved by its record, so:
/// - it opens: normal (a busy or briefly unavailable file is retried for a few seconds);
/// - it opens only read-only (full disk, read-only volume, permissions): the record is
///   read and enforcement goes on; evidence is not recorded (counted and shown), and a
///   reconcile that would have to record a new resource fails closed (nothing is
///   created that cannot be recorded);
/// - it does not open at all (not a database, unreadable): no store; every target is
///   observed and planned, nothing is written to the cloud, and every reconcile and the
///   status say why;
/// - it is newer than this binary, or belongs to another installation: start-up fails,
///   as before (its record means something this binary does not know).
///
/// Nothing here deletes, moves or rewrites the broken file: it stays for forensics.
fn open_history(
    path: &Path,
    pin: Option<&str>,
) -> Result<(
    Option<palisade::history::Store>,
    String,
    Option<StoreProblem>,
)> {
    use palisade::history::HistoryError;
    use palisade::ownership::OwnershipStore as _;
    let fatal = |e: &HistoryError| {
        matches!(
            e,
            HistoryError::TooNew { .. } | HistoryError::Installation { .. }
        )
    };
    let permanent = |e: &HistoryError| match e {
        HistoryError::Sqlite { source, .. } => matches!(
            source.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::NotADatabase
                    | rusqlite::ErrorCode::DatabaseCorrupt
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::PermissionDenied
            )
        ),
        _ => true,
    };
    let open = || {
        palisade::history::Store::open(path).and_then(|h| {
            if let Some(id) = pin {
                h.pin_installation(id)?;
            }
            let installation = h.installation()?;
            Ok((h, installation))
        })
    };
    let mut wait = Duration::from_millis(500);
    let mut opened = open();
    for _ in 0..4 {
        match &opened {
            Err(e) if !fatal(e) && !permanent(e) => {
                tracing::warn!(history = %path.display(), error = %e, "the history database does not open yet; retrying");
                std::thread::sleep(wait);
                wait *= 2;
                opened = open();
            }
            _ => break,
        }
    }
    let err = match opened {
        Ok((h, installation)) => return Ok((Some(h), installation, None)),
        Err(e) if fatal(&e) => return Err(e.into()),
        Err(e) => e,
    };
    let read_only = palisade::history::Store::open_read_only(path).and_then(|h| {
        let installation = h.installation()?;
        Ok((h, installation))
    });
    match read_only {
        Err(e) if fatal(&e) => Err(e.into()),
        Ok((h, installation)) if pin.is_none_or(|p| p == installation) => {
            let problem = format!(
                "the history database {} cannot be written ({err}); it was opened read-only: enforcement goes on, new evidence is NOT recorded",
                path.display()
            );
            tracing::error!(history = %path.display(), error = %err, "{problem}");
            Ok((Some(h), installation, Some(StoreProblem::ReadOnly(problem))))
        }
        other => {
            let why = match other {
                Ok((_, installation)) => format!(
                    "it holds installation id {installation}, not the pinned one, and cannot be written"
                ),
                Err(e) => e.to_string(),
            };
            let problem = format!(
                "the history database {} cannot be opened ({err}; read-only: {why}); OBSERVE ONLY: nothing is written to the cloud until it is repaired and palisade restarted",
                path.display()
            );
            tracing::error!(history = %path.display(), "{problem}");
            Ok((
                None,
                pin.unwrap_or("unknown").to_string(),
                Some(StoreProblem::Unavailable(problem)),
            ))
        }
    }
}

/// What is wrong with the history store at start-up.
enum StoreProblem {
    /// Opened read-only.
    ReadOnly(String),
    /// Not opened.
    Unavailable(String),
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, never return: the process ends when it is killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
