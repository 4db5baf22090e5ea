//! `palisade plan`: a target planned live (read-only calls) or against a snapshot.

use super::*;

#[derive(clap::Args)]
pub(crate) struct PlanArgs {
    /// Policy directory.
    #[arg(long, env = "PALISADE_POLICIES")]
    pub(crate) policies: PathBuf,
    /// Target name; optional when the source defines one target (or with --inventory).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Plan offline against this inventory snapshot instead of observing the cloud.
    #[arg(long)]
    pub(crate) inventory: Option<PathBuf>,
    /// Revision to record in the plan (e.g. a Git commit id).
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// Exit 2 when the plan has changes (0: none, 1: error or refused).
    #[arg(long)]
    pub(crate) detailed_exitcode: bool,
    /// The controller's history database, read-only, for its ownership record. Without
    /// it (a pull-request plan in CI) ownership is decided on tags alone and the plan
    /// says so ("ownership: unverified"); nothing is ever written.
    #[arg(long, env = "PALISADE_HISTORY")]
    pub(crate) history: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) settings: SettingsArgs,
    #[command(flatten)]
    pub(crate) cloud: CloudArgs,
}

pub(crate) fn run(args: PlanArgs) -> Result<ExitCode> {
    let PlanArgs {
        policies,
        target,
        inventory,
        revision,
        format,
        detailed_exitcode,
        history,
        settings,
        cloud,
    } = args;
    let snapshot = inventory.as_deref().map(read_inventory).transpose()?;
    let (set, index, scope) = load_target(
        &policies,
        target.as_deref(),
        snapshot.as_ref().map(|i| i.target.as_str()),
    )?;
    let target = &set.targets[index];
    let providers = cloud.providers()?;
    let planned = match snapshot {
        Some(mut inv) => {
            // A snapshot is observed without the policies' `managedGroup`s: take them
            // over in memory, as observing would.
            let mut own = palisade_providers::Ownership::unverified(target.name());
            palisade::compile::declare_groups(&set, target.name(), &mut own);
            own.apply_declared(&mut inv);
            plan_with(
                &set,
                target,
                inv,
                None,
                &settings.settings(),
                revision.as_deref(),
            )
        }
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
        Format::Markdown => print!(
            "{}",
            palisade::plan::render_markdown(&planned.plan, &planned.desired)
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

/// The ownership record and the last enforced desired state of `target` from the
/// controller's history, read-only.
pub(crate) fn read_record(
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

pub(crate) fn print_ownership(planned: &Planned) {
    if planned.ownership == palisade_providers::OwnershipBasis::Tags {
        println!(
            "\nownership: unverified — decided on tags alone (no --history); the controller decides on its ownership record"
        );
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlanOutput<'a> {
    #[serde(flatten)]
    pub(crate) planned: &'a Planned,
    pub(crate) api_calls: &'a [ApiCallCount],
}
