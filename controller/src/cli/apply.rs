//! `palisade apply`: plan, confirm, apply in order, keep the ownership record and the
//! enforced desired state.

use super::*;

#[derive(clap::Args)]
pub(crate) struct ApplyArgs {
    /// Policy directory.
    #[arg(long, env = "PALISADE_POLICIES")]
    pub(crate) policies: PathBuf,
    /// Target name; optional when the source defines one target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Apply without asking.
    #[arg(long)]
    pub(crate) auto_approve: bool,
    /// Revision to record (e.g. a Git commit id).
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// History database holding the ownership record: the one `palisade run` uses
    /// (default `palisade-data/history.db`, the controller's default), so that the
    /// one-shot CLI and the controller agree on what Palisade owns.
    #[arg(
        long,
        env = "PALISADE_HISTORY",
        default_value = "palisade-data/history.db"
    )]
    pub(crate) history: PathBuf,
    /// This installation's id (the `palisade:installation` tag): generated once and
    /// kept in the history when not given. Pin it to recover from a lost history.
    #[arg(long, env = "PALISADE_INSTALLATION_ID", value_parser = installation_id)]
    pub(crate) installation_id: Option<String>,
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
    #[command(flatten)]
    pub(crate) cloud: CloudArgs,
}

pub(crate) fn run(args: ApplyArgs) -> Result<ExitCode> {
    let ApplyArgs {
        policies,
        target,
        auto_approve,
        revision,
        format,
        history,
        installation_id,
        settings,
        cloud,
    } = args;
    if matches!(format, Format::Sarif | Format::Junit | Format::Markdown) {
        bail!("apply prints text or json; use `plan --format sarif|junit|markdown` for CI reports");
    }
    let (set, index, scope) = load_target(&policies, target.as_deref(), None)?;
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
        PlanTarget {
            set: &set,
            doc: target,
            scope: &scope,
        },
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
    apply_planned(&planned, &scope, &providers, &record, auto_approve, format)
}

/// Where `apply` keeps the ownership record up to date.
pub(crate) struct Record<'a> {
    pub(crate) store: &'a palisade::history::Store,
    pub(crate) ownership: &'a palisade_providers::Ownership,
    pub(crate) revision: Option<&'a str>,
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

pub(crate) fn apply_planned(
    planned: &Planned,
    t: &palisade_providers::Target,
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
    let provider = providers.get(t.scope.cloud())?;
    record.write(&plan.target, &palisade::ownership::intents(plan))?;
    let result = runtime()?.block_on(palisade::apply::apply(plan, t, provider.as_ref()));
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
        Format::Json | Format::Sarif | Format::Junit | Format::Markdown => println!(
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApplyOutput<'a> {
    pub(crate) plan: &'a Planned,
    pub(crate) apply: Option<&'a ApplyReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) api_calls: &'a [ApiCallCount],
}
