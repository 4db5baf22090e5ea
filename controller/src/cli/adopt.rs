//! `palisade adopt`: write policies that describe an existing estate as it is
//! (read-only: nothing in the cloud is changed).

use super::*;
use palisade::adopt::{self, Options, Select};
use palisade::policy::Mode;

#[derive(clap::Args)]
pub(crate) struct AdoptArgs {
    /// Policy directory holding the Target (it may hold nothing else).
    #[arg(long, env = "PALISADE_POLICIES")]
    pub(crate) policies: PathBuf,
    /// Target name; optional when the directory defines one target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// What to adopt, all terms matching: tag:KEY=VALUE, name:PREFIX, vpc:ID, vnet:NAME,
    /// rg:NAME. Repeatable. Default: every function of the target.
    #[arg(long, value_parser = |s: &str| s.parse::<Select>())]
    pub(crate) select: Vec<Select>,
    /// Directory to write the policy repository into: new, empty, or written by an
    /// earlier `adopt` (its files are replaced; nothing else is touched).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Mode of the generated policies. Policies with rules the language cannot express
    /// stay in audit.
    #[arg(long, value_enum, default_value_t = AdoptMode::Audit)]
    pub(crate) mode: AdoptMode,
    /// After writing, plan the written policies against the same observation; exit 2
    /// unless the plan is empty, and print what is not.
    #[arg(long)]
    pub(crate) verify: bool,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub(crate) format: ReportFormat,
    #[command(flatten)]
    pub(crate) cloud: CloudArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum AdoptMode {
    Audit,
    Enforce,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ReportFormat {
    Text,
    Json,
}

/// The file that marks a directory as written by `adopt`, listing its files.
const MARKER: &str = ".palisade-adopt";

pub(crate) fn run(args: AdoptArgs) -> Result<ExitCode> {
    let AdoptArgs {
        policies,
        target,
        select,
        out,
        mode,
        verify,
        format,
        cloud,
    } = args;
    let (set, index, t) = load_target(&policies, target.as_deref(), None)?;
    let doc = &set.targets[index];
    adopt::check_input(&set).map_err(anyhow::Error::msg)?;
    if select.iter().any(|s| matches!(s, Select::ResourceGroup(_)))
        && t.scope.cloud() == palisade_providers::Cloud::Aws
    {
        bail!(
            "--select rg:… is for Azure targets (resource groups); {} is an AWS target",
            t.name
        );
    }
    let providers = cloud.providers()?;
    let provider = providers.get(t.scope.cloud())?;
    let own = palisade_providers::Ownership::unverified(&t.name);
    let rt = runtime()?;
    let mut inv = rt.block_on(provider.observe(&t, &own))?;
    // What else uses the groups of the functions in scope (AWS: one paged read).
    let groups = adopt::groups_to_read(&inv);
    if !groups.is_empty() {
        rt.block_on(provider.read_attachments(&t, &mut inv, &groups))?;
    }
    let opts = Options {
        mode: match mode {
            AdoptMode::Audit => Mode::Audit,
            AdoptMode::Enforce => Mode::Enforce,
        },
        select,
    };
    let adoption = adopt::adopt(&set, doc, &inv, &opts);
    write_out(&out, &adoption.files)?;
    let calls = providers.api_calls();
    let verification = if verify {
        let (generated, diags) = policy::load_dir(&out, &Limits::default());
        if diags.iter().any(Diagnostic::is_error) {
            print_diagnostics(&diags, Format::Text)?;
            bail!(
                "the written repository {} does not load; this is a bug in adopt",
                out.display()
            );
        }
        Some(adopt::verify(
            &generated,
            &t.name,
            &inv,
            &palisade::plan::Settings::default(),
        ))
    } else {
        None
    };
    match format {
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "report": &adoption.report,
                "verify": &verification,
            }))?
        ),
        ReportFormat::Text => {
            print!("{}", render(&adoption.report, &out));
            if let Some(v) = &verification {
                for t in &v.takes_over {
                    println!("verify: {t}");
                }
                if !v.already_managed.is_empty() {
                    println!(
                        "verify: warning: {} resource(s) Palisade already manages in this target are not described by the written policies (a controller enforcing only these, with prune on, would delete them; merge them into the repository that declares those):",
                        v.already_managed.len()
                    );
                    for m in &v.already_managed {
                        println!("  {m}");
                    }
                }
                if v.empty {
                    println!("verify: the plan of the written policies is empty (zero diff)");
                } else {
                    println!("verify: NOT EMPTY, {} difference(s):", v.differences.len());
                    for d in &v.differences {
                        println!("  {d}");
                    }
                }
            }
            print_calls(&calls);
        }
    }
    Ok(match verification {
        Some(v) if !v.empty => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

/// Write `files` under `out`, replacing what an earlier `adopt` wrote there and
/// refusing a directory that holds anything else.
fn write_out(out: &Path, files: &BTreeMap<String, String>) -> Result<()> {
    let marker = out.join(MARKER);
    let previous: Vec<String> = match std::fs::read_to_string(&marker) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => {
            let empty = match std::fs::read_dir(out) {
                Ok(mut entries) => entries.next().is_none(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
            };
            if !empty {
                bail!(
                    "{} is not empty and was not written by palisade adopt; choose a new or empty directory",
                    out.display()
                );
            }
            Vec::new()
        }
    };
    for dir in [out.to_path_buf(), out.join("policies")] {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symbolic link; adopt writes only into a plain directory",
                dir.display()
            );
        }
    }
    for old in previous.iter().filter(|f| !files.contains_key(*f)) {
        // Only names adopt itself writes: the marker is a file anyone could edit.
        if !is_adopt_file(old) {
            continue;
        }
        let path = out.join(old);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file()) {
            let _ = std::fs::remove_file(path);
        }
    }
    for (name, text) in files {
        let path = out.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symbolic link; adopt does not write through it",
                path.display()
            );
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let list: String = files.keys().map(|k| format!("{k}\n")).collect();
    std::fs::write(&marker, list).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// `targets.yaml`, `adoption.json` or `policies/NAME.yaml` with NAME a policy name.
fn is_adopt_file(name: &str) -> bool {
    matches!(name, "targets.yaml" | "adoption.json")
        || name
            .strip_prefix("policies/")
            .and_then(|n| n.strip_suffix(".yaml"))
            .is_some_and(|n| {
                !n.is_empty()
                    && n.len() <= 63
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
}

fn render(r: &adopt::Report, out: &Path) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let c = &r.counts;
    let _ = writeln!(
        s,
        "adopted target {} ({}) into {}: {} of {} function(s) in scope ({} observed) under {} policies; {} group(s) taken over, {} referenced; {} rule(s), {} not expressible",
        r.target,
        r.cloud,
        out.display(),
        c.functions_adopted,
        c.functions_in_scope,
        c.functions_observed,
        c.policies,
        c.groups_adopted,
        c.groups_referenced,
        c.rules,
        c.inexpressible
    );
    for cl in &r.clusters {
        let _ = writeln!(
            s,
            "  {} -> {} ({:?}, {} function(s), selected by {}, managed group {})",
            cl.policy,
            cl.file,
            cl.mode,
            cl.functions.len(),
            cl.selector,
            cl.managed_group
        );
        for g in &cl.referenced {
            let _ = writeln!(s, "    referenced {} ({}): {}", g.id, g.name, g.why);
        }
        for i in &cl.inexpressible {
            let _ = writeln!(s, "    NOT EXPRESSIBLE (policy stays in audit): {i}");
        }
    }
    for l in &r.left {
        let _ = writeln!(s, "  left out: {}: {}", l.function, l.why);
    }
    if !r.before.is_empty() {
        let _ = writeln!(s, "the estate as found ({} finding(s)):", r.before.len());
        for f in &r.before {
            let _ = writeln!(s, "  {:?} {}: {}", f.kind, f.resource, f.message);
        }
    }
    s
}
