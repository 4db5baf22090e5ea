//! The real `palisade` binary: validate, schema, plan on a snapshot.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn validate_example_exits_zero() {
    let out = bin()
        .arg("validate")
        .arg(root().join("policies-example"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn unknown_field_exits_one_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: t }\nspec:\n  aws: { region: us-east-1, acountId: \"123456789012\" }\n",
    )
    .unwrap();
    let out = bin().arg("validate").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("t.yaml:5:29: error[unknown-field]: unknown field `acountId`"),
        "{stdout}"
    );
    let out = bin()
        .args(["validate", "--format", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "unknown-field")
        .expect("unknown-field diagnostic");
    assert_eq!(
        (d["file"].as_str(), d["line"].as_u64(), d["column"].as_u64()),
        (Some("t.yaml"), Some(5), Some(29))
    );
}

#[test]
fn schema_is_json_schema() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["$schema"].as_str().unwrap().contains("json-schema.org"));
}

#[test]
fn plan_on_snapshot_prints_and_json_round_trips() {
    let base = || {
        let mut c = bin();
        c.arg("plan")
            .arg("--policies")
            .arg(root().join("policies-example"))
            .arg("--inventory")
            .arg(root().join("tests/fixtures/inventory-prod-aws.json"));
        c
    };
    let out = base().arg("--detailed-exitcode").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("+ create group palisade-payments-api in vpc-0prod"),
        "{text}"
    );
    assert!(text.contains("Plan: "), "{text}");
    let out = base()
        .args(["--format", "json", "--revision", "abc"])
        .output()
        .unwrap();
    let plan: palisade::plan::Plan = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan.revision.as_deref(), Some("abc"));
    assert_eq!(
        serde_json::from_str::<palisade::plan::Plan>(&serde_json::to_string(&plan).unwrap())
            .unwrap(),
        plan
    );
}

#[test]
fn two_targets_in_one_scope_are_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = |name: &str, scope: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: {{ name: {name} }}\nspec:\n  {scope}\n"
        )
    };
    std::fs::write(
        dir.path().join("a.yaml"),
        target(
            "prod",
            "aws: { region: us-east-1, accountId: \"123456789012\" }",
        ) + "---\n"
            + &target(
                "prod-eu",
                "azure: { subscriptionId: S-1, resourceGroup: RG, location: westeurope }",
            ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        target(
            "prod-copy",
            "aws: { region: US-EAST-1, accountId: \"123456789012\" }",
        ) + "---\n"
            + &target(
                "other-region",
                "aws: { region: eu-west-1, accountId: \"123456789012\" }",
            )
            + "---\n"
            + &target(
                "eu-copy",
                "azure: { subscriptionId: s-1, resourceGroup: rg, location: westeurope }",
            ),
    )
    .unwrap();
    let out = bin().arg("validate").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let errors: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("error[overlapping-targets]"))
        .collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    // Each error names both targets and both files (targets are checked in name order).
    for (x, y) in [("\"prod\"", "prod-copy"), ("eu-copy", "prod-eu")] {
        assert!(
            errors.iter().any(|l| l.contains(x)
                && l.contains(y)
                && l.contains("a.yaml:")
                && l.contains("b.yaml:")),
            "{x} / {y}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("other-region\" covers"),
        "another region is another scope"
    );
}

/// `plan --format markdown` is the pull-request comment: compared with a golden file
/// (regenerate with `PALISADE_BLESS=1` after an intended change, and read the diff).
#[test]
fn plan_markdown_matches_the_golden_pull_request_comment() {
    let out = bin()
        .args([
            "plan",
            "--format",
            "markdown",
            "--revision",
            "0a1b2c3",
            "--policies",
        ])
        .arg(root().join("policies-example"))
        .arg("--inventory")
        .arg(root().join("tests/fixtures/inventory-prod-aws.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let golden = root().join("tests/fixtures/plan-prod-aws.md");
    if std::env::var_os("PALISADE_BLESS").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want, "the comment differs from {}", golden.display());
    // Every change is in a collapsed block and every block is closed.
    assert_eq!(
        got.matches("<details>").count(),
        got.matches("</details>").count()
    );
    assert!(got.contains("| payments-api | 5 | 3 | 0 | 0 |"), "{got}");
}

/// `validate --format markdown` is a comment too: errors in a table with file:line:col.
#[test]
fn validate_markdown_lists_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: t }\nspec:\n  aws: { region: us-east-1, acountId: \"123456789012\" }\n",
    )
    .unwrap();
    let out = bin()
        .args(["validate", "--format", "markdown"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| error | t.yaml:5:29 | unknown-field |"),
        "{md}"
    );
}
