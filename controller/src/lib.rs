//! Palisade's engine: policies in, a plan out, the plan applied through a provider.
//!
//! Stages, each usable on its own and importing only the ones before it:
//! [`policy`] (the language, loading, file-only checks) → [`compile`] (policies +
//! inventory → desired state) → [`check`] (guardrails on a desired state or an
//! inventory) → [`plan`] (desired vs observed → [`plan::Plan`]) → [`apply`] (executes a
//! plan through a [`palisade_providers::Provider`]).

pub mod addr;
pub mod adopt;
pub mod apply;
pub mod check;
pub mod compile;
pub mod event_setup;
pub mod flaps;
pub mod history;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod plan;
pub mod planning;
pub mod policy;
pub mod reconcile;
pub mod report;
pub mod secret;
pub mod source;
pub mod state;

use std::collections::BTreeMap;

use palisade_providers::Inventory;

/// Everything `palisade validate` checks on a loaded source: the file-only checks, then
/// each target compiled (against its inventory when one is given, symbolically
/// otherwise) with every guardrail evaluated on the result.
pub fn validate_set(
    set: &policy::PolicySet,
    inventories: &BTreeMap<String, Inventory>,
) -> Vec<policy::Diagnostic> {
    let mut diags = policy::validate(set);
    if set.policies.is_empty() {
        diags.push(policy::Diagnostic::warning(
            policy::DiagnosticKind::EmptySource,
            None,
            "the source defines no FunctionPolicy; the controller refuses to enforce an empty source unless told to",
        ));
    }
    for t in &set.targets {
        let inv = inventories.get(t.name());
        let compiled = compile::compile(set, t, inv);
        diags.extend(compiled.diagnostics);
        diags.extend(compiled.conflicts);
        diags.extend(
            check::check_desired(set, &compiled.desired, inv)
                .iter()
                .map(check::Finding::to_diagnostic),
        );
    }
    diags.sort();
    diags.dedup();
    diags
}
