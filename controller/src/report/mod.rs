//! Rendering of compliance reports and of `validate` / `plan` results for auditors and CI
//! tools: JSON, CSV, Markdown, JUnit XML, SARIF 2.1.0, one self-contained HTML file, and
//! OSCAL assessment results ([`oscal`]).

pub mod oscal;

use std::fmt::Write as _;

use serde_json::json;

use crate::check::Finding;
use crate::history::ComplianceReport;
use crate::policy::Diagnostic;

/// An RFC 3339 UTC time from Unix milliseconds.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Characters that have no place in a name shown to people: control characters, line
/// separators, and Unicode format characters (bidi overrides and isolates, zero-width
/// joiners, soft hyphens…) that can make a name read as something else. Every renderer
/// of text from the cloud or the policies for people (PR comments, chat) drops them.
pub fn is_hidden(c: char) -> bool {
    palisade_providers::model::is_hidden(c)
}

/// Escape text for XML and HTML (element content and quoted attributes).
pub fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV: one row per control × finding (controls without findings get one compliant row).
pub fn csv(r: &ComplianceReport) -> String {
    let mut out = String::from("control,status,target,resource,guardrail,message,opened,closed\n");
    for c in &r.controls {
        let mine: Vec<_> = r
            .findings
            .iter()
            .filter(|s| s.finding.controls.contains(&c.control))
            .collect();
        if mine.is_empty() {
            let _ = writeln!(out, "{},compliant,,,,,,", csv_field(&c.control));
        }
        for s in mine {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                csv_field(&c.control),
                if s.closed_at.is_none() {
                    "open"
                } else {
                    "closed"
                },
                csv_field(&s.target),
                csv_field(&s.finding.resource.to_string()),
                csv_field(s.finding.guardrail.as_deref().unwrap_or("")),
                csv_field(&s.finding.message),
                time(s.opened_at),
                s.closed_at.map(time).unwrap_or_default()
            );
        }
    }
    out
}

/// How the evidence behind a report is kept: printed in the report's own header.
pub const EVIDENCE_NOTE: &str = "Evidence: every event row carries the hash of the row before it; \
`palisade report --verify` recomputes the chain and names the first row that was changed or \
removed. Retention (--history-retention) deletes events older than its window, records what it \
deleted, and never deletes the opening of a finding still open nor the newest revision enforced, \
so a violation older than the window still counts.";

/// Markdown summary.
pub fn markdown(r: &ComplianceReport) -> String {
    let mut out = format!(
        "# Palisade compliance report\n\nPeriod: {} — {}{}{}\n\nA control is compliant for the period when no finding naming it was open at any time in it. {EVIDENCE_NOTE}\n\n## Summary\n\n{}\n## Controls\n\n| control | status | resources with findings | open at end |\n|---|---|---|---|\n",
        time(r.since),
        time(r.until),
        r.target
            .as_ref()
            .map(|t| format!(", target {t}"))
            .unwrap_or_default(),
        r.control
            .as_ref()
            .map(|c| format!(", control {c}"))
            .unwrap_or_default(),
        summary_lines(r)
            .iter()
            .map(|l| format!("- {l}\n"))
            .collect::<String>(),
    );
    for c in &r.controls {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            c.control,
            c.status,
            c.resources.len(),
            c.open_at_end
        );
    }
    out.push_str("\n## Targets\n\n| target | reconciles | failed | drift detected | drift reverted | changes applied | changes failed | open findings |\n|---|---|---|---|---|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.target,
            t.reconciles,
            t.failed_reconciles,
            t.drift_detected,
            t.drift_reverted,
            t.changes_applied,
            t.changes_failed,
            t.open_findings
        );
    }
    out.push_str("\n## Drift\n\n| detected | target | resource | change | reverted |\n|---|---|---|---|---|\n");
    for d in &r.drift {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            time(d.at),
            d.target,
            d.resource,
            d.detail.replace('|', "\\|"),
            d.reverted_at
                .map(|t| format!("{} (after {} s)", time(t), (t - d.at) / 1000))
                .unwrap_or_else(|| "not reverted".into())
        );
    }
    out
}

/// JUnit XML: a test suite per control, a test case per resource × control; a finding
/// open during the period is a failure.
pub fn junit(r: &ComplianceReport) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"palisade\">\n",
    );
    for c in &r.controls {
        let mine: Vec<_> = r
            .findings
            .iter()
            .filter(|s| s.finding.controls.contains(&c.control))
            .collect();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">",
            xml(&c.control),
            mine.len().max(1),
            mine.len()
        );
        if mine.is_empty() {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"all resources\"/>",
                xml(&c.control)
            );
        }
        for s in mine {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"{}: {}\"><failure message=\"{}\">{} (opened {}{})</failure></testcase>",
                xml(&c.control),
                xml(&s.target),
                xml(&s.finding.resource.to_string()),
                xml(&s.finding.message),
                xml(s.finding.guardrail.as_deref().unwrap_or("")),
                time(s.opened_at),
                s.closed_at
                    .map(|t| format!(", closed {}", time(t)))
                    .unwrap_or_default()
            );
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn sarif_doc(results: Vec<serde_json::Value>, rules: Vec<serde_json::Value>) -> String {
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "palisade",
                "informationUri": "https://github.com/palisade-dev/palisade",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }]
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn finding_result(f: &Finding, open: bool) -> serde_json::Value {
    let mut result = json!({
        "ruleId": f.guardrail.clone().unwrap_or_else(|| format!("{:?}", f.kind).to_lowercase()),
        "level": if open { "error" } else { "note" },
        "message": { "text": format!("{}: {}", f.resource, f.message) },
        "properties": { "target": f.target, "controls": f.controls },
    });
    if let Some(loc) = &f.location {
        result["locations"] = json!([{ "physicalLocation": {
            "artifactLocation": { "uri": loc.file.display().to_string() },
            "region": { "startLine": loc.line, "startColumn": loc.column.max(1) },
        }}]);
    }
    result
}

/// SARIF 2.1.0 of the findings, located at the policy file and line where known.
pub fn sarif(r: &ComplianceReport) -> String {
    let mut rules: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let results = r
        .findings
        .iter()
        .map(|s| {
            let id = s
                .finding
                .guardrail
                .clone()
                .unwrap_or_else(|| format!("{:?}", s.finding.kind).to_lowercase());
            rules.entry(id.clone()).or_insert_with(
                || json!({ "id": id, "properties": { "controls": s.finding.controls } }),
            );
            finding_result(&s.finding, s.closed_at.is_none())
        })
        .collect();
    sarif_doc(results, rules.into_values().collect())
}

/// SARIF of `validate` diagnostics.
pub fn sarif_diagnostics(diags: &[Diagnostic]) -> String {
    let results = diags
        .iter()
        .map(|d| {
            let v = serde_json::to_value(d).unwrap_or_default();
            let mut r = json!({
                "ruleId": v["kind"],
                "level": if d.is_error() { "error" } else { "warning" },
                "message": { "text": v["message"] },
            });
            if let Some(file) = v["file"].as_str() {
                r["locations"] = json!([{ "physicalLocation": {
                    "artifactLocation": { "uri": file },
                    "region": { "startLine": v["line"].as_u64().unwrap_or(1).max(1), "startColumn": v["column"].as_u64().unwrap_or(1).max(1) },
                }}]);
            }
            r
        })
        .collect();
    sarif_doc(results, Vec::new())
}

/// `validate` diagnostics as a pull-request comment: the counts, then a table.
pub fn markdown_diagnostics(diags: &[Diagnostic]) -> String {
    use crate::plan::markdown_cell as cell;
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let mut out = format!(
        "### Palisade validate\n\n**{errors} error(s), {} warning(s)**\n\n",
        diags.len() - errors
    );
    if diags.is_empty() {
        out.push_str("The policies are valid.\n");
        return out;
    }
    out.push_str("| | where | kind | message | controls |\n|---|---|---|---|---|\n");
    for d in diags {
        let v = serde_json::to_value(d).unwrap_or_default();
        let place = match v["file"].as_str() {
            Some(f) => format!(
                "{f}:{}:{}",
                v["line"].as_u64().unwrap_or(0),
                v["column"].as_u64().unwrap_or(0)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            if d.is_error() { "error" } else { "warning" },
            cell(&place),
            cell(v["kind"].as_str().unwrap_or("")),
            cell(&d.message),
            cell(&d.controls.join(", "))
        );
    }
    out
}

/// SARIF of a plan's findings.
pub fn sarif_findings(findings: &[Finding]) -> String {
    sarif_doc(
        findings.iter().map(|f| finding_result(f, true)).collect(),
        Vec::new(),
    )
}

/// JUnit of `validate` diagnostics: one test case per file; errors fail it.
pub fn junit_diagnostics(diags: &[Diagnostic]) -> String {
    let mut by_file: std::collections::BTreeMap<String, Vec<&Diagnostic>> = Default::default();
    for d in diags {
        let v = serde_json::to_value(d).unwrap_or_default();
        by_file
            .entry(v["file"].as_str().unwrap_or("(source)").to_string())
            .or_default()
            .push(d);
    }
    let failures = diags.iter().filter(|d| d.is_error()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"palisade validate\">\n  <testsuite name=\"policies\" tests=\"{}\" failures=\"{failures}\">\n",
        by_file.len().max(1)
    );
    if by_file.is_empty() {
        out.push_str("    <testcase classname=\"validate\" name=\"policies\"/>\n");
    }
    for (file, ds) in by_file {
        let errors: Vec<String> = ds
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        if errors.is_empty() {
            let _ = writeln!(
                out,
                "    <testcase classname=\"validate\" name=\"{}\"/>",
                xml(&file)
            );
        } else {
            let _ = writeln!(
                out,
                "    <testcase classname=\"validate\" name=\"{}\"><failure message=\"{} error(s)\">{}</failure></testcase>",
                xml(&file),
                errors.len(),
                xml(&errors.join("\n"))
            );
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// JUnit of a plan's findings: one test case per finding (a failure) or one passing case.
pub fn junit_findings(target: &str, findings: &[Finding]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"palisade plan\">\n  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n",
        xml(target),
        findings.len().max(1),
        findings.len()
    );
    if findings.is_empty() {
        let _ = writeln!(
            out,
            "    <testcase classname=\"{}\" name=\"no findings\"/>",
            xml(target)
        );
    }
    for f in findings {
        let _ = writeln!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"><failure message=\"{}\">{}</failure></testcase>",
            xml(&f.controls.join(" ")),
            xml(&f.resource.to_string()),
            xml(&f.message),
            xml(f.guardrail.as_deref().unwrap_or(""))
        );
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

fn duration(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// The summary, one line per fact, as text.
fn summary_lines(r: &ComplianceReport) -> Vec<String> {
    let s = &r.summary;
    let mut v = vec![
        format!(
            "Controls: {} compliant, {} non-compliant",
            s.controls_compliant, s.controls_non_compliant
        ),
        format!(
            "Findings: {} opened, {} closed, {} still open",
            s.findings_opened, s.findings_closed, s.findings_open
        ),
        format!(
            "Drift: {} detected, {} reverted",
            s.drift_detected, s.drift_reverted
        ),
    ];
    if let (Some(m), Some(p)) = (s.revert_median_ms, s.revert_p95_ms) {
        v.push(format!(
            "Time to revert: median {}, p95 {}",
            duration(m),
            duration(p)
        ));
    }
    v.push(format!(
        "Revisions: {} enforced, {} rejected",
        s.revisions_enforced, s.revisions_rejected
    ));
    v
}

/// The compliance-over-time chart as inline SVG.
fn chart(r: &ComplianceReport) -> String {
    let (w, h, pad) = (720.0, 200.0, 30.0);
    let n = r.series.len().max(1) as f64;
    let bar = (w - 2.0 * pad) / n;
    let mut svg = format!(
        "<svg id=\"compliance-chart\" role=\"img\" aria-label=\"Share of compliant controls over the period\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = write!(
        svg,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">100%</text><text x=\"8\" y=\"{}\" font-size=\"10\">0%</text>",
        pad,
        h - pad
    );
    for (i, p) in r.series.iter().enumerate() {
        if !p.has_data {
            // Before (or after) what the history holds: not "compliant", unknown.
            let _ = write!(
                svg,
                "<rect class=\"bar\" data-state=\"no-data\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#bbb\" stroke-dasharray=\"2,2\"><title>{}: no data</title></rect>",
                pad + i as f64 * bar + 1.0,
                pad,
                (bar - 2.0).max(1.0),
                h - 2.0 * pad,
                time(p.at)
            );
            continue;
        }
        let share = if p.total == 0 {
            1.0
        } else {
            p.compliant as f64 / p.total as f64
        };
        let bh = share * (h - 2.0 * pad);
        let colour = if share >= 1.0 {
            "#2a8a3a"
        } else if share >= 0.5 {
            "#d9a400"
        } else {
            "#c0392b"
        };
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}: {}/{} controls compliant</title></rect>",
            pad + i as f64 * bar + 1.0,
            h - pad - bh,
            (bar - 2.0).max(1.0),
            bh.max(1.0),
            time(p.at),
            p.compliant,
            p.total
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text></svg>",
        h - 10.0,
        time(r.since),
        w - pad,
        h - 10.0,
        time(r.until)
    );
    svg
}

/// A control's resources: the count, then the list grouped by target and kind, collapsed
/// when long (a large estate must still give a small report that opens fast).
fn resource_list(resources: &[String]) -> String {
    if resources.is_empty() {
        return "0".into();
    }
    let mut groups: std::collections::BTreeMap<(String, String), Vec<&str>> = Default::default();
    for r in resources {
        let (target, rest) = r.split_once(": ").unwrap_or(("", r.as_str()));
        let kind = rest.split(' ').next().unwrap_or("");
        groups
            .entry((target.to_string(), kind.to_string()))
            .or_default()
            .push(rest);
    }
    let mut out = String::new();
    for ((target, kind), items) in groups {
        let list = items
            .iter()
            .map(|x| xml(x))
            .collect::<Vec<_>>()
            .join("<br>");
        let head = format!("{}: {} × {}", xml(&target), items.len(), xml(&kind));
        if items.len() > 10 {
            let _ = write!(out, "<details><summary>{head}</summary>{list}</details>");
        } else {
            let _ = write!(out, "<div><b>{head}</b><br>{list}</div>");
        }
    }
    out
}

/// One self-contained HTML file: no script, no network fetch (a CSP forbids any).
pub fn html(r: &ComplianceReport) -> String {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
        <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
        <title>Palisade compliance report</title><style>\
        body{font-family:system-ui,sans-serif;margin:2em;max-width:75em;color:#222}\
        table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
        th{background:#f3f3f3}.compliant{color:#2a8a3a;font-weight:600}.non-compliant{color:#c0392b;font-weight:600}\
        .muted{color:#666}\
        @media print{body{margin:0;max-width:none;font-size:10pt}h2{break-after:avoid}tr,li,svg{break-inside:avoid}\
        details::details-content{content-visibility:visible;display:contents}summary{list-style:none}}\
        @page{margin:1.5cm}</style></head><body>",
    );
    let _ = write!(
        h,
        "<h1>Network compliance report</h1><p>Period <b>{}</b> to <b>{}</b>{}{}. Generated by Palisade from its own history \
         ({} events read). A control is <span class=compliant>compliant</span> for the period when no finding naming it was open at any time in it.</p><p class=muted id=\"method\">{}</p>",
        time(r.since),
        time(r.until),
        r.target
            .as_ref()
            .map(|t| format!(", target <b>{}</b>", xml(t)))
            .unwrap_or_default(),
        r.control
            .as_ref()
            .map(|c| format!(", control <b>{}</b>", xml(c)))
            .unwrap_or_default(),
        r.events_read,
        xml(EVIDENCE_NOTE)
    );
    h.push_str("<h2>Summary</h2><ul id=\"summary\">");
    for l in summary_lines(r) {
        let _ = write!(h, "<li>{}</li>", xml(&l));
    }
    h.push_str("</ul>");
    h.push_str("<h2>Compliance over time</h2><p class=muted>Share of controls without an open finding, per interval; dashed: no data (before the history began).</p>");
    h.push_str(&chart(r));
    h.push_str("<h2>Controls</h2><table id=\"controls\"><tr><th>control</th><th>status</th><th>resources with findings in the period</th><th>open at end</th></tr>");
    for c in &r.controls {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            xml(&c.control),
            c.status,
            c.status,
            resource_list(&c.resources),
            c.open_at_end
        );
    }
    h.push_str("</table><h2>Targets</h2><table id=\"targets\"><tr><th>target</th><th>reconciles</th><th>failed</th><th>drift detected</th><th>drift reverted</th><th>changes applied</th><th>changes failed</th><th>open findings</th></tr>");
    for t in &r.targets {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            xml(&t.target),
            t.reconciles,
            t.failed_reconciles,
            t.drift_detected,
            t.drift_reverted,
            t.changes_applied,
            t.changes_failed,
            t.open_findings
        );
    }
    h.push_str("</table><h2>Drift timeline</h2><table id=\"drift\"><tr><th>detected</th><th>target</th><th>resource</th><th>out-of-band change</th><th>changed by</th><th>reverted</th><th>request ids</th></tr>");
    for d in &r.drift {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(d.at),
            xml(&d.target),
            xml(&d.resource),
            xml(&d.detail),
            xml(&d
                .actor
                .as_ref()
                .map_or_else(|| "unknown".to_string(), ToString::to_string)),
            d.reverted_at
                .map(|t| format!("{} (after {} s)", time(t), (t - d.at) / 1000))
                .unwrap_or_else(|| "not reverted".into()),
            xml(&d.request_ids.join(", "))
        );
    }
    h.push_str("</table><h2>Findings</h2><table id=\"findings\"><tr><th>target</th><th>resource</th><th>controls</th><th>guardrail</th><th>finding</th><th>opened</th><th>closed</th></tr>");
    for s in &r.findings {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            xml(&s.target),
            xml(&s.finding.resource.to_string()),
            xml(&s.finding.controls.join(", ")),
            xml(s.finding.guardrail.as_deref().unwrap_or("")),
            xml(&s.finding.message),
            time(s.opened_at),
            s.closed_at.map(time).unwrap_or_else(|| "open".into())
        );
    }
    h.push_str("</table><h2>Revisions</h2><table id=\"revisions\"><tr><th>when</th><th>commit</th><th>outcome</th><th>detail</th></tr>");
    for v in &r.revisions {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            time(v.at),
            xml(&v.commit),
            xml(&v.outcome),
            xml(&v.detail)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}
