//! Loading a policy set: walking its files safely (a directory for `palisade validate`,
//! a Git tree for the controller, both through [`PolicyFiles`]), parsing multi-document
//! YAML with budgets, and turning every problem into a located [`Diagnostic`].
//!
//! Budgets are checked before a file is read: the walk reports each file's size (a
//! directory's metadata, a Git object's header), so a file over the limit is never
//! inflated into memory.
//!
//! Each file is read twice by the YAML parser: first every document's header
//! (`apiVersion`, `kind`), then every document into the spec type of its kind. The
//! second pass deserializes straight from the parser, so every value keeps its
//! line and column (buffering through an internally tagged enum would lose them).
//!
//! About 700 lines: the walk, the budgets and the two YAML passes share the diagnostics
//! and limits, and are read together when a loading guarantee is checked.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::types::{
    Doc, FunctionPolicySpec, GuardrailSpec, Located, Metadata, PolicySet, TargetSpec,
};
use super::{API_VERSION, Diagnostic, DiagnosticKind, SourceLocation};

/// Defences against hostile or accidental input. The defaults fit any sane policy
/// repository with a wide margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest policy file, in bytes.
    pub max_file_bytes: u64,
    /// Most YAML files under the root.
    pub max_files: usize,
    /// Most entries (files, directories, links of any name) walked under the root.
    pub max_entries: usize,
    /// Most bytes of all YAML files together.
    pub max_total_bytes: u64,
    /// Most documents in one file.
    pub max_documents: usize,
    /// Deepest nesting of mappings and sequences.
    pub max_depth: usize,
    /// Most aliases (`*ref`) in one file.
    pub max_aliases: usize,
    /// Most YAML nodes in one file.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 1024 * 1024,
            max_files: 10_000,
            max_entries: 50_000,
            max_total_bytes: 64 * 1024 * 1024,
            max_documents: 1_000,
            max_depth: 64,
            max_aliases: 256,
            max_nodes: 250_000,
        }
    }
}

/// Deepest directory nesting a walk follows.
pub const MAX_DIR_DEPTH: usize = 32;

/// One YAML file found by a [`PolicyFiles`] walk.
#[derive(Debug, Clone)]
pub struct FileEntry<K> {
    /// Path relative to the policy root (what diagnostics name).
    pub path: PathBuf,
    /// Size in bytes, known before the file is read.
    pub size: u64,
    /// How the source finds the file again.
    pub key: K,
}

/// Where policy files come from: a directory ([`DirFiles`]) or a Git tree
/// (`source::TreeFiles`). The loader never reads a file the walk did not list, and reads
/// none over the size budget.
pub trait PolicyFiles {
    /// How a file is found again by [`PolicyFiles::read`].
    type Key;
    /// Every `*.yaml` / `*.yml` file under the root (entries whose name starts with `.`
    /// are skipped). Problems of the tree itself (unsafe names, links out of the root,
    /// too many entries) are pushed to `diags` as errors.
    fn list(&self, limits: &Limits, diags: &mut Vec<Diagnostic>) -> Vec<FileEntry<Self::Key>>;
    /// The bytes of one listed file.
    ///
    /// # Errors
    /// A message saying why it cannot be read.
    fn read(&self, entry: &FileEntry<Self::Key>) -> Result<Vec<u8>, String>;
}

/// Load every policy file `files` lists, in a stable order.
///
/// Returns what could be loaded and every problem found; the caller decides what an
/// error means (for `validate`: exit 1; for the controller: reject the revision).
pub fn load<F: PolicyFiles>(files: &F, limits: &Limits) -> (PolicySet, Vec<Diagnostic>) {
    let mut set = PolicySet::default();
    let mut diags = Vec::new();
    let mut entries = files.list(limits, &mut diags);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if entries.len() > limits.max_files {
        diags.push(Diagnostic::error(
            DiagnosticKind::TooManyFiles,
            None,
            format!(
                "the policy tree holds {} YAML files; at most {} are allowed",
                entries.len(),
                limits.max_files
            ),
        ));
        return (set, diags);
    }
    let total: u64 = entries
        .iter()
        .filter(|e| e.size <= limits.max_file_bytes)
        .map(|e| e.size)
        .sum();
    if total > limits.max_total_bytes {
        diags.push(Diagnostic::error(
            DiagnosticKind::SourceTooLarge,
            None,
            format!(
                "the policy files hold {total} bytes together; at most {} are allowed",
                limits.max_total_bytes
            ),
        ));
        return (set, diags);
    }
    for entry in &entries {
        match read_file(files, entry, limits) {
            Ok(text) => load_str(&entry.path, &text, limits, &mut set, &mut diags),
            Err(d) => diags.push(d),
        }
    }
    finish(&mut set, &mut diags);
    (set, diags)
}

/// Load every `*.yaml` / `*.yml` file under the directory `root` (see [`load`]).
pub fn load_dir(root: &Path, limits: &Limits) -> (PolicySet, Vec<Diagnostic>) {
    load(&DirFiles::new(root), limits)
}

/// A policy directory on disk. Symlinks are followed when they resolve inside the root,
/// and reported otherwise.
#[derive(Debug, Clone)]
pub struct DirFiles {
    root: PathBuf,
}

impl DirFiles {
    /// The directory `root`.
    pub fn new(root: &Path) -> DirFiles {
        DirFiles {
            root: root.to_path_buf(),
        }
    }
}

impl PolicyFiles for DirFiles {
    type Key = PathBuf;

    fn list(&self, limits: &Limits, diags: &mut Vec<Diagnostic>) -> Vec<FileEntry<PathBuf>> {
        let canonical_root = match self.root.canonicalize() {
            Ok(r) => r,
            Err(e) => {
                diags.push(Diagnostic::error(
                    DiagnosticKind::Io,
                    Some(SourceLocation::new(&self.root, 0, 0)),
                    format!("cannot open policy root: {e}"),
                ));
                return Vec::new();
            }
        };
        let mut walk = DirWalk {
            root: &canonical_root,
            files: Vec::new(),
            visited: HashSet::new(),
            entries: 0,
            limits,
            diags,
        };
        walk.dir(&canonical_root, Path::new(""), 0);
        walk.files
    }

    fn read(&self, entry: &FileEntry<PathBuf>) -> Result<Vec<u8>, String> {
        std::fs::read(&entry.key).map_err(|e| format!("cannot read: {e}"))
    }
}

struct DirWalk<'a> {
    root: &'a Path,
    files: Vec<FileEntry<PathBuf>>,
    visited: HashSet<PathBuf>,
    entries: usize,
    limits: &'a Limits,
    diags: &'a mut Vec<Diagnostic>,
}

impl DirWalk<'_> {
    fn dir(&mut self, dir: &Path, rel: &Path, depth: usize) {
        if !self.visited.insert(dir.to_path_buf()) {
            return; // a symlinked directory seen before: no loops
        }
        if depth > MAX_DIR_DEPTH {
            self.diags.push(Diagnostic::error(
                DiagnosticKind::SourceTooLarge,
                Some(SourceLocation::new(rel, 0, 0)),
                format!("directories nest deeper than {MAX_DIR_DEPTH} levels"),
            ));
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.diags.push(Diagnostic::error(
                    DiagnosticKind::Io,
                    Some(SourceLocation::new(rel, 0, 0)),
                    format!("cannot read directory: {e}"),
                ));
                return;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        self.entries += entries.len();
        if self.entries > self.limits.max_entries {
            self.diags.push(too_many_entries(rel, self.limits));
            return;
        }
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str.starts_with('.') {
                continue;
            }
            let rel_path = rel.join(&name);
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let resolved = if meta.file_type().is_symlink() {
                match path.canonicalize() {
                    Ok(target) if target.starts_with(self.root) => target,
                    Ok(target) => {
                        self.diags.push(Diagnostic::error(
                            DiagnosticKind::SymlinkEscape,
                            Some(SourceLocation::new(&rel_path, 0, 0)),
                            format!(
                                "symlink points outside the policy root (to {}); expected a file or directory inside it",
                                target.display()
                            ),
                        ));
                        continue;
                    }
                    Err(e) => {
                        self.diags.push(Diagnostic::error(
                            DiagnosticKind::SymlinkEscape,
                            Some(SourceLocation::new(&rel_path, 0, 0)),
                            format!("symlink cannot be resolved: {e}"),
                        ));
                        continue;
                    }
                }
            } else {
                path
            };
            if resolved.is_dir() {
                self.dir(&resolved, &rel_path, depth + 1);
            } else if is_yaml(&name_str) && resolved.is_file() {
                match std::fs::metadata(&resolved) {
                    Ok(m) => self.files.push(FileEntry {
                        path: rel_path,
                        size: m.len(),
                        key: resolved,
                    }),
                    Err(e) => self.diags.push(Diagnostic::error(
                        DiagnosticKind::Io,
                        Some(SourceLocation::new(&rel_path, 0, 0)),
                        format!("cannot read: {e}"),
                    )),
                }
            }
        }
    }
}

/// The diagnostic of a walk that met more than `max_entries` entries.
pub fn too_many_entries(at: &Path, limits: &Limits) -> Diagnostic {
    Diagnostic::error(
        DiagnosticKind::SourceTooLarge,
        Some(SourceLocation::new(at, 0, 0)),
        format!(
            "the policy tree holds more than {} entries (files and directories of any name); split the repository or raise the limit",
            limits.max_entries
        ),
    )
}

/// Whether `name` is a policy file name.
pub fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

fn read_file<F: PolicyFiles>(
    files: &F,
    entry: &FileEntry<F::Key>,
    limits: &Limits,
) -> Result<String, Diagnostic> {
    let rel = &entry.path;
    let at = |l, c| Some(SourceLocation::new(rel, l, c));
    if entry.size > limits.max_file_bytes {
        return Err(Diagnostic::error(
            DiagnosticKind::FileTooLarge,
            at(0, 0),
            format!(
                "file is {} bytes; policy files may be at most {} bytes",
                entry.size, limits.max_file_bytes
            ),
        ));
    }
    let bytes = files
        .read(entry)
        .map_err(|e| Diagnostic::error(DiagnosticKind::Io, at(0, 0), e))?;
    if bytes.len() as u64 > limits.max_file_bytes {
        // The file grew between the walk and the read.
        return Err(Diagnostic::error(
            DiagnosticKind::FileTooLarge,
            at(0, 0),
            format!(
                "file is {} bytes; policy files may be at most {} bytes",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
        let col = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        Diagnostic::error(
            DiagnosticKind::NotUtf8,
            at(line as u32, col as u32),
            format!(
                "invalid UTF-8 at byte {}; policy files must be UTF-8 text",
                valid.len()
            ),
        )
    })
}

/// `apiVersion` and `kind` of a document; everything else is skipped in the first pass.
/// (A hand-written visitor: `#[serde(flatten)]` would buffer and lose positions.)
struct Header {
    api_version: Option<Located<String>>,
    kind: Option<Located<String>>,
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a policy document: a mapping with apiVersion, kind, metadata and spec")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Header, A::Error> {
                let mut h = Header {
                    api_version: None,
                    kind: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apiVersion" => h.api_version = Some(map.next_value()?),
                        "kind" => h.kind = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Target,
    FunctionPolicy,
    Guardrail,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Typed<S> {
    #[allow(dead_code, reason = "checked in the header pass")]
    api_version: IgnoredAny,
    #[allow(dead_code, reason = "checked in the header pass")]
    kind: IgnoredAny,
    metadata: Metadata,
    spec: S,
}

#[allow(clippy::large_enum_variant, reason = "short-lived, one per document")]
enum AnyDoc {
    Target(Typed<TargetSpec>),
    Policy(Typed<FunctionPolicySpec>),
    Guardrail(Typed<GuardrailSpec>),
    Skipped,
}

thread_local! {
    /// The kinds found by the header pass, one per document, consumed in order by the
    /// typed pass. (The YAML iterator takes a `DeserializeOwned` type, not a seed.)
    static KINDS: RefCell<VecDeque<Option<(Kind, u32)>>> = const { RefCell::new(VecDeque::new()) };
}

impl<'de> Deserialize<'de> for AnyDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match KINDS.with(|k| k.borrow_mut().pop_front()).flatten() {
            Some((Kind::Target, _)) => Typed::deserialize(d).map(AnyDoc::Target),
            Some((Kind::FunctionPolicy, _)) => Typed::deserialize(d).map(AnyDoc::Policy),
            Some((Kind::Guardrail, _)) => Typed::deserialize(d).map(AnyDoc::Guardrail),
            None => IgnoredAny::deserialize(d).map(|_| AnyDoc::Skipped),
        }
    }
}

fn options(limits: &Limits) -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 10_000;
    alias_limits.max_replay_stack_depth = 16;
    alias_limits.max_alias_expansions_per_anchor = 64;
    let file_bytes = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: limits.max_documents,
            max_depth: limits.max_depth,
            max_aliases: limits.max_aliases,
            max_anchors: limits.max_aliases,
            max_nodes: limits.max_nodes,
            max_total_scalar_bytes: file_bytes,
            max_reader_input_bytes: Some(file_bytes),
        },
        alias_limits: alias_limits,
        with_snippet: false,
    }
}

/// Parse one file's text (named `file`, relative to the policy root) into `set`.
pub fn load_str(
    file: &Path,
    text: &str,
    limits: &Limits,
    set: &mut PolicySet,
    diags: &mut Vec<Diagnostic>,
) {
    let at = |l: u32, c: u32| Some(SourceLocation::new(file, l, c));
    // Pass 1: headers.
    let mut kinds = VecDeque::new();
    let mut count = 0usize;
    let mut reader = Cursor::new(text.as_bytes());
    for header in serde_saphyr::read_with_options::<_, Header>(&mut reader, options(limits)) {
        count += 1;
        if count > limits.max_documents {
            diags.push(Diagnostic::error(
                DiagnosticKind::TooManyDocuments,
                at(0, 0),
                format!(
                    "file holds more than {} documents; split it",
                    limits.max_documents
                ),
            ));
            return;
        }
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                diags.push(yaml_diagnostic(file, &e));
                kinds.push_back(None);
                continue;
            }
        };
        kinds.push_back(check_header(file, &header, diags));
    }
    // Pass 2: typed documents.
    KINDS.with(|k| *k.borrow_mut() = kinds.clone());
    let mut reader = Cursor::new(text.as_bytes());
    let mut index = 0;
    for doc in serde_saphyr::read_with_options::<_, AnyDoc>(&mut reader, options(limits)) {
        let line = kinds.get(index).copied().flatten().map_or(0, |(_, l)| l);
        index += 1;
        match doc {
            Ok(AnyDoc::Target(t)) => set.targets.push(into_doc(t, file, line)),
            Ok(AnyDoc::Policy(p)) => set.policies.push(into_doc(p, file, line)),
            Ok(AnyDoc::Guardrail(g)) => set.guardrails.push(into_doc(g, file, line)),
            Ok(AnyDoc::Skipped) => {}
            // Documents whose header failed were reported in pass 1.
            Err(_) if kinds.get(index - 1).is_none_or(Option::is_none) => {}
            Err(e) => diags.push(yaml_diagnostic(file, &e)),
        }
    }
    KINDS.with(|k| k.borrow_mut().clear());
}

fn into_doc<S>(t: Typed<S>, file: &Path, line: u32) -> Doc<S> {
    Doc {
        metadata: t.metadata,
        spec: t.spec,
        file: file.to_path_buf(),
        line,
    }
}

fn check_header(file: &Path, h: &Header, diags: &mut Vec<Diagnostic>) -> Option<(Kind, u32)> {
    let Some(api) = &h.api_version else {
        diags.push(Diagnostic::error(
            DiagnosticKind::MissingField,
            h.kind
                .as_ref()
                .map(|k| SourceLocation::new(file, k.line, k.column)),
            format!("missing field `apiVersion`; expected `apiVersion: {API_VERSION}`"),
        ));
        return None;
    };
    if api.value != API_VERSION {
        diags.push(Diagnostic::error(
            DiagnosticKind::UnsupportedApiVersion,
            Some(SourceLocation::new(file, api.line, api.column)),
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION:?}",
                api.value
            ),
        ));
        return None;
    }
    let Some(kind) = &h.kind else {
        diags.push(Diagnostic::error(
            DiagnosticKind::MissingField,
            Some(SourceLocation::new(file, api.line, api.column)),
            "missing field `kind`; expected one of Target, FunctionPolicy, Guardrail",
        ));
        return None;
    };
    let k = match kind.value.as_str() {
        "Target" => Kind::Target,
        "FunctionPolicy" => Kind::FunctionPolicy,
        "Guardrail" => Kind::Guardrail,
        other => {
            diags.push(Diagnostic::error(
                DiagnosticKind::UnknownKind,
                Some(SourceLocation::new(file, kind.line, kind.column)),
                format!(
                    "unknown kind {other:?}; expected one of Target, FunctionPolicy, Guardrail"
                ),
            ));
            return None;
        }
    };
    Some((k, api.line.min(kind.line)))
}

/// Translate a YAML error into a diagnostic, keeping its position and kind.
fn yaml_diagnostic(file: &Path, e: &serde_saphyr::Error) -> Diagnostic {
    use serde_saphyr::Error as E;
    let e = unwrap_snippet(e);
    let loc = e
        .location()
        .map(|l| SourceLocation::new(file, l.line() as u32, l.column() as u32));
    let (kind, message) = match e {
        E::SerdeUnknownField {
            field, expected, ..
        } => (
            DiagnosticKind::UnknownField,
            format!(
                "unknown field `{field}`; expected one of {}",
                expected
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        E::SerdeMissingField { field, .. } => (
            DiagnosticKind::MissingField,
            format!("missing field `{field}`"),
        ),
        E::DuplicateMappingKey { key, .. } => (
            DiagnosticKind::DuplicateKey,
            match key {
                Some(k) => format!("duplicate key `{k}`; each key may appear once in a mapping"),
                None => "duplicate key; each key may appear once in a mapping".to_string(),
            },
        ),
        E::Budget { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::RecursiveReferencesRequireWeakTypes { .. } => (
            DiagnosticKind::ResourceLimit,
            format!(
                "{}; the file exceeds Palisade's parsing limits (aliases, depth, size)",
                strip(e)
            ),
        ),
        E::NullIntoString { .. } => (
            DiagnosticKind::InvalidValue,
            "expected a string, found null (an empty value); write a value or quote it".to_string(),
        ),
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidValue { .. }
        | E::SerdeInvalidLength { .. }
        | E::SerdeUnknownVariant { .. }
        | E::InvalidScalar { .. }
        | E::InvalidBooleanStrict { .. }
        | E::UnexpectedValueForUnit { .. }
        | E::ExternallyTaggedEnumExpectedScalarOrMapping { .. }
        | E::ExpectedMappingEndAfterEnumVariantValue { .. }
        | E::Message { .. }
        | E::QuotingRequired { .. } => (DiagnosticKind::InvalidValue, strip(e)),
        _ => (DiagnosticKind::Syntax, strip(e)),
    };
    Diagnostic::error(kind, loc, message)
}

fn unwrap_snippet(e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match e {
        serde_saphyr::Error::WithSnippet { error, .. }
        | serde_saphyr::Error::AliasError { error, .. } => unwrap_snippet(error),
        other => other,
    }
}

/// The error's message without the " at line X, column Y" the crate appends.
fn strip(e: &serde_saphyr::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Sort each kind by name and report duplicate names.
fn finish(set: &mut PolicySet, diags: &mut Vec<Diagnostic>) {
    fn dedup<S>(docs: &mut [Doc<S>], kind: &str, diags: &mut Vec<Diagnostic>) {
        docs.sort_by(|a, b| {
            a.name()
                .cmp(b.name())
                .then(a.file.cmp(&b.file))
                .then(a.line.cmp(&b.line))
        });
        for w in docs.windows(2) {
            if w[0].name() == w[1].name() {
                diags.push(Diagnostic::error(
                    DiagnosticKind::DuplicateName,
                    Some(w[1].at(&w[1].metadata.name)),
                    format!(
                        "{kind} {:?} is already defined at {}; names must be unique per kind",
                        w[1].name(),
                        w[0].at(&w[0].metadata.name)
                    ),
                ));
            }
        }
    }
    dedup(&mut set.targets, "Target", diags);
    dedup(&mut set.policies, "FunctionPolicy", diags);
    dedup(&mut set.guardrails, "Guardrail", diags);
}

/// Load a single in-memory file (for tests and tools): what [`load_dir`] does per file.
pub fn load_text(file: &str, text: &str) -> (PolicySet, Vec<Diagnostic>) {
    let mut set = PolicySet::default();
    let mut diags = Vec::new();
    load_str(
        Path::new(file),
        text,
        &Limits::default(),
        &mut set,
        &mut diags,
    );
    finish(&mut set, &mut diags);
    (set, diags)
}
