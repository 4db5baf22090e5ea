//! The `palisade` command: flags, logging, and calls into the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use palisade::apply::{ApplyError, ApplyReport, ChangeOutcome};
use palisade::ownership::OwnershipStore;
use palisade::plan::{Settings, render_text};
use palisade::policy::{self, Diagnostic, Limits, PolicySet, TargetDoc};
use palisade::reconcile::{
    PlanError, Planned, ProviderSettings, Providers, observe_and_plan, plan_with,
};
use palisade::state::StateStore;
use palisade_providers::{ApiCallCount, CallKind, Inventory, OutcomeStatus, total_calls};
use serde::Serialize;

/// GitOps controller for the network perimeter of serverless functions.
// No `Debug`: the flags hold the Git token and webhook secrets as plain strings until
// they are wrapped in `Secret`.
#[derive(Parser)]
#[command(name = "palisade", version, about)]
struct Cli {
    /// Log format on stderr; the level comes from PALISADE_LOG (e.g. `info`, `palisade=debug`).
    #[arg(long, global = true, env = "PALISADE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReportFormat {
    Json,
    Csv,
    Md,
    Junit,
    Sarif,
    Html,
}

/// `2026-03-01` (start of that day, or its end when `end_of_day`) or RFC 3339, in Unix ms.
fn parse_time(s: &str, end_of_day: bool) -> Result<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date: jiff::civil::Date = s.parse().map_err(|_| {
        anyhow::anyhow!(
            "{s:?}: expected a date (2026-03-01) or an RFC 3339 time (2026-03-01T12:00:00Z)"
        )
    })?;
    let start = date
        .to_zoned(jiff::tz::TimeZone::UTC)?
        .timestamp()
        .as_millisecond();
    Ok(if end_of_day {
        start + 86_400_000 - 1
    } else {
        start
    })
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy directory: syntax, references, quotas, guardrails. Exit 1 on any error.
    Validate {
        /// Policy directory.
        path: PathBuf,
        /// Inventory snapshot(s) to resolve selectors against (repeatable).
        #[arg(long)]
        inventory: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of the policy language.
    Schema,
    /// Run the controller: follow a Git repository and keep every target as it says.
    Run(Box<RunArgs>),
    /// Compliance evidence from the history: per control, per target, drift timeline.
    Report {
        /// History database written by `palisade run`.
        #[arg(long, env = "PALISADE_HISTORY")]
        history: PathBuf,
        /// Period start: `2026-03-01` or RFC 3339 (default: 30 days before --until).
        #[arg(long)]
        since: Option<String>,
        /// Period end: a date (its whole day) or RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Only this control id.
        #[arg(long)]
        control: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Read one target's cloud and print the inventory snapshot (what `plan --inventory`
    /// reads). Read-only.
    Observe {
        /// Policy directory (for the target's account, region and role).
        #[arg(long, env = "PALISADE_POLICIES")]
        policies: PathBuf,
        /// Target name; optional when the source defines one target.
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Plan one target: live with read-only calls, or offline against `--inventory`.
    Plan {
        /// Policy directory.
        #[arg(long, env = "PALISADE_POLICIES")]
        policies: PathBuf,
        /// Target name; optional when the source defines one target (or with --inventory).
        #[arg(long)]
        target: Option<String>,
        /// Plan offline against this inventory snapshot instead of observing the cloud.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Revision to record in the plan (e.g. a Git commit id).
        #[arg(long)]
        revision: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Exit 2 when the plan has changes (0: none, 1: error or refused).
        #[arg(long)]
        detailed_exitcode: bool,
        /// The controller's history database, read-only, for its ownership record. Without
        /// it (a pull-request plan in CI) ownership is decided on tags alone and the plan
        /// says so ("ownership: unverified"); nothing is ever written.
        #[arg(long, env = "PALISADE_HISTORY")]
        history: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        cloud: CloudArgs,
    },
    /// Plan one target, show the plan, ask, and apply it in order.
    Apply {
        /// Policy directory.
        #[arg(long, env = "PALISADE_POLICIES")]
        policies: PathBuf,
        /// Target name; optional when the source defines one target.
        #[arg(long)]
        target: Option<String>,
        /// Apply without asking.
        #[arg(long)]
        auto_approve: bool,
        /// Revision to record (e.g. a Git commit id).
        #[arg(long)]
        revision: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// History database holding the ownership record: the one `palisade run` uses
        /// (default `palisade-data/history.db`, the controller's default), so that the
        /// one-shot CLI and the controller agree on what Palisade owns.
        #[arg(
            long,
            env = "PALISADE_HISTORY",
            default_value = "palisade-data/history.db"
        )]
        history: PathBuf,
        /// This installation's id (the `palisade:installation` tag): generated once and
        /// kept in the history when not given. Pin it to recover from a lost history.
        #[arg(long, env = "PALISADE_INSTALLATION_ID", value_parser = installation_id)]
        installation_id: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        cloud: CloudArgs,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Git repository of the policies: https://, ssh://, git@host:path, file:// or a path.
    /// Never with credentials in it (refused): use --git-token-file or an SSH key.
    #[arg(long, env = "PALISADE_GIT_URL")]
    git_url: String,
    /// What to track: refs/heads/NAME, refs/tags/NAME, or a bare branch name (refused
    /// when a tag of the same name exists too).
    #[arg(long, env = "PALISADE_GIT_REF", default_value = "main")]
    git_ref: String,
    /// Directory inside the repository that holds the policies.
    /// (Default: the repository's root. An empty default value would be refused by clap's
    /// path parser, so the flag is optional instead.)
    #[arg(long, env = "PALISADE_GIT_PATH")]
    git_path: Option<PathBuf>,
    /// HTTPS token (prefer --git-token-file or the environment over a flag).
    #[arg(long, env = "PALISADE_GIT_TOKEN", hide_env_values = true)]
    git_token: Option<String>,
    /// File holding the HTTPS token (e.g. a mounted Secret).
    #[arg(long, env = "PALISADE_GIT_TOKEN_FILE")]
    git_token_file: Option<PathBuf>,
    /// SSH private key for ssh remotes.
    #[arg(long, env = "PALISADE_GIT_SSH_KEY")]
    git_ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh remotes (required with them: host keys are verified).
    #[arg(long, env = "PALISADE_GIT_KNOWN_HOSTS")]
    git_known_hosts: Option<PathBuf>,
    /// Require the tracked commit to be SSH-signed by a key in this allowed-signers file.
    /// A new tip must then also descend from the enforced commit (no rollback).
    #[arg(long, env = "PALISADE_ALLOWED_SIGNERS")]
    allowed_signers: Option<PathBuf>,
    /// With --allowed-signers: accept a signed tip that does not descend from the
    /// enforced commit (a deliberate force-push); recorded as history-rewritten.
    #[arg(long, env = "PALISADE_ALLOW_HISTORY_REWRITE")]
    allow_history_rewrite: bool,
    /// Extra CA certificates (PEM) trusted for https remotes, e.g. a private Git server's.
    #[arg(long, env = "PALISADE_GIT_CA_FILE")]
    git_ca_file: Option<PathBuf>,
    /// Longest one fetch may take (connect, negotiate, download) before it is abandoned.
    #[arg(long, env = "PALISADE_GIT_FETCH_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    git_fetch_timeout: Duration,
    /// TCP connect timeout of Git remotes.
    #[arg(long, env = "PALISADE_GIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    git_connect_timeout: Duration,
    /// Longest a Git remote may stay silent during a fetch (socket read/write timeout).
    #[arg(long, env = "PALISADE_GIT_IO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    git_io_timeout: Duration,
    /// Most bytes one fetch may receive.
    #[arg(long, env = "PALISADE_GIT_MAX_FETCH_BYTES", default_value_t = 64 * 1024 * 1024)]
    git_max_fetch_bytes: u64,
    /// Most YAML files in the policy tree.
    #[arg(long, env = "PALISADE_GIT_MAX_FILES", default_value_t = Limits::default().max_files)]
    git_max_files: usize,
    /// Most entries (files and directories of any name, and symlink path lookups) in
    /// the policy tree.
    #[arg(long, env = "PALISADE_GIT_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    git_max_entries: usize,
    /// Most bytes of all policy files of a revision together.
    #[arg(long, env = "PALISADE_GIT_MAX_TOTAL_BYTES", default_value_t = Limits::default().max_total_bytes)]
    git_max_total_bytes: u64,
    /// Where the Git mirror and checked-out revisions are kept.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "palisade-data")]
    data_dir: PathBuf,
    /// How often the repository is fetched (webhooks fetch at once).
    #[arg(long, env = "PALISADE_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// How often every target is reconciled without any trigger (jittered ±10 %).
    #[arg(long, env = "PALISADE_RESYNC", default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Longest one reconcile of one target may take.
    #[arg(long, env = "PALISADE_RECONCILE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    reconcile_timeout: Duration,
    /// Targets reconciled at the same time.
    #[arg(long, env = "PALISADE_MAX_CONCURRENT", default_value_t = 4)]
    max_concurrent: usize,
    /// Reconcile only these targets (repeatable; default: every target of the source).
    #[arg(long = "target", env = "PALISADE_TARGETS", value_delimiter = ',')]
    targets: Vec<String>,
    /// Address of the HTTP server (probes, metrics, webhooks, status).
    #[arg(long, env = "PALISADE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Secret of GitHub webhooks (X-Hub-Signature-256); must not be empty.
    #[arg(long, env = "PALISADE_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    github_webhook_secret: Option<String>,
    /// File holding the GitHub webhook secret (e.g. a mounted Secret).
    #[arg(long, env = "PALISADE_GITHUB_WEBHOOK_SECRET_FILE")]
    github_webhook_secret_file: Option<PathBuf>,
    /// Token of GitLab webhooks (X-Gitlab-Token); must not be empty.
    #[arg(long, env = "PALISADE_GITLAB_WEBHOOK_TOKEN", hide_env_values = true)]
    gitlab_webhook_token: Option<String>,
    /// File holding the GitLab webhook token.
    #[arg(long, env = "PALISADE_GITLAB_WEBHOOK_TOKEN_FILE")]
    gitlab_webhook_token_file: Option<PathBuf>,
    /// Webhooks trigger at most one fetch, and one reconcile per target, per interval;
    /// deliveries in between are coalesced.
    #[arg(long, env = "PALISADE_WEBHOOK_MIN_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    webhook_min_interval: Duration,
    /// Reverts of the same field of the same resource within --flap-window after which
    /// it is reported as flapping and no longer reverted.
    #[arg(long, env = "PALISADE_FLAP_THRESHOLD", default_value_t = 5)]
    flap_threshold: usize,
    /// See --flap-threshold.
    #[arg(long, env = "PALISADE_FLAP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    flap_window: Duration,
    /// History database (SQLite); default `<data-dir>/history.db`. It holds the
    /// ownership record too.
    #[arg(long, env = "PALISADE_HISTORY")]
    history: Option<PathBuf>,
    /// This installation's id (the `palisade:installation` tag on everything Palisade
    /// creates): generated once and kept in the history when not given. Pin it (e.g. in
    /// the Deployment) so that a lost data volume is recovered by the bootstrap, which
    /// adopts what carries this installation's tags.
    #[arg(long, env = "PALISADE_INSTALLATION_ID", value_parser = installation_id)]
    installation_id: Option<String>,
    /// Keep history events this long (`400d`); older ones are deleted — and that is
    /// recorded — at start and daily. Default: keep everything.
    #[arg(long, env = "PALISADE_HISTORY_RETENTION", value_parser = parse_duration)]
    history_retention: Option<Duration>,
    /// On SIGTERM, how long in-flight reconciles may take to finish.
    #[arg(long, env = "PALISADE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    cloud: CloudArgs,
}

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 30s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[derive(clap::Args, Debug)]
struct CloudArgs {
    /// Attempts per AWS request (the SDK's standard retry mode; 1 = no retries).
    #[arg(long, env = "PALISADE_AWS_MAX_ATTEMPTS", default_value_t = 5)]
    aws_max_attempts: u32,
    /// Client-side AWS rate limits per account, region and API family, as
    /// FAMILY=PER_SECOND/BURST pairs (families: ec2-read, ec2-write, lambda-read,
    /// lambda-write, tagging, sts). Unnamed families keep their defaults.
    #[arg(long, env = "PALISADE_AWS_RATE_LIMITS", default_value = "")]
    aws_rate_limits: String,
    /// Azure Resource Manager endpoint (sovereign clouds, or the ARM fake in tests and
    /// the demo). Credentials come from azure_identity's chain: AZURE_TENANT_ID +
    /// AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (or a certificate), workload identity,
    /// managed identity, Azure CLI; AZURE_AUTHORITY_HOST for a non-public Entra ID.
    #[arg(
        long,
        env = "PALISADE_AZURE_ARM_ENDPOINT",
        default_value = "https://management.azure.com/"
    )]
    azure_arm_endpoint: String,
    /// Wait between polls of an ARM long-running operation when ARM sends no Retry-After.
    #[arg(long, env = "PALISADE_AZURE_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    azure_poll_interval: Duration,
    /// Client-side ARM budget per subscription, as arm-read=PER_SECOND/BURST and
    /// arm-write=PER_SECOND/BURST (defaults 20/200 and 8/160, below ARM's 25/250 and
    /// 10/200 per subscription and principal). Unnamed buckets keep their defaults.
    #[arg(long, env = "PALISADE_AZURE_RATE_LIMITS", default_value = "")]
    azure_rate_limits: String,
}

impl CloudArgs {
    fn providers(&self) -> Result<Providers> {
        #[cfg_attr(not(any(feature = "aws", feature = "azure")), allow(unused_mut))]
        let mut settings = ProviderSettings::default();
        #[cfg(feature = "azure")]
        {
            settings.azure.arm_endpoint = self.azure_arm_endpoint.clone();
            settings.azure.poll_interval = self.azure_poll_interval;
            settings.azure.rates = self
                .azure_rate_limits
                .parse()
                .map_err(|e| anyhow::anyhow!("--azure-rate-limits: {e}"))?;
        }
        #[cfg(feature = "aws")]
        {
            settings.aws.max_attempts = self.aws_max_attempts;
            settings.aws.rates = self
                .aws_rate_limits
                .parse()
                .map_err(|e| anyhow::anyhow!("--aws-rate-limits: {e}"))?;
        }
        Ok(Providers::new(settings))
    }
}

#[derive(clap::Args, Debug)]
struct SettingsArgs {
    /// Most deletions one plan may make.
    #[arg(long, env = "PALISADE_MAX_DELETES", default_value_t = Settings::default().max_deletes)]
    max_deletes: usize,
    /// Most deletions as a percentage of managed rules and resources.
    #[arg(long, env = "PALISADE_MAX_DELETE_PERCENT", default_value_t = Settings::default().max_delete_percent)]
    max_delete_percent: u32,
    /// Keep managed resources no policy wants (report them as orphaned).
    #[arg(long, env = "PALISADE_NO_PRUNE")]
    no_prune: bool,
    /// Let a source that defines nothing for a target delete what is managed there.
    #[arg(long, env = "PALISADE_ALLOW_EMPTY")]
    allow_empty: bool,
    /// Release managed groups from functions no policy selects any more (default: they
    /// keep their placement and groups, and the groups are retained and reported). A
    /// release never leaves a function without any group.
    #[arg(long, env = "PALISADE_RELEASE_UNSELECTED")]
    release_unselected: bool,
}

impl SettingsArgs {
    fn settings(&self) -> Settings {
        Settings {
            max_deletes: self.max_deletes,
            max_delete_percent: self.max_delete_percent,
            prune: !self.no_prune,
            allow_empty: self.allow_empty,
            release_unselected: self.release_unselected,
            ..Settings::default()
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    /// SARIF 2.1.0 (code-scanning UIs); `validate` and `plan` only.
    Sarif,
    /// JUnit XML (CI dashboards); `validate` and `plan` only.
    Junit,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn read_inventory(path: &Path) -> Result<Inventory> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an inventory snapshot", path.display()))
}

fn print_diagnostics(diags: &[Diagnostic], format: Format) -> Result<()> {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "diagnostics": diags }))?
        ),
        Format::Text => {
            for d in diags {
                println!("{d}");
            }
        }
        Format::Sarif => println!("{}", palisade::report::sarif_diagnostics(diags)),
        Format::Junit => print!("{}", palisade::report::junit_diagnostics(diags)),
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_controller(*args),
        Command::Report {
            history,
            since,
            until,
            target,
            control,
            format,
            output,
        } => {
            if !history.exists() {
                bail!("no history database at {}", history.display());
            }
            let store = palisade::history::Store::open(&history)?;
            let until = match until {
                Some(u) => parse_time(&u, true)?,
                None => jiff::Timestamp::now().as_millisecond(),
            };
            let since = match since {
                Some(s) => parse_time(&s, false)?,
                None => until - 30 * 86_400_000,
            };
            if since > until {
                bail!("--since is after --until");
            }
            let r = palisade::history::compliance(
                &store,
                since,
                until,
                target.as_deref(),
                control.as_deref(),
            )?;
            let text = match format {
                ReportFormat::Json => serde_json::to_string_pretty(&r)?,
                ReportFormat::Csv => palisade::report::csv(&r),
                ReportFormat::Md => palisade::report::markdown(&r),
                ReportFormat::Junit => palisade::report::junit(&r),
                ReportFormat::Sarif => palisade::report::sarif(&r),
                ReportFormat::Html => palisade::report::html(&r),
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("report written to {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&policy::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            path,
            inventory,
            format,
        } => {
            let mut inventories = BTreeMap::new();
            for p in &inventory {
                let inv = read_inventory(p)?;
                inventories.insert(inv.target.clone(), inv);
            }
            let (set, mut diags) = policy::load_dir(&path, &Limits::default());
            diags.extend(palisade::validate_set(&set, &inventories));
            diags.sort();
            diags.dedup();
            let errors = diags.iter().filter(|d| d.is_error()).count();
            print_diagnostics(&diags, format)?;
            if format == Format::Text {
                let warnings = diags.len() - errors;
                println!(
                    "{}: {} error(s), {} warning(s) in {} target(s), {} policies, {} guardrails",
                    path.display(),
                    errors,
                    warnings,
                    set.targets.len(),
                    set.policies.len(),
                    set.guardrails.len()
                );
            }
            Ok(if errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Observe {
            policies,
            target,
            cloud,
        } => {
            let (set, index) = load_target(&policies, target.as_deref(), None)?;
            let t = set.targets[index]
                .to_target()
                .with_context(|| format!("target {} names no cloud", set.targets[index].name()))?;
            let providers = cloud.providers()?;
            let provider = providers.get(t.scope.cloud())?;
            // Read-only, without the record: ownership as the tags claim it.
            let own = palisade_providers::Ownership::unverified(&t.name);
            let inv = runtime()?.block_on(provider.observe(&t, &own))?;
            println!("{}", serde_json::to_string_pretty(&inv)?);
            let calls = providers.api_calls();
            eprintln!(
                "observed {}: {} functions, {} groups, {} endpoints in {} read call(s)",
                t.name,
                inv.functions.len(),
                inv.groups.len(),
                inv.endpoints.len(),
                total_calls(&calls, CallKind::Read)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            policies,
            target,
            inventory,
            revision,
            format,
            detailed_exitcode,
            history,
            settings,
            cloud,
        } => {
            let snapshot = inventory.as_deref().map(read_inventory).transpose()?;
            let (set, index) = load_target(
                &policies,
                target.as_deref(),
                snapshot.as_ref().map(|i| i.target.as_str()),
            )?;
            let target = &set.targets[index];
            let providers = cloud.providers()?;
            let planned = match snapshot {
                Some(inv) => plan_with(
                    &set,
                    target,
                    inv,
                    None,
                    &settings.settings(),
                    revision.as_deref(),
                ),
                None => {
                    let (own, previous) = match &history {
                        Some(path) if path.exists() => read_record(path, target.name())?,
                        Some(path) => {
                            eprintln!(
                                "warning: no history database at {}; ownership is decided on tags alone (unverified)",
                                path.display()
                            );
                            (
                                palisade_providers::Ownership::unverified(target.name()),
                                None,
                            )
                        }
                        None => (
                            palisade_providers::Ownership::unverified(target.name()),
                            None,
                        ),
                    };
                    live_plan(
                        &set,
                        target,
                        &providers,
                        &own,
                        previous.as_ref(),
                        &settings,
                        revision.as_deref(),
                    )
                }
            };
            let planned = match planned {
                Ok(p) => p,
                Err(e) => return plan_failed(e, format),
            };
            let calls = providers.api_calls();
            match format {
                Format::Text => {
                    print!("{}", render_text(&planned.plan));
                    print_warnings(&planned.warnings);
                    print_ownership(&planned);
                    print_calls(&calls);
                }
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&PlanOutput {
                        planned: &planned,
                        api_calls: &calls
                    })?
                ),
                Format::Sarif => println!(
                    "{}",
                    palisade::report::sarif_findings(&planned.plan.findings)
                ),
                Format::Junit => print!(
                    "{}",
                    palisade::report::junit_findings(&planned.plan.target, &planned.plan.findings)
                ),
            }
            let plan = &planned.plan;
            Ok(if plan.refusal.is_some() {
                ExitCode::from(1)
            } else if detailed_exitcode && !plan.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apply {
            policies,
            target,
            auto_approve,
            revision,
            format,
            history,
            installation_id,
            settings,
            cloud,
        } => {
            if matches!(format, Format::Sarif | Format::Junit) {
                bail!("apply prints text or json; use `plan --format sarif|junit` for CI reports");
            }
            let (set, index) = load_target(&policies, target.as_deref(), None)?;
            let target = &set.targets[index];
            let providers = cloud.providers()?;
            let store = palisade::history::Store::open(&history)?;
            if let Some(id) = &installation_id {
                store.pin_installation(id)?;
            }
            let own = store
                .ownership(target.name())
                .context("the ownership record cannot be read")?;
            let previous = store.enforced_desired(target.name())?;
            let planned = match live_plan(
                &set,
                target,
                &providers,
                &own,
                previous.as_ref(),
                &settings,
                revision.as_deref(),
            ) {
                Ok(p) => p,
                Err(e) => return plan_failed(e, format),
            };
            let record = Record {
                store: &store,
                ownership: &own,
                revision: revision.as_deref(),
            };
            apply_planned(&planned, target, &providers, &record, auto_approve, format)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Load the source and pick the target: by name, by the snapshot's target, or the only one.
fn load_target(
    policies: &Path,
    name: Option<&str>,
    snapshot_target: Option<&str>,
) -> Result<(PolicySet, usize)> {
    let (set, diags) = policy::load_dir(policies, &Limits::default());
    if diags.iter().any(Diagnostic::is_error) {
        print_diagnostics(&diags, Format::Text)?;
        bail!(
            "{} has errors; nothing was read or changed",
            policies.display()
        );
    }
    let wanted = match (name, snapshot_target) {
        (Some(n), Some(s)) if n != s => {
            bail!("--target {n} but the inventory snapshot is of target {s}")
        }
        (Some(n), _) | (None, Some(n)) => n.to_string(),
        (None, None) => match set.targets.as_slice() {
            [only] => only.name().to_string(),
            _ => bail!(
                "{} defines {} targets ({}); choose one with --target",
                policies.display(),
                set.targets.len(),
                set.targets
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let index = set
        .targets
        .iter()
        .position(|t| t.name() == wanted)
        .with_context(|| {
            format!(
                "{} does not define target {wanted:?} (it defines: {})",
                policies.display(),
                set.targets
                    .iter()
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    Ok((set, index))
}

/// The ownership record and the last enforced desired state of `target` from the
/// controller's history, read-only.
fn read_record(
    path: &Path,
    target: &str,
) -> Result<(
    palisade_providers::Ownership,
    Option<palisade::compile::DesiredState>,
)> {
    let store = palisade::history::Store::open_read_only(path)?;
    let own = store.ownership(target).with_context(|| {
        format!(
            "{} holds no ownership record palisade can read (written by palisade run or apply of this version)",
            path.display()
        )
    })?;
    Ok((own, store.enforced_desired(target)?))
}

fn print_ownership(planned: &Planned) {
    if planned.ownership == palisade_providers::OwnershipBasis::Tags {
        println!(
            "\nownership: unverified — decided on tags alone (no --history); the controller decides on its ownership record"
        );
    }
}

/// Where `apply` keeps the ownership record up to date.
struct Record<'a> {
    store: &'a palisade::history::Store,
    ownership: &'a palisade_providers::Ownership,
    revision: Option<&'a str>,
}

impl Record<'_> {
    /// `desired` is fully enforced: the next plan tells drift from intent against it.
    fn enforced(&self, target: &str, desired: &palisade::compile::DesiredState) -> Result<()> {
        let now = jiff::Timestamp::now().as_millisecond();
        self.store
            .save_enforced_desired(target, self.revision, now, desired)
            .context("the enforced desired state cannot be written")
    }

    fn write(&self, target: &str, update: &palisade::ownership::RecordUpdate) -> Result<()> {
        let now = jiff::Timestamp::now().as_millisecond();
        self.store
            .update_ownership(target, self.revision, now, update)
            .context("the ownership record cannot be written; nothing more is changed")
    }
}

fn installation_id(s: &str) -> Result<String, String> {
    palisade::ownership::check_installation_id(s).map(|()| s.to_string())
}

fn live_plan(
    set: &PolicySet,
    target: &TargetDoc,
    providers: &Providers,
    ownership: &palisade_providers::Ownership,
    previous: Option<&palisade::compile::DesiredState>,
    settings: &SettingsArgs,
    revision: Option<&str>,
) -> Result<Planned, PlanError> {
    let cloud = target
        .to_target()
        .map(|t| t.scope.cloud())
        .ok_or_else(|| PlanError::NoProvider(format!("target {} names no cloud", target.name())))?;
    let provider = providers.get(cloud)?;
    let rt = runtime().map_err(|e| PlanError::NoProvider(format!("{e:#}")))?;
    rt.block_on(observe_and_plan(
        set,
        target,
        provider.as_ref(),
        ownership,
        previous,
        &settings.settings(),
        revision,
    ))
}

fn plan_failed(e: PlanError, format: Format) -> Result<ExitCode> {
    match e {
        PlanError::Invalid(diags) => {
            print_diagnostics(&diags, format)?;
            eprintln!("error: the policy source has errors; nothing was planned");
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanOutput<'a> {
    #[serde(flatten)]
    planned: &'a Planned,
    api_calls: &'a [ApiCallCount],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyOutput<'a> {
    plan: &'a Planned,
    apply: Option<&'a ApplyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    api_calls: &'a [ApiCallCount],
}

fn print_warnings(warnings: &[Diagnostic]) {
    for w in warnings {
        eprintln!("{w}");
    }
}

fn print_calls(calls: &[ApiCallCount]) {
    if calls.is_empty() {
        return;
    }
    let line: Vec<String> = calls
        .iter()
        .map(|c| {
            let outcome = match c.outcome {
                palisade_providers::CallOutcome::Ok => String::new(),
                other => format!(" {other:?}").to_lowercase(),
            };
            format!("{}:{}{} ×{}", c.service, c.operation, outcome, c.count)
        })
        .collect();
    println!(
        "API calls: {} read, {} write ({})",
        total_calls(calls, CallKind::Read),
        total_calls(calls, CallKind::Write),
        line.join(", ")
    );
}

fn apply_planned(
    planned: &Planned,
    target: &TargetDoc,
    providers: &Providers,
    record: &Record<'_>,
    auto_approve: bool,
    format: Format,
) -> Result<ExitCode> {
    let plan = &planned.plan;
    // What this observation adopted is recorded whatever is decided below.
    record.write(
        &plan.target,
        &palisade::ownership::observed(record.ownership, &planned.inventory),
    )?;
    if format == Format::Text {
        print!("{}", render_text(plan));
        print_warnings(&planned.warnings);
    }
    let plan_only = || -> Result<()> {
        if format == Format::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(&ApplyOutput {
                    plan: planned,
                    apply: None,
                    error: None,
                    api_calls: &providers.api_calls()
                })?
            );
        }
        Ok(())
    };
    if plan.refusal.is_some() {
        plan_only()?;
        return Ok(ExitCode::from(1));
    }
    if plan.is_empty() {
        record.enforced(&plan.target, &planned.desired)?;
        plan_only()?;
        if format == Format::Text {
            print_calls(&providers.api_calls());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !auto_approve {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() && format == Format::Json {
            bail!("refusing to apply without --auto-approve: stdin is not a terminal");
        }
        eprint!(
            "\nApply these {} change(s) to target {}? Only 'yes' is accepted: ",
            plan.changes.len(),
            plan.target
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            eprintln!("Apply cancelled; nothing was changed.");
            return Ok(ExitCode::from(1));
        }
    }
    let t = target
        .to_target()
        .with_context(|| format!("target {} names no cloud", target.name()))?;
    let provider = providers.get(t.scope.cloud())?;
    record.write(&plan.target, &palisade::ownership::intents(plan))?;
    let result = runtime()?.block_on(palisade::apply::apply(plan, &t, provider.as_ref()));
    let done = match &result {
        Ok(r) => Some(r),
        Err(ApplyError::Change { report, .. }) => Some(report.as_ref()),
        Err(_) => None,
    };
    if let Some(r) = done {
        record.write(&plan.target, &palisade::ownership::applied(r))?;
    }
    if let Ok(r) = &result
        && r.skipped == 0
    {
        record.enforced(&plan.target, &planned.desired)?;
    }
    let (report, error) = match &result {
        Ok(r) => (Some(r), None),
        Err(ApplyError::Change {
            report,
            source,
            index,
            resource,
        }) => (
            Some(report.as_ref()),
            Some(format!(
                "change {} ({resource}) failed: {source}",
                index + 1
            )),
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    let calls = providers.api_calls();
    match format {
        Format::Json | Format::Sarif | Format::Junit => println!(
            "{}",
            serde_json::to_string_pretty(&ApplyOutput {
                plan: planned,
                apply: report,
                error: error.clone(),
                api_calls: &calls,
            })?
        ),
        Format::Text => {
            println!();
            if let Some(r) = report {
                for res in &r.results {
                    let (mark, what) = match &res.result {
                        ChangeOutcome::Done { outcome: o } => match o.status {
                            OutcomeStatus::Applied => ("done", String::new()),
                            OutcomeStatus::AlreadyDone => ("already so", String::new()),
                            OutcomeStatus::Pending => (
                                "pending",
                                format!(" — {}", o.detail.clone().unwrap_or_default()),
                            ),
                        },
                        ChangeOutcome::Failed { error } => ("FAILED", format!(" — {error}")),
                        ChangeOutcome::Blocked { by, by_resource } => (
                            "blocked",
                            format!(" — needs change {} ({by_resource}), which failed", by + 1),
                        ),
                    };
                    let ids = res
                        .outcome()
                        .map(|o| {
                            let mut v = Vec::new();
                            if let Some(id) = &o.created_id {
                                v.push(format!("id {id}"));
                            }
                            if !o.request_ids.is_empty() {
                                v.push(format!("request {}", o.request_ids.join(",")));
                            }
                            if v.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", v.join("; "))
                            }
                        })
                        .unwrap_or_default();
                    println!("  {mark:>10}  {}{ids}{what}", res.planned.resource);
                }
                println!(
                    "Apply {}: {} change(s) done, {} pending, {} failed, {} blocked by a failure, {} not attempted.",
                    if error.is_some() {
                        "incomplete"
                    } else {
                        "complete"
                    },
                    r.results.len() - r.failed - r.blocked,
                    r.pending,
                    r.failed,
                    r.blocked,
                    r.skipped
                );
            }
            if let Some(e) = &error {
                eprintln!("error: {e}");
            }
            print_calls(&calls);
        }
    }
    Ok(if error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A secret from a flag/env value or a file; empty is an error that names the setting.
fn secret(
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
fn set_libgit2_options(connect: Duration, io: Duration, ca_file: Option<&Path>) -> Result<()> {
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

fn run_controller(args: RunArgs) -> Result<ExitCode> {
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
    let settings = palisade::run::RunSettings {
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
        ..palisade::run::RunSettings::default()
    };
    let secrets = palisade::http::WebhookSecrets { github, gitlab };
    let providers = args.cloud.providers()?;
    let history_path = args
        .history
        .clone()
        .unwrap_or_else(|| args.data_dir.join("history.db"));
    let history = palisade::history::Store::open(&history_path)?;
    if let Some(id) = &args.installation_id {
        history.pin_installation(id)?;
    }
    let installation = history.installation()?;
    let retention = args.history_retention;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let shared = palisade::run::Shared::new(settings, providers, Some(history));
        if let Some(keep) = retention {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(h) = &shared.history {
                        let now = jiff::Timestamp::now().as_millisecond();
                        match h.retain(now - keep.as_millis() as i64, now) {
                            Ok(n) => tracing::info!(deleted = n, keep = ?keep, "history retention applied"),
                            Err(e) => tracing::error!(error = %e, "history retention failed"),
                        }
                    }
                    tokio::select! {
                        _ = shared.cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
                    }
                }
            });
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
        palisade::run::run(shared.clone(), source, args.shutdown_grace).await;
        shared.cancel.cancel();
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

async fn wait_for_signal() {
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
