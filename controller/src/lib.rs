//! Palisade's engine: policies in, a plan out, the plan applied through a provider.
//!
//! Stages, each usable on its own and importing only the ones before it:
//! [`policy`] (the language, loading, file-only checks) → [`compile`] (policies +
//! inventory → desired state) → [`check`] (guardrails on a desired state or an
//! inventory) → [`plan`] (desired vs observed → [`plan::Plan`]) → [`apply`] (executes a
//! plan through a [`palisade_providers::Provider`]).

pub mod policy;
pub mod compile;
