//! `observe`: every collection read with paged list calls at AWS's largest page sizes,
//! the independent ones concurrently, then translated in one pass.

use std::collections::HashMap;
use std::future::Future;

use crate::model::{Inventory, Ownership, Tags, owner_of};
use crate::provider::ProviderError;

use super::call::Family as F;
use super::translate::{self, Raw};
use super::{AwsProvider, EndpointState, Owned, Session};

/// A safety stop for a paginator that never ends (a token that keeps coming back).
const MAX_PAGES: usize = 100_000;

/// Follow `next` tokens until AWS stops returning one (`None` or empty).
pub(super) async fn pages<T, Fut>(
    operation: &'static str,
    mut page: impl FnMut(Option<String>) -> Fut,
) -> Result<Vec<T>, ProviderError>
where
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ProviderError>>,
{
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let (batch, next) = page(token.take()).await?;
        items.extend(batch);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(items),
        }
    }
    Err(ProviderError::refused(
        crate::RefusalKind::Invalid,
        operation,
        format!("more than {MAX_PAGES} pages; the paginator does not end"),
    ))
}

impl AwsProvider {
    pub(super) async fn observe_with(
        &self,
        s: &Session,
        target: &str,
        ownership: &Ownership,
    ) -> Result<Inventory, ProviderError> {
        let (b, sc, ec2) = (&self.budget, &s.scope, &s.clients.ec2);
        let lambda = &s.clients.lambda;
        let tagging = &s.clients.tagging;

        let vpcs = pages("DescribeVpcs", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeVpcs", || {
                    ec2.describe_vpcs()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.vpcs.unwrap_or_default(), o.next_token))
        });
        let subnets = pages("DescribeSubnets", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeSubnets", || {
                    ec2.describe_subnets()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.subnets.unwrap_or_default(), o.next_token))
        });
        let route_tables = pages("DescribeRouteTables", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeRouteTables", || {
                    ec2.describe_route_tables()
                        .max_results(100)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.route_tables.unwrap_or_default(), o.next_token))
        });
        let groups = pages("DescribeSecurityGroups", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeSecurityGroups", || {
                    ec2.describe_security_groups()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.security_groups.unwrap_or_default(), o.next_token))
        });
        let rules = pages("DescribeSecurityGroupRules", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeSecurityGroupRules", || {
                    ec2.describe_security_group_rules()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.security_group_rules.unwrap_or_default(), o.next_token))
        });
        let endpoints = pages("DescribeVpcEndpoints", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribeVpcEndpoints", || {
                    ec2.describe_vpc_endpoints()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.vpc_endpoints.unwrap_or_default(), o.next_token))
        });
        let prefix_lists = pages("DescribePrefixLists", |t| async move {
            let o = b
                .call(sc, F::Ec2Read, "ec2", "DescribePrefixLists", || {
                    ec2.describe_prefix_lists()
                        .max_results(1000)
                        .set_next_token(t.clone())
                        .send()
                })
                .await?;
            Ok((o.prefix_lists.unwrap_or_default(), o.next_token))
        });
        let functions = pages("ListFunctions", |t| async move {
            let o = b
                .call(sc, F::LambdaRead, "lambda", "ListFunctions", || {
                    lambda
                        .list_functions()
                        .max_items(50)
                        .set_marker(t.clone())
                        .send()
                })
                .await?;
            Ok((o.functions.unwrap_or_default(), o.next_marker))
        });
        // One paged call for every function's tags, instead of one ListTags per function.
        let function_tags = pages("GetResources", |t| async move {
            let o = b
                .call(sc, F::Tagging, "tagging", "GetResources", || {
                    tagging
                        .get_resources()
                        .resource_type_filters("lambda:function")
                        .resources_per_page(100)
                        .set_pagination_token(t.clone())
                        .send()
                })
                .await?;
            let items = o
                .resource_tag_mapping_list
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    let tags: Tags = m
                        .tags()
                        .iter()
                        .map(|t| (t.key().to_string(), t.value().to_string()))
                        .collect();
                    Some((m.resource_arn?, tags))
                })
                .collect::<Vec<_>>();
            Ok((items, o.pagination_token))
        });

        let (
            vpcs,
            subnets,
            route_tables,
            groups,
            rules,
            endpoints,
            prefix_lists,
            functions,
            function_tags,
        ) = tokio::try_join!(
            vpcs,
            subnets,
            route_tables,
            groups,
            rules,
            endpoints,
            prefix_lists,
            functions,
            function_tags
        )?;
        let raw = Raw {
            vpcs,
            subnets,
            route_tables,
            groups,
            rules,
            endpoints,
            prefix_lists,
            functions,
            function_tags: function_tags.into_iter().collect::<HashMap<_, _>>(),
            attached: HashMap::new(),
        };
        let mut raw = raw;
        // Groups a policy is about to take over: what else uses them, so that a shared
        // group is never taken (one paged call, only while a takeover is pending).
        let wanted: Vec<String> = ownership
            .candidates()
            .into_iter()
            .filter_map(|c| {
                raw.groups
                    .iter()
                    .filter_map(|g| g.group_id())
                    .find(|id| id.eq_ignore_ascii_case(c))
                    .map(str::to_string)
            })
            .collect();
        if !wanted.is_empty() {
            // Unreadable (no ec2:DescribeNetworkInterfaces): left unread, so the takeover
            // is refused with a reason; the rest of the target is observed.
            match self.attachments(s, &wanted).await {
                Ok(found) => raw.attached = found,
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "what else uses the groups about to be taken over could not be read; they are not taken over");
                }
            }
        }
        let mut inventory = translate::inventory(target, &raw, ownership);
        ownership.apply_declared(&mut inventory);
        *s.owned() = owned(&inventory);
        Ok(inventory)
    }

    /// The network interfaces other than Lambda's that use each of `groups`, by group
    /// id: `DescribeNetworkInterfaces` filtered on the group ids (200 to a call), paged.
    /// A group without other users maps to an empty list.
    pub(super) async fn attachments(
        &self,
        s: &Session,
        groups: &[String],
    ) -> Result<HashMap<String, Vec<String>>, ProviderError> {
        let (b, sc, ec2) = (&self.budget, &s.scope, &s.clients.ec2);
        let mut out: HashMap<String, Vec<String>> =
            groups.iter().map(|g| (g.clone(), Vec::new())).collect();
        for chunk in groups.chunks(200) {
            let enis = pages("DescribeNetworkInterfaces", |t| async move {
                let o = b
                    .call(sc, F::Ec2Read, "ec2", "DescribeNetworkInterfaces", || {
                        ec2.describe_network_interfaces()
                            .filters(
                                aws_sdk_ec2::types::Filter::builder()
                                    .name("group-id")
                                    .set_values(Some(chunk.to_vec()))
                                    .build(),
                            )
                            .max_results(1000)
                            .set_next_token(t.clone())
                            .send()
                    })
                    .await?;
                Ok((o.network_interfaces.unwrap_or_default(), o.next_token))
            })
            .await?;
            for eni in &enis {
                if translate::is_lambda_eni(eni) {
                    continue;
                }
                let label = translate::eni_label(eni);
                for g in eni.groups() {
                    if let Some(list) = g.group_id().and_then(|id| out.get_mut(id)) {
                        list.push(label.clone());
                    }
                }
            }
        }
        for list in out.values_mut() {
            list.sort();
            list.dedup();
        }
        Ok(out)
    }
}

/// What is Palisade's in an inventory, for [`super::Session`].
fn owned(inv: &Inventory) -> Owned {
    let mut o = Owned {
        rejected: inv
            .ownership
            .iter()
            .filter(|n| !n.owned())
            .map(|n| n.id.clone())
            .collect(),
        ..Owned::default()
    };
    // A group compared for an audit-mode policy looks managed but is not Palisade's.
    for g in inv.groups.iter().filter(|g| !o.rejected.contains(&g.id)) {
        if let Some(owner) = g.owner() {
            o.group_ids.insert(g.id.clone());
            if inv.managed_group(owner).is_some_and(|m| m.id == g.id) {
                o.groups.insert(owner.to_string(), g.id.clone());
            }
        }
    }
    for e in &inv.endpoints {
        if owner_of(&e.tags).is_some() {
            let groups = e
                .groups
                .iter()
                .filter_map(|g| match g {
                    crate::GroupRef::Managed(owner) => o.groups.get(owner).cloned(),
                    crate::GroupRef::Id(id) => Some(id.clone()),
                })
                .collect();
            o.endpoints.insert(
                e.id.clone(),
                EndpointState {
                    subnets: e.subnets.iter().cloned().collect(),
                    groups,
                    route_tables: e.route_tables.iter().cloned().collect(),
                    private_dns: e.private_dns,
                },
            );
        }
    }
    o
}
