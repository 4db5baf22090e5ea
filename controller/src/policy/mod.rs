//! The policy language `palisade.dev/v1alpha1`: its types, the loader, and the checks that
//! need nothing but the files.
//!
//! Three kinds of document live in multi-document YAML files anywhere under the policy
//! path: `Target` (a cloud scope), `FunctionPolicy` (where selected functions run and what
//! they may talk to) and `Guardrail` (organisation-wide constraints with control ids).
//! Every problem is a [`Diagnostic`] that names `file:line:column`.

mod diagnostic;
mod load;
mod types;
pub(crate) mod validate;

pub use diagnostic::{Diagnostic, DiagnosticKind, Severity, SourceLocation};
pub use load::{
    DirFiles, FileEntry, Limits, MAX_DIR_DEPTH, PolicyFiles, is_yaml, load, load_dir, load_str,
    load_text, too_many_entries,
};
pub use types::*;
pub use validate::validate;

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "palisade.dev/v1alpha1";
