//! The `palisade` command: flags, logging, and calls into the library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use palisade::plan::{Settings, render_text};
use palisade::policy::{self, Diagnostic, Limits};
use palisade_providers::Inventory;

/// GitOps controller for the network perimeter of serverless functions.
#[derive(Parser, Debug)]
#[command(name = "palisade", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
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
    /// Plan one target offline against an inventory snapshot (`observe` output).
    Plan {
        /// Policy directory.
        #[arg(long, env = "PALISADE_POLICIES")]
        policies: PathBuf,
        /// Inventory snapshot; its `target` field names the target planned.
        #[arg(long)]
        inventory: PathBuf,
        /// Revision to record in the plan (e.g. a Git commit id).
        #[arg(long)]
        revision: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Exit 2 when the plan has changes (0: none, 1: error or refused).
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
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
}

impl SettingsArgs {
    fn settings(&self) -> Settings {
        Settings {
            max_deletes: self.max_deletes,
            max_delete_percent: self.max_delete_percent,
            prune: !self.no_prune,
            allow_empty: self.allow_empty,
            ..Settings::default()
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
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
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
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
        Command::Plan {
            policies,
            inventory,
            revision,
            format,
            detailed_exitcode,
            settings,
        } => {
            let inv = read_inventory(&inventory)?;
            let (set, mut diags) = policy::load_dir(&policies, &Limits::default());
            let Some(target) = set.target(&inv.target) else {
                print_diagnostics(&diags, format)?;
                bail!(
                    "the inventory is of target {:?}, which {} does not define",
                    inv.target,
                    policies.display()
                );
            };
            diags.extend(palisade::validate_set(
                &set,
                &BTreeMap::from([(inv.target.clone(), inv.clone())]),
            ));
            if diags.iter().any(Diagnostic::is_error) {
                print_diagnostics(&diags, format)?;
                eprintln!("error: the policy source has errors; nothing was planned");
                return Ok(ExitCode::from(1));
            }
            let compiled = palisade::compile::compile(&set, target, Some(&inv));
            let mut plan = palisade::plan::plan(
                &compiled.desired,
                &inv,
                None,
                &settings.settings(),
                revision.as_deref(),
            );
            plan.findings
                .extend(palisade::check::check_inventory(&set, &inv));
            plan.findings.sort();
            plan.findings.dedup();
            match format {
                Format::Text => print!("{}", render_text(&plan)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
            }
            Ok(if plan.refusal.is_some() {
                ExitCode::from(1)
            } else if detailed_exitcode && !plan.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
