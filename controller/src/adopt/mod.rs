//! `palisade adopt`: an existing estate in, policies that describe it *as it is* out.
//!
//! Pure: one observation (and the repository holding the Target) in, the generated
//! files and the adoption report out, so that a re-run on an unchanged estate writes
//! the same bytes and `--verify` plans the output against the very same observation.
//!
//! Functions are clustered by placement (AWS: VPC, subnets, security groups; Azure:
//! the integration subnet, whose NSG is their group). Each cluster becomes one
//! `FunctionPolicy` whose `managedGroup` is the one group the cluster may own — used by
//! nothing outside it (no other function, no instance, database or NIC, no other
//! subnet) — taken over in place; the cluster's other groups stay attached as external
//! `securityGroups`. The owned group's rules are written back exactly: atomic rules
//! regrouped into `from`/`to` + `ports`, peers mapped (a group adopted by another
//! cluster → `policy:`, any other → `securityGroup:`), Azure rules one for one with
//! their names and priorities. What the language cannot say is never dropped quietly:
//! it is in the report and the document's comments, and the policy stays in `audit`.

mod yaml;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use palisade_providers::{
    Access, Cloud, Direction, Function, GroupRef, Inventory, Peer, Ports, Rule, SecurityGroup,
    model::audit_text,
};
use serde::Serialize;

use crate::check::Finding;
use crate::policy::{Mode, PolicySet, TargetDoc};

/// Which functions `--select` adopts; several terms must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// `tag:KEY=VALUE`: functions with this tag.
    Tag(String, String),
    /// `name:PREFIX`: functions whose name starts with it.
    NamePrefix(String),
    /// `vpc:ID` / `vnet:NAME`: functions placed in this network (id or name).
    Network(String),
    /// `rg:NAME`: Azure function apps of this resource group.
    ResourceGroup(String),
}

impl FromStr for Select {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected tag:KEY=VALUE, name:PREFIX, vpc:ID, vnet:NAME or rg:NAME";
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| format!("--select {s:?}: {expected}"))?;
        if value.is_empty() {
            return Err(format!("--select {s:?}: empty value; {expected}"));
        }
        Ok(match kind {
            "tag" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--select {s:?}: a tag term is tag:KEY=VALUE"))?;
                Select::Tag(k.to_string(), v.to_string())
            }
            "name" => Select::NamePrefix(value.to_string()),
            "vpc" | "vnet" => Select::Network(value.to_string()),
            "rg" | "resourceGroup" => Select::ResourceGroup(value.to_string()),
            _ => return Err(format!("--select {s:?}: unknown term {kind:?}; {expected}")),
        })
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Select::Tag(k, v) => write!(f, "tag:{k}={v}"),
            Select::NamePrefix(p) => write!(f, "name:{p}"),
            Select::Network(n) => write!(f, "network:{n}"),
            Select::ResourceGroup(g) => write!(f, "rg:{g}"),
        }
    }
}

/// What to adopt and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mode of the generated policies (a cluster with something inexpressible stays in
    /// audit whatever this says).
    pub mode: Mode,
    /// `--select` terms.
    pub select: Vec<Select>,
}

impl Default for Options {
    /// Audit (observe only), everything.
    fn default() -> Self {
        Options {
            mode: Mode::Audit,
            select: Vec::new(),
        }
    }
}

/// The generated repository and its report.
#[derive(Debug, Clone)]
pub struct Adoption {
    /// Relative path → content, sorted.
    pub files: BTreeMap<String, String>,
    /// What was adopted, referenced, left out and why.
    pub report: Report,
}

/// The adoption report (also written as `adoption.json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Target.
    pub target: String,
    /// `aws` or `azure`.
    pub cloud: String,
    /// `--select` terms.
    pub select: Vec<String>,
    /// Counts.
    pub counts: Counts,
    /// One entry per generated policy.
    pub clusters: Vec<ClusterReport>,
    /// Functions in scope that no generated policy selects, and why.
    pub left: Vec<LeftOut>,
    /// The estate as found: guardrail findings (of the repository's guardrails) on the
    /// observation, before anything is adopted.
    pub before: Vec<Finding>,
}

/// Counts of a report.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Functions observed in the target.
    pub functions_observed: usize,
    /// Functions in `--select`'s scope.
    pub functions_in_scope: usize,
    /// Functions a generated policy selects.
    pub functions_adopted: usize,
    /// Generated policies.
    pub policies: usize,
    /// Groups taken over in place (`managedGroup`).
    pub groups_adopted: usize,
    /// Groups left attached as external references.
    pub groups_referenced: usize,
    /// Atomic rules written back.
    pub rules: usize,
    /// Rules the language cannot express.
    pub inexpressible: usize,
}

/// One generated policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// Policy name.
    pub policy: String,
    /// The file it was written to.
    pub file: String,
    /// Its mode.
    pub mode: Mode,
    /// How its functions are selected (`tags app=payments` or `names`).
    pub selector: String,
    /// Functions (names).
    pub functions: Vec<String>,
    /// VPC / VNet id.
    pub network: String,
    /// Subnet ids.
    pub subnets: Vec<String>,
    /// The group taken over: `id (name)`.
    pub managed_group: String,
    /// Groups attached but not taken over, and why.
    pub referenced: Vec<Referenced>,
    /// Atomic rules written back.
    pub rules: usize,
    /// What the language cannot express (the policy stays in audit).
    pub inexpressible: Vec<String>,
}

/// A group a cluster uses but does not own.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Referenced {
    /// Group id.
    pub id: String,
    /// Group name.
    pub name: String,
    /// Why it is not taken over.
    pub why: String,
}

/// A function in scope that no generated policy selects.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeftOut {
    /// Function name.
    pub function: String,
    /// Why.
    pub why: String,
}

/// A peer as the language writes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PeerOut {
    Cidr(String),
    Policy(String),
    SecurityGroup(String),
    PrefixList(String),
    ServiceTag(String),
}

/// One generated rule entry.
#[derive(Debug, Clone)]
pub(crate) struct RuleOut {
    pub(crate) name: String,
    pub(crate) direction: Direction,
    pub(crate) access: Access,
    pub(crate) peers: Vec<PeerOut>,
    pub(crate) ports: Vec<Ports>,
    pub(crate) priority: Option<u16>,
}

/// One generated policy, before it is written.
#[derive(Debug, Clone)]
pub(crate) struct PolicyOut {
    pub(crate) name: String,
    pub(crate) target: String,
    pub(crate) cloud: Cloud,
    pub(crate) mode: Mode,
    pub(crate) tags: BTreeMap<String, String>,
    pub(crate) names: Vec<String>,
    pub(crate) network: String,
    pub(crate) network_name: String,
    pub(crate) subnets: Vec<String>,
    pub(crate) subnet_name: String,
    pub(crate) external: Vec<String>,
    pub(crate) group: SecurityGroup,
    pub(crate) default_deny: bool,
    pub(crate) rules: Vec<RuleOut>,
    pub(crate) functions: Vec<(String, String)>,
    pub(crate) referenced: Vec<Referenced>,
    pub(crate) inexpressible: Vec<String>,
}

/// The key functions are clustered by: network, subnets, groups (sorted).
type Key = (String, Vec<String>, Vec<String>);

/// The groups of a function: AWS its security groups; Azure the NSG of its subnet.
fn groups_of(inv: &Inventory, cloud: Cloud, f: &Function) -> Vec<String> {
    let Some(p) = &f.placement else {
        return Vec::new();
    };
    let mut out: Vec<String> = match cloud {
        Cloud::Aws => p
            .groups
            .iter()
            .filter_map(|g| match g {
                GroupRef::Id(id) => Some(id.clone()),
                GroupRef::Managed(_) => None,
            })
            .collect(),
        Cloud::Azure => p
            .subnets
            .iter()
            .filter_map(|s| inv.subnets.iter().find(|x| x.id.eq_ignore_ascii_case(s)))
            .filter_map(|s| match &s.group {
                Some(GroupRef::Id(id)) => Some(id.clone()),
                _ => None,
            })
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

fn in_scope(inv: &Inventory, f: &Function, select: &[Select]) -> bool {
    select.iter().all(|s| match s {
        Select::Tag(k, v) => f.tags.get(k) == Some(v),
        Select::NamePrefix(p) => f.name.starts_with(p.as_str()),
        Select::Network(n) => f.placement.as_ref().is_some_and(|p| {
            p.network.eq_ignore_ascii_case(n)
                || inv.networks.iter().any(|net| {
                    net.id.eq_ignore_ascii_case(&p.network) && net.name.eq_ignore_ascii_case(n)
                })
        }),
        Select::ResourceGroup(g) => {
            f.id.to_ascii_lowercase()
                .contains(&format!("/resourcegroups/{}/", g.to_ascii_lowercase()))
        }
    })
}

/// Tag keys in the order names and selectors prefer them.
const PREFERRED: [&str; 10] = [
    "app",
    "application",
    "service",
    "component",
    "tier",
    "role",
    "team",
    "env",
    "environment",
    "stage",
];

fn preference(key: &str) -> (usize, String) {
    let k = key.to_ascii_lowercase();
    (
        PREFERRED
            .iter()
            .position(|p| *p == k)
            .unwrap_or(PREFERRED.len()),
        key.to_string(),
    )
}

/// A valid policy name from free text (lower-case letters, digits and `-`, 1-63).
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(56).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Whether `set` is a repository `adopt` can start from: Targets and Guardrails, no
/// FunctionPolicy (a generated repository must stand alone: its policies would name
/// ones it does not hold, and the controller pointed at it would prune what those
/// manage).
///
/// # Errors
/// A message naming the policies found.
pub fn check_input(set: &PolicySet) -> Result<(), String> {
    if set.policies.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = set.policies.iter().take(5).map(|p| p.name()).collect();
    Err(format!(
        "--policies holds {} FunctionPolic{} ({}{}); adopt starts from a repository with the Target only (and guardrails). Adopt into a separate directory with `--select` to leave governed functions out",
        set.policies.len(),
        if set.policies.len() == 1 { "y" } else { "ies" },
        names.join(", "),
        if set.policies.len() > 5 { ", …" } else { "" }
    ))
}

/// Adopt what `inv` shows of `target`. `set` is its repository: the Target and
/// guardrails, no FunctionPolicy ([`check_input`]); its guardrails judge the estate as
/// found.
pub fn adopt(set: &PolicySet, target: &TargetDoc, inv: &Inventory, opts: &Options) -> Adoption {
    let cloud = target.to_target().map_or(Cloud::Aws, |t| t.scope.cloud());
    let tname = target.name().to_string();
    let mut left = Vec::new();
    let mut clusters: BTreeMap<Key, Vec<&Function>> = BTreeMap::new();
    let mut scope = 0;
    for f in inv
        .functions
        .iter()
        .filter(|f| in_scope(inv, f, &opts.select))
    {
        scope += 1;
        let why = |w: String| LeftOut {
            function: f.name.clone(),
            why: w,
        };
        let Some(p) = &f.placement else {
            left.push(why(match cloud {
                Cloud::Aws => {
                    "not in a VPC: nothing to adopt (a policy would move it into one)".into()
                }
                Cloud::Azure => {
                    "no VNet integration: nothing to adopt (a policy would integrate it)".into()
                }
            }));
            continue;
        };
        if let Some(GroupRef::Managed(o)) =
            p.groups.iter().find(|g| matches!(g, GroupRef::Managed(_)))
        {
            left.push(why(format!(
                "holds Palisade's managed group of {o}: already governed"
            )));
            continue;
        }
        let mut subnets = p.subnets.clone();
        subnets.sort();
        clusters
            .entry((p.network.clone(), subnets, groups_of(inv, cloud, f)))
            .or_default()
            .push(f);
    }
    // Who holds each group: functions (every one observed, in scope or not) by cluster.
    let mut holders: HashMap<String, BTreeSet<usize>> = HashMap::new();
    let keys: Vec<&Key> = clusters.keys().collect();
    let cluster_of: HashMap<&str, usize> = clusters
        .values()
        .enumerate()
        .flat_map(|(i, fs)| fs.iter().map(move |f| (f.id.as_str(), i)))
        .collect();
    let mut outside: HashMap<String, Vec<&str>> = HashMap::new();
    for f in &inv.functions {
        for g in groups_of(inv, cloud, f) {
            match cluster_of.get(f.id.as_str()) {
                Some(i) => {
                    holders
                        .entry(g.to_ascii_lowercase())
                        .or_default()
                        .insert(*i);
                }
                None => outside
                    .entry(g.to_ascii_lowercase())
                    .or_default()
                    .push(f.name.as_str()),
            }
        }
    }
    let by_id: HashMap<String, &SecurityGroup> = inv
        .groups
        .iter()
        .map(|g| (g.id.to_ascii_lowercase(), g))
        .collect();
    let group = |id: &str| by_id.get(&id.to_ascii_lowercase()).copied();
    let tag_index = TagIndex::new(inv);
    // Why group `id` cannot be owned by cluster `i`, if it cannot.
    let shared = |i: usize, id: &str| -> Option<String> {
        let lid = id.to_ascii_lowercase();
        let Some(g) = group(id) else {
            return Some("it was not observed".into());
        };
        if g.owner().is_some() {
            return Some("it carries Palisade's ownership tags".into());
        }
        if holders.get(&lid).is_some_and(|c| c.len() > 1) {
            return Some("other clusters of functions use it too".into());
        }
        if let Some(names) = outside.get(&lid) {
            let mut names = names.clone();
            names.sort_unstable();
            return Some(format!(
                "functions outside the adoption use it ({})",
                palisade_providers::model::some_of(&names)
            ));
        }
        let allowed = &keys[i].1;
        match &g.attached {
            None => Some("what else uses it could not be read".into()),
            Some(users) => {
                let others: Vec<&str> = users
                    .iter()
                    .map(String::as_str)
                    .filter(|u| !allowed.iter().any(|s| s.eq_ignore_ascii_case(u)))
                    .collect();
                (!others.is_empty()).then(|| {
                    format!(
                        "other resources use it ({})",
                        palisade_providers::model::some_of(&others)
                    )
                })
            }
        }
    };
    // The group each cluster owns.
    let mut owned: Vec<Option<String>> = Vec::new();
    let mut refs: Vec<Vec<Referenced>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let mut eligible: Vec<&SecurityGroup> = Vec::new();
        let mut why: Vec<(String, String)> = Vec::new();
        for id in &key.2 {
            match shared(i, id) {
                None => eligible.extend(group(id)),
                Some(w) => why.push((id.clone(), w)),
            }
        }
        eligible.sort_by(|a, b| b.rules.len().cmp(&a.rules.len()).then(a.id.cmp(&b.id)));
        let chosen = eligible.first().map(|g| g.id.clone());
        for g in eligible.iter().skip(1) {
            why.push((
                g.id.clone(),
                format!(
                    "a policy owns one group; {} is taken over instead and this one stays attached as it is",
                    chosen.as_deref().unwrap_or_default()
                ),
            ));
        }
        refs.push(
            why.into_iter()
                .map(|(id, why)| Referenced {
                    name: group(&id).map(|g| g.name.clone()).unwrap_or_default(),
                    id,
                    why,
                })
                .collect(),
        );
        owned.push(chosen);
    }
    // Names and selectors.
    let mut taken: BTreeSet<String> = set.policies.iter().map(|p| p.name().to_string()).collect();
    let mut outs: Vec<PolicyOut> = Vec::new();
    let mut policy_of_group: HashMap<String, String> = HashMap::new();
    let mut picked: Vec<usize> = Vec::new();
    for (i, (key, fs)) in clusters.iter().enumerate() {
        let Some(gid) = &owned[i] else {
            let reasons: Vec<String> = refs[i]
                .iter()
                .map(|r| format!("{} ({}): {}", r.id, r.name, r.why))
                .collect();
            let why = if key.2.is_empty() {
                match cloud {
                    Cloud::Aws => "it has no security group of its own to take over".to_string(),
                    Cloud::Azure => "its integration subnet has no NSG to take over".to_string(),
                }
            } else {
                format!(
                    "no group it uses can be owned by its policy: {}",
                    reasons.join("; ")
                )
            };
            for f in fs {
                left.push(LeftOut {
                    function: f.name.clone(),
                    why: why.clone(),
                });
            }
            continue;
        };
        let Some(g) = group(gid) else { continue };
        let (tags, names) = selector(&tag_index, fs);
        let base = {
            let from_tags = tags
                .iter()
                .map(|(k, v)| (preference(k), v))
                .collect::<BTreeMap<_, _>>()
                .into_values()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("-");
            let candidates = [from_tags, g.name.clone(), fs[0].name.clone()];
            candidates
                .iter()
                .map(|c| slug(c))
                .find(|c| !c.is_empty() && c.starts_with(|ch: char| ch.is_ascii_lowercase()))
                .unwrap_or_else(|| format!("cluster-{}", slug(&g.name)))
        };
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        taken.insert(name.clone());
        policy_of_group.insert(g.id.to_ascii_lowercase(), name.clone());
        let network_name = inv
            .networks
            .iter()
            .find(|n| n.id.eq_ignore_ascii_case(&key.0))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let subnet_name = key
            .1
            .first()
            .and_then(|s| inv.subnets.iter().find(|x| x.id.eq_ignore_ascii_case(s)))
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let mut functions: Vec<(String, String)> =
            fs.iter().map(|f| (f.name.clone(), f.id.clone())).collect();
        functions.sort();
        outs.push(PolicyOut {
            name,
            target: tname.clone(),
            cloud,
            mode: opts.mode,
            tags,
            names,
            network: key.0.clone(),
            network_name,
            subnets: key.1.clone(),
            subnet_name,
            external: key
                .2
                .iter()
                .filter(|id| !id.eq_ignore_ascii_case(gid))
                .cloned()
                .collect(),
            group: g.clone(),
            default_deny: true,
            rules: Vec::new(),
            functions,
            referenced: refs[i].clone(),
            inexpressible: Vec::new(),
        });
        picked.push(i);
    }
    // Rules, once every cluster's policy name is known (peers name them).
    let managed_ids: HashMap<&str, &str> = inv
        .groups
        .iter()
        .filter_map(|g| g.owner())
        .filter_map(|o| Some((o, inv.managed_group(o)?.id.as_str())))
        .collect();
    let account = match target.to_target().map(|t| t.scope) {
        Some(palisade_providers::TargetScope::Aws { account_id, .. }) => Some(account_id),
        _ => None,
    };
    for p in &mut outs {
        write_rules(p, &policy_of_group, &managed_ids, account.as_deref());
    }
    one_sided(&mut outs);
    for p in &mut outs {
        if !p.inexpressible.is_empty() {
            p.mode = Mode::Audit;
        }
    }
    let mut files = BTreeMap::new();
    files.insert("targets.yaml".to_string(), yaml::target(target));
    // The report lists policies by name, not by the clouds' random ids.
    outs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut reports = Vec::new();
    let mut counts = Counts {
        functions_observed: inv.functions.len(),
        functions_in_scope: scope,
        ..Counts::default()
    };
    for p in &outs {
        let file = format!("policies/{}.yaml", p.name);
        files.insert(file.clone(), yaml::policy(p));
        let atomic: usize = p.group.rules.len();
        counts.functions_adopted += p.functions.len();
        counts.policies += 1;
        counts.groups_adopted += 1;
        counts.groups_referenced += p.referenced.len();
        counts.rules += atomic;
        counts.inexpressible += p.inexpressible.len();
        reports.push(ClusterReport {
            policy: p.name.clone(),
            file,
            mode: p.mode,
            selector: if p.names.is_empty() {
                format!(
                    "tags {}",
                    p.tags
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            } else {
                "names".into()
            },
            functions: p.functions.iter().map(|(n, _)| n.clone()).collect(),
            network: p.network.clone(),
            subnets: p.subnets.clone(),
            managed_group: format!("{} ({})", p.group.id, p.group.name),
            referenced: p.referenced.clone(),
            rules: atomic,
            inexpressible: p.inexpressible.clone(),
        });
    }
    left.sort_by(|a, b| a.function.cmp(&b.function).then(a.why.cmp(&b.why)));
    let mut before = crate::check::check_inventory(set, inv);
    before.sort();
    let report = Report {
        target: tname,
        cloud: match cloud {
            Cloud::Aws => "aws".into(),
            Cloud::Azure => "azure".into(),
        },
        select: opts.select.iter().map(ToString::to_string).collect(),
        counts,
        clusters: reports,
        left,
        before,
    };
    files.insert(
        "adoption.json".to_string(),
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    );
    Adoption { files, report }
}

/// Functions by tag, so that finding a cluster's selector does not scan every function.
struct TagIndex<'a> {
    by_tag: HashMap<(&'a str, &'a str), Vec<&'a Function>>,
}

impl<'a> TagIndex<'a> {
    fn new(inv: &'a Inventory) -> Self {
        let mut by_tag: HashMap<(&str, &str), Vec<&Function>> = HashMap::new();
        for f in &inv.functions {
            for (k, v) in &f.tags {
                by_tag.entry((k.as_str(), v.as_str())).or_default().push(f);
            }
        }
        TagIndex { by_tag }
    }

    /// Ids of the functions that carry every tag of `tags`: the shortest posting list,
    /// filtered.
    fn select(&self, tags: &BTreeMap<String, String>) -> BTreeSet<&'a str> {
        let shortest = tags
            .iter()
            .map(|(k, v)| self.by_tag.get(&(k.as_str(), v.as_str())))
            .min_by_key(|l| l.map_or(0, Vec::len));
        let Some(Some(list)) = shortest else {
            return BTreeSet::new();
        };
        list.iter()
            .filter(|f| tags.iter().all(|(k, v)| f.tags.get(k) == Some(v)))
            .map(|f| f.id.as_str())
            .collect()
    }
}

/// The selector of a cluster: the fewest common tags (in order of preference) that
/// select exactly its functions among every function observed; else their names.
fn selector(index: &TagIndex<'_>, fs: &[&Function]) -> (BTreeMap<String, String>, Vec<String>) {
    let first = &fs[0].tags;
    let mut common: Vec<(&String, &String)> = first
        .iter()
        .filter(|(k, v)| {
            !k.starts_with("aws:")
                && !k.starts_with("palisade:")
                && !v.is_empty()
                && fs.iter().all(|f| f.tags.get(*k) == Some(*v))
        })
        .collect();
    common.sort_by_key(|(k, _)| preference(k));
    let members: BTreeSet<&str> = fs.iter().map(|f| f.id.as_str()).collect();
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in common {
        chosen.insert(k.clone(), v.clone());
        if index.select(&chosen) == members {
            return (chosen, Vec::new());
        }
    }
    let mut names: Vec<String> = fs.iter().map(|f| f.name.clone()).collect();
    names.sort();
    names.dedup();
    (BTreeMap::new(), names)
}

/// The language refuses an egress rule to `policy: B` that B's ingress does not admit
/// (one-sided). Such an estate rule cannot be written as a policy peer: it is left out
/// and reported, and its policy stays in audit.
fn one_sided(outs: &mut [PolicyOut]) {
    // (receiver, sender) → ports the receiver admits from the sender.
    let mut admitted: HashMap<(String, String), Vec<Ports>> = HashMap::new();
    for p in outs.iter() {
        for r in p
            .rules
            .iter()
            .filter(|r| r.direction == Direction::Ingress && r.access == Access::Allow)
        {
            for peer in &r.peers {
                if let PeerOut::Policy(from) = peer {
                    admitted
                        .entry((p.name.clone(), from.clone()))
                        .or_default()
                        .extend(r.ports.iter().copied());
                }
            }
        }
    }
    for p in outs.iter_mut() {
        let mut dropped = Vec::new();
        for r in p
            .rules
            .iter_mut()
            .filter(|r| r.direction == Direction::Egress && r.access == Access::Allow)
        {
            r.peers.retain(|peer| {
                let PeerOut::Policy(to) = peer else {
                    return true;
                };
                let have = admitted
                    .get(&(to.clone(), p.name.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let missing: Vec<String> = r
                    .ports
                    .iter()
                    .filter(|port| !have.iter().any(|a| a.contains(port)))
                    .map(ToString::to_string)
                    .collect();
                if missing.is_empty() {
                    return true;
                }
                dropped.push(format!(
                    "egress {:?} to the group of {to} on {}: {to}'s group does not admit it, and a policy may send to another only what that one admits (write it as a cidr or let {to} admit it)",
                    r.name,
                    missing.join(", ")
                ));
                false
            });
        }
        p.rules.retain(|r| !r.peers.is_empty());
        p.inexpressible.extend(dropped);
    }
}

/// Write the owned group's rules back into `p`: AWS atomic rules regrouped by
/// description and peers with the same ports; Azure one entry per NSG rule.
fn write_rules(
    p: &mut PolicyOut,
    policy_of_group: &HashMap<String, String>,
    managed_ids: &HashMap<&str, &str>,
    account: Option<&str>,
) {
    let peer_of = |r: &Rule, inexpressible: &mut Vec<String>| -> Option<PeerOut> {
        let out = match &r.peer {
            Peer::Cidr(n) => PeerOut::Cidr(n.to_string()),
            Peer::PrefixList(pl) => PeerOut::PrefixList(pl.clone()),
            Peer::ServiceTag(t) => PeerOut::ServiceTag(t.clone()),
            Peer::Any => PeerOut::ServiceTag("*".into()),
            Peer::Asg(id) => {
                inexpressible.push(format!(
                    "{r}: an application security group ({id}) cannot be named by a policy (function apps cannot join one)"
                ));
                return None;
            }
            Peer::Group(GroupRef::Managed(o)) => {
                inexpressible.push(format!(
                    "{r}: names Palisade's managed group of {o} ({}), which the repository that declares {o} governs",
                    managed_ids.get(o.as_str()).copied().unwrap_or("unknown id")
                ));
                return None;
            }
            Peer::Group(GroupRef::Id(id)) => {
                if let (Some(reference), Some(account)) = (&r.reference, account)
                    && reference.account.as_deref().is_some_and(|a| a != account)
                {
                    inexpressible.push(format!(
                        "{r}: references a group of account {}, which the language cannot name",
                        reference.account.as_deref().unwrap_or_default()
                    ));
                    return None;
                }
                match policy_of_group.get(&id.to_ascii_lowercase()) {
                    Some(q) => PeerOut::Policy(q.clone()),
                    None => PeerOut::SecurityGroup(id.clone()),
                }
            }
        };
        if matches!(r.ports.protocol, palisade_providers::Protocol::Number(_)) {
            inexpressible.push(format!(
                "{r}: the language names tcp, udp, icmp, icmpv6 and all, not IP protocol numbers"
            ));
            return None;
        }
        if !r.is_full() {
            inexpressible.push(format!(
                "{r}: limits {} the language cannot say (several prefixes or ports in one rule, a near-side or source-port limit)",
                r.narrowing
                    .as_ref()
                    .map(|n| n.near.join(", "))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "what it matches".into())
            ));
            return None;
        }
        Some(out)
    };
    let mut inexpressible = Vec::new();
    let mut rules: Vec<Rule> = p.group.rules.clone();
    rules.sort();
    rules.dedup();
    let mut used: BTreeSet<(Direction, Access, String)> = BTreeSet::new();
    let mut unique = |d: Direction, a: Access, base: String| -> String {
        let base = if base.is_empty() {
            match (d, a) {
                (Direction::Ingress, Access::Allow) => "ingress".to_string(),
                (Direction::Egress, Access::Allow) => "egress".to_string(),
                (_, Access::Deny) => "deny".to_string(),
            }
        } else {
            base
        };
        // Deny rules share one namespace in the language.
        let a_key = a;
        let d_key = if a == Access::Deny {
            Direction::Egress
        } else {
            d
        };
        let mut name = base.clone();
        let mut n = 2;
        while !used.insert((d_key, a_key, name.clone())) {
            name = format!("{base}-{n}");
            n += 1;
        }
        name
    };
    match p.cloud {
        Cloud::Aws => {
            // (direction, description) → peer → ports, in rule order.
            let mut by: BTreeMap<(Direction, String), BTreeMap<PeerOut, BTreeSet<Ports>>> =
                BTreeMap::new();
            for r in &rules {
                let Some(peer) = peer_of(r, &mut inexpressible) else {
                    continue;
                };
                let desc: String = r
                    .description
                    .as_deref()
                    .map(audit_text)
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect();
                by.entry((r.direction, desc))
                    .or_default()
                    .entry(peer)
                    .or_default()
                    .insert(r.ports);
            }
            for ((direction, desc), peers) in by {
                // Peers with the same ports share an entry.
                let mut buckets: BTreeMap<Vec<Ports>, Vec<PeerOut>> = BTreeMap::new();
                for (peer, ports) in peers {
                    buckets
                        .entry(ports.into_iter().collect())
                        .or_default()
                        .push(peer);
                }
                for (ports, peers) in buckets {
                    let name = unique(direction, Access::Allow, desc.trim().to_string());
                    p.rules.push(RuleOut {
                        name,
                        direction,
                        access: Access::Allow,
                        peers,
                        ports,
                        priority: None,
                    });
                }
            }
        }
        Cloud::Azure => {
            // Palisade's own ending (a deny-all at 4096 in each direction) is
            // `defaultDeny`; anything else is written one for one.
            let ending = |d: Direction| Rule {
                direction: d,
                ports: Ports::ALL,
                peer: Peer::Any,
                access: Access::Deny,
                priority: Some(crate::policy::validate::NSG_DEFAULT_DENY_PRIORITY),
                description: None,
                id: None,
                reference: None,
                narrowing: None,
            };
            let ends = [Direction::Ingress, Direction::Egress]
                .iter()
                .all(|d| rules.contains(&ending(*d)));
            p.default_deny = ends;
            let mut sorted = rules.clone();
            sorted.sort_by_key(|r| (r.direction, r.effective_priority(), r.id.clone()));
            for r in &sorted {
                if ends && (*r == ending(Direction::Ingress) || *r == ending(Direction::Egress)) {
                    continue;
                }
                if r.priority.is_none() {
                    inexpressible.push(format!(
                        "{r} (NSG rule {}): one NSG rule with several prefixes or port ranges, which Palisade writes as one rule each",
                        r.id.as_deref().map(audit_text).unwrap_or_default()
                    ));
                    continue;
                }
                let Some(peer) = peer_of(r, &mut inexpressible) else {
                    continue;
                };
                if r.priority.is_some_and(|x| {
                    !crate::policy::validate::NSG_PRIORITY.contains(&x)
                        || (x == crate::policy::validate::NSG_DEFAULT_DENY_PRIORITY
                            && r.access == Access::Allow)
                }) {
                    inexpressible.push(format!(
                        "{r}: priority {} is outside what a policy may write",
                        r.priority.unwrap_or_default()
                    ));
                    continue;
                }
                let name = unique(
                    r.direction,
                    r.access,
                    r.id.as_deref().map(audit_text).unwrap_or_default(),
                );
                p.rules.push(RuleOut {
                    name,
                    direction: r.direction,
                    access: r.access,
                    peers: vec![peer],
                    ports: vec![r.ports],
                    priority: r.priority,
                });
            }
        }
    }
    p.inexpressible = inexpressible;
}

/// The groups whose other users adoption needs ([`Provider::read_attachments`]): every
/// group a function of `inv` holds by id, sorted.
///
/// [`Provider::read_attachments`]: palisade_providers::Provider::read_attachments
pub fn groups_to_read(inv: &Inventory) -> Vec<String> {
    let mut g: Vec<String> = inv
        .functions
        .iter()
        .filter_map(|f| f.placement.as_ref())
        .flat_map(|p| &p.groups)
        .filter_map(|g| match g {
            GroupRef::Id(id) => Some(id.clone()),
            GroupRef::Managed(_) => None,
        })
        .collect();
    g.sort();
    g.dedup();
    g
}

/// What `--verify` found: the plan of the generated policies against the observation
/// they came from, and everything in it that is not zero.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Whether the plan is empty: no change (but the takeovers), no audit drift,
    /// nothing refused.
    pub empty: bool,
    /// What is not zero, one line each.
    pub differences: Vec<String>,
    /// Groups an enforce-mode policy takes over (records and tags): the one write an
    /// adopted policy makes, not a difference.
    pub takes_over: Vec<String>,
    /// What Palisade already manages in the target (created for another repository's
    /// policies): not described by the generated policies, so a controller pointed at
    /// them alone with prune on would delete it. Listed, not counted.
    pub already_managed: Vec<String>,
}

/// Plan `generated` (the written repository, loaded back) against `inv`, the very
/// observation it was generated from: the groups it names are taken over in memory
/// exactly as observing would ([`palisade_providers::Ownership::apply_declared`]).
pub fn verify(
    generated: &PolicySet,
    target: &str,
    inv: &Inventory,
    settings: &crate::plan::Settings,
) -> Verification {
    use crate::check::FindingKind as F;
    let Some(doc) = generated.target(target) else {
        return Verification {
            empty: false,
            differences: vec![format!("the generated repository has no target {target}")],
            takes_over: Vec::new(),
            already_managed: Vec::new(),
        };
    };
    let mut ownership = palisade_providers::Ownership::unverified(target);
    crate::compile::declare_groups(generated, target, &mut ownership);
    let mut inv = inv.clone();
    ownership.apply_declared(&mut inv);
    let mut differences = Vec::new();
    let mut takes_over = Vec::new();
    let mut already_managed = Vec::new();
    // What Palisade already manages in the target is not what adopt describes: planned
    // without pruning, it shows as `orphaned` (listed apart), never as a deletion.
    let settings = crate::plan::Settings {
        prune: false,
        ..settings.clone()
    };
    match crate::planning::plan_with(generated, doc, inv, None, &settings, None) {
        Err(crate::planning::PlanError::Invalid(diags)) => {
            differences.extend(
                diags
                    .iter()
                    .filter(|d| d.is_error())
                    .map(ToString::to_string),
            );
        }
        Err(e) => differences.push(e.to_string()),
        Ok(planned) => {
            let plan = &planned.plan;
            let (takeovers, changes): (Vec<_>, Vec<_>) = plan.changes.iter().partition(|c| {
                matches!(
                    c.change,
                    palisade_providers::Change::SetOwnershipTags { takeover: true, .. }
                )
            });
            takes_over.extend(
                takeovers
                    .iter()
                    .map(|c| crate::plan::change_lines(&c.change).join("; ")),
            );
            differences.extend(changes.iter().map(|c| {
                format!(
                    "change: {}: {}",
                    c.resource,
                    crate::plan::change_lines(&c.change).join("; ")
                )
            }));
            if let Some(r) = &plan.refusal {
                differences.push(format!("refused: {}", r.reason));
            }
            already_managed.extend(
                plan.findings
                    .iter()
                    .filter(|f| f.kind == F::Orphaned)
                    .map(|f| format!("{}: {}", f.resource, f.message)),
            );
            differences.extend(
                plan.findings
                    .iter()
                    .filter(|f| {
                        matches!(f.kind, F::AuditDrift | F::NotAdopted | F::InventoryConflict)
                    })
                    .map(|f| format!("{:?}: {}: {}", f.kind, f.resource, f.message)),
            );
        }
    }
    Verification {
        empty: differences.is_empty(),
        differences,
        takes_over,
        already_managed,
    }
}

#[cfg(test)]
mod tests;
