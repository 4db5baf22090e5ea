//! One pass over one target: observe → validate against what was observed → compile →
//! plan, and the providers that do the observing. The CLI's `plan` / `apply` and the
//! controller's loop share this, so that they cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use palisade_providers::{
    ApiCallCount, Cloud, Inventory, Ownership, OwnershipBasis, Provider, ProviderError, Target,
    TargetScope,
};
use serde::Serialize;

use crate::addr::{ResourceAddr, ResourceKind};
use crate::check::{Finding, FindingKind};
use crate::compile::{DesiredState, compile};
use crate::plan::{Plan, Settings, plan};
use crate::policy::{Diagnostic, PolicySet, TargetDoc};

/// What one planning pass produced.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    /// What was observed (or read from a snapshot).
    #[serde(skip)]
    pub inventory: Inventory,
    /// What the policies want, resolved against it.
    #[serde(skip)]
    pub desired: DesiredState,
    /// The plan, with guardrail findings on everything observed.
    #[serde(flatten)]
    pub plan: Plan,
    /// Warnings from validation and compilation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Diagnostic>,
    /// What ownership was decided on: the record, or tags alone (unverified).
    pub ownership: OwnershipBasis,
}

/// Why a target could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The source has errors once resolved against the target's inventory; nothing is
    /// planned (the last good state stays enforced).
    #[error("the policy source has {} error(s); nothing was planned", .0.iter().filter(|d| d.is_error()).count())]
    Invalid(Vec<Diagnostic>),
    /// Observing the target failed.
    #[error("observing target {target} failed")]
    Observe {
        /// Target.
        target: String,
        /// Cause.
        #[source]
        source: Box<ProviderError>,
    },
    /// No provider for the target's cloud in this build or configuration.
    #[error("{0}")]
    NoProvider(String),
}

/// Plan `target` against an inventory already in hand (a snapshot or a fresh observation).
///
/// # Errors
/// [`PlanError::Invalid`] with every diagnostic when any is an error.
pub fn plan_with(
    set: &PolicySet,
    target: &TargetDoc,
    inventory: Inventory,
    previous: Option<&DesiredState>,
    settings: &Settings,
    revision: Option<&str>,
) -> Result<Planned, PlanError> {
    let compiled = compile(set, target, Some(&inventory));
    let mut diags = crate::validate_set(
        set,
        &BTreeMap::from([(target.name().to_string(), inventory.clone())]),
    );
    // Conflicts with what is observed are findings: the function or policy concerned is
    // left alone and the rest of the target is enforced. Errors from Git alone stop.
    diags.retain(|d| !compiled.conflicts.contains(d));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(PlanError::Invalid(diags));
    }
    let mut p = plan(&compiled.desired, &inventory, previous, settings, revision);
    p.findings
        .extend(compiled.conflicts.iter().map(|d| Finding {
            kind: FindingKind::InventoryConflict,
            target: target.name().to_string(),
            resource: d.location.as_ref().map_or_else(
                || ResourceAddr::new(ResourceKind::Target, target.name()),
                |l| ResourceAddr::new(ResourceKind::Source, l.to_string()),
            ),
            message: format!(
                "{}; left as it is until the conflict is resolved",
                d.message
            ),
            guardrail: None,
            controls: Vec::new(),
            location: d.location.clone(),
        }));
    p.findings
        .extend(crate::check::check_inventory(set, &inventory));
    p.findings.sort();
    p.findings.dedup();
    Ok(Planned {
        inventory,
        desired: compiled.desired,
        plan: p,
        warnings: diags,
        ownership: OwnershipBasis::Tags,
    })
}

/// What a plan is made against: the revision's policies and one of its targets, with
/// the target's cloud scope resolved once after validation.
#[derive(Debug, Clone, Copy)]
pub struct PlanTarget<'a> {
    /// Every document of the revision.
    pub set: &'a PolicySet,
    /// The target's document.
    pub doc: &'a TargetDoc,
    /// Its cloud scope.
    pub scope: &'a Target,
}

/// Observe the target through `provider`, then [`plan_with`].
///
/// # Errors
/// [`PlanError::Observe`] when the cloud could not be read; [`PlanError::Invalid`].
pub async fn observe_and_plan(
    at: PlanTarget<'_>,
    provider: &dyn Provider,
    ownership: &Ownership,
    previous: Option<&DesiredState>,
    settings: &Settings,
    revision: Option<&str>,
) -> Result<Planned, PlanError> {
    let observe_error = |source| PlanError::Observe {
        target: at.scope.name.clone(),
        source: Box::new(source),
    };
    let mut ownership = ownership.clone();
    crate::compile::declare_groups(at.set, at.doc.name(), &mut ownership);
    let mut inventory = provider
        .observe(at.scope, &ownership)
        .await
        .map_err(observe_error)?;
    let unread = observe_inbound(at, provider, &mut inventory)
        .await
        .map_err(observe_error)?;
    let mut planned = plan_with(at.set, at.doc, inventory, previous, settings, revision)?;
    planned.ownership = ownership.basis;
    planned.plan.findings.extend(unread);
    planned.plan.findings.sort();
    Ok(planned)
}

/// Azure: the access restrictions of the apps a policy selects, read one by one (see
/// [`Provider::observe_inbound`]) into `inventory`. The apps whose read failed are
/// findings; they keep what is there.
///
/// # Errors
/// When nothing could be read at all.
pub async fn observe_inbound(
    at: PlanTarget<'_>,
    provider: &dyn Provider,
    inventory: &mut Inventory,
) -> Result<Vec<Finding>, ProviderError> {
    if !matches!(at.scope.scope, TargetScope::Azure { .. }) {
        return Ok(Vec::new());
    }
    let wanted = crate::compile::selected_functions(at.set, at.doc.name(), inventory);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut read = provider.observe_inbound(at.scope, &wanted).await?;
    for f in &mut inventory.functions {
        f.inbound = read.inbound.remove(&f.id);
    }
    let names: BTreeMap<&str, &str> = inventory
        .functions
        .iter()
        .map(|f| (f.id.as_str(), f.name.as_str()))
        .collect();
    Ok(read
        .failed
        .iter()
        .map(|(id, why)| Finding {
            kind: FindingKind::Unread,
            target: at.scope.name.clone(),
            resource: ResourceAddr::function(names.get(id.as_str()).copied().unwrap_or(id)),
            message: format!(
                "its inbound access restrictions could not be read ({why}); they are left as they are until a read succeeds"
            ),
            guardrail: None,
            controls: Vec::new(),
            location: None,
        })
        .collect())
}

/// Provider settings, per cloud.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// AWS.
    #[cfg(feature = "aws")]
    pub aws: palisade_providers::aws::AwsSettings,
    /// Azure.
    #[cfg(feature = "azure")]
    pub azure: palisade_providers::azure::AzureSettings,
}

/// The providers of this process, one per cloud, created on first use.
#[derive(Default)]
pub struct Providers {
    settings: ProviderSettings,
    made: std::sync::Mutex<BTreeMap<Cloud, Arc<dyn Provider>>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("settings", &self.settings)
            .field("clouds", &self.lock().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Providers {
    /// Providers built with `settings`.
    pub fn new(settings: ProviderSettings) -> Providers {
        Providers {
            settings,
            made: Default::default(),
        }
    }

    /// Use `provider` for `cloud` (tests, fakes).
    pub fn insert(&self, cloud: Cloud, provider: Arc<dyn Provider>) {
        self.lock().insert(cloud, provider);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Cloud, Arc<dyn Provider>>> {
        self.made.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The provider for `cloud`.
    ///
    /// # Errors
    /// [`PlanError::NoProvider`] when this build has no provider for it.
    pub fn get(&self, cloud: Cloud) -> Result<Arc<dyn Provider>, PlanError> {
        let mut made = self.lock();
        if let Some(p) = made.get(&cloud) {
            return Ok(p.clone());
        }
        let p = self.make(cloud)?;
        made.insert(cloud, p.clone());
        Ok(p)
    }

    fn make(&self, cloud: Cloud) -> Result<Arc<dyn Provider>, PlanError> {
        #[cfg(feature = "aws")]
        if cloud == Cloud::Aws {
            return Ok(Arc::new(palisade_providers::aws::AwsProvider::new(
                self.settings.aws.clone(),
            )));
        }
        #[cfg(feature = "azure")]
        if cloud == Cloud::Azure {
            return Ok(Arc::new(palisade_providers::azure::AzureProvider::new(
                self.settings.azure.clone(),
            )));
        }
        Err(PlanError::NoProvider(format!(
            "this build of palisade has no {cloud} provider (cargo feature `{cloud}`)"
        )))
    }

    /// API calls of every provider made so far.
    pub fn api_calls(&self) -> Vec<ApiCallCount> {
        let mut all: Vec<ApiCallCount> = self.lock().values().flat_map(|p| p.api_calls()).collect();
        all.sort();
        all
    }
}
