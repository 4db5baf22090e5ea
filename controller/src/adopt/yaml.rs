//! The generated documents, written by hand rather than through a serializer: the
//! layout of `policies-example` (flow style for short maps, one rule per item),
//! comments naming the cloud ids, and byte-identical output for the same input. Every
//! string from the cloud is quoted unless it is plainly safe, and comments are cut short
//! and stripped of hidden characters and line breaks.

use std::fmt::Write as _;

use palisade_providers::{Access, Cloud, Direction, model::audit_text};

use super::{PeerOut, PolicyOut};
use crate::policy::{Mode, TargetDoc};

/// A YAML scalar: plain when it cannot be mistaken for anything else, else a JSON
/// (double-quoted YAML) string.
pub(super) fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= 256
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        return s.to_string();
    }
    // A double-quoted scalar; everything outside YAML's printable set escaped (a
    // loader rejects DEL, C1 controls and non-characters even inside quotes).
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => {
                out.push(c)
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Text for a comment: one line, no hidden characters.
fn comment(s: &str) -> String {
    audit_text(s).replace(['\n', '\r'], " ")
}

/// The Target document, as read from the repository at `--policies`.
pub(super) fn target(t: &TargetDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# The target adopted by `palisade adopt`.");
    out.push_str("apiVersion: palisade.dev/v1alpha1\nkind: Target\n");
    let _ = writeln!(out, "metadata: {{ name: {} }}", scalar(t.name()));
    out.push_str("spec:\n");
    if let Some(a) = &t.spec.aws {
        let _ = write!(
            out,
            "  aws: {{ region: {}, accountId: {}",
            scalar(&a.region),
            serde_json::to_string(&a.account_id.value).unwrap_or_default()
        );
        if let Some(r) = &a.assume_role_arn {
            let _ = write!(out, ", assumeRoleArn: {}", scalar(r));
        }
        out.push_str(" }\n");
    }
    if let Some(z) = &t.spec.azure {
        out.push_str("  azure:\n");
        let _ = writeln!(out, "    subscriptionId: {}", scalar(&z.subscription_id));
        let _ = writeln!(out, "    resourceGroup: {}", scalar(&z.resource_group));
        let _ = writeln!(out, "    location: {}", scalar(&z.location));
    }
    out
}

fn peer(p: &PeerOut) -> String {
    match p {
        PeerOut::Cidr(c) => format!("{{ cidr: {} }}", scalar(c)),
        PeerOut::Policy(q) => format!("{{ policy: {} }}", scalar(q)),
        PeerOut::SecurityGroup(g) => format!("{{ securityGroup: {} }}", scalar(g)),
        PeerOut::PrefixList(l) => format!("{{ prefixList: {} }}", scalar(l)),
        PeerOut::ServiceTag(t) => format!("{{ serviceTag: {} }}", scalar(t)),
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[ {} ]", items.join(", "))
}

/// Most functions named in a document's comment (the selector names them all when it
/// selects by name).
const COMMENT_FUNCTIONS: usize = 50;

/// One generated policy.
pub(super) fn policy(p: &PolicyOut) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Adopted by `palisade adopt` from target {}: {} function(s) as they were found.",
        comment(&p.target),
        p.functions.len()
    );
    let what = match p.cloud {
        Cloud::Aws => "security group",
        Cloud::Azure => "NSG",
    };
    let _ = writeln!(
        out,
        "# Managed group: {what} {} ({}), taken over in place.",
        comment(&p.group.id),
        comment(&p.group.name)
    );
    match p.cloud {
        Cloud::Aws => {
            let _ = writeln!(
                out,
                "# Network: {} ({}), subnets {}.",
                comment(&p.network),
                comment(&p.network_name),
                comment(&p.subnets.join(", "))
            );
        }
        Cloud::Azure => {
            let _ = writeln!(
                out,
                "# Network: integration subnet {}.",
                comment(&p.subnets.join(", "))
            );
        }
    }
    for r in &p.referenced {
        let _ = writeln!(
            out,
            "# Attached, not taken over: {} ({}): {}.",
            comment(&r.id),
            comment(&r.name),
            comment(&r.why)
        );
    }
    let _ = writeln!(out, "# Functions:");
    for (name, id) in p.functions.iter().take(COMMENT_FUNCTIONS) {
        let _ = writeln!(out, "#   {} ({})", comment(name), comment(id));
    }
    if p.functions.len() > COMMENT_FUNCTIONS {
        let _ = writeln!(
            out,
            "#   and {} more (adoption.json lists them all)",
            p.functions.len() - COMMENT_FUNCTIONS
        );
    }
    if !p.inexpressible.is_empty() {
        let _ = writeln!(
            out,
            "# NOT EXPRESSIBLE, so this policy stays in audit (these rules are left out and show as audit drift):"
        );
        for i in &p.inexpressible {
            let _ = writeln!(out, "#   {}", comment(i));
        }
    }
    out.push_str("apiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\n");
    let _ = writeln!(out, "metadata: {{ name: {} }}", scalar(&p.name));
    out.push_str("spec:\n");
    let _ = writeln!(out, "  target: {}", scalar(&p.target));
    let _ = writeln!(
        out,
        "  mode: {}",
        match p.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    );
    if p.names.is_empty() {
        let tags: Vec<String> = p
            .tags
            .iter()
            .map(|(k, v)| format!("{}: {}", scalar(k), scalar(v)))
            .collect();
        let _ = writeln!(out, "  functions: {{ tags: {{ {} }} }}", tags.join(", "));
    } else {
        out.push_str("  functions:\n    names:\n");
        for n in &p.names {
            let _ = writeln!(out, "      - {}", scalar(n));
        }
    }
    out.push_str("  network:\n");
    match p.cloud {
        Cloud::Aws => {
            let _ = writeln!(out, "    vpc: {{ id: {} }}", scalar(&p.network));
            let _ = writeln!(
                out,
                "    subnets: {{ ids: {} }}",
                list(p.subnets.iter().map(|s| scalar(s)))
            );
            if !p.external.is_empty() {
                let _ = writeln!(
                    out,
                    "    securityGroups: {}",
                    list(p.external.iter().map(|s| scalar(s)))
                );
            }
        }
        Cloud::Azure => {
            let _ = writeln!(out, "    vnet: {}", scalar(&p.network_name));
            let _ = writeln!(out, "    subnet: {}", scalar(&p.subnet_name));
        }
    }
    let _ = writeln!(out, "  managedGroup: {{ id: {} }}", scalar(&p.group.id));
    if p.cloud == Cloud::Azure {
        if !p.default_deny {
            out.push_str("  defaultDeny: false\n");
        }
        out.push_str("  frontDoor: unmanaged\n");
    }
    for (section, direction, access) in [
        ("ingress", Some(Direction::Ingress), Access::Allow),
        ("egress", Some(Direction::Egress), Access::Allow),
        ("deny", None, Access::Deny),
    ] {
        let rules: Vec<_> = p
            .rules
            .iter()
            .filter(|r| r.access == access && direction.is_none_or(|d| d == r.direction))
            .collect();
        if rules.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {section}:");
        for r in rules {
            let _ = writeln!(out, "    - name: {}", scalar(&r.name));
            if access == Access::Deny && r.direction == Direction::Ingress {
                out.push_str("      direction: ingress\n");
            }
            let key = match r.direction {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            };
            let _ = writeln!(out, "      {key}: {}", list(r.peers.iter().map(peer)));
            let _ = writeln!(
                out,
                "      ports: {}",
                list(r.ports.iter().map(|p| scalar(&p.to_string())))
            );
            if let Some(prio) = r.priority {
                let _ = writeln!(out, "      priority: {prio}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_quoted_and_comments_stay_on_one_line() {
        assert_eq!(scalar("payments"), "payments");
        assert_eq!(scalar("tcp/443"), "tcp/443");
        assert_eq!(scalar("10.0.0.0/8"), "\"10.0.0.0/8\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("a: b # c"), "\"a: b # c\"");
        assert_eq!(scalar("x\ny"), "\"x\\u000ay\"");
        assert_eq!(scalar(""), "\"\"");
        assert!(!comment("evil\n- inject: true").contains('\n'));
        assert_eq!(
            scalar("a\u{7f}b\u{85}\u{ffff}"),
            "\"a\\u007fb\\u0085\\uffff\""
        );
        assert_eq!(scalar("q\"\\"), "\"q\\\"\\\\\"");
        // Every escaped string loads back as itself.
        for s in [
            "a: b",
            "x\u{7f}\u{9f}\u{fffe}y",
            "tab\there",
            "é ü 日本",
            "\u{1f600}",
        ] {
            let doc = format!(
                "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: {{ name: t, labels: {{ k: {} }} }}\nspec:\n  aws: {{ region: r, accountId: \"123456789012\" }}\n",
                scalar(s)
            );
            let (set, d) = crate::policy::load_text("t.yaml", &doc);
            assert!(d.is_empty(), "{s:?}: {d:?}\n{doc}");
            assert_eq!(set.targets[0].metadata.labels["k"], s);
        }
    }
}
