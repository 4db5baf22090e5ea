//! `palisade events setup`: print what an AWS target needs for change events (the
//! EventBridge rule, the SQS queue policy, IAM, a CloudFormation template). Creates
//! nothing and makes no cloud call.

use super::*;
use palisade::event_setup::Setup;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum EventsCommand {
    /// Print the EventBridge rule pattern, the SQS queue policy, the IAM permissions
    /// and a CloudFormation template that deliver an AWS target's change events to a
    /// queue `palisade run --aws-events-queue` reads. Creates nothing.
    Setup(SetupArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct SetupArgs {
    /// Policy directory holding the Target.
    #[arg(long, env = "PALISADE_POLICIES")]
    pub(crate) policies: PathBuf,
    /// Target name; optional when the directory defines one target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Name of the SQS queue.
    #[arg(long, default_value = "palisade-events")]
    pub(crate) queue_name: String,
    /// Output: text (each part, for people), json (one document), cloudformation (the
    /// template alone).
    #[arg(long, value_enum, default_value_t = SetupFormat::Text)]
    pub(crate) format: SetupFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SetupFormat {
    Text,
    Json,
    Cloudformation,
}

pub(crate) fn run(command: EventsCommand) -> Result<ExitCode> {
    let EventsCommand::Setup(args) = command;
    let (_, _, t) = load_target(&args.policies, args.target.as_deref(), None)?;
    let palisade_providers::TargetScope::Aws {
        region, account_id, ..
    } = &t.scope
    else {
        bail!(
            "target {} is an Azure target; change events are read from AWS (EventBridge → SQS) only: Azure drift is found by the resync and attributed from the Activity Log",
            t.name
        );
    };
    let name = &args.queue_name;
    if !palisade_providers::events::is_queue_name(name) {
        bail!("--queue-name {name:?}: expected 1–80 letters, digits, - or _");
    }
    if name.ends_with(".fifo") {
        bail!(
            "--queue-name {name:?}: EventBridge delivers to FIFO queues only with a message group id; use a standard queue"
        );
    }
    // Rule names: 64 characters of letters, digits, . - _
    let rule: String = format!("palisade-{}-changes", t.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let setup = Setup {
        account: account_id.clone(),
        region: region.clone(),
        queue_name: name.clone(),
        rule_name: rule,
    };
    match args.format {
        SetupFormat::Text => print!("{}", setup.text()),
        SetupFormat::Json => println!("{}", serde_json::to_string_pretty(&setup.document())?),
        SetupFormat::Cloudformation => {
            println!("{}", serde_json::to_string_pretty(&setup.cloudformation())?)
        }
    }
    Ok(ExitCode::SUCCESS)
}
