//! An in-memory provider for the engine's unit tests, property tests and benchmarks.
//!
//! It keeps one [`Inventory`] per target and applies changes to it with the same
//! semantics the real providers promise: idempotent creates and deletes, ownership tags on
//! everything created, managed groups resolved by owner key, a group still used by a
//! function or endpoint refused with a *pending* outcome (AWS `DependencyViolation`).
//! Errors can be injected per change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{Endpoint, GroupRef, Inventory, OwnedKind, Ownership, SecurityGroup, Target};
use crate::provider::{Change, Outcome, Provider, ProviderError};

type Matcher = Box<dyn Fn(&Change) -> bool + Send + Sync>;
type AnswerFactory = Box<dyn Fn() -> Result<Outcome, ProviderError> + Send + Sync>;

struct Injection {
    matches: Matcher,
    remaining: usize,
    answer: AnswerFactory,
}

/// In-memory [`Provider`]. Cheap to clone the state out of with [`FakeProvider::inventory`].
#[derive(Default)]
pub struct FakeProvider {
    state: Mutex<HashMap<String, Inventory>>,
    injections: Mutex<Vec<Injection>>,
    latency: Mutex<std::time::Duration>,
    stalls: Mutex<Vec<Matcher>>,
    next_id: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    /// What the fake's audit log says: who changed a resource (cloud id), from when.
    audit_log: Mutex<Vec<(String, i64, crate::model::Actor)>>,
    attributions_asked: AtomicU64,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider")
            .field("reads", &self.reads.load(Ordering::Relaxed))
            .field("writes", &self.writes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// A provider holding `inventory` for the target it names.
    pub fn new(inventory: Inventory) -> FakeProvider {
        let fake = FakeProvider::default();
        fake.set_inventory(inventory);
        fake
    }

    /// Replace the state of the inventory's target (e.g. to inject drift).
    pub fn set_inventory(&self, inventory: Inventory) {
        self.lock().insert(inventory.target.clone(), inventory);
    }

    /// A copy of a target's current state.
    pub fn inventory(&self, target: &str) -> Inventory {
        self.lock()
            .get(target)
            .cloned()
            .unwrap_or_else(|| Inventory {
                target: target.to_string(),
                ..Inventory::default()
            })
    }

    /// Change a target's state in place, out of band (drift).
    pub fn mutate(&self, target: &str, f: impl FnOnce(&mut Inventory)) {
        let mut state = self.lock();
        let inv = state
            .entry(target.to_string())
            .or_insert_with(|| Inventory {
                target: target.to_string(),
                ..Inventory::default()
            });
        f(inv);
    }

    /// Fail the next `times` changes matching `matches` with the error `error` builds.
    pub fn fail_when(
        &self,
        matches: impl Fn(&Change) -> bool + Send + Sync + 'static,
        times: usize,
        error: impl Fn() -> ProviderError + Send + Sync + 'static,
    ) {
        self.inject(matches, times, move || Err(error()));
    }

    /// Answer the next `times` changes matching `matches` as *pending* with `detail`
    /// (the cloud cannot do it yet), changing nothing.
    pub fn pending_when(
        &self,
        matches: impl Fn(&Change) -> bool + Send + Sync + 'static,
        times: usize,
        detail: &str,
    ) {
        let detail = detail.to_string();
        self.inject(matches, times, move || {
            Ok(Outcome {
                status: crate::provider::OutcomeStatus::Pending,
                detail: Some(detail.clone()),
                ..Outcome::applied()
            })
        });
    }

    /// Never answer a change matching `matches` (a cloud call that hangs).
    pub fn stall_when(&self, matches: impl Fn(&Change) -> bool + Send + Sync + 'static) {
        self.stalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(matches));
    }

    /// Take `latency` (tokio time) for every change from now on.
    pub fn set_apply_latency(&self, latency: std::time::Duration) {
        *self.latency.lock().unwrap_or_else(|e| e.into_inner()) = latency;
    }

    fn inject(
        &self,
        matches: impl Fn(&Change) -> bool + Send + Sync + 'static,
        times: usize,
        answer: impl Fn() -> Result<Outcome, ProviderError> + Send + Sync + 'static,
    ) {
        self.injections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Injection {
                matches: Box::new(matches),
                remaining: times,
                answer: Box::new(answer),
            });
    }

    /// Number of `observe` calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Number of `apply` calls so far (including failed ones).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Inventory>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn injected(&self, change: &Change) -> Option<Result<Outcome, ProviderError>> {
        let mut injections = self.injections.lock().unwrap_or_else(|e| e.into_inner());
        let hit = injections
            .iter_mut()
            .find(|i| i.remaining > 0 && (i.matches)(change))?;
        hit.remaining -= 1;
        Some((hit.answer)())
    }

    /// The audit log now shows `actor` changing `resource` (a cloud id) at `at_ms`.
    pub fn log_change(&self, resource: &str, at_ms: i64, actor: crate::model::Actor) {
        self.audit_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((resource.to_string(), at_ms, actor));
    }

    /// Audit-log questions answered so far (one per query).
    pub fn attributions_asked(&self) -> u64 {
        self.attributions_asked.load(Ordering::Relaxed)
    }

    fn new_id(&self, prefix: &str) -> String {
        // Shaped like the cloud's (`sg-` and 17 hex digits), so that readers of real ids
        // (change events) take them.
        format!(
            "{prefix}-0fa4e{:012x}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

fn resolve<'a>(inv: &'a mut Inventory, group: &GroupRef) -> Option<&'a mut SecurityGroup> {
    match group {
        GroupRef::Managed(owner) => {
            let id = inv.managed_group(owner)?.id.clone();
            inv.groups.iter_mut().find(|g| g.id == id)
        }
        // Only managed groups may be written; an id must still carry the ownership tags.
        GroupRef::Id(id) => inv
            .groups
            .iter_mut()
            .find(|g| g.id.eq_ignore_ascii_case(id) && g.owner().is_some()),
    }
}

fn apply_to(
    fake: &FakeProvider,
    inv: &mut Inventory,
    change: &Change,
) -> Result<Outcome, ProviderError> {
    match change {
        Change::CreateGroup {
            owner,
            name,
            network,
            tags,
            ..
        } => {
            if let Some(existing) = inv.managed_group(owner) {
                return Ok(Outcome {
                    created_id: Some(existing.id.clone()),
                    ..Outcome::already_done()
                });
            }
            let id = fake.new_id("sg");
            inv.groups.push(SecurityGroup {
                id: id.clone(),
                name: name.clone(),
                network: network.clone(),
                tags: tags.clone(),
                rules: Vec::new(),
                default_rules: Vec::new(),
                attached: None,
            });
            Ok(Outcome {
                created_id: Some(id),
                ..Outcome::applied()
            })
        }
        Change::DeleteGroup { owner, id } => {
            let Some(pos) = inv
                .groups
                .iter()
                .position(|g| g.id == *id && g.owner() == Some(owner))
            else {
                return Ok(Outcome::already_done());
            };
            let held = GroupRef::Managed(owner.clone());
            // A reference by owner key points at the owner's primary group only.
            let primary = inv.managed_group(owner).is_some_and(|g| g.id == *id);
            let in_use = primary
                && (inv.functions.iter().any(|f| {
                    f.placement
                        .as_ref()
                        .is_some_and(|p| p.groups.contains(&held))
                }) || inv.endpoints.iter().any(|e| e.groups.contains(&held))
                    || inv.subnets.iter().any(|s| s.group.as_ref() == Some(&held)));
            if in_use {
                return Ok(Outcome::pending(format!(
                    "DependencyViolation: group {id} is still in use"
                )));
            }
            inv.groups.remove(pos);
            Ok(Outcome::applied())
        }
        Change::AddRules { group, rules } => {
            let g = resolve(inv, group).ok_or_else(|| unresolved(group))?;
            let mut added = false;
            for rule in rules {
                if !g.rules.contains(rule) {
                    let mut r = rule.clone();
                    r.id = Some(format!("sgr-{}", g.rules.len()));
                    g.rules.push(r);
                    added = true;
                }
            }
            Ok(if added {
                Outcome::applied()
            } else {
                Outcome::already_done()
            })
        }
        Change::RemoveRules { group, rules } => {
            let Some(g) = resolve(inv, group) else {
                return Ok(Outcome::already_done());
            };
            let before = g.rules.len();
            g.rules.retain(|r| !rules.contains(r));
            Ok(if g.rules.len() < before {
                Outcome::applied()
            } else {
                Outcome::already_done()
            })
        }
        Change::SetPlacement {
            function, after, ..
        } => {
            let f = function_mut(inv, function, "SetPlacement")?;
            if f.placement == *after {
                return Ok(Outcome::already_done());
            }
            f.placement = after.clone();
            Ok(Outcome::applied())
        }
        Change::SetInbound {
            function, after, ..
        } => {
            let f = function_mut(inv, function, "SetInbound")?;
            if f.inbound.as_ref() == Some(after) {
                return Ok(Outcome::already_done());
            }
            f.inbound = Some(after.clone());
            Ok(Outcome::applied())
        }
        Change::SetSubnetGroup { subnet, after, .. } => {
            let s = inv
                .subnets
                .iter_mut()
                .find(|s| s.id.eq_ignore_ascii_case(subnet))
                .ok_or_else(|| ProviderError::Api {
                    service: "fake".into(),
                    operation: "SetSubnetGroup".into(),
                    code: "NotFound".into(),
                    message: format!("subnet {subnet} not found"),
                    request_id: None,
                    retryable: false,
                })?;
            if s.group == *after {
                return Ok(Outcome::already_done());
            }
            s.group = after.clone();
            Ok(Outcome::applied())
        }
        Change::CreateEndpoint {
            owner,
            service,
            kind,
            network,
            subnets,
            groups,
            route_tables,
            private_dns,
            tags,
        } => {
            // The same endpoint exists already (an owner's endpoint of another service,
            // kind or network is the one being replaced, not this one).
            if let Some(e) = inv.endpoints.iter().find(|e| {
                e.owner() == Some(owner)
                    && e.service == *service
                    && e.kind == *kind
                    && e.network == *network
            }) {
                return Ok(Outcome {
                    created_id: Some(e.id.clone()),
                    ..Outcome::already_done()
                });
            }
            let id = fake.new_id("vpce");
            inv.endpoints.push(Endpoint {
                id: id.clone(),
                service: service.clone(),
                kind: *kind,
                network: network.clone(),
                subnets: subnets.clone(),
                groups: groups.clone(),
                route_tables: route_tables.clone(),
                private_dns: *private_dns,
                tags: tags.clone(),
                connection: None,
            });
            Ok(Outcome {
                created_id: Some(id),
                ..Outcome::applied()
            })
        }
        Change::UpdateEndpoint {
            owner,
            id,
            subnets,
            groups,
            route_tables,
            private_dns,
        } => {
            let e = inv
                .endpoints
                .iter_mut()
                .find(|e| e.id == *id && e.owner() == Some(owner))
                .ok_or_else(|| ProviderError::Api {
                    service: "fake".into(),
                    operation: "UpdateEndpoint".into(),
                    code: "InvalidVpcEndpointId.NotFound".into(),
                    message: format!("endpoint {id} not found"),
                    request_id: None,
                    retryable: false,
                })?;
            e.subnets = subnets.clone();
            e.groups = groups.clone();
            e.route_tables = route_tables.clone();
            e.private_dns = *private_dns;
            Ok(Outcome::applied())
        }
        Change::SetOwnershipTags { kind, id, tags, .. } => {
            let found = match kind {
                OwnedKind::Group => inv
                    .groups
                    .iter_mut()
                    .find(|g| g.id.eq_ignore_ascii_case(id))
                    .map(|g| &mut g.tags),
                OwnedKind::Endpoint => inv
                    .endpoints
                    .iter_mut()
                    .find(|e| e.id.eq_ignore_ascii_case(id))
                    .map(|e| &mut e.tags),
            };
            let Some(have) = found else {
                return Ok(Outcome::already_done());
            };
            if tags.iter().all(|(k, v)| have.get(k) == Some(v)) {
                return Ok(Outcome::already_done());
            }
            have.extend(tags.clone());
            Ok(Outcome::applied())
        }
        Change::DeleteEndpoint { owner, id } => {
            let before = inv.endpoints.len();
            inv.endpoints
                .retain(|e| !(e.id == *id && e.owner() == Some(owner)));
            Ok(if inv.endpoints.len() < before {
                Outcome::applied()
            } else {
                Outcome::already_done()
            })
        }
    }
}

fn function_mut<'a>(
    inv: &'a mut Inventory,
    id: &str,
    operation: &str,
) -> Result<&'a mut crate::model::Function, ProviderError> {
    inv.functions
        .iter_mut()
        .find(|f| f.id == id)
        .ok_or_else(|| ProviderError::Api {
            service: "fake".into(),
            operation: operation.into(),
            code: "ResourceNotFoundException".into(),
            message: format!("function {id} not found"),
            request_id: None,
            retryable: false,
        })
}

fn unresolved(group: &GroupRef) -> ProviderError {
    ProviderError::UnresolvedGroup {
        owner: group.to_string(),
    }
}

#[async_trait::async_trait]
impl Provider for FakeProvider {
    async fn observe(
        &self,
        target: &Target,
        ownership: &Ownership,
    ) -> Result<Inventory, ProviderError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut inv = self.inventory(&target.name);
        // The fake knows every user of its groups: none besides its functions unless a
        // test says so.
        for g in &mut inv.groups {
            g.attached.get_or_insert_with(Vec::new);
        }
        ownership.vet_inventory(&mut inv);
        ownership.apply_declared(&mut inv);
        Ok(inv)
    }

    /// The newest change of each resource asked about within its window, from
    /// [`FakeProvider::log_change`].
    async fn attribute(
        &self,
        _target: &Target,
        queries: &[crate::model::AttributionQuery],
    ) -> Result<Vec<Option<crate::model::Actor>>, ProviderError> {
        self.attributions_asked
            .fetch_add(queries.len() as u64, Ordering::Relaxed);
        let log = self.audit_log.lock().unwrap_or_else(|e| e.into_inner());
        Ok(queries
            .iter()
            .map(|q| {
                log.iter()
                    .filter(|(r, at, _)| {
                        r.eq_ignore_ascii_case(&q.resource)
                            && (q.since_ms..=q.until_ms).contains(at)
                    })
                    .max_by_key(|(_, at, _)| *at)
                    .map(|(_, _, a)| a.clone())
            })
            .collect())
    }

    /// What the fake's inventory holds for the functions asked about.
    async fn observe_inbound(
        &self,
        target: &Target,
        functions: &[String],
    ) -> Result<crate::provider::InboundRead, ProviderError> {
        let inv = self.inventory(&target.name);
        let mut read = crate::provider::InboundRead::default();
        let asked: std::collections::HashSet<&String> = functions.iter().collect();
        for f in inv.functions.iter().filter(|f| asked.contains(&f.id)) {
            if let Some(i) = &f.inbound {
                read.inbound.insert(f.id.clone(), i.clone());
            }
        }
        Ok(read)
    }

    async fn apply(&self, target: &Target, change: &Change) -> Result<Outcome, ProviderError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let latency = *self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let stalls = self
            .stalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m(change));
        if stalls {
            std::future::pending::<()>().await;
        }
        if let Some(answer) = self.injected(change) {
            return answer;
        }
        let mut state = self.lock();
        let inv = state
            .entry(target.name.clone())
            .or_insert_with(|| Inventory {
                target: target.name.clone(),
                ..Inventory::default()
            });
        apply_to(self, inv, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Rule, TargetScope, ownership_tags};

    fn target() -> Target {
        Target {
            name: "t".into(),
            scope: TargetScope::Aws {
                region: "us-east-1".into(),
                account_id: "123456789012".into(),
                assume_role_arn: None,
            },
        }
    }

    fn create(owner: &str) -> Change {
        Change::CreateGroup {
            owner: owner.into(),
            name: format!("palisade-{owner}"),
            network: "vpc-1".into(),
            description: String::new(),
            tags: ownership_tags(owner),
        }
    }

    #[tokio::test]
    async fn create_twice_is_already_done() {
        let fake = FakeProvider::default();
        let first = fake.apply(&target(), &create("a")).await.unwrap();
        let second = fake.apply(&target(), &create("a")).await.unwrap();
        assert_eq!(first.status, crate::OutcomeStatus::Applied);
        assert_eq!(second.status, crate::OutcomeStatus::AlreadyDone);
        assert_eq!(first.created_id, second.created_id);
    }

    #[tokio::test]
    async fn unmanaged_group_is_never_written() {
        let fake = FakeProvider::new(Inventory {
            target: "t".into(),
            groups: vec![SecurityGroup {
                id: "sg-hand".into(),
                name: "hand".into(),
                network: "vpc-1".into(),
                tags: Default::default(),
                rules: vec![],
                default_rules: Vec::new(),
                attached: None,
            }],
            ..Inventory::default()
        });
        let err = fake
            .apply(
                &target(),
                &Change::AddRules {
                    group: GroupRef::Id("sg-hand".into()),
                    rules: vec![Rule::aws_default_egress()],
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::UnresolvedGroup { .. }));
        assert!(fake.inventory("t").groups[0].rules.is_empty());
    }

    #[tokio::test]
    async fn injected_error_fires_the_given_number_of_times() {
        let fake = FakeProvider::default();
        fake.fail_when(
            |c| matches!(c, Change::CreateGroup { .. }),
            1,
            || ProviderError::Throttled {
                service: "ec2".into(),
                code: "RequestLimitExceeded".into(),
                retry_after_secs: None,
            },
        );
        assert!(fake.apply(&target(), &create("a")).await.is_err());
        assert!(fake.apply(&target(), &create("a")).await.is_ok());
    }
}

/// An in-memory [`crate::events::EventQueue`] with SQS's delivery semantics: a received
/// message is hidden for the visibility timeout and comes back unless deleted with the
/// receipt of its latest delivery. Bodies are read as the AWS queue reads them
/// ([`crate::events::parse_cloudtrail`]).
#[derive(Debug)]
pub struct FakeQueue {
    state: Mutex<FakeQueueState>,
    visibility: std::time::Duration,
    arrived: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct FakeQueueState {
    /// (message, receipt of its latest delivery, hidden until).
    messages: Vec<(crate::events::QueueMessage, tokio::time::Instant)>,
    next: u64,
    deleted: u64,
}

impl FakeQueue {
    /// An empty queue whose deliveries stay hidden for `visibility`.
    pub fn new(visibility: std::time::Duration) -> FakeQueue {
        FakeQueue {
            state: Mutex::default(),
            visibility,
            arrived: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeQueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send `body`; returns its message id.
    pub fn send(&self, body: &str, sent_ms: i64) -> String {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("m-{}", s.next);
        s.messages.push((
            crate::events::QueueMessage {
                id: id.clone(),
                receipt: String::new(),
                body: body.to_string(),
                sent_ms: Some(sent_ms),
            },
            tokio::time::Instant::now(),
        ));
        drop(s);
        self.arrived.notify_waiters();
        id
    }

    /// Messages not deleted (visible or not).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Whether every message was deleted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages deleted so far.
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }
}

#[async_trait::async_trait]
impl crate::events::EventQueue for FakeQueue {
    fn name(&self) -> &str {
        "fake-queue"
    }

    async fn receive(
        &self,
        wait: std::time::Duration,
    ) -> Result<Vec<crate::events::QueueMessage>, ProviderError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            {
                let now = tokio::time::Instant::now();
                let mut s = self.lock();
                let mut out = Vec::new();
                let FakeQueueState { messages, next, .. } = &mut *s;
                for (m, hidden) in messages.iter_mut() {
                    if out.len() == 10 {
                        break;
                    }
                    if *hidden <= now {
                        *next += 1;
                        m.receipt = format!("r-{next}");
                        *hidden = now + self.visibility;
                        out.push(m.clone());
                    }
                }
                if !out.is_empty() || now >= until {
                    return Ok(out);
                }
            }
            // Wake on a new message, or when the first hidden one comes back.
            let _ = tokio::time::timeout_at(
                until.min(tokio::time::Instant::now() + std::time::Duration::from_millis(50)),
                arrived,
            )
            .await;
        }
    }

    async fn delete(&self, messages: &[(String, String)]) -> Result<usize, ProviderError> {
        let mut s = self.lock();
        for (id, receipt) in messages {
            match s.messages.iter().position(|(m, _)| &m.id == id) {
                Some(i) if &s.messages[i].0.receipt == receipt => {
                    s.messages.remove(i);
                    s.deleted += 1;
                }
                // SQS: an older receipt "succeeds" but may leave the message; a gone
                // message is no error.
                Some(_) => {}
                None => {}
            }
        }
        Ok(0)
    }

    fn parse(&self, body: &str) -> Result<crate::events::ChangeEvent, crate::events::Unusable> {
        crate::events::parse_cloudtrail(body)
    }
}
