//! `palisade observe`: one target's cloud as an inventory snapshot (read-only).

use super::*;

#[derive(clap::Args)]
pub(crate) struct ObserveArgs {
    /// Policy directory (for the target's account, region and role).
    #[arg(long, env = "PALISADE_POLICIES")]
    pub(crate) policies: PathBuf,
    /// Target name; optional when the source defines one target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    #[command(flatten)]
    pub(crate) cloud: CloudArgs,
}

pub(crate) fn run(args: ObserveArgs) -> Result<ExitCode> {
    let ObserveArgs {
        policies,
        target,
        cloud,
    } = args;
    let (set, index, t) = load_target(&policies, target.as_deref(), None)?;
    let providers = cloud.providers()?;
    let provider = providers.get(t.scope.cloud())?;
    // Read-only, without the record: ownership as the tags claim it.
    let own = palisade_providers::Ownership::unverified(&t.name);
    let rt = runtime()?;
    let mut inv = rt.block_on(provider.observe(&t, &own))?;
    // Azure: the access restrictions of the apps a policy selects (one read each).
    let at = PlanTarget {
        set: &set,
        doc: &set.targets[index],
        scope: &t,
    };
    for f in rt.block_on(palisade::planning::observe_inbound(
        at,
        provider.as_ref(),
        &mut inv,
    ))? {
        eprintln!("warning: {}: {}", f.resource, f.message);
    }
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
