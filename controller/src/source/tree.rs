//! Reading Git objects within bounds: commits and trees are read only after their size
//! was checked (headers first), ancestry is walked with a limit, and the policy files are
//! taken straight from the tree — entry names are checked and never used as paths.

use super::*;
/// A tree read after its size was checked.
pub(super) fn read_tree(repo: &Repository, id: Oid) -> Result<git2::Tree<'_>, String> {
    let (size, kind) = repo
        .odb()
        .and_then(|o| o.read_header(id))
        .map_err(|e| e.to_string())?;
    if kind != ObjectType::Tree {
        return Err(format!("{id} is a {kind}, not a tree"));
    }
    if size > MAX_TREE_BYTES {
        return Err(format!(
            "a tree object of {size} bytes (at most {MAX_TREE_BYTES} are read)"
        ));
    }
    repo.find_tree(id).map_err(|e| e.to_string())
}

/// Largest commit or tag object read (a commit message of a megabyte is no commit a
/// person wrote; a hostile one of a gigabyte compresses to a few kilobytes).
const MAX_COMMIT_BYTES: usize = 1024 * 1024;
/// Most commits walked to decide ancestry.
const MAX_ANCESTRY_COMMITS: usize = 200_000;

/// Check an object's kind and size from its header before it is read.
pub(super) fn checked_header(repo: &Repository, id: Oid) -> Result<ObjectType, SourceError> {
    let (size, kind) = repo.odb()?.read_header(id)?;
    if size > MAX_COMMIT_BYTES {
        return Err(SourceError::Object(format!(
            "the {kind} object {id} is {size} bytes; at most {MAX_COMMIT_BYTES} are read"
        )));
    }
    Ok(kind)
}

/// A commit read after its size was checked.
pub(super) fn read_commit(repo: &Repository, id: Oid) -> Result<git2::Commit<'_>, SourceError> {
    match checked_header(repo, id)? {
        ObjectType::Commit => Ok(repo.find_commit(id)?),
        kind => Err(SourceError::Object(format!(
            "{id} is a {kind}, not a commit"
        ))),
    }
}

/// The commit a ref's object (a commit, or an annotated tag of one) names.
pub(super) fn peel_to_commit(repo: &Repository, mut id: Oid) -> Result<Oid, SourceError> {
    for _ in 0..8 {
        match checked_header(repo, id)? {
            ObjectType::Commit => return Ok(id),
            ObjectType::Tag => id = repo.find_tag(id)?.target_id(),
            kind => {
                return Err(SourceError::Object(format!(
                    "the tracked ref names a {kind}, not a commit"
                )));
            }
        }
    }
    Err(SourceError::Object(
        "the tracked ref names a chain of more than 8 tags".into(),
    ))
}

/// Whether `tip` descends from `base`: a walk of the tip's history, every commit
/// size-checked before it is read, at most [`MAX_ANCESTRY_COMMITS`] of them (beyond
/// that: not proven, so not a descendant).
pub(super) fn descends_from(
    repo: &Repository,
    tip: Oid,
    base: Oid,
    abort: &Abort,
) -> Result<bool, SourceError> {
    let mut queue = std::collections::VecDeque::from([tip]);
    let mut seen = std::collections::HashSet::from([tip]);
    while let Some(id) = queue.pop_front() {
        if id == base {
            return Ok(true);
        }
        if seen.len() > MAX_ANCESTRY_COMMITS {
            return Ok(false);
        }
        if let Some(why) = abort.aborted() {
            return Err(SourceError::Aborted(why));
        }
        // A commit missing from the mirror (a shallow remote) ends that line.
        let Ok(commit) = read_commit(repo, id) else {
            continue;
        };
        for parent in commit.parent_ids() {
            if seen.insert(parent) {
                queue.push_back(parent);
            }
        }
    }
    Ok(false)
}

/// Why a tree entry name cannot be a policy file name, if it cannot.
pub fn unsafe_name(name: &[u8]) -> Option<&'static str> {
    let Ok(s) = std::str::from_utf8(name) else {
        return Some("is not UTF-8");
    };
    if s.is_empty() {
        Some("is empty")
    } else if s == "." || s == ".." {
        Some("is . or ..")
    } else if s.contains('/') {
        Some("contains /")
    } else if s.contains('\\') {
        Some("contains \\")
    } else if s.contains('\0') {
        Some("contains NUL")
    } else if s.eq_ignore_ascii_case(".git") {
        Some("is .git")
    } else {
        None
    }
}

/// A policy tree inside a Git commit, read from the object store (never from disk).
/// Symlinks are resolved inside the tree; a link that leaves it is an error.
pub struct TreeFiles<'r> {
    pub(super) repo: &'r Repository,
    pub(super) root: git2::Tree<'r>,
    /// Checked while walking: a deadline or shutdown stops the walk.
    pub(super) abort: &'r Abort,
}

impl std::fmt::Debug for TreeFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeFiles")
            .field("root", &self.root.id())
            .finish()
    }
}

impl PolicyFiles for TreeFiles<'_> {
    type Key = Oid;

    fn list(&self, limits: &Limits, diags: &mut Vec<Diagnostic>) -> Vec<FileEntry<Oid>> {
        let mut walk = TreeWalk {
            files: self,
            out: Vec::new(),
            entries: 0,
            stack: Vec::new(),
            stopped: false,
            limits,
            diags,
        };
        walk.tree(&self.root, Path::new(""), &[], 0);
        walk.out
    }

    fn read(&self, entry: &FileEntry<Oid>) -> Result<Vec<u8>, String> {
        self.repo
            .find_blob(entry.key)
            .map(|b| b.content().to_vec())
            .map_err(|e| format!("cannot read the Git object: {e}"))
    }
}

pub(super) struct TreeWalk<'a, 'r> {
    files: &'a TreeFiles<'r>,
    out: Vec<FileEntry<Oid>>,
    /// Entries walked and path components looked up for symlinks: both count against
    /// `max_entries`, so links cannot buy unbounded work.
    entries: usize,
    /// Trees being walked (a link back to one of them is a loop, skipped).
    stack: Vec<Oid>,
    stopped: bool,
    limits: &'a Limits,
    diags: &'a mut Vec<Diagnostic>,
}

impl TreeWalk<'_, '_> {
    fn error(&mut self, kind: DiagnosticKind, at: &Path, message: String) {
        self.diags.push(Diagnostic::error(
            kind,
            Some(SourceLocation::new(at, 0, 0)),
            message,
        ));
    }

    fn size(&self, id: Oid) -> Result<u64, String> {
        let (size, _) = self
            .files
            .repo
            .odb()
            .and_then(|o| o.read_header(id))
            .map_err(|e| e.to_string())?;
        Ok(size as u64)
    }

    /// Count `n` units of work; false (and the walk stops) past the budget or on abort.
    fn spend(&mut self, n: usize, at: &Path) -> bool {
        self.entries += n;
        if self.entries > self.limits.max_entries {
            if !self.stopped {
                self.diags.push(policy::too_many_entries(at, self.limits));
            }
            self.stopped = true;
        }
        if self.files.abort.aborted().is_some() {
            self.stopped = true;
        }
        !self.stopped
    }

    /// Walk `tree`, shown as `rel`, which is at `phys` (its real path from the policy
    /// root: symlinks inside it resolve from there, as they would in a checkout).
    fn tree(&mut self, tree: &git2::Tree<'_>, rel: &Path, phys: &[String], depth: usize) {
        if self.stopped || self.stack.contains(&tree.id()) {
            return;
        }
        if depth > MAX_DIR_DEPTH {
            let msg = format!("directories nest deeper than {MAX_DIR_DEPTH} levels");
            self.error(DiagnosticKind::SourceTooLarge, rel, msg);
            return;
        }
        if !self.spend(tree.len(), rel) {
            return;
        }
        self.stack.push(tree.id());
        for entry in tree.iter() {
            let lossy = String::from_utf8_lossy(entry.name_bytes()).into_owned();
            if let Some(why) = unsafe_name(entry.name_bytes()) {
                let at = rel.join(lossy.replace(['/', '\0'], "?"));
                self.error(
                    DiagnosticKind::UnsafeName,
                    &at,
                    format!("tree entry {lossy:?} {why}; the whole revision is refused"),
                );
                continue;
            }
            if lossy.starts_with('.') {
                continue;
            }
            let path = rel.join(&lossy);
            match entry.filemode() {
                0o040000 => match read_tree(self.files.repo, entry.id()) {
                    Ok(t) => {
                        let mut inner = phys.to_vec();
                        inner.push(lossy.clone());
                        self.tree(&t, &path, &inner, depth + 1);
                    }
                    Err(e) => self.error(DiagnosticKind::SourceTooLarge, &path, e),
                },
                0o100644 | 0o100755 | 0o100664 => {
                    if policy::is_yaml(&lossy) {
                        self.file(entry.id(), path);
                    }
                }
                0o120000 => self.link(entry.id(), phys, &path, &lossy, depth),
                0o160000 => {} // submodules are not part of a policy tree
                mode => self.error(
                    DiagnosticKind::Io,
                    &path,
                    format!("unknown tree entry mode {mode:o}"),
                ),
            }
            if self.stopped {
                break;
            }
        }
        self.stack.pop();
    }

    fn file(&mut self, id: Oid, path: PathBuf) {
        match self.size(id) {
            Ok(size) => self.out.push(FileEntry {
                path,
                size,
                key: id,
            }),
            Err(e) => self.error(DiagnosticKind::Io, &path, format!("cannot read: {e}")),
        }
    }

    /// Resolve the link shown at `path`, which is in the directory `dir` (real path),
    /// inside the policy tree.
    fn link(&mut self, blob: Oid, dir: &[String], path: &Path, name: &str, depth: usize) {
        match self.resolve(blob, dir.to_vec(), path) {
            Ok(Some((id, 0o040000, real))) => match read_tree(self.files.repo, id) {
                Ok(t) => self.tree(&t, path, &real, depth + 1),
                Err(e) => self.error(DiagnosticKind::SourceTooLarge, path, e),
            },
            Ok(Some((id, _, _))) => {
                if policy::is_yaml(name) {
                    self.file(id, path.to_path_buf());
                }
            }
            Ok(None) => {} // the budget ran out (reported once) or the walk was aborted
            Err((kind, message)) => self.error(kind, path, message),
        }
    }

    /// Follow the link `blob` from directory `dir`: the target's (id, mode, real path).
    #[allow(clippy::type_complexity, reason = "private, one caller")]
    fn resolve(
        &mut self,
        mut blob: Oid,
        mut dir: Vec<String>,
        path: &Path,
    ) -> Result<Option<(Oid, i32, Vec<String>)>, (DiagnosticKind, String)> {
        let escape = |m: String| (DiagnosticKind::SymlinkEscape, m);
        for _ in 0..MAX_LINK_HOPS {
            let size = self.size(blob).map_err(escape)?;
            if size > MAX_LINK_BYTES as u64 {
                return Err(escape(format!("symlink target of {size} bytes")));
            }
            let bytes = self
                .files
                .repo
                .find_blob(blob)
                .map(|b| b.content().to_vec())
                .map_err(|e| escape(e.to_string()))?;
            let target = String::from_utf8(bytes)
                .map_err(|_| escape("symlink target is not UTF-8".into()))?;
            if target.starts_with('/') {
                return Err(escape(format!(
                    "symlink points to the absolute path {target:?}; expected a path inside the policy tree"
                )));
            }
            let mut parts = dir.clone();
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        if parts.pop().is_none() {
                            return Err(escape(format!(
                                "symlink points outside the policy tree (to {target:?}); expected a file or directory inside it"
                            )));
                        }
                    }
                    p => {
                        if let Some(why) = unsafe_name(p.as_bytes()) {
                            return Err((
                                DiagnosticKind::UnsafeName,
                                format!("symlink target component {p:?} {why}"),
                            ));
                        }
                        parts.push(p.to_string());
                    }
                }
            }
            if !self.spend(parts.len().max(1), path) {
                return Ok(None);
            }
            let entry = (|| {
                let mut tree = self.files.root.clone();
                let Some((last, init)) = parts.split_last() else {
                    // The policy root itself.
                    return Some((tree.id(), 0o040000));
                };
                for p in init {
                    let id = tree.get_name(p)?.id();
                    tree = read_tree(self.files.repo, id).ok()?;
                }
                let e = tree.get_name(last)?;
                Some((e.id(), e.filemode()))
            })();
            let Some((id, mode)) = entry else {
                return Err(escape(format!(
                    "symlink target {target:?} does not exist in the policy tree"
                )));
            };
            if mode == 0o120000 {
                blob = id;
                parts.pop();
                dir = parts;
                continue;
            }
            return Ok(Some((id, mode, parts)));
        }
        Err(escape(format!(
            "more than {MAX_LINK_HOPS} symlinks in a row"
        )))
    }
}
