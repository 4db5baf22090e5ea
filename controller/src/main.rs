//! The `palisade` command: parses the flags, sets up logging and dispatches to one file
//! per command under `cli/`.

mod cli;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

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
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check a policy directory: syntax, references, quotas, guardrails. Exit 1 on any error.
    Validate(cli::validate::ValidateArgs),
    /// Print the JSON Schema of the policy language.
    Schema,
    /// Run the controller: follow a Git repository and keep every target as it says.
    Run(Box<cli::run::RunArgs>),
    /// Compliance evidence from the history: per control, per target, drift timeline.
    Report(cli::report::ReportArgs),
    /// Read one target's cloud and print the inventory snapshot (what `plan --inventory`
    /// reads). Read-only.
    Observe(cli::observe::ObserveArgs),
    /// Plan one target: live with read-only calls, or offline against `--inventory`.
    Plan(cli::plan::PlanArgs),
    /// Plan one target, show the plan, ask, and apply it in order.
    Apply(cli::apply::ApplyArgs),
    /// Write policies that describe an existing estate as it is (zero diff), with an
    /// adoption report; `--verify` plans them. Read-only.
    Adopt(Box<cli::adopt::AdoptArgs>),
    /// Cloud change events: `events setup` prints the EventBridge rule, SQS queue policy,
    /// IAM permissions and CloudFormation an AWS target needs. Creates nothing.
    #[command(subcommand)]
    Events(cli::events::EventsCommand),
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => cli::run::run_controller(*args),
        Command::Report(args) => cli::report::run(args),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&palisade::policy::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => cli::validate::run(args),
        Command::Observe(args) => cli::observe::run(args),
        Command::Adopt(args) => cli::adopt::run(*args),
        Command::Events(command) => cli::events::run(command),
        Command::Plan(args) => cli::plan::run(args),
        Command::Apply(args) => cli::apply::run(args),
    }
}
