//! Diagnostics: every problem found in a policy source, located at `file:line:column`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where something is in the policy source. Lines and columns start at 1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceLocation {
    /// Path relative to the policy root.
    pub file: PathBuf,
    /// Line, from 1; 0 when unknown.
    pub line: u32,
    /// Column, from 1; 0 when unknown.
    pub column: u32,
}

impl SourceLocation {
    /// A location in `file` at `line:column`.
    pub fn new(file: impl Into<PathBuf>, line: u32, column: u32) -> Self {
        SourceLocation {
            file: file.into(),
            line,
            column,
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.file.display(),
            self.line.max(1),
            self.column.max(1)
        )
    }
}

/// How bad a diagnostic is. Errors fail `validate` and block enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks the revision.
    Error,
    /// Worth a look; does not block.
    Warning,
}

/// What went wrong: one variant per problem a caller or test may tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiagnosticKind {
    /// The file could not be read.
    Io,
    /// The file is not valid UTF-8.
    NotUtf8,
    /// The file is larger than the configured limit.
    FileTooLarge,
    /// The policy tree holds more files than the configured limit.
    TooManyFiles,
    /// The policy tree is too big as a whole: too many entries, bytes, or nested
    /// directories.
    SourceTooLarge,
    /// A tree entry name that is not a safe file name (empty, `.`, `..`, `.git`, holds
    /// `/`, `\\` or NUL, or is not UTF-8).
    UnsafeName,
    /// A file holds more documents than the configured limit.
    TooManyDocuments,
    /// A symlink points outside the policy root (or loops).
    SymlinkEscape,
    /// The YAML is not well-formed.
    Syntax,
    /// An alias, depth, node or size budget was exceeded (e.g. a "billion laughs").
    ResourceLimit,
    /// A field the language does not have.
    UnknownField,
    /// A mapping key given twice.
    DuplicateKey,
    /// A required field is missing.
    MissingField,
    /// A value of the wrong type or form.
    InvalidValue,
    /// `apiVersion` is not `palisade.dev/v1alpha1`.
    UnsupportedApiVersion,
    /// `kind` is not one of `Target`, `FunctionPolicy`, `Guardrail`.
    UnknownKind,
    /// Two documents of the same kind with the same name.
    DuplicateName,
    /// A policy names a target that does not exist.
    UnknownTarget,
    /// A peer names a policy that does not exist in the same target.
    UnknownPolicy,
    /// A peer names an endpoint no policy of the target declares.
    UnknownEndpoint,
    /// A field that does not apply to the target's cloud (e.g. `deny` on AWS).
    WrongCloud,
    /// A function would get more than 5 security groups or 16 subnets (Lambda quotas).
    LambdaQuota,
    /// An NSG priority outside 100–4095 (4096 ends every managed NSG), or two rules with
    /// the same priority.
    NsgPriority,
    /// A managed group would hold more rules than the cloud allows.
    RuleQuota,
    /// One function selected by two policies.
    OverlappingSelection,
    /// Two Targets cover the same cloud scope (AWS account and region, Azure
    /// subscription and resource group): they would prune each other's resources.
    OverlappingTargets,
    /// A selector selects nothing (no function, no VPC, no subnet).
    EmptySelection,
    /// A selector that must pick exactly one thing picked several.
    AmbiguousSelection,
    /// A may send to B but B's policy does not admit A.
    OneSidedRule,
    /// A guardrail is violated.
    GuardrailViolation,
    /// The source defines no policy at all.
    EmptySource,
    /// A rule the cloud cannot express where it applies (an ingress peer that an Azure
    /// function app's access restrictions cannot name): it admits nothing there.
    NotExpressible,
}

impl fmt::Display for DiagnosticKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// One problem in the policy source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Where; `None` for problems of the whole source.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
    /// Error or warning.
    pub severity: Severity,
    /// What kind of problem.
    pub kind: DiagnosticKind,
    /// What is wrong and what was expected.
    pub message: String,
    /// Control ids, for guardrail violations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<String>,
}

impl Diagnostic {
    /// An error at `location`.
    pub fn error(
        kind: DiagnosticKind,
        location: Option<SourceLocation>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            location,
            severity: Severity::Error,
            kind,
            message: message.into(),
            controls: Vec::new(),
        }
    }

    /// A warning at `location`.
    pub fn warning(
        kind: DiagnosticKind,
        location: Option<SourceLocation>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(kind, location, message)
        }
    }

    /// Whether this blocks the revision.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}]: {}", self.kind, self.message)?;
        if !self.controls.is_empty() {
            write!(f, " (controls: {})", self.controls.join(", "))?;
        }
        Ok(())
    }
}
