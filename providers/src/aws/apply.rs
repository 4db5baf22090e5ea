//! `apply`: one idempotent change at a time. Every write names a resource Palisade owns
//! (checked against the ownership tags, from the last observation or a fresh lookup),
//! except a function's `VpcConfig`, which the policy governs.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types as ec2;
use aws_sdk_lambda::types as lambda;
use backon::{ExponentialBuilder, Retryable};

use crate::model::{
    Direction, EndpointKind, GroupRef, MANAGED_BY_VALUE, OwnedKind, Placement, Rule,
    TAG_MANAGED_BY, TAG_OWNER, Tags, owner_of,
};
use crate::provider::{Change, Outcome, OutcomeStatus, ProviderError, RefusalKind};

use super::call::{Family as F, code_of, request_id};
use super::translate::{self, ip_permission};
use super::{AwsProvider, EndpointState, Session};

fn refuse(operation: &str, kind: RefusalKind, message: String) -> ProviderError {
    ProviderError::refused(kind, operation, message)
}

fn ec2_tags(tags: &Tags, kind: ec2::ResourceType) -> ec2::TagSpecification {
    ec2::TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

fn outcome(applied: bool, request_ids: Vec<String>) -> Outcome {
    Outcome {
        status: if applied {
            OutcomeStatus::Applied
        } else {
            OutcomeStatus::AlreadyDone
        },
        request_ids,
        ..Outcome::applied()
    }
}

impl AwsProvider {
    pub(super) async fn apply_with(
        &self,
        s: &Session,
        change: &Change,
    ) -> Result<Outcome, ProviderError> {
        match change {
            Change::CreateGroup {
                owner,
                name,
                network,
                description,
                tags,
            } => {
                self.create_group(s, owner, name, network, description, tags)
                    .await
            }
            Change::DeleteGroup { owner, id } => self.delete_group(s, owner, id).await,
            Change::AddRules { group, rules } => self.add_rules(s, group, rules).await,
            Change::RemoveRules { group, rules } => self.remove_rules(s, group, rules).await,
            Change::SetPlacement { name, after, .. } => {
                self.set_placement(s, name, after.as_ref()).await
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
                self.create_endpoint(
                    s,
                    owner,
                    service,
                    *kind,
                    network,
                    subnets,
                    groups,
                    route_tables,
                    *private_dns,
                    tags,
                )
                .await
            }
            Change::UpdateEndpoint {
                owner,
                id,
                subnets,
                groups,
                route_tables,
                private_dns,
            } => {
                self.update_endpoint(s, owner, id, subnets, groups, route_tables, *private_dns)
                    .await
            }
            Change::DeleteEndpoint { owner, id } => self.delete_endpoint(s, owner, id).await,
            Change::SetOwnershipTags { kind, id, tags, .. } => {
                self.set_ownership_tags(s, *kind, id, tags).await
            }
            Change::SetSubnetGroup { .. } => Err(refuse(
                "SetSubnetGroup",
                RefusalKind::Unsupported,
                "subnet-level security groups exist on Azure only".into(),
            )),
            Change::SetInbound { .. } => Err(refuse(
                "SetInbound",
                RefusalKind::Unsupported,
                "inbound access restrictions exist on Azure function apps only".into(),
            )),
        }
    }

    /// The id of the group `r` names, for use as a rule peer or a placement: managed
    /// groups through the ownership tags, others as given.
    async fn group_id(&self, s: &Session, r: &GroupRef) -> Result<String, ProviderError> {
        match r {
            GroupRef::Id(id) => Ok(id.clone()),
            GroupRef::Managed(owner) => {
                if let Some(id) = s.owned().groups.get(owner) {
                    return Ok(id.clone());
                }
                let filter = |k: &str, v: &str| {
                    ec2::Filter::builder()
                        .name(format!("tag:{k}"))
                        .values(v)
                        .build()
                };
                let out = self
                    .budget
                    .call(
                        &s.scope,
                        F::Ec2Read,
                        "ec2",
                        "DescribeSecurityGroups",
                        || {
                            s.clients
                                .ec2
                                .describe_security_groups()
                                .filters(filter(TAG_MANAGED_BY, MANAGED_BY_VALUE))
                                .filters(filter(TAG_OWNER, owner))
                                .send()
                        },
                    )
                    .await?;
                let rejected = s.owned().rejected.clone();
                let id = out
                    .security_groups()
                    .iter()
                    .filter(|g| owner_of(&translate::tags(g.tags())) == Some(owner))
                    .filter(|g| g.group_id().is_some_and(|id| !rejected.contains(id)))
                    .filter_map(|g| g.group_id())
                    .min()
                    .map(str::to_string)
                    .ok_or_else(|| ProviderError::UnresolvedGroup {
                        owner: owner.clone(),
                    })?;
                let mut owned = s.owned();
                owned.groups.insert(owner.clone(), id.clone());
                owned.group_ids.insert(id.clone());
                Ok(id)
            }
        }
    }

    /// The id of a group Palisade may change; refuses any other.
    async fn owned_group_id(&self, s: &Session, r: &GroupRef) -> Result<String, ProviderError> {
        let id = self.group_id(s, r).await?;
        if s.owned().group_ids.contains(&id) {
            return Ok(id);
        }
        if s.owned().rejected.contains(&id) {
            return Err(refuse(
                "ModifySecurityGroup",
                RefusalKind::NotOwned,
                format!(
                    "security group {id} carries Palisade's tags but is not in the ownership record; Palisade never changes it"
                ),
            ));
        }
        let out = self
            .budget
            .call(
                &s.scope,
                F::Ec2Read,
                "ec2",
                "DescribeSecurityGroups",
                || {
                    s.clients
                        .ec2
                        .describe_security_groups()
                        .group_ids(&id)
                        .send()
                },
            )
            .await?;
        let owned = out
            .security_groups()
            .iter()
            .any(|g| owner_of(&translate::tags(g.tags())).is_some());
        if !owned {
            return Err(refuse(
                "ModifySecurityGroup",
                RefusalKind::NotOwned,
                format!(
                    "security group {id} does not carry {TAG_MANAGED_BY}={MANAGED_BY_VALUE}; Palisade never changes a group it does not own"
                ),
            ));
        }
        s.owned().group_ids.insert(id.clone());
        Ok(id)
    }

    /// Put the ownership tags back on a group or endpoint the last observation
    /// recognised as recorded (never on anything else).
    async fn set_ownership_tags(
        &self,
        s: &Session,
        kind: OwnedKind,
        id: &str,
        tags: &Tags,
    ) -> Result<Outcome, ProviderError> {
        let known = match kind {
            OwnedKind::Group => s.owned().group_ids.contains(id),
            OwnedKind::Endpoint => s.owned().endpoints.contains_key(id),
        };
        if !known {
            return Err(refuse(
                "CreateTags",
                RefusalKind::NotOwned,
                format!(
                    "{kind} {id} is not a recorded Palisade resource; its tags are not Palisade's to set"
                ),
            ));
        }
        let out = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "CreateTags", || {
                s.clients
                    .ec2
                    .create_tags()
                    .resources(id)
                    .set_tags(Some(
                        tags.iter()
                            .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                            .collect(),
                    ))
                    .send()
            })
            .await?;
        Ok(outcome(true, request_id(&out)))
    }

    async fn create_group(
        &self,
        s: &Session,
        owner: &str,
        name: &str,
        network: &str,
        description: &str,
        tags: &Tags,
    ) -> Result<Outcome, ProviderError> {
        let ec2c = &s.clients.ec2;
        let created = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "CreateSecurityGroup", || {
                ec2c.create_security_group()
                    .group_name(name)
                    .description(description)
                    .vpc_id(network)
                    .tag_specifications(ec2_tags(tags, ec2::ResourceType::SecurityGroup))
                    .send()
            })
            .await;
        let (id, mut request_ids) = match created {
            Ok(out) => {
                let id = out.group_id().unwrap_or_default().to_string();
                (id, request_id(&out))
            }
            Err(e) if code_of(&e) == Some("InvalidGroup.Duplicate") => {
                // Created by an earlier attempt — or someone else's group with our name.
                let out = self
                    .budget
                    .call(
                        &s.scope,
                        F::Ec2Read,
                        "ec2",
                        "DescribeSecurityGroups",
                        || {
                            ec2c.describe_security_groups()
                                .filters(
                                    ec2::Filter::builder()
                                        .name("vpc-id")
                                        .values(network)
                                        .build(),
                                )
                                .filters(
                                    ec2::Filter::builder()
                                        .name("group-name")
                                        .values(name)
                                        .build(),
                                )
                                .send()
                        },
                    )
                    .await?;
                let existing = out.security_groups().first();
                let rejected = s.owned().rejected.clone();
                // Tags alone never make it ours: a claimed group of this name is refused.
                let Some(g) = existing.filter(|g| {
                    owner_of(&translate::tags(g.tags())) == Some(owner)
                        && g.group_id().is_some_and(|id| !rejected.contains(id))
                }) else {
                    return Err(refuse(
                        "CreateSecurityGroup",
                        RefusalKind::NameTaken,
                        format!(
                            "a security group named {name:?} already exists in {network} and is not Palisade's (no {TAG_MANAGED_BY}={MANAGED_BY_VALUE}, {TAG_OWNER}={owner}); rename it or remove it"
                        ),
                    ));
                };
                let id = g.group_id().unwrap_or_default().to_string();
                self.remember_group(s, owner, &id);
                return Ok(Outcome {
                    created_id: Some(id),
                    ..Outcome::already_done()
                });
            }
            Err(e) => return Err(e),
        };
        self.remember_group(s, owner, &id);
        // A new group comes with "all traffic to 0.0.0.0/0"; the contract is an empty group.
        let default_egress = ip_permission(&Rule::aws_default_egress(), |_| Ok(String::new()))?;
        let revoke = self
            .budget
            .call(
                &s.scope,
                F::Ec2Write,
                "ec2",
                "RevokeSecurityGroupEgress",
                || {
                    ec2c.revoke_security_group_egress()
                        .group_id(&id)
                        .ip_permissions(default_egress.clone())
                        .send()
                },
            )
            .await;
        match revoke {
            Ok(out) => request_ids.extend(request_id(&out)),
            Err(e) if code_of(&e) == Some("InvalidPermission.NotFound") => {}
            Err(e) => return Err(e),
        }
        Ok(Outcome {
            created_id: Some(id),
            request_ids,
            ..Outcome::applied()
        })
    }

    fn remember_group(&self, s: &Session, owner: &str, id: &str) {
        let mut owned = s.owned();
        owned.groups.insert(owner.to_string(), id.to_string());
        owned.group_ids.insert(id.to_string());
    }

    async fn delete_group(
        &self,
        s: &Session,
        owner: &str,
        id: &str,
    ) -> Result<Outcome, ProviderError> {
        let id = match self.owned_group_id(s, &GroupRef::Id(id.to_string())).await {
            Ok(id) => id,
            Err(e) if code_of(&e) == Some("InvalidGroup.NotFound") => {
                return Ok(Outcome::already_done());
            }
            Err(e) => return Err(e),
        };
        let res = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "DeleteSecurityGroup", || {
                s.clients.ec2.delete_security_group().group_id(&id).send()
            })
            .await;
        match res {
            Ok(out) => {
                self.forget_group(s, owner, &id);
                Ok(outcome(true, request_id(&out)))
            }
            Err(e) if code_of(&e) == Some("InvalidGroup.NotFound") => {
                self.forget_group(s, owner, &id);
                Ok(Outcome::already_done())
            }
            Err(ProviderError::Api { code, message, .. }) if code == "DependencyViolation" => {
                Ok(Outcome::pending(format!(
                    "{id} is still in use ({message}); Lambda's network interfaces can hold a group for up to 45 minutes after a function leaves it — retried on the next reconcile"
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn forget_group(&self, s: &Session, owner: &str, id: &str) {
        let mut owned = s.owned();
        if owned.groups.get(owner).is_some_and(|g| g == id) {
            owned.groups.remove(owner);
        }
        owned.group_ids.remove(id);
    }

    async fn permissions(
        &self,
        s: &Session,
        rules: &[&Rule],
    ) -> Result<Vec<ec2::IpPermission>, ProviderError> {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let peer_id = match &r.peer {
                crate::Peer::Group(g) => Some(self.group_id(s, g).await?),
                _ => None,
            };
            out.push(ip_permission(r, |_| {
                Ok(peer_id.clone().unwrap_or_default())
            })?);
        }
        Ok(out)
    }

    async fn authorize(
        &self,
        s: &Session,
        group: &str,
        direction: Direction,
        perms: Vec<ec2::IpPermission>,
    ) -> Result<Vec<String>, ProviderError> {
        let c = &s.clients.ec2;
        let (b, sc) = (&self.budget, &s.scope);
        match direction {
            Direction::Ingress => b
                .call(
                    sc,
                    F::Ec2Write,
                    "ec2",
                    "AuthorizeSecurityGroupIngress",
                    || {
                        c.authorize_security_group_ingress()
                            .group_id(group)
                            .set_ip_permissions(Some(perms.clone()))
                            .send()
                    },
                )
                .await
                .map(|o| request_id(&o)),
            Direction::Egress => b
                .call(
                    sc,
                    F::Ec2Write,
                    "ec2",
                    "AuthorizeSecurityGroupEgress",
                    || {
                        c.authorize_security_group_egress()
                            .group_id(group)
                            .set_ip_permissions(Some(perms.clone()))
                            .send()
                    },
                )
                .await
                .map(|o| request_id(&o)),
        }
    }

    async fn add_rules(
        &self,
        s: &Session,
        group: &GroupRef,
        rules: &[Rule],
    ) -> Result<Outcome, ProviderError> {
        let id = self.owned_group_id(s, group).await?;
        let mut applied = false;
        let mut request_ids = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let batch: Vec<&Rule> = rules.iter().filter(|r| r.direction == direction).collect();
            if batch.is_empty() {
                continue;
            }
            let perms = self.permissions(s, &batch).await?;
            match self.authorize(s, &id, direction, perms.clone()).await {
                Ok(ids) => {
                    applied = true;
                    request_ids.extend(ids);
                }
                // AWS rejects the whole batch when one rule exists: add them one by one.
                Err(e) if code_of(&e) == Some("InvalidPermission.Duplicate") => {
                    for p in perms {
                        match self.authorize(s, &id, direction, vec![p]).await {
                            Ok(ids) => {
                                applied = true;
                                request_ids.extend(ids);
                            }
                            Err(e) if code_of(&e) == Some("InvalidPermission.Duplicate") => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcome(applied, request_ids))
    }

    async fn revoke(
        &self,
        s: &Session,
        group: &str,
        direction: Direction,
        ids: Vec<String>,
        perms: Vec<ec2::IpPermission>,
    ) -> Result<Vec<String>, ProviderError> {
        let c = &s.clients.ec2;
        let (b, sc) = (&self.budget, &s.scope);
        let ids = (!ids.is_empty()).then_some(ids);
        let perms = (!perms.is_empty()).then_some(perms);
        match direction {
            Direction::Ingress => b
                .call(sc, F::Ec2Write, "ec2", "RevokeSecurityGroupIngress", || {
                    c.revoke_security_group_ingress()
                        .group_id(group)
                        .set_security_group_rule_ids(ids.clone())
                        .set_ip_permissions(perms.clone())
                        .send()
                })
                .await
                .map(|o| request_id(&o)),
            Direction::Egress => b
                .call(sc, F::Ec2Write, "ec2", "RevokeSecurityGroupEgress", || {
                    c.revoke_security_group_egress()
                        .group_id(group)
                        .set_security_group_rule_ids(ids.clone())
                        .set_ip_permissions(perms.clone())
                        .send()
                })
                .await
                .map(|o| request_id(&o)),
        }
    }

    async fn remove_rules(
        &self,
        s: &Session,
        group: &GroupRef,
        rules: &[Rule],
    ) -> Result<Outcome, ProviderError> {
        let id = self.owned_group_id(s, group).await?;
        let gone = |e: &ProviderError| {
            matches!(
                code_of(e),
                Some("InvalidPermission.NotFound" | "InvalidSecurityGroupRuleId.NotFound")
            )
        };
        let mut applied = false;
        let mut request_ids = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            let batch: Vec<&Rule> = rules.iter().filter(|r| r.direction == direction).collect();
            // By rule id where observed (always works, whatever the description says).
            let ids: Vec<String> = batch.iter().filter_map(|r| r.id.clone()).collect();
            let by_content: Vec<&Rule> = batch.iter().copied().filter(|r| r.id.is_none()).collect();
            let perms = self.permissions(s, &by_content).await?;
            if ids.is_empty() && perms.is_empty() {
                continue;
            }
            match self
                .revoke(s, &id, direction, ids.clone(), perms.clone())
                .await
            {
                Ok(r) => {
                    applied = true;
                    request_ids.extend(r);
                }
                // One of them is gone already: revoke the rest one at a time.
                Err(e) if gone(&e) => {
                    let singles = ids
                        .into_iter()
                        .map(|i| (vec![i], vec![]))
                        .chain(perms.into_iter().map(|p| (vec![], vec![p])));
                    for (i, p) in singles {
                        match self.revoke(s, &id, direction, i, p).await {
                            Ok(r) => {
                                applied = true;
                                request_ids.extend(r);
                            }
                            Err(e) if gone(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcome(applied, request_ids))
    }

    async fn set_placement(
        &self,
        s: &Session,
        name: &str,
        after: Option<&Placement>,
    ) -> Result<Outcome, ProviderError> {
        let (subnets, groups) = match after {
            Some(p) => {
                let mut groups = Vec::with_capacity(p.groups.len());
                for g in &p.groups {
                    groups.push(self.group_id(s, g).await?);
                }
                (p.subnets.clone(), groups)
            }
            None => (Vec::new(), Vec::new()),
        };
        // Both keys, always: a VpcConfig without SecurityGroupIds is not "unchanged".
        let vpc = lambda::VpcConfig::builder()
            .set_subnet_ids(Some(subnets))
            .set_security_group_ids(Some(groups))
            .build();
        let update = || async {
            self.budget
                .call(
                    &s.scope,
                    F::LambdaWrite,
                    "lambda",
                    "UpdateFunctionConfiguration",
                    || {
                        s.clients
                            .lambda
                            .update_function_configuration()
                            .function_name(name)
                            .vpc_config(vpc.clone())
                            .send()
                    },
                )
                .await
        };
        // Another update of the function is in flight: wait and try again.
        let out = update
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.settings.conflict_delay)
                    .with_max_delay(Duration::from_secs(30))
                    .with_max_times(self.settings.conflict_retries)
                    .with_jitter(),
            )
            .when(|e| code_of(e) == Some("ResourceConflictException"))
            .notify(|e, d| tracing::info!(function = name, error = %e, retry_in = ?d, "function busy; retrying"))
            .await?;
        let request_ids = request_id(&out);
        let mut status = out.last_update_status().cloned();
        let mut reason = (
            out.last_update_status_reason_code()
                .map(|c| c.as_str().to_string()),
            out.last_update_status_reason().map(str::to_string),
        );
        let deadline = tokio::time::Instant::now() + self.settings.update_wait;
        let mut delay = self.settings.poll_interval;
        while status == Some(lambda::LastUpdateStatus::InProgress) {
            if tokio::time::Instant::now() + delay > deadline {
                return Err(ProviderError::refused(
                    RefusalKind::Timeout,
                    "UpdateFunctionConfiguration",
                    format!(
                        "{name}: the VPC update was still InProgress after {:?} (request {})",
                        self.settings.update_wait,
                        request_ids.first().map_or("-", String::as_str)
                    ),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            let cfg = self
                .budget
                .call(
                    &s.scope,
                    F::LambdaRead,
                    "lambda",
                    "GetFunctionConfiguration",
                    || {
                        s.clients
                            .lambda
                            .get_function_configuration()
                            .function_name(name)
                            .send()
                    },
                )
                .await?;
            status = cfg.last_update_status().cloned();
            reason = (
                cfg.last_update_status_reason_code()
                    .map(|c| c.as_str().to_string()),
                cfg.last_update_status_reason().map(str::to_string),
            );
        }
        if status == Some(lambda::LastUpdateStatus::Failed) {
            return Err(ProviderError::Api {
                service: "lambda".into(),
                operation: "UpdateFunctionConfiguration".into(),
                code: reason.0.unwrap_or_else(|| "LastUpdateStatus.Failed".into()),
                message: reason
                    .1
                    .unwrap_or_else(|| format!("{name}: the VPC update failed")),
                request_id: request_ids.first().cloned(),
                retryable: false,
            });
        }
        Ok(outcome(true, request_ids))
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_endpoint(
        &self,
        s: &Session,
        owner: &str,
        service: &str,
        kind: EndpointKind,
        network: &str,
        subnets: &[String],
        groups: &[GroupRef],
        route_tables: &[String],
        private_dns: bool,
        tags: &Tags,
    ) -> Result<Outcome, ProviderError> {
        let mut group_ids = Vec::with_capacity(groups.len());
        for g in groups {
            group_ids.push(self.group_id(s, g).await?);
        }
        let mut req = s
            .clients
            .ec2
            .create_vpc_endpoint()
            // One token for every attempt of this create: a retry after a timeout or a
            // 5xx (when AWS may have created it already) returns that endpoint instead of
            // a second one.
            .client_token(client_token(network, service))
            .vpc_id(network)
            .service_name(service)
            .tag_specifications(ec2_tags(tags, ec2::ResourceType::VpcEndpoint));
        req = match kind {
            EndpointKind::Interface => req
                .vpc_endpoint_type(ec2::VpcEndpointType::Interface)
                .set_subnet_ids(Some(subnets.to_vec()))
                .set_security_group_ids(Some(group_ids.clone()))
                .private_dns_enabled(private_dns),
            EndpointKind::Gateway => req
                .vpc_endpoint_type(ec2::VpcEndpointType::Gateway)
                .set_route_table_ids(Some(route_tables.to_vec())),
            EndpointKind::Private => {
                return Err(refuse(
                    "CreateVpcEndpoint",
                    RefusalKind::Unsupported,
                    format!("{owner}: private endpoints exist on Azure only"),
                ));
            }
        };
        let out = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "CreateVpcEndpoint", || {
                req.clone().send()
            })
            .await?;
        let id = out
            .vpc_endpoint()
            .and_then(|e| e.vpc_endpoint_id())
            .unwrap_or_default()
            .to_string();
        s.owned().endpoints.insert(
            id.clone(),
            EndpointState {
                subnets: subnets.iter().cloned().collect(),
                groups: group_ids.into_iter().collect(),
                route_tables: route_tables.iter().cloned().collect(),
                private_dns,
            },
        );
        Ok(Outcome {
            created_id: Some(id),
            request_ids: request_id(&out),
            ..Outcome::applied()
        })
    }

    /// The last known state of an endpoint Palisade owns; `None` when it is gone.
    async fn owned_endpoint(
        &self,
        s: &Session,
        id: &str,
    ) -> Result<Option<EndpointState>, ProviderError> {
        if let Some(e) = s.owned().endpoints.get(id) {
            return Ok(Some(e.clone()));
        }
        let out = self
            .budget
            .call(&s.scope, F::Ec2Read, "ec2", "DescribeVpcEndpoints", || {
                s.clients
                    .ec2
                    .describe_vpc_endpoints()
                    .vpc_endpoint_ids(id)
                    .send()
            })
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e)
                if matches!(
                    code_of(&e),
                    Some("InvalidVpcEndpointId.NotFound" | "InvalidVpcEndpoint.NotFound")
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(e) = out.vpc_endpoints().iter().find(|e| {
            e.vpc_endpoint_id() == Some(id) && e.state().is_none_or(translate::endpoint_is_live)
        }) else {
            return Ok(None);
        };
        if owner_of(&translate::tags(e.tags())).is_none() {
            return Err(refuse(
                "ModifyVpcEndpoint",
                RefusalKind::NotOwned,
                format!(
                    "VPC endpoint {id} does not carry {TAG_MANAGED_BY}={MANAGED_BY_VALUE}; Palisade never changes an endpoint it does not own"
                ),
            ));
        }
        let state = EndpointState {
            subnets: e.subnet_ids().iter().cloned().collect(),
            groups: e
                .groups()
                .iter()
                .filter_map(|g| g.group_id())
                .map(str::to_string)
                .collect(),
            route_tables: e.route_table_ids().iter().cloned().collect(),
            private_dns: e.private_dns_enabled().unwrap_or(false),
        };
        s.owned().endpoints.insert(id.to_string(), state.clone());
        Ok(Some(state))
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_endpoint(
        &self,
        s: &Session,
        owner: &str,
        id: &str,
        subnets: &[String],
        groups: &[GroupRef],
        route_tables: &[String],
        private_dns: bool,
    ) -> Result<Outcome, ProviderError> {
        let Some(before) = self.owned_endpoint(s, id).await? else {
            return Err(refuse(
                "ModifyVpcEndpoint",
                RefusalKind::Conflict,
                format!(
                    "{owner}: endpoint {id} no longer exists; it is recreated on the next reconcile"
                ),
            ));
        };
        let mut group_ids = BTreeSet::new();
        for g in groups {
            group_ids.insert(self.group_id(s, g).await?);
        }
        let after = EndpointState {
            subnets: subnets.iter().cloned().collect(),
            groups: group_ids,
            route_tables: route_tables.iter().cloned().collect(),
            private_dns,
        };
        if after == before {
            return Ok(Outcome::already_done());
        }
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Option<Vec<String>> {
            let d: Vec<String> = a.difference(b).cloned().collect();
            (!d.is_empty()).then_some(d)
        };
        let mut req = s
            .clients
            .ec2
            .modify_vpc_endpoint()
            .vpc_endpoint_id(id)
            .set_add_subnet_ids(diff(&after.subnets, &before.subnets))
            .set_remove_subnet_ids(diff(&before.subnets, &after.subnets))
            .set_add_security_group_ids(diff(&after.groups, &before.groups))
            .set_remove_security_group_ids(diff(&before.groups, &after.groups))
            .set_add_route_table_ids(diff(&after.route_tables, &before.route_tables))
            .set_remove_route_table_ids(diff(&before.route_tables, &after.route_tables));
        if after.private_dns != before.private_dns {
            req = req.private_dns_enabled(after.private_dns);
        }
        let out = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "ModifyVpcEndpoint", || {
                req.clone().send()
            })
            .await?;
        s.owned().endpoints.insert(id.to_string(), after);
        Ok(outcome(true, request_id(&out)))
    }

    async fn delete_endpoint(
        &self,
        s: &Session,
        owner: &str,
        id: &str,
    ) -> Result<Outcome, ProviderError> {
        if self.owned_endpoint(s, id).await?.is_none() {
            return Ok(Outcome::already_done());
        }
        let out = self
            .budget
            .call(&s.scope, F::Ec2Write, "ec2", "DeleteVpcEndpoints", || {
                s.clients
                    .ec2
                    .delete_vpc_endpoints()
                    .vpc_endpoint_ids(id)
                    .send()
            })
            .await?;
        s.owned().endpoints.remove(id);
        // Failures come back per endpoint inside a successful response.
        if let Some(err) = out.unsuccessful().iter().filter_map(|u| u.error()).next() {
            let code = err.code().unwrap_or("Unknown");
            if matches!(
                code,
                "InvalidVpcEndpoint.NotFound" | "InvalidVpcEndpointId.NotFound"
            ) {
                return Ok(Outcome::already_done());
            }
            return Err(ProviderError::Api {
                service: "ec2".into(),
                operation: "DeleteVpcEndpoints".into(),
                code: code.to_string(),
                message: format!("{owner}: {}", err.message().unwrap_or_default()),
                request_id: request_id(&out).into_iter().next(),
                retryable: false,
            });
        }
        Ok(outcome(true, request_id(&out)))
    }
}

/// A client token unique to one create call (AWS idempotency: the same token within 24 h
/// returns the first result): process id, time and a counter, hashed with the request.
fn client_token(network: &str, service: &str) -> String {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        CALLS.fetch_add(1, Ordering::Relaxed),
        network,
        service,
    ));
    format!("palisade-{n:016x}")
}
