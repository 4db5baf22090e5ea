//! `palisade validate`: every check of a policy directory, all errors at once.

use super::*;

#[derive(clap::Args)]
pub(crate) struct ValidateArgs {
    /// Policy directory.
    pub(crate) path: PathBuf,
    /// Inventory snapshot(s) to resolve selectors against (repeatable).
    #[arg(long)]
    pub(crate) inventory: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
}

pub(crate) fn run(args: ValidateArgs) -> Result<ExitCode> {
    let ValidateArgs {
        path,
        inventory,
        format,
    } = args;
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
