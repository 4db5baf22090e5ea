//! Malformed and hostile policy sources: each case pins the diagnostic kind and its
//! `file:line` (and that nothing panics or runs away on hostile input).

use std::path::Path;

use palisade::policy::{DiagnosticKind as K, Limits, load_dir};

const HEAD: &str = "apiVersion: palisade.dev/v1alpha1\n";

fn target() -> String {
    format!(
        "{HEAD}kind: Target\nmetadata: {{ name: t }}\nspec:\n  aws: {{ region: us-east-1, accountId: \"123456789012\" }}\n---\n"
    )
}

/// A valid AWS policy named `name` for function `f`, with `extra` appended to its spec.
fn policy(name: &str, f: &str, extra: &str) -> String {
    format!(
        "{HEAD}kind: FunctionPolicy\nmetadata: {{ name: {name} }}\nspec:\n  target: t\n  functions: {{ names: [{f}] }}\n  network: {{ vpc: {{ id: vpc-1 }}, subnets: {{ ids: [subnet-1] }} }}\n{extra}"
    )
}

struct Case {
    name: &'static str,
    file: &'static str,
    text: Vec<u8>,
    kind: K,
    line: u32,
}

fn case(name: &'static str, text: impl Into<Vec<u8>>, kind: K, line: u32) -> Case {
    Case {
        name,
        file: "p.yaml",
        text: text.into(),
        kind,
        line,
    }
}

/// Run `palisade`'s full validation (loader + file checks + compile + guardrails) on a
/// directory holding `files`.
fn diagnostics(files: &[(&str, &[u8])]) -> Vec<palisade::policy::Diagnostic> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    run(dir.path())
}

fn run(root: &Path) -> Vec<palisade::policy::Diagnostic> {
    let (set, mut d) = load_dir(root, &Limits::default());
    d.extend(palisade::validate_set(&set, &Default::default()));
    d
}

fn cases() -> Vec<Case> {
    let t = target();
    let rule = |body: &str| format!("  egress:\n    - {{ name: r, {body} }}\n");
    vec![
        case(
            "unknown field in spec",
            format!("{t}{}", policy("p", "f", "  colour: red\n")),
            K::UnknownField,
            14,
        ),
        case(
            "unknown top-level field",
            format!(
                "{t}{HEAD}kind: Target\nmetadata: {{ name: u }}\nspec: {{ aws: {{ region: r, accountId: \"123456789012\" }} }}\nstatus: {{}}\n"
            ),
            K::UnknownField,
            11,
        ),
        case(
            "unknown field in metadata",
            format!(
                "{t}{HEAD}kind: Target\nmetadata: {{ name: u, namespace: x }}\nspec: {{ aws: {{ region: r, accountId: \"123456789012\" }} }}\n"
            ),
            K::UnknownField,
            9,
        ),
        case(
            "duplicate key",
            format!(
                "{t}{}",
                policy("p", "f", "  mode: audit\n  mode: enforce\n")
            ),
            K::DuplicateKey,
            15,
        ),
        case(
            "missing spec field",
            format!(
                "{t}{HEAD}kind: FunctionPolicy\nmetadata: {{ name: p }}\nspec:\n  target: t\n  functions: {{ names: [f] }}\n"
            ),
            K::MissingField,
            12,
        ),
        case(
            "missing kind",
            format!("{t}{HEAD}metadata: {{ name: p }}\nspec: {{}}\n"),
            K::MissingField,
            7,
        ),
        case(
            "wrong apiVersion",
            format!(
                "{t}apiVersion: palisade.dev/v2\nkind: Target\nmetadata: {{ name: u }}\nspec: {{}}\n"
            ),
            K::UnsupportedApiVersion,
            7,
        ),
        case(
            "unknown kind",
            format!("{t}{HEAD}kind: NetworkPolicy\nmetadata: {{ name: u }}\nspec: {{}}\n"),
            K::UnknownKind,
            8,
        ),
        case(
            "bad port spec",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { cidr: 10.0.0.0/8 } ], ports: [ tcp/70000 ]")
                )
            ),
            K::InvalidValue,
            15,
        ),
        case(
            "reversed port range",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { cidr: 10.0.0.0/8 } ], ports: [ tcp/9-1 ]")
                )
            ),
            K::InvalidValue,
            15,
        ),
        case(
            "bad cidr",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { cidr: 10.0.0.0/33 } ], ports: [ tcp/1 ]")
                )
            ),
            K::InvalidValue,
            15,
        ),
        case(
            "peer with two keys",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { cidr: 10.0.0.0/8, policy: q } ], ports: [ tcp/1 ]")
                )
            ),
            K::InvalidValue,
            15,
        ),
        case(
            "unknown mode",
            format!("{t}{}", policy("p", "f", "  mode: dry-run\n")),
            K::InvalidValue,
            14,
        ),
        case(
            "syntax error",
            format!("{t}{HEAD}kind: Target\nmetadata: {{ name: x\n"),
            K::Syntax,
            9,
        ),
        case(
            "tab indentation",
            format!("{t}{HEAD}kind: Target\nmetadata:\n\tname: x\n"),
            K::Syntax,
            10,
        ),
        case(
            "not utf-8",
            [
                t.as_bytes(),
                HEAD.as_bytes(),
                b"kind: Target\nmetadata: { name: \"\xff\" }\n",
            ]
            .concat(),
            K::NotUtf8,
            9,
        ),
        case(
            "billion laughs",
            format!(
                "{t}a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
            ),
            K::ResourceLimit,
            0,
        ),
        case(
            "deep nesting",
            format!("{t}x: {}{}\n", "[".repeat(200), "]".repeat(200)),
            K::ResourceLimit,
            7,
        ),
        case(
            "duplicate name",
            format!("{t}{}---\n{}", policy("p", "f", ""), policy("p", "g", "")),
            K::DuplicateName,
            17,
        ),
        case(
            "unknown target",
            format!(
                "{t}{}",
                policy("p", "f", "").replace("target: t", "target: nope")
            ),
            K::UnknownTarget,
            11,
        ),
        case(
            "unknown policy peer",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { policy: ghost } ], ports: [ tcp/1 ]")
                )
            ),
            K::UnknownPolicy,
            15,
        ),
        case(
            "unknown endpoint peer",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { endpoint: sqs } ], ports: [ tcp/443 ]")
                )
            ),
            K::UnknownEndpoint,
            15,
        ),
        case(
            "deny on aws",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    "  deny:\n    - { name: d, to: [ { cidr: 0.0.0.0/0 } ], ports: [ all ] }\n"
                )
            ),
            K::WrongCloud,
            15,
        ),
        case(
            "service tag on aws",
            format!(
                "{t}{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { serviceTag: Sql } ], ports: [ tcp/1433 ]")
                )
            ),
            K::WrongCloud,
            15,
        ),
        case(
            "vnet on aws",
            format!(
                "{t}{}",
                policy("p", "f", "").replace("network: {", "network: { vnet: v,")
            ),
            K::WrongCloud,
            13,
        ),
        case(
            "too many security groups",
            format!(
                "{t}{}",
                policy("p", "f", "").replace(
                    "network: {",
                    "network: { securityGroups: [sg-1, sg-2, sg-3, sg-4, sg-5],"
                )
            ),
            K::LambdaQuota,
            13,
        ),
        case(
            "too many subnets",
            format!(
                "{t}{}",
                policy("p", "f", "").replace(
                    "ids: [subnet-1]",
                    &format!(
                        "ids: [{}]",
                        (1..=17)
                            .map(|i| format!("subnet-{i}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                )
            ),
            K::LambdaQuota,
            13,
        ),
        case(
            "function selected by two policies",
            format!("{t}{}---\n{}", policy("p", "f", ""), policy("q", "f", "")),
            K::OverlappingSelection,
            20,
        ),
        case(
            "one-sided rule",
            format!(
                "{t}{}---\n{}",
                policy(
                    "p",
                    "f",
                    &rule("to: [ { policy: q } ], ports: [ tcp/5432 ]")
                ),
                policy("q", "g", "")
            ),
            K::OneSidedRule,
            15,
        ),
        case(
            "empty function selector",
            format!(
                "{t}{}",
                policy("p", "f", "").replace("{ names: [f] }", "{}")
            ),
            K::EmptySelection,
            12,
        ),
        case(
            "bad account id",
            format!(
                "{HEAD}kind: Target\nmetadata: {{ name: t }}\nspec: {{ aws: {{ region: r, accountId: \"12345\" }} }}\n"
            ),
            K::InvalidValue,
            4,
        ),
        case(
            "invalid name",
            format!("{t}{}", policy("Payments_API", "f", "")),
            K::InvalidValue,
            9,
        ),
        case(
            "null scalar into string",
            format!(
                "{t}{}",
                policy("p", "f", "").replace("target: t", "target:")
            ),
            K::InvalidValue,
            11,
        ),
        case(
            "guardrail violated by a policy",
            format!(
                "{t}{}---\n{HEAD}kind: Guardrail\nmetadata: {{ name: g }}\nspec:\n  controls: [CIS-AWS-5.2]\n  forbid: [ {{ direction: ingress, peer: {{ cidr: 0.0.0.0/0 }} }} ]\n",
                policy(
                    "p",
                    "f",
                    "  ingress:\n    - { name: ssh, from: [ { cidr: 0.0.0.0/0 } ], ports: [ tcp/22 ] }\n"
                )
            ),
            K::GuardrailViolation,
            15,
        ),
        case(
            "guardrail without controls",
            format!("{HEAD}kind: Guardrail\nmetadata: {{ name: g }}\nspec: {{ controls: [] }}\n"),
            K::MissingField,
            1,
        ),
    ]
}

#[test]
fn malformed_and_hostile_sources_are_located_errors() {
    let cases = cases();
    assert!(cases.len() >= 25, "keep at least 25 cases");
    let mut failures = Vec::new();
    for c in cases {
        let d = diagnostics(&[(c.file, &c.text)]);
        let hit = d.iter().find(|x| x.kind == c.kind && x.is_error());
        let Some(hit) = hit else {
            failures.push(format!("{}: expected {:?}, got {d:?}", c.name, c.kind));
            continue;
        };
        let Some(loc) = hit.location.as_ref() else {
            failures.push(format!("{}: no location", c.name));
            continue;
        };
        if loc.file != Path::new(c.file) || (c.line > 0 && loc.line != c.line) {
            failures.push(format!("{}: expected line {}, got {hit}", c.name, c.line));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let t = target();
    let a = format!("{t}{}", policy("p", "f", "  colour: red\n"));
    let b = policy("q", "g", "  mode: dry-run\n");
    let d = diagnostics(&[("a.yaml", a.as_bytes()), ("sub/b.yaml", b.as_bytes())]);
    assert!(
        d.iter().any(|x| x.kind == K::UnknownField
            && x.location.as_ref().unwrap().file == Path::new("a.yaml"))
    );
    assert!(d.iter().any(|x| x.kind == K::InvalidValue
        && x.location.as_ref().unwrap().file == Path::new("sub/b.yaml")));
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.yaml"), vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let d = run(dir.path());
    assert!(d.iter().any(|x| x.kind == K::FileTooLarge), "{d:?}");
}

#[test]
fn too_many_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_documents: 3,
        ..Limits::default()
    };
    std::fs::write(
        dir.path().join("many.yaml"),
        "a: 1\n---\na: 1\n---\na: 1\n---\na: 1\n---\na: 1\n",
    )
    .unwrap();
    let (_, d) = load_dir(dir.path(), &limits);
    assert!(
        d.iter()
            .any(|x| matches!(x.kind, K::TooManyDocuments | K::ResourceLimit)),
        "{d:?}"
    );
}

#[cfg(unix)]
#[test]
fn symlink_out_of_the_root_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.yaml"), target()).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        root.path().join("link.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("dir")).unwrap();
    let (set, d) = load_dir(root.path(), &Limits::default());
    let escapes: Vec<_> = d.iter().filter(|x| x.kind == K::SymlinkEscape).collect();
    assert_eq!(escapes.len(), 2, "{d:?}");
    assert!(
        set.targets.is_empty(),
        "nothing from outside the root is loaded"
    );
}

#[cfg(unix)]
#[test]
fn symlink_loop_inside_the_root_terminates() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("a")).unwrap();
    std::os::unix::fs::symlink(root.path(), root.path().join("a/up")).unwrap();
    std::fs::write(root.path().join("a/t.yaml"), target()).unwrap();
    let (set, _) = load_dir(root.path(), &Limits::default());
    assert_eq!(set.targets.len(), 1);
}

#[test]
fn example_repository_is_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-example");
    let d = run(&root);
    let errors: Vec<_> = d.iter().filter(|x| x.is_error()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
