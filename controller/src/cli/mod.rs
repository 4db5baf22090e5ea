//! The commands of the `palisade` binary, one file each; this module holds what they
//! share (output formats, cloud and plan flags, loading a target, live planning,
//! printing diagnostics and API calls).

pub(crate) mod adopt;
pub(crate) mod apply;
pub(crate) mod events;
pub(crate) mod observe;
pub(crate) mod plan;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod validate;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use palisade::apply::{ApplyError, ApplyReport, ChangeOutcome};
use palisade::ownership::OwnershipStore;
use palisade::plan::{Settings, render_text};
use palisade::planning::{
    PlanError, PlanTarget, Planned, ProviderSettings, Providers, observe_and_plan, plan_with,
};
use palisade::policy::{self, Diagnostic, Limits, PolicySet};
use palisade::state::StateStore;
use palisade_providers::{ApiCallCount, CallKind, Inventory, OutcomeStatus, total_calls};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(crate) struct CloudArgs {
    /// Attempts per AWS request on throttling, 5xx, timeouts and connection failures
    /// (each attempt paced by the rate limits and counted; 1 = no retries).
    #[arg(long, env = "PALISADE_AWS_MAX_ATTEMPTS", default_value_t = 5)]
    pub(crate) aws_max_attempts: u32,
    /// Client-side AWS rate limits per account, region and API family, as
    /// FAMILY=PER_SECOND/BURST pairs (families: ec2-read, ec2-write, lambda-read,
    /// lambda-write, tagging, sts). Unnamed families keep their defaults.
    #[arg(long, env = "PALISADE_AWS_RATE_LIMITS", default_value = "")]
    pub(crate) aws_rate_limits: String,
    /// Azure Resource Manager endpoint (sovereign clouds, or the ARM fake in tests and
    /// the demo). Credentials come from azure_identity's chain: AZURE_TENANT_ID +
    /// AZURE_CLIENT_ID + AZURE_CLIENT_SECRET (or a certificate), workload identity,
    /// managed identity, Azure CLI; AZURE_AUTHORITY_HOST for a non-public Entra ID.
    #[arg(
        long,
        env = "PALISADE_AZURE_ARM_ENDPOINT",
        default_value = "https://management.azure.com/"
    )]
    pub(crate) azure_arm_endpoint: String,
    /// Wait between polls of an ARM long-running operation when ARM sends no Retry-After.
    #[arg(long, env = "PALISADE_AZURE_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub(crate) azure_poll_interval: Duration,
    /// Client-side ARM budget per subscription, as arm-read=PER_SECOND/BURST and
    /// arm-write=PER_SECOND/BURST (defaults 20/200 and 8/160, below ARM's 25/250 and
    /// 10/200 per subscription and principal). Unnamed buckets keep their defaults.
    #[arg(long, env = "PALISADE_AZURE_RATE_LIMITS", default_value = "")]
    pub(crate) azure_rate_limits: String,
    /// Most re-reads of function apps' access restrictions (one GET of config/web each)
    /// per pass over an Azure target, least recently read first; apps never read are
    /// always read. ARM has no list of them: this bounds the per-app reads.
    #[arg(long, env = "PALISADE_AZURE_INBOUND_READS", default_value_t = 1000)]
    pub(crate) azure_inbound_reads: usize,
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
            settings.azure.inbound_reads = self.azure_inbound_reads;
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
pub(crate) struct SettingsArgs {
    /// Most deletions one plan may make.
    #[arg(long, env = "PALISADE_MAX_DELETES", default_value_t = Settings::default().max_deletes)]
    pub(crate) max_deletes: usize,
    /// Most deletions as a percentage of managed rules and resources.
    #[arg(long, env = "PALISADE_MAX_DELETE_PERCENT", default_value_t = Settings::default().max_delete_percent)]
    pub(crate) max_delete_percent: u32,
    /// Keep managed resources no policy wants (report them as orphaned).
    #[arg(long, env = "PALISADE_NO_PRUNE")]
    pub(crate) no_prune: bool,
    /// Let a source that defines nothing for a target delete what is managed there.
    #[arg(long, env = "PALISADE_ALLOW_EMPTY")]
    pub(crate) allow_empty: bool,
    /// Release managed groups from functions no policy selects any more (default: they
    /// keep their placement and groups, and the groups are retained and reported). A
    /// release never leaves a function without any group.
    #[arg(long, env = "PALISADE_RELEASE_UNSELECTED")]
    pub(crate) release_unselected: bool,
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
pub(crate) enum Format {
    Text,
    Json,
    /// SARIF 2.1.0 (code-scanning UIs); `validate` and `plan` only.
    Sarif,
    /// JUnit XML (CI dashboards); `validate` and `plan` only.
    Junit,
    /// A pull-request comment (GitHub-flavoured Markdown); `validate` and `plan` only.
    Markdown,
}

pub(crate) fn read_inventory(path: &Path) -> Result<Inventory> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read inventory {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an inventory snapshot", path.display()))
}

pub(crate) fn print_diagnostics(diags: &[Diagnostic], format: Format) -> Result<()> {
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
        Format::Markdown => print!("{}", palisade::report::markdown_diagnostics(diags)),
    }
    Ok(())
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Load and validate the source and pick the target — by name, by the snapshot's
/// target, or the only one — with its cloud scope resolved (once, here: validation
/// guarantees every target names exactly one cloud).
pub(crate) fn load_target(
    policies: &Path,
    name: Option<&str>,
    snapshot_target: Option<&str>,
) -> Result<(PolicySet, usize, palisade_providers::Target)> {
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
    let scope = set.targets[index]
        .to_target()
        .with_context(|| format!("target {wanted} names no cloud"))?;
    Ok((set, index, scope))
}

pub(crate) fn installation_id(s: &str) -> Result<String, String> {
    palisade::ownership::check_installation_id(s).map(|()| s.to_string())
}

pub(crate) fn live_plan(
    at: PlanTarget<'_>,
    providers: &Providers,
    ownership: &palisade_providers::Ownership,
    previous: Option<&palisade::compile::DesiredState>,
    settings: &SettingsArgs,
    revision: Option<&str>,
) -> Result<Planned, PlanError> {
    let provider = providers.get(at.scope.scope.cloud())?;
    let rt = runtime().map_err(|e| PlanError::NoProvider(format!("{e:#}")))?;
    rt.block_on(observe_and_plan(
        at,
        provider.as_ref(),
        ownership,
        previous,
        &settings.settings(),
        revision,
    ))
}

pub(crate) fn plan_failed(e: PlanError, format: Format) -> Result<ExitCode> {
    match e {
        PlanError::Invalid(diags) => {
            print_diagnostics(&diags, format)?;
            eprintln!("error: the policy source has errors; nothing was planned");
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

pub(crate) fn print_warnings(warnings: &[Diagnostic]) {
    for w in warnings {
        eprintln!("{w}");
    }
}

pub(crate) fn print_calls(calls: &[ApiCallCount]) {
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
