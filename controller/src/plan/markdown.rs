//! A plan as a pull-request comment (GitHub-flavoured Markdown): the counts first, a
//! table of changes per policy, the guardrail findings, then each policy's changes in a
//! collapsed `diff` block.
//!
//! Everything in the comment that came from the cloud or from policy files (names, ids,
//! tags inside messages) is escaped: a table cell cannot break out of its row or start
//! HTML, and a code block is fenced with more backticks than any run inside it.

use super::render::change_lines;
use super::*;
use crate::compile::DesiredState;

/// Who a planned change belongs to in the comment: the policy that owns the group,
/// selects the function or associates the subnet; an endpoint's owner key otherwise.
fn owner_of(c: &PlannedChange, desired: &DesiredState) -> String {
    let by_name = || c.resource.name.clone();
    match &c.change {
        Change::SetPlacement { function, .. } => desired.placements.get(function).map_or_else(
            || "(released: no policy selects it)".to_string(),
            |p| p.policy.clone(),
        ),
        Change::SetInbound { function, .. } => desired
            .inbound
            .get(function)
            .map_or_else(by_name, |i| i.policy.clone()),
        Change::SetSubnetGroup { subnet, .. } => desired
            .subnet_groups
            .get(&subnet.to_ascii_lowercase())
            .map_or_else(by_name, |s| s.policy.clone()),
        Change::CreateGroup { owner, .. }
        | Change::DeleteGroup { owner, .. }
        | Change::CreateEndpoint { owner, .. }
        | Change::UpdateEndpoint { owner, .. }
        | Change::DeleteEndpoint { owner, .. }
        | Change::SetOwnershipTags { owner, .. } => owner.clone(),
        Change::AddRules { .. } | Change::RemoveRules { .. } => by_name(),
    }
}

/// Text for a Markdown table cell: one line, no HTML, no cell breaks, no inline-code
/// escapes, no emphasis or links.
pub fn markdown_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '`' => out.push_str("&#96;"),
            '*' | '_' | '[' | ']' | '\\' | '#' | '~' => {
                out.push('\\');
                out.push(ch);
            }
            // A mention would notify people from a cloud name (`@org/team`).
            '@' => out.push_str("@\u{200b}"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if crate::report::is_hidden(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Text for HTML (the `<summary>` line is an HTML block: Markdown escapes show).
fn html_text(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| !crate::report::is_hidden(*c))
        .collect();
    crate::report::xml(&clean).replace('@', "@\u{200b}")
}

/// GitHub refuses comments over 65,536 characters; each policy's block is cut at this
/// many lines (the JSON plan has them all), and blocks stop before the whole comment
/// would pass [`MAX_COMMENT`].
const MAX_BLOCK_LINES: usize = 200;
/// Characters of the comment at most, leaving room for the closing lines.
const MAX_COMMENT: usize = 60_000;

/// A fence longer than any run of backticks in `body` (CommonMark: a code block ends
/// only at a fence at least as long as its opening one).
fn fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for ch in body.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat((longest + 1).max(3))
}

/// Render `plan` as a pull-request comment; `desired` names the policy behind each
/// change.
pub fn render_markdown(plan: &Plan, desired: &DesiredState) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "### Palisade plan for target {}",
        markdown_cell(&plan.target)
    );
    if let Some(rev) = &plan.revision {
        let _ = write!(out, " at revision {}", markdown_cell(rev));
    }
    out.push_str("\n\n");
    let s = plan.summary;
    let drift = plan
        .changes
        .iter()
        .filter(|c| c.cause == Cause::Drift)
        .count();
    if plan.changes.is_empty() {
        out.push_str("**No changes.** The target matches the policies.");
    } else {
        let _ = write!(
            out,
            "**{} to add, {} to change, {} to destroy**",
            s.add, s.change, s.destroy
        );
        if drift > 0 {
            let _ = write!(out, " · {drift} of the changes revert drift");
        }
    }
    let _ = writeln!(
        out,
        " · {} finding{}\n",
        plan.findings.len(),
        if plan.findings.len() == 1 { "" } else { "s" }
    );
    if let Some(r) = &plan.refusal {
        let _ = writeln!(
            out,
            "> [!CAUTION]\n> **Refused — this plan will not be applied.** {}\n",
            markdown_cell(&r.reason)
        );
    }

    let mut by_owner: BTreeMap<String, Vec<&PlannedChange>> = BTreeMap::new();
    for c in &plan.changes {
        by_owner.entry(owner_of(c, desired)).or_default().push(c);
    }
    if !by_owner.is_empty() {
        out.push_str(
            "| policy | add | change | destroy | of which drift |\n|---|--:|--:|--:|--:|\n",
        );
        for (owner, changes) in &by_owner {
            let s = summarise(changes.iter().copied());
            let drift = changes.iter().filter(|c| c.cause == Cause::Drift).count();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                markdown_cell(owner),
                s.add,
                s.change,
                s.destroy,
                drift
            );
        }
        out.push('\n');
    }

    if !plan.findings.is_empty() {
        out.push_str("#### Guardrail and audit findings\n\n| resource | finding | controls |\n|---|---|---|\n");
        for f in &plan.findings {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                markdown_cell(&f.resource.to_string()),
                markdown_cell(&f.message),
                markdown_cell(&f.controls.join(", "))
            );
        }
        out.push('\n');
    }

    for (shown, (owner, changes)) in by_owner.iter().enumerate() {
        let mut body = String::new();
        let mut last: Option<(&ResourceAddr, Cause)> = None;
        for c in changes {
            if last != Some((&c.resource, c.cause)) {
                let _ = writeln!(
                    body,
                    "# {}{}",
                    c.resource,
                    if c.cause == Cause::Drift {
                        " (drift)"
                    } else {
                        ""
                    }
                );
                last = Some((&c.resource, c.cause));
            }
            for line in change_lines(&c.change) {
                // `diff` colours a line by its first character: keep `+`, `-` and `~`
                // first, and no line may carry a raw newline from the cloud.
                let line = line.replace(['\n', '\r'], " ");
                let _ = writeln!(body, "{line}");
            }
        }
        let lines = body.lines().count();
        if lines > MAX_BLOCK_LINES {
            let kept: Vec<&str> = body.lines().take(MAX_BLOCK_LINES).collect();
            body = format!(
                "{}\n… {} more lines: `palisade plan --format json` has them all\n",
                kept.join("\n"),
                lines - MAX_BLOCK_LINES
            );
        }
        let fence = fence(&body);
        let block = format!(
            "<details><summary>{} — {} change{}</summary>\n\n{fence}diff\n{body}{fence}\n\n</details>\n\n",
            html_text(owner),
            changes.len(),
            if changes.len() == 1 { "" } else { "s" },
        );
        if out.len() + block.len() > MAX_COMMENT {
            let _ = writeln!(
                out,
                "**The comment is cut here** (GitHub's size limit): the changes of {} more polic{} are in `palisade plan --format json`.\n",
                by_owner.len() - shown,
                if by_owner.len() - shown == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
            break;
        }
        out.push_str(&block);
    }
    out.push_str("<sub>Planned by `palisade plan --format markdown`; nothing was changed.</sub>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_leave_its_cell_or_its_code_block() {
        assert_eq!(
            markdown_cell("a|b<script>`x`\n# h"),
            "a\\|b&lt;script&gt;&#96;x&#96; \\# h"
        );
        assert_eq!(fence("no ticks"), "```");
        assert_eq!(
            markdown_cell("@org/team\u{202e}x"),
            "@\u{200b}org/team x".replace(' ', "")
        );
        assert_eq!(fence("name ```` inside"), "`````");
    }
}
