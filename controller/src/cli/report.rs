//! `palisade report`: compliance evidence from the history.

use super::*;

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// History database written by `palisade run`.
    #[arg(long, env = "PALISADE_HISTORY")]
    pub(crate) history: PathBuf,
    /// Period start: `2026-03-01` or RFC 3339 (default: the history's first event).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Period end: a date (its whole day) or RFC 3339 (default: now).
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Only this target.
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// Only this control id.
    #[arg(long)]
    pub(crate) control: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub(crate) format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// First check the history's hash chain: a changed or missing row stops the report
    /// (exit 1) and names where the chain breaks; the head hash is printed to anchor
    /// elsewhere.
    #[arg(long)]
    pub(crate) verify: bool,
}

pub(crate) fn run(args: ReportArgs) -> Result<ExitCode> {
    let ReportArgs {
        history,
        since,
        until,
        target,
        control,
        format,
        output,
        verify,
    } = args;
    if !history.exists() {
        bail!("no history database at {}", history.display());
    }
    let store = palisade::history::Store::open(&history)?;
    if verify {
        let v = palisade::history::chain::verify(&store)?;
        if let Some((row, why)) = &v.broken {
            eprintln!(
                "history chain BROKEN at row {row}: {why} ({} rows read before it)",
                v.rows.saturating_sub(1)
            );
            return Ok(ExitCode::from(1));
        }
        eprintln!(
            "history chain intact: {} rows ({} written before the chain existed, {} gaps left by retention), head {}",
            v.rows,
            v.unchained,
            v.retention_gaps,
            v.head.as_deref().unwrap_or("-")
        );
    }
    let until = match until {
        Some(u) => parse_time(&u, true)?,
        None => jiff::Timestamp::now().as_millisecond(),
    };
    let since = match since {
        Some(s) => parse_time(&s, false)?,
        None => store
            .first_event_at()?
            .unwrap_or(until - 30 * 86_400_000)
            .min(until),
    };
    if since > until {
        bail!("--since is after --until");
    }
    let r =
        palisade::history::compliance(&store, since, until, target.as_deref(), control.as_deref())?;
    let text = match format {
        ReportFormat::Json => serde_json::to_string_pretty(&r)?,
        ReportFormat::Csv => palisade::report::csv(&r),
        ReportFormat::Md => palisade::report::markdown(&r),
        ReportFormat::Junit => palisade::report::junit(&r),
        ReportFormat::Sarif => palisade::report::sarif(&r),
        ReportFormat::Html => palisade::report::html(&r),
        ReportFormat::Oscal => palisade::report::oscal::oscal(&r),
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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportFormat {
    Json,
    Csv,
    Md,
    Junit,
    Sarif,
    Html,
    /// OSCAL assessment-results (JSON), for GRC tools.
    Oscal,
}

/// `2026-03-01` (start of that day, or its end when `end_of_day`) or RFC 3339, in Unix ms.
pub(crate) fn parse_time(s: &str, end_of_day: bool) -> Result<i64> {
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
