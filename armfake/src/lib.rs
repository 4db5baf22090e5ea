//! A stateful fake of Azure Resource Manager for Palisade's tests and demo.
//!
//! No Azure emulator exists, so this server stands in for `management.azure.com` (and for
//! the Entra ID token endpoint) on 127.0.0.1. It serves the request and response shapes
//! of Microsoft's official 2024-03-01 Network and 2024-04-01 Web examples (copies in
//! `fixtures/`, MIT licence notice beside them) and behaves like ARM where Palisade
//! depends on it:
//!
//! - every ARM call needs `Authorization: Bearer <token>` with a token this server issued
//!   (`POST /{tenant}/oauth2/v2.0/token`) and the right `api-version`;
//! - resources are keyed by lower-cased ARM id; parents are never created implicitly
//!   (resource group, VNet, NSG must exist);
//! - `PUT` answers 201/200 with `Azure-AsyncOperation` on this server and `Retry-After: 0`;
//!   the operation reports `InProgress` [`Config::in_progress_polls`] times, then
//!   `Succeeded` or `Failed` with an error body;
//! - `DELETE` answers 202 with `Location`; polling it gives 202 until done, then 204; a
//!   delete of something missing is 204;
//! - lists are paged with absolute `nextLink`s;
//! - what ARM refuses is refused: deleting an NSG still associated with a subnet, a
//!   subnet naming a missing NSG, a private endpoint in a missing subnet, a site
//!   integrated into a subnet not delegated to `Microsoft.Web/serverFarms`, two rules of
//!   one NSG with the same priority and direction;
//! - on demand it throttles every n-th call (429 + `Retry-After`) and answers writes with
//!   `409 RetryableErrorDueToAnotherOperation`;
//! - `x-ms-request-id` and `x-ms-ratelimit-remaining-subscription-*` headers on every answer.
//!
//! Tests and the demo drive it through `/_fake/*` (seed, config, call counts); "drift by
//! hand" goes through the ARM API itself, as a person with the portal or CLI would.
//!
//! Not modelled: network interfaces, route tables (references are kept, not checked),
//! the private-link target resource (never checked), ARM's eventual consistency.

// Validation helpers answer with the ARM error response itself.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// API version of every `Microsoft.Network` call.
pub const NETWORK_API: &str = "2024-03-01";
/// API version of every `Microsoft.Web` call.
pub const WEB_API: &str = "2024-04-01";

/// Behaviour switches, changed at run time through `POST /_fake/config`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many polls of an async operation answer `InProgress` before it ends.
    pub in_progress_polls: u32,
    /// Throttle every n-th ARM call with 429 (0 = never).
    pub throttle_every: u64,
    /// `Retry-After` seconds on a 429.
    pub retry_after_secs: u64,
    /// Items per list page.
    pub page_size: usize,
    /// The next n writes answer `409 RetryableErrorDueToAnotherOperation`.
    pub busy_writes: u32,
    /// The next write's async operation ends `Failed` with this code and message (and
    /// the write is not applied).
    pub fail_next: Option<(String, String)>,
    /// The next DELETE's async operation ends `Failed` with this code and message (and
    /// nothing is deleted); other writes are not affected.
    pub fail_next_delete: Option<(String, String)>,
    /// A token that is always accepted besides issued ones (for scripts and curl).
    pub static_token: Option<String>,
    /// Who the Activity Log names for writes made with the static token (a user's
    /// principal name).
    pub static_caller: String,
    /// How long an Activity Log event stays invisible after its write (Azure's lag is
    /// minutes).
    pub activity_delay: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            in_progress_polls: 1,
            throttle_every: 0,
            retry_after_secs: 1,
            page_size: 100,
            busy_writes: 0,
            fail_next: None,
            fail_next_delete: None,
            static_token: None,
            static_caller: "operator@contoso.example".into(),
            activity_delay: std::time::Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Operation {
    polls_left: u32,
    /// `None` = succeeded.
    error: Option<(String, String)>,
    /// 204 at the end of a delete; the resource id whose body ends a PUT.
    delete: bool,
    resource: String,
}

#[derive(Debug, Default)]
struct Inner {
    config: Config,
    resource_groups: BTreeSet<String>,
    /// Lower-cased id → resource as stored (children such as rules and subnets are their
    /// own entries and are composed into their parents on read).
    resources: BTreeMap<String, Value>,
    ops: HashMap<String, Operation>,
    /// Issued token → the client id it was issued to.
    tokens: BTreeMap<String, String>,
    /// The Activity Log: one administrative event per successful write, oldest first.
    activity: Vec<Value>,
    next_id: u64,
    /// ARM calls counted, for throttling and for `/_fake/calls`.
    calls: u64,
    throttled: u64,
    by_operation: BTreeMap<String, u64>,
}

/// The fake's shared state.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
}

/// A running fake server.
#[derive(Debug)]
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The state, for direct inspection in tests.
    pub fake: Fake,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// A fake with the given configuration and nothing in it.
    pub fn new(config: Config) -> Fake {
        let fake = Fake::default();
        fake.lock().config = config;
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve on `addr` (use port 0 for a free one) in the current tokio runtime.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Running {
            endpoint: format!("http://{local}"),
            fake: self,
            task,
        })
    }

    /// Seed resource groups and resources (ARM-shaped JSON, see [`Fake::seed_json`]).
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn seed(&self, seed: &Value) -> Result<usize, String> {
        let mut inner = self.lock();
        let mut n = 0;
        for rg in seed["resourceGroups"].as_array().into_iter().flatten() {
            let rg = rg.as_str().ok_or("resourceGroups holds ids (strings)")?;
            inner.resource_groups.insert(rg.to_ascii_lowercase());
        }
        for r in seed["resources"].as_array().into_iter().flatten() {
            inner.insert_seed(r.clone())?;
            n += 1;
        }
        Ok(n)
    }

    /// Everything stored, composed as ARM would return it (for tests).
    pub fn get(&self, id: &str) -> Option<Value> {
        let inner = self.lock();
        inner
            .resources
            .get(&id.to_ascii_lowercase())
            .map(|v| inner.compose(v))
    }

    /// Store `resource` as it is (its `id` says where), as someone changing it by hand
    /// would leave it (tests: drift behind the client's back).
    ///
    /// # Errors
    /// The resource has no ARM id.
    pub fn put(&self, resource: Value) -> Result<(), String> {
        self.lock().insert_seed(resource)
    }

    /// Change the configuration while serving.
    pub fn configure(&self, change: impl FnOnce(&mut Config)) {
        change(&mut self.lock().config);
    }

    /// Total ARM calls answered (throttled ones included).
    pub fn calls(&self) -> u64 {
        self.lock().calls
    }
}

impl Inner {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_id)
    }

    fn insert_seed(&mut self, mut r: Value) -> Result<(), String> {
        let id = r["id"]
            .as_str()
            .ok_or("every seeded resource needs an id")?
            .to_string();
        let path = ArmPath::parse(&id).ok_or_else(|| format!("{id}: not an ARM id"))?;
        if r.get("name").is_none() {
            r["name"] = json!(path.name());
        }
        if r.get("type").is_none() {
            r["type"] = json!(path.type_name());
        }
        if r.get("etag").is_none() {
            r["etag"] = json!(format!("W/\"{}\"", self.new_id()));
        }
        let props = r
            .as_object_mut()
            .ok_or("a resource is an object")?
            .entry("properties")
            .or_insert_with(|| json!({}));
        if props.get("provisioningState").is_none() && path.kind != Kind::Site {
            props["provisioningState"] = json!("Succeeded");
        }
        // Split children out, as they are stored on their own.
        let children: Vec<(String, Value)> = match path.kind {
            Kind::Vnet => take_children(&mut r, "subnets", &id, "subnets"),
            Kind::Nsg => take_children(&mut r, "securityRules", &id, "securityRules"),
            _ => Vec::new(),
        };
        self.resources.insert(id.to_ascii_lowercase(), r);
        for (cid, mut c) in children {
            c["id"] = json!(cid);
            self.insert_seed(c)?;
        }
        Ok(())
    }

    fn children(&self, parent: &str, segment: &str) -> Vec<&Value> {
        let prefix = format!("{}/{}/", parent.to_ascii_lowercase(), segment);
        self.resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(_, v)| v)
            .collect()
    }

    fn of_type<'a>(&'a self, kind: Kind) -> impl Iterator<Item = &'a Value> + 'a {
        // A substring test, not a parse of every key: lists of 10,000 sites read every
        // key once per page.
        let marker = kind.marker();
        self.resources.iter().filter_map(move |(k, v)| {
            // The marker is the last type segment: the kind matches when only the name
            // follows it.
            let leaf = k
                .rfind(marker)
                .is_some_and(|i| !k[i + marker.len()..].contains('/'));
            leaf.then_some(v)
        })
    }

    /// A resource as a GET returns it: children and back-references composed in.
    fn compose(&self, v: &Value) -> Value {
        let mut out = v.clone();
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let Some(path) = ArmPath::parse(&id) else {
            return out;
        };
        match path.kind {
            Kind::Nsg => {
                let rules: Vec<Value> = self
                    .children(&id, "securityrules")
                    .into_iter()
                    .cloned()
                    .collect();
                out["properties"]["securityRules"] = Value::Array(rules);
                out["properties"]["defaultSecurityRules"] = default_rules(&id);
                let subnets = self.referrers(Kind::Subnet, "networkSecurityGroup", &id);
                if !subnets.is_empty() {
                    out["properties"]["subnets"] = id_list(subnets);
                }
            }
            Kind::Vnet => {
                let subnets: Vec<Value> = self
                    .children(&id, "subnets")
                    .into_iter()
                    .map(|s| self.compose(s))
                    .collect();
                out["properties"]["subnets"] = Value::Array(subnets);
            }
            Kind::Subnet => {
                let pes = self.referrers(Kind::Pe, "subnet", &id);
                if !pes.is_empty() {
                    out["properties"]["privateEndpoints"] = id_list(pes);
                }
            }
            _ => {}
        }
        out
    }

    /// Ids of the resources of `kind` whose `properties.<field>.id` is `id`.
    fn referrers(&self, kind: Kind, field: &str, id: &str) -> Vec<String> {
        self.of_type(kind)
            .filter(|r| same_id(&r["properties"][field]["id"], id))
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    }

    fn exists(&self, id: &str) -> bool {
        self.resources.contains_key(&id.to_ascii_lowercase())
    }
}

/// `[{"id": …}, …]`, as ARM lists references.
fn id_list(ids: Vec<String>) -> Value {
    Value::Array(ids.into_iter().map(|id| json!({ "id": id })).collect())
}

fn same_id(v: &Value, id: &str) -> bool {
    v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(id))
}

fn take_children(r: &mut Value, key: &str, parent: &str, segment: &str) -> Vec<(String, Value)> {
    let Some(list) = r["properties"]
        .as_object_mut()
        .and_then(|p| p.remove(key))
        .and_then(|l| match l {
            Value::Array(a) => Some(a),
            _ => None,
        })
    else {
        return Vec::new();
    };
    list.into_iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            (format!("{parent}/{segment}/{name}"), c)
        })
        .collect()
}

/// The six rules every NSG has and nobody can change.
fn default_rules(nsg: &str) -> Value {
    let rule = |name: &str, dir: &str, access: &str, prio: u32, src: &str, dst: &str| {
        json!({
            "name": name,
            "id": format!("{nsg}/defaultSecurityRules/{name}"),
            "properties": {
                "provisioningState": "Succeeded",
                "description": format!("{access} {dir} default"),
                "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
                "sourceAddressPrefix": src, "destinationAddressPrefix": dst,
                "access": access, "priority": prio, "direction": dir,
            }
        })
    };
    json!([
        rule(
            "AllowVnetInBound",
            "Inbound",
            "Allow",
            65000,
            "VirtualNetwork",
            "VirtualNetwork"
        ),
        rule(
            "AllowAzureLoadBalancerInBound",
            "Inbound",
            "Allow",
            65001,
            "AzureLoadBalancer",
            "*"
        ),
        rule("DenyAllInBound", "Inbound", "Deny", 65500, "*", "*"),
        rule(
            "AllowVnetOutBound",
            "Outbound",
            "Allow",
            65000,
            "VirtualNetwork",
            "VirtualNetwork"
        ),
        rule(
            "AllowInternetOutBound",
            "Outbound",
            "Allow",
            65001,
            "*",
            "Internet"
        ),
        rule("DenyAllOutBound", "Outbound", "Deny", 65500, "*", "*"),
    ])
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nsg,
    Rule,
    DefaultRule,
    Vnet,
    Subnet,
    Pe,
    Site,
    /// A site's `config/web` (its `siteConfig`, access restrictions included).
    SiteConfig,
    Operation,
    OperationResult,
}

impl Kind {
    /// A lower-case substring every id of this kind contains.
    fn marker(self) -> &'static str {
        match self {
            Kind::Nsg => "/networksecuritygroups/",
            Kind::Rule => "/securityrules/",
            Kind::DefaultRule => "/defaultsecurityrules/",
            Kind::Vnet => "/virtualnetworks/",
            Kind::Subnet => "/subnets/",
            Kind::Pe => "/privateendpoints/",
            Kind::Site => "/microsoft.web/sites/",
            Kind::SiteConfig => "/config/",
            Kind::Operation => "/operations/",
            Kind::OperationResult => "/operationresults/",
        }
    }
}

#[derive(Debug, Clone)]
struct ArmPath {
    /// Original-case path without a trailing slash.
    path: String,
    kind: Kind,
    /// A collection (list) rather than one resource.
    list: bool,
    subscription: String,
    resource_group: Option<String>,
}

impl ArmPath {
    fn parse(path: &str) -> Option<ArmPath> {
        let path = path.trim_end_matches('/').to_string();
        let seg: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if seg.first().map(String::as_str) != Some("subscriptions") || seg.len() < 4 {
            return None;
        }
        let subscription = seg[1].clone();
        let (resource_group, p) = if seg[2] == "resourcegroups" {
            (Some(seg[3].clone()), 4)
        } else {
            (None, 2)
        };
        if seg.get(p).map(String::as_str) != Some("providers") {
            return None;
        }
        let ns = seg.get(p + 1)?.as_str();
        let rest: Vec<&str> = seg[p + 2..].iter().map(String::as_str).collect();
        let (kind, list) = match (ns, rest.as_slice()) {
            ("microsoft.network", ["networksecuritygroups"]) => (Kind::Nsg, true),
            ("microsoft.network", ["networksecuritygroups", _]) => (Kind::Nsg, false),
            ("microsoft.network", ["networksecuritygroups", _, "securityrules"]) => {
                (Kind::Rule, true)
            }
            ("microsoft.network", ["networksecuritygroups", _, "securityrules", _]) => {
                (Kind::Rule, false)
            }
            ("microsoft.network", ["networksecuritygroups", _, "defaultsecurityrules"]) => {
                (Kind::DefaultRule, true)
            }
            ("microsoft.network", ["networksecuritygroups", _, "defaultsecurityrules", _]) => {
                (Kind::DefaultRule, false)
            }
            ("microsoft.network", ["virtualnetworks"]) => (Kind::Vnet, true),
            ("microsoft.network", ["virtualnetworks", _]) => (Kind::Vnet, false),
            ("microsoft.network", ["virtualnetworks", _, "subnets"]) => (Kind::Subnet, true),
            ("microsoft.network", ["virtualnetworks", _, "subnets", _]) => (Kind::Subnet, false),
            ("microsoft.network", ["privateendpoints"]) => (Kind::Pe, true),
            ("microsoft.network", ["privateendpoints", _]) => (Kind::Pe, false),
            ("microsoft.network", ["locations", _, "operations", _]) => (Kind::Operation, false),
            ("microsoft.network", ["locations", _, "operationresults", _]) => {
                (Kind::OperationResult, false)
            }
            ("microsoft.web", ["sites"]) => (Kind::Site, true),
            ("microsoft.web", ["sites", _]) => (Kind::Site, false),
            ("microsoft.web", ["sites", _, "config", "web"]) => (Kind::SiteConfig, false),
            _ => return None,
        };
        Some(ArmPath {
            path,
            kind,
            list,
            subscription,
            resource_group,
        })
    }

    fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The id of the parent resource (NSG of a rule, VNet of a subnet).
    fn parent(&self) -> &str {
        let cut = if self.list { 1 } else { 2 };
        let mut end = self.path.len();
        for _ in 0..cut {
            end = self.path[..end].rfind('/').unwrap_or(0);
        }
        &self.path[..end]
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Nsg => "Microsoft.Network/networkSecurityGroups",
            Kind::Rule => "Microsoft.Network/networkSecurityGroups/securityRules",
            Kind::DefaultRule => "Microsoft.Network/networkSecurityGroups/defaultSecurityRules",
            Kind::Vnet => "Microsoft.Network/virtualNetworks",
            Kind::Subnet => "Microsoft.Network/virtualNetworks/subnets",
            Kind::Pe => "Microsoft.Network/privateEndpoints",
            Kind::Site => "Microsoft.Web/sites",
            Kind::SiteConfig => "Microsoft.Web/sites/config",
            Kind::Operation | Kind::OperationResult => "operation",
        }
    }

    fn api_version(&self) -> &'static str {
        if matches!(self.kind, Kind::Site | Kind::SiteConfig) {
            WEB_API
        } else {
            NETWORK_API
        }
    }

    fn rg_id(&self) -> Option<String> {
        self.resource_group
            .as_ref()
            .map(|rg| format!("/subscriptions/{}/resourcegroups/{rg}", self.subscription))
    }
}

/// An ARM error answer.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message.into() } })),
    )
        .into_response()
}

fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn query_param<'a>(uri: &'a Uri, key: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key || k == key.replace('$', "%24")).then_some(v)
    })
}

async fn handle(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path.starts_with("/_fake/") {
        return control(&fake, &method, &path, &body);
    }
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        let mut inner = fake.lock();
        let token = format!("fake-token-{}", inner.new_id());
        let client = String::from_utf8_lossy(&body)
            .split('&')
            .find_map(|kv| kv.strip_prefix("client_id=").map(str::to_string))
            .unwrap_or_default();
        inner.tokens.insert(token.clone(), client);
        return axum::Json(json!({
            "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
            "access_token": token,
        }))
        .into_response();
    }
    let mut inner = fake.lock();
    let mut response = arm(&mut inner, &method, &uri, &headers, &body);
    inner.calls += 1;
    let rid = inner.new_id();
    if method != Method::GET && response.status().is_success() {
        record_activity(&mut inner, &method, &uri, &headers, &rid);
    }
    let h = response.headers_mut();
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(&rid).expect("ascii"),
    );
    h.insert(
        "x-ms-correlation-request-id",
        HeaderValue::from_str(&rid).expect("ascii"),
    );
    let left = 12_000u64.saturating_sub(inner.calls % 12_000).to_string();
    let kind = if method == Method::GET {
        "x-ms-ratelimit-remaining-subscription-reads"
    } else {
        "x-ms-ratelimit-remaining-subscription-writes"
    };
    h.insert(kind, HeaderValue::from_str(&left).expect("digits"));
    response
}

fn control(fake: &Fake, method: &Method, path: &str, body: &[u8]) -> Response {
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidJson", e.to_string()),
        }
    };
    match (method.as_str(), path) {
        ("POST", "/_fake/seed") => match fake.seed(&parsed) {
            Ok(n) => axum::Json(json!({ "seeded": n })).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, "InvalidSeed", e),
        },
        ("POST", "/_fake/config") => {
            let mut inner = fake.lock();
            let c = &mut inner.config;
            if let Some(n) = parsed["inProgressPolls"].as_u64() {
                c.in_progress_polls = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(n) = parsed["throttleEvery"].as_u64() {
                c.throttle_every = n;
            }
            if let Some(n) = parsed["retryAfterSecs"].as_u64() {
                c.retry_after_secs = n;
            }
            if let Some(n) = parsed["pageSize"].as_u64() {
                c.page_size = usize::try_from(n).unwrap_or(usize::MAX).max(1);
            }
            if let Some(n) = parsed["busyWrites"].as_u64() {
                c.busy_writes = u32::try_from(n).unwrap_or(u32::MAX);
            }
            if let Some(f) = parsed.get("failNext") {
                c.fail_next = f["code"].as_str().map(|code| {
                    (
                        code.to_string(),
                        f["message"].as_str().unwrap_or("failed").to_string(),
                    )
                });
            }
            if let Some(ms) = parsed["activityDelayMs"].as_u64() {
                c.activity_delay = std::time::Duration::from_millis(ms);
            }
            if let Some(t) = parsed["staticToken"].as_str() {
                c.static_token = Some(t.to_string());
            }
            axum::Json(json!({ "ok": true })).into_response()
        }
        ("GET", "/_fake/calls") => {
            let inner = fake.lock();
            axum::Json(json!({
                "total": inner.calls,
                "throttled": inner.throttled,
                "byOperation": inner.by_operation,
            }))
            .into_response()
        }
        _ => error(StatusCode::NOT_FOUND, "NoSuchControl", path.to_string()),
    }
}

fn arm(
    inner: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let authorised = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| {
            inner.tokens.contains_key(t) || inner.config.static_token.as_deref() == Some(t)
        });
    if !authorised {
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing or holds no valid bearer token.",
        );
    }
    if let Some(sub) = activity_log_path(uri.path()) {
        return activity_list(inner, method, uri, &sub, &base_url(headers));
    }
    let Some(path) = ArmPath::parse(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!(
                "The resource type of {} is not served by this fake",
                uri.path()
            ),
        );
    };
    let op_key = format!(
        "{} {}{}",
        method,
        path.type_name().rsplit('/').next().unwrap_or_default(),
        if path.list { " (list)" } else { "" }
    );
    *inner.by_operation.entry(op_key).or_default() += 1;
    if inner.config.throttle_every > 0
        && (inner.calls + 1).is_multiple_of(inner.config.throttle_every)
    {
        inner.throttled += 1;
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "The request is being throttled.",
        );
        let h = r.headers_mut();
        h.insert(
            "retry-after",
            HeaderValue::from_str(&inner.config.retry_after_secs.to_string()).expect("digits"),
        );
        return r;
    }
    match query_param(uri, "api-version") {
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        Some(v) if v != path.api_version() => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidApiVersionParameter",
                format!(
                    "The api-version '{v}' is invalid. The supported version for {} is '{}'.",
                    path.type_name(),
                    path.api_version()
                ),
            );
        }
        Some(_) => {}
    }
    if let Some(rg) = path.rg_id()
        && !inner.resource_groups.contains(&rg)
    {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            format!(
                "Resource group '{}' could not be found.",
                path.resource_group.as_deref().unwrap_or_default()
            ),
        );
    }
    let base = base_url(headers);
    let is_write = *method == Method::PUT || *method == Method::DELETE || *method == Method::PATCH;
    if is_write && inner.config.busy_writes > 0 {
        inner.config.busy_writes -= 1;
        return error(
            StatusCode::CONFLICT,
            "RetryableErrorDueToAnotherOperation",
            format!(
                "Operation on {} is not allowed because another operation on this or a dependent resource is in progress. Retry the request later.",
                path.path
            ),
        );
    }
    if path.kind == Kind::SiteConfig {
        return site_config(inner, method, &path, body);
    }
    match (method.as_str(), path.kind, path.list) {
        ("GET", Kind::Operation | Kind::OperationResult, _) => poll(inner, &path, &base),
        ("GET", _, true) => list(inner, &path, uri, &base),
        ("GET", Kind::DefaultRule, false) => {
            let nsg = path.parent();
            if !inner.exists(nsg) {
                return not_found(&path);
            }
            default_rules(nsg)
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["name"]
                        .as_str()
                        .is_some_and(|n| n.eq_ignore_ascii_case(path.name()))
                })
                .map(|r| axum::Json(r.clone()).into_response())
                .unwrap_or_else(|| not_found(&path))
        }
        ("GET", _, false) => match inner.resources.get(&path.path.to_ascii_lowercase()) {
            Some(v) => axum::Json(inner.compose(v)).into_response(),
            None => not_found(&path),
        },
        ("PUT", _, false) => {
            // Optimistic concurrency, as ARM does it: If-Match must name the stored etag.
            let stored = inner
                .resources
                .get(&path.path.to_ascii_lowercase())
                .and_then(|r| r["etag"].as_str());
            match headers.get("if-match").and_then(|h| h.to_str().ok()) {
                Some(want) if want != "*" && stored != Some(want) => error(
                    StatusCode::PRECONDITION_FAILED,
                    "PreconditionFailed",
                    format!(
                        "The condition specified using HTTP conditional header(s) is not met for {}.",
                        path.path
                    ),
                ),
                _ => put(inner, &path, body, &base),
            }
        }
        ("PATCH", Kind::Nsg | Kind::Site | Kind::Pe | Kind::Vnet, false) => {
            patch(inner, &path, body)
        }
        ("DELETE", _, false) => delete(inner, &path, &base),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed on {}", path.path),
        ),
    }
}

fn not_found(path: &ArmPath) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource '{}' under resource group '{}' was not found.",
            path.type_name().to_string() + "/" + path.name(),
            path.resource_group.as_deref().unwrap_or_default()
        ),
    )
}

fn list(inner: &Inner, path: &ArmPath, uri: &Uri, base: &str) -> Response {
    let defaults;
    // References first; only the page asked for is composed and copied.
    let items: Vec<&Value> = match path.kind {
        Kind::Rule | Kind::Subnet => {
            if !inner.exists(path.parent()) {
                return parent_missing(path);
            }
            let segment = if path.kind == Kind::Rule {
                "securityrules"
            } else {
                "subnets"
            };
            inner.children(path.parent(), segment)
        }
        Kind::DefaultRule => {
            if !inner.exists(path.parent()) {
                return parent_missing(path);
            }
            defaults = default_rules(path.parent());
            defaults
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        }
        // A resource group's collection: the ids under its path.
        _ if path.resource_group.is_some() => {
            let segment = path
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            inner.children(path.parent(), &segment)
        }
        kind => {
            let scope = format!("/subscriptions/{}/", path.subscription);
            inner
                .of_type(kind)
                .filter(|v| {
                    v["id"]
                        .as_str()
                        .is_some_and(|id| id.to_ascii_lowercase().starts_with(&scope))
                })
                .collect()
        }
    };
    let skip: usize = query_param(uri, "$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let size = inner.config.page_size;
    let page: Vec<Value> = items
        .iter()
        .skip(skip)
        .take(size)
        .map(|v| inner.compose(v))
        .collect();
    let mut out = json!({ "value": page });
    if skip + size < items.len() {
        out["nextLink"] = json!(format!(
            "{base}{}?api-version={}&$skiptoken={}",
            path.path,
            path.api_version(),
            skip + size
        ));
    }
    axum::Json(out).into_response()
}

fn parent_missing(path: &ArmPath) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ParentResourceNotFound",
        format!(
            "Failed to perform the operation on '{}': its parent resource '{}' was not found.",
            path.path,
            path.parent()
        ),
    )
}

fn invalid_reference(what: &str, referrer: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidResourceReference",
        format!(
            "Resource {what} referenced by resource {referrer} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."
        ),
    )
}

fn put(inner: &mut Inner, path: &ArmPath, body: &[u8], base: &str) -> Response {
    let mut given: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "the body is not a JSON object",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                format!("the body is not valid JSON: {e}"),
            );
        }
    };
    let key = path.path.to_ascii_lowercase();
    let existing = inner.resources.get(&key).cloned();
    let id = existing
        .as_ref()
        .and_then(|e| e["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| path.path.clone());
    if !given["properties"].is_object() {
        given["properties"] = json!({});
    }
    let props = given["properties"].as_object_mut().expect("object");
    for read_only in [
        "provisioningState",
        "resourceGuid",
        "subnets",
        "privateEndpoints",
        "networkInterfaces",
        "defaultSecurityRules",
    ] {
        props.remove(read_only);
    }
    let mut child_rules: Option<Vec<Value>> = None;
    match path.kind {
        Kind::Nsg => {
            if given["location"].as_str().is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LocationRequired",
                    "The location property is required for this definition.",
                );
            }
            // A PUT of an NSG sets its rules: the ones in the body, or none.
            let rules = given["properties"]
                .as_object_mut()
                .and_then(|p| p.remove("securityRules"))
                .and_then(|r| r.as_array().cloned())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for r in &rules {
                if let Err(resp) = check_rule(r) {
                    return resp;
                }
                let slot = (
                    r["properties"]["direction"]
                        .as_str()
                        .unwrap_or_default()
                        .to_ascii_lowercase(),
                    r["properties"]["priority"].as_u64(),
                );
                if !seen.insert(slot) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "SecurityRuleConflict",
                        format!(
                            "Security rule {} conflicts with another rule of the same priority and direction.",
                            r["name"]
                        ),
                    );
                }
            }
            child_rules = Some(rules);
            let guid = existing
                .as_ref()
                .map(|e| e["properties"]["resourceGuid"].clone())
                .unwrap_or_else(|| json!(inner.new_id()));
            given["properties"]["resourceGuid"] = guid;
        }
        Kind::Rule => {
            if !inner.exists(path.parent()) {
                return parent_missing(path);
            }
            given["name"] = json!(path.name());
            if let Err(resp) = check_rule(&given) {
                return resp;
            }
            let dir = given["properties"]["direction"]
                .as_str()
                .unwrap_or_default();
            let prio = given["properties"]["priority"].as_u64();
            if let Some(other) = inner
                .children(path.parent(), "securityrules")
                .into_iter()
                .find(|r| {
                    !r["name"]
                        .as_str()
                        .unwrap_or_default()
                        .eq_ignore_ascii_case(path.name())
                        && r["properties"]["direction"]
                            .as_str()
                            .is_some_and(|d| d.eq_ignore_ascii_case(dir))
                        && r["properties"]["priority"].as_u64() == prio
                })
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SecurityRuleConflict",
                    format!(
                        "Security rule {} conflicts with rule {}. Rules cannot have the same Priority and Direction.",
                        path.name(),
                        other["name"].as_str().unwrap_or_default()
                    ),
                );
            }
        }
        Kind::Vnet => {
            if given["location"].as_str().is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LocationRequired",
                    "The location property is required for this definition.",
                );
            }
        }
        Kind::Subnet => {
            if !inner.exists(path.parent()) {
                return parent_missing(path);
            }
            let p = &given["properties"];
            if p["addressPrefix"].as_str().is_none() && p["addressPrefixes"].as_array().is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestFormat",
                    "Subnet must have addressPrefix or addressPrefixes.",
                );
            }
            if let Some(nsg) = p["networkSecurityGroup"]["id"].as_str()
                && !inner.exists(nsg)
            {
                return invalid_reference(nsg, &path.path);
            }
        }
        Kind::Pe => {
            if given["location"].as_str().is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "LocationRequired",
                    "The location property is required for this definition.",
                );
            }
            let subnet = given["properties"]["subnet"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if subnet.is_empty() || !inner.exists(&subnet) {
                return invalid_reference(&subnet, &path.path);
            }
            let name = path.name().to_string();
            let nic = format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/networkInterfaces/{name}.nic.{}",
                path.subscription,
                path.resource_group.as_deref().unwrap_or_default(),
                inner.new_id()
            );
            let p = given["properties"].as_object_mut().expect("object");
            p.insert("networkInterfaces".into(), json!([{ "id": nic }]));
            for list in [
                "privateLinkServiceConnections",
                "manualPrivateLinkServiceConnections",
            ] {
                let conns = p.entry(list).or_insert_with(|| json!([]));
                for c in conns.as_array_mut().into_iter().flatten() {
                    c["properties"]["privateLinkServiceConnectionState"] = json!({
                        "status": if list == "manualPrivateLinkServiceConnections" { "Pending" } else { "Approved" },
                        "description": "Auto-approved", "actionsRequired": "None",
                    });
                    if c["properties"].get("provisioningState").is_none() {
                        c["properties"]["provisioningState"] = json!("Succeeded");
                    }
                }
            }
            p.entry("customDnsConfigs").or_insert_with(|| json!([]));
        }
        Kind::Site => {
            if let Some(subnet) = given["properties"]["virtualNetworkSubnetId"].as_str()
                && let Err(resp) = check_site_subnet(inner, subnet)
            {
                return resp;
            }
        }
        Kind::DefaultRule | Kind::SiteConfig | Kind::Operation | Kind::OperationResult => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("PUT is not allowed on {}", path.path),
            );
        }
    }
    let mut stored = Map::new();
    stored.insert("name".into(), json!(path.name()));
    stored.insert("id".into(), json!(id));
    stored.insert("etag".into(), json!(format!("W/\"{}\"", inner.new_id())));
    stored.insert("type".into(), json!(path.type_name()));
    for (k, v) in given.as_object().expect("object") {
        if !matches!(k.as_str(), "id" | "name" | "etag" | "type") {
            stored.insert(k.clone(), v.clone());
        }
    }
    let mut stored = Value::Object(stored);
    if path.kind != Kind::Site {
        stored["properties"]["provisioningState"] = json!("Succeeded");
    }
    let created = existing.is_none();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };

    if path.kind == Kind::Site {
        // WebApps_CreateOrUpdate answers 200 with the site when it is done at once.
        inner.resources.insert(key, stored.clone());
        return (StatusCode::OK, axum::Json(stored)).into_response();
    }
    let failure = inner.config.fail_next.take();
    if failure.is_none() {
        inner.resources.insert(key.clone(), stored.clone());
        if let Some(rules) = child_rules {
            let prefix = format!("{key}/securityrules/");
            let old: Vec<String> = inner
                .resources
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                inner.resources.remove(&k);
            }
            for mut r in rules {
                let name = r["name"].as_str().unwrap_or_default().to_string();
                r["id"] = json!(format!("{id}/securityRules/{name}"));
                r["etag"] = json!(format!("W/\"{}\"", inner.new_id()));
                r["type"] = json!("Microsoft.Network/networkSecurityGroups/securityRules");
                r["properties"]["provisioningState"] = json!("Succeeded");
                inner
                    .resources
                    .insert(format!("{prefix}{}", name.to_ascii_lowercase()), r);
            }
        }
    }
    let op = inner.new_id();
    inner.ops.insert(
        op.clone(),
        Operation {
            polls_left: inner.config.in_progress_polls,
            error: failure,
            delete: false,
            resource: key.clone(),
        },
    );
    let mut answer = inner
        .resources
        .get(&key)
        .map(|v| inner.compose(v))
        .unwrap_or(stored);
    answer["properties"]["provisioningState"] =
        json!(if created { "Creating" } else { "Updating" });
    let mut r = (status, axum::Json(answer)).into_response();
    let h = r.headers_mut();
    h.insert(
        "azure-asyncoperation",
        HeaderValue::from_str(&op_url(base, path, &op, "operations")).expect("url"),
    );
    h.insert("retry-after", HeaderValue::from_static("0"));
    r
}

fn op_url(base: &str, path: &ArmPath, op: &str, what: &str) -> String {
    format!(
        "{base}/subscriptions/{}/providers/Microsoft.Network/locations/westeurope/{what}/{op}?api-version={NETWORK_API}",
        path.subscription
    )
}

fn check_rule(r: &Value) -> Result<(), Response> {
    let p = &r["properties"];
    let bad = |m: String| {
        Err(error(
            StatusCode::BAD_REQUEST,
            "SecurityRuleInvalidParameter",
            m,
        ))
    };
    match p["priority"].as_u64() {
        Some(100..=4096) => {}
        other => {
            return bad(format!(
                "Security rule {} has invalid Priority {other:?}. Value provided: it must be between 100 and 4096.",
                r["name"]
            ));
        }
    }
    let one_of = |v: &Value, allowed: &[&str]| {
        v.as_str()
            .is_some_and(|s| allowed.iter().any(|a| a.eq_ignore_ascii_case(s)))
    };
    if !one_of(&p["direction"], &["Inbound", "Outbound"]) {
        return bad(format!(
            "Security rule {} has invalid direction {}.",
            r["name"], p["direction"]
        ));
    }
    if !one_of(&p["access"], &["Allow", "Deny"]) {
        return bad(format!(
            "Security rule {} has invalid access {}.",
            r["name"], p["access"]
        ));
    }
    if !one_of(&p["protocol"], &["Tcp", "Udp", "Icmp", "Esp", "Ah", "*"]) {
        return bad(format!(
            "Security rule {} has invalid protocol {}.",
            r["name"], p["protocol"]
        ));
    }
    for side in ["source", "destination"] {
        let single = p[format!("{side}AddressPrefix")].as_str().is_some();
        let many = p[format!("{side}AddressPrefixes")]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        let asg = p[format!("{side}ApplicationSecurityGroups")]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if !(single || many || asg) {
            return bad(format!(
                "Security rule {} has no {side} address prefix.",
                r["name"]
            ));
        }
    }
    Ok(())
}

fn check_site_subnet(inner: &Inner, subnet: &str) -> Result<(), Response> {
    let Some(s) = inner.resources.get(&subnet.to_ascii_lowercase()) else {
        return Err(invalid_reference(subnet, "site"));
    };
    let delegated = s["properties"]["delegations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| {
            d["properties"]["serviceName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("Microsoft.Web/serverFarms"))
        });
    if delegated {
        Ok(())
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            "SubnetMissingRequiredDelegation",
            format!(
                "Subnet {subnet} must be delegated to Microsoft.Web/serverFarms for regional VNet integration."
            ),
        ))
    }
}

fn patch(inner: &mut Inner, path: &ArmPath, body: &[u8]) -> Response {
    let key = path.path.to_ascii_lowercase();
    let Some(mut current) = inner.resources.get(&key).cloned() else {
        return not_found(path);
    };
    let given = match json_object(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(tags) = given.get("tags") {
        current["tags"] = tags.clone();
    }
    if let Some(Value::Object(props)) = given.get("properties") {
        if path.kind != Kind::Site {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                "only tags can be patched on this resource type (TagsObject)",
            );
        }
        if let Some(subnet) = props.get("virtualNetworkSubnetId").and_then(Value::as_str)
            && let Err(resp) = check_site_subnet(inner, subnet)
        {
            return resp;
        }
        for (k, v) in props {
            current["properties"][k] = v.clone();
        }
    }
    current["etag"] = json!(format!("W/\"{}\"", inner.new_id()));
    inner.resources.insert(key, current.clone());
    axum::Json(inner.compose(&current)).into_response()
}

/// A request body that must be a JSON object, or ARM's 400.
fn json_object(body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            "the body is not a JSON object",
        )),
    }
}

/// The caller a write's bearer token stands for: the client id a token was issued to
/// (a service principal), or the operator behind the static token (a user).
fn caller_of(inner: &Inner, headers: &HeaderMap) -> (String, Value) {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    match inner.tokens.get(token) {
        Some(client) => (
            client.clone(),
            json!({ "appid": client, "idtyp": "app", "ipaddr": "127.0.0.1" }),
        ),
        None => {
            let upn = inner.config.static_caller.clone();
            (
                upn.clone(),
                json!({
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": upn,
                    "name": "Operator (by hand)", "idtyp": "user", "ipaddr": "127.0.0.1"
                }),
            )
        }
    }
}

/// An Activity Log event for a successful write, shaped like Azure's
/// (`eventtypes/management/values`).
fn record_activity(inner: &mut Inner, method: &Method, uri: &Uri, headers: &HeaderMap, rid: &str) {
    let Some(path) = ArmPath::parse(uri.path()) else {
        return;
    };
    if matches!(path.kind, Kind::Operation | Kind::OperationResult) {
        return;
    }
    let (caller, claims) = caller_of(inner, headers);
    let verb = if *method == Method::DELETE {
        "delete"
    } else {
        "write"
    };
    let event = json!({
        "authorization": { "action": format!("{}/{verb}", path.type_name()), "scope": path.path },
        "caller": caller,
        "claims": claims,
        "correlationId": rid,
        "eventDataId": inner.new_id(),
        "eventName": { "value": "EndRequest", "localizedValue": "End request" },
        "category": { "value": "Administrative", "localizedValue": "Administrative" },
        "eventTimestamp": jiff::Timestamp::now().to_string(),
        "httpRequest": {
            "clientRequestId": headers.get("x-ms-client-request-id").and_then(|h| h.to_str().ok()).unwrap_or_default(),
            "clientIpAddress": "127.0.0.1",
            "method": method.as_str(),
        },
        "level": "Informational",
        "operationName": { "value": format!("{}/{verb}", path.type_name()), "localizedValue": format!("{} {verb}", path.type_name()) },
        "resourceGroupName": path.resource_group.clone().unwrap_or_default(),
        "resourceId": path.path,
        "status": { "value": "Succeeded", "localizedValue": "Succeeded" },
        "subscriptionId": path.subscription,
    });
    if inner.activity.len() >= 100_000 {
        inner.activity.remove(0);
    }
    inner.activity.push(event);
}

/// `/subscriptions/{sub}/providers/microsoft.insights/eventtypes/management/values`: the
/// subscription, lower-cased.
fn activity_log_path(path: &str) -> Option<String> {
    let lower = path.trim_end_matches('/').to_ascii_lowercase();
    let rest = lower.strip_prefix("/subscriptions/")?;
    let (sub, tail) = rest.split_once('/')?;
    (tail == "providers/microsoft.insights/eventtypes/management/values").then(|| sub.to_string())
}

/// The Activity Log, filtered as Azure Monitor filters it (`$filter` with
/// `eventTimestamp ge|le '…'` and one of `resourceGroupName`, `resourceUri`,
/// `correlationId` `eq '…'`, joined by `and`), paged like every list.
fn activity_list(inner: &Inner, method: &Method, uri: &Uri, sub: &str, base: &str) -> Response {
    if *method != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the Activity Log is read-only",
        );
    }
    if query_param(uri, "api-version") != Some("2015-04-01") {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            "The supported api-version for the Activity Log is '2015-04-01'.",
        );
    }
    let filter = query_param(uri, "$filter").map(decode).unwrap_or_default();
    let mut since = None;
    let mut until = None;
    let mut eq: Vec<(String, String)> = Vec::new();
    for clause in filter.split(" and ") {
        let parts: Vec<&str> = clause.trim().splitn(3, ' ').collect();
        let [field, op, value] = parts.as_slice() else {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("cannot read the filter clause {clause:?}"),
            );
        };
        let value = value.trim_matches('\'').to_string();
        match (*field, *op) {
            ("eventTimestamp", "ge") => since = value.parse::<jiff::Timestamp>().ok(),
            ("eventTimestamp", "le") => until = value.parse::<jiff::Timestamp>().ok(),
            ("resourceGroupName" | "resourceUri" | "correlationId", "eq") => {
                eq.push((field.to_string(), value))
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("unsupported filter clause {clause:?}"),
                );
            }
        }
    }
    let Some(since) = since else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the filter needs eventTimestamp ge '…'",
        );
    };
    let visible_until = jiff::Timestamp::now()
        .checked_sub(
            jiff::SignedDuration::try_from(inner.config.activity_delay).unwrap_or_default(),
        )
        .unwrap_or(jiff::Timestamp::MIN);
    let items: Vec<&Value> = inner
        .activity
        .iter()
        .filter(|e| {
            e["subscriptionId"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case(sub))
        })
        .filter(|e| {
            let at = e["eventTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok());
            at.is_some_and(|at| at >= since && until.is_none_or(|u| at <= u) && at <= visible_until)
        })
        .filter(|e| {
            eq.iter().all(|(field, value)| {
                let key = if field == "resourceUri" {
                    "resourceId"
                } else {
                    field.as_str()
                };
                e[key]
                    .as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
        })
        .rev()
        .collect();
    let skip: usize = query_param(uri, "$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let size = inner.config.page_size.max(1);
    let page: Vec<Value> = items
        .iter()
        .skip(skip)
        .take(size)
        .map(|v| (*v).clone())
        .collect();
    let mut body = json!({ "value": page });
    if skip + size < items.len() {
        let mut next = format!("{base}{}?", uri.path());
        for kv in uri.query().unwrap_or_default().split('&') {
            if !kv.starts_with("$skiptoken=") && !kv.starts_with("%24skiptoken=") {
                next.push_str(kv);
                next.push('&');
            }
        }
        body["nextLink"] = json!(format!("{next}$skiptoken={}", skip + size));
    }
    axum::Json(body).into_response()
}

/// Percent-decoding of a query value (`+` is a space, as forms spell it).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The entry ARM shows at priority 2147483647 for the default action.
fn default_restriction(action: &str) -> Value {
    let (name, description) = if action == "Deny" {
        ("Deny all", "Deny all access")
    } else {
        ("Allow all", "Allow all access")
    };
    json!({
        "ipAddress": "Any", "action": action, "priority": 2147483647u64,
        "name": name, "description": description
    })
}

/// Why an access restriction is refused, as App Service checks it.
fn invalid_restriction(r: &Value) -> Option<String> {
    let Some(o) = r.as_object() else {
        return Some("an access restriction is an object".into());
    };
    match o.get("action").and_then(Value::as_str) {
        Some("Allow" | "Deny") | None => {}
        Some(other) => return Some(format!("action {other:?} is not Allow or Deny")),
    }
    match o.get("priority").and_then(Value::as_u64) {
        Some(1..=2147483647) => {}
        _ => return Some("priority must be an integer from 1 to 2147483647".into()),
    }
    if o.get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n.chars().count() > 32)
    {
        return Some("name must be at most 32 characters".into());
    }
    let ip = o.get("ipAddress").and_then(Value::as_str);
    let subnet = o.get("vnetSubnetResourceId").and_then(Value::as_str);
    match (ip, subnet) {
        (Some(_), Some(_)) | (None, None) => {
            Some("exactly one of ipAddress and vnetSubnetResourceId is required".into())
        }
        (None, Some(id)) => (ArmPath::parse(id).map(|p| p.kind) != Some(Kind::Subnet))
            .then(|| format!("vnetSubnetResourceId {id:?} is not a subnet id")),
        (Some(ip), None) => {
            let tag = o.get("tag").and_then(Value::as_str).unwrap_or("Default");
            let items: Vec<&str> = ip.split(',').map(str::trim).collect();
            if items.len() > 8 {
                return Some("at most 8 sources in one rule".into());
            }
            items.iter().find_map(|i| {
                let ok = match tag {
                    "ServiceTag" => {
                        !i.is_empty() && i.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                    }
                    _ => {
                        i.eq_ignore_ascii_case("any")
                            || match i.split_once('/') {
                                Some((a, len)) => a.parse::<std::net::IpAddr>().is_ok_and(|a| {
                                    len.parse::<u8>()
                                        .is_ok_and(|l| l <= if a.is_ipv4() { 32 } else { 128 })
                                }),
                                None => i.parse::<std::net::IpAddr>().is_ok(),
                            }
                    }
                };
                (!ok).then(|| format!("{i:?} is not a valid source for tag {tag}"))
            })
        }
    }
}

/// `sites/{name}/config/web`: GET composes the default action's entry in, PATCH and PUT
/// merge the properties given (access restrictions checked as App Service does). Like
/// the official 2024-04-01 examples, it carries no etag.
fn site_config(inner: &mut Inner, method: &Method, path: &ArmPath, body: &[u8]) -> Response {
    let site = path.parent().to_string();
    let site_key = site.to_ascii_lowercase();
    if !inner.resources.contains_key(&site_key) {
        return not_found(path);
    }
    let key = path.path.to_ascii_lowercase();
    let mut props = inner
        .resources
        .get(&key)
        .map(|c| c["properties"].clone())
        .unwrap_or_else(|| {
            json!({
                "numberOfWorkers": 1, "netFrameworkVersion": "v4.0", "linuxFxVersion": "",
                "http20Enabled": false, "minTlsVersion": "1.2", "ftpsState": "AllAllowed",
                "vnetRouteAllEnabled": false,
                "ipSecurityRestrictionsDefaultAction": "Allow",
                "scmIpSecurityRestrictionsDefaultAction": "Allow",
                "scmIpSecurityRestrictionsUseMain": false,
                "ipSecurityRestrictions": [],
                "scmIpSecurityRestrictions": []
            })
        });
    match method.as_str() {
        "GET" => {}
        "PATCH" | "PUT" => {
            let given = match json_object(body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(given) = given["properties"].as_object() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContent",
                    "properties are required",
                );
            };
            if let Some(rules) = given.get("ipSecurityRestrictions") {
                let Some(list) = rules.as_array() else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequestContent",
                        "ipSecurityRestrictions is a list",
                    );
                };
                if let Some(why) = list.iter().find_map(invalid_restriction) {
                    return error(StatusCode::BAD_REQUEST, "BadRequest", why);
                }
            }
            if let Some(d) = given.get("ipSecurityRestrictionsDefaultAction")
                && !matches!(d.as_str(), Some("Allow" | "Deny"))
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "ipSecurityRestrictionsDefaultAction must be Allow or Deny",
                );
            }
            for (k, v) in given {
                props[k] = v.clone();
            }
            // The default action's entry is shown, never stored.
            if let Some(list) = props["ipSecurityRestrictions"].as_array_mut() {
                list.retain(|r| r["priority"].as_u64() != Some(2147483647));
            }
            inner.resources.insert(
                key.clone(),
                json!({ "id": path.path, "name": "web", "type": path.type_name(), "properties": props.clone() }),
            );
        }
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not allowed on {}", path.path),
            );
        }
    }
    let default = props["ipSecurityRestrictionsDefaultAction"]
        .as_str()
        .unwrap_or("Allow")
        .to_string();
    if let Some(list) = props["ipSecurityRestrictions"].as_array_mut() {
        list.retain(|r| r["priority"].as_u64() != Some(2147483647));
        list.push(default_restriction(&default));
    }
    axum::Json(json!({
        "id": path.path,
        "name": "web",
        "type": path.type_name(),
        "kind": "functionapp",
        "properties": props,
    }))
    .into_response()
}

fn delete(inner: &mut Inner, path: &ArmPath, base: &str) -> Response {
    let key = path.path.to_ascii_lowercase();
    let Some(current) = inner.resources.get(&key).cloned() else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let id = current["id"].as_str().unwrap_or(&path.path).to_string();
    match path.kind {
        Kind::Nsg => {
            let users = inner.referrers(Kind::Subnet, "networkSecurityGroup", &id);
            if !users.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InUseNetworkSecurityGroupCannotBeDeleted",
                    format!(
                        "Network security group {id} cannot be deleted because it is in use by the following resources: {}. In order to delete the Network security group, remove the association with the resource(s).",
                        users.join(", ")
                    ),
                );
            }
        }
        Kind::Subnet => {
            let pes = inner.referrers(Kind::Pe, "subnet", &id);
            if !pes.is_empty() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InUseSubnetCannotBeDeleted",
                    format!(
                        "Subnet {id} is in use by {} and cannot be deleted.",
                        pes.join(", ")
                    ),
                );
            }
        }
        Kind::Site => {
            inner.resources.remove(&format!("{key}/config/web"));
            inner.resources.remove(&key);
            return StatusCode::OK.into_response();
        }
        _ => {}
    }
    let failure = inner
        .config
        .fail_next_delete
        .take()
        .or_else(|| inner.config.fail_next.take());
    if failure.is_none() {
        let prefix = format!("{key}/");
        let doomed: Vec<String> = inner
            .resources
            .range(key.clone()..)
            .take_while(|(k, _)| *k == &key || k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            inner.resources.remove(&k);
        }
    }
    let op = inner.new_id();
    inner.ops.insert(
        op.clone(),
        Operation {
            polls_left: inner.config.in_progress_polls,
            error: failure,
            delete: true,
            resource: key,
        },
    );
    let mut r = StatusCode::ACCEPTED.into_response();
    let h = r.headers_mut();
    h.insert(
        "location",
        HeaderValue::from_str(&op_url(base, path, &op, "operationResults")).expect("url"),
    );
    h.insert(
        "azure-asyncoperation",
        HeaderValue::from_str(&op_url(base, path, &op, "operations")).expect("url"),
    );
    h.insert("retry-after", HeaderValue::from_static("0"));
    r
}

fn poll(inner: &mut Inner, path: &ArmPath, base: &str) -> Response {
    let op_id = path.name().to_string();
    let Some(op) = inner.ops.get_mut(&op_id) else {
        return error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            format!("Operation {op_id} was not found."),
        );
    };
    let in_progress = op.polls_left > 0;
    op.polls_left = op.polls_left.saturating_sub(1);
    let error_body = op.error.clone();
    let (delete, resource) = (op.delete, op.resource.clone());
    let retry = |mut r: Response| {
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("0"));
        r
    };
    if path.kind == Kind::Operation {
        let status = match (&error_body, in_progress) {
            (_, true) => "InProgress",
            (None, false) => "Succeeded",
            (Some(_), false) => "Failed",
        };
        let mut body = json!({ "id": path.path, "name": op_id, "status": status, "startTime": "2026-11-22T00:00:00Z" });
        if let (Some((code, message)), false) = (&error_body, in_progress) {
            body["error"] = json!({ "code": code, "message": message });
        }
        return retry(axum::Json(body).into_response());
    }
    // Location (operationResults) semantics.
    if in_progress {
        let mut r = retry(StatusCode::ACCEPTED.into_response());
        r.headers_mut().insert(
            "location",
            HeaderValue::from_str(&op_url(base, path, &op_id, "operationResults")).expect("url"),
        );
        return r;
    }
    if let Some((code, message)) = error_body {
        return error(StatusCode::CONFLICT, &code, message);
    }
    if delete {
        return StatusCode::NO_CONTENT.into_response();
    }
    match inner.resources.get(&resource) {
        Some(v) => axum::Json(inner.compose(v)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Subscription of `policies-example`'s `prod-azure` target.
pub const EXAMPLE_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
/// Resource group of `policies-example`'s `prod-azure` target.
pub const EXAMPLE_RESOURCE_GROUP: &str = "rg-prod";

/// An estate shaped like `policies-example`'s Azure target: resource group `rg-prod`,
/// VNet `vnet-prod` (10.20.0.0/16) with `snet-reports`, `snet-orders` (both delegated to
/// `Microsoft.Web/serverFarms`, with service endpoints and a route table reference that
/// must survive every NSG association change) and `snet-endpoints`; an NSG Palisade does
/// not own (`nsg-legacy`, on `snet-legacy`); `functions` function apps: `func-reports`,
/// `func-orders` (already integrated into `snet-orders`), then `func-orders-NNN` tagged
/// `app: orders` and every fourth one `func-misc-NNN` that no policy selects.
pub fn example_estate(functions: usize) -> Value {
    let rg =
        format!("/subscriptions/{EXAMPLE_SUBSCRIPTION}/resourceGroups/{EXAMPLE_RESOURCE_GROUP}");
    let net = format!("{rg}/providers/Microsoft.Network");
    let vnet = format!("{net}/virtualNetworks/vnet-prod");
    let delegated = |name: &str, prefix: &str| {
        json!({
            "name": name,
            "properties": {
                "addressPrefix": prefix,
                "delegations": [{
                    "name": "webapp",
                    "properties": { "serviceName": "Microsoft.Web/serverFarms", "actions": ["Microsoft.Network/virtualNetworks/subnets/action"] }
                }],
                "serviceEndpoints": [{ "service": "Microsoft.Storage", "locations": ["westeurope"] }],
                "routeTable": { "id": format!("{net}/routeTables/rt-prod") },
                "privateEndpointNetworkPolicies": "Disabled",
                "privateLinkServiceNetworkPolicies": "Enabled"
            }
        })
    };
    let mut resources = vec![
        json!({
            "id": format!("{net}/networkSecurityGroups/nsg-legacy"),
            "location": "westeurope",
            "tags": { "owner": "network-team" },
            "properties": { "securityRules": [{
                "name": "allow-ssh-from-bastion",
                "properties": {
                    "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
                    "sourceAddressPrefix": "10.20.9.0/24", "destinationAddressPrefix": "*",
                    "access": "Allow", "priority": 100, "direction": "Inbound"
                }
            }] }
        }),
        json!({
            "id": vnet,
            "location": "westeurope",
            "tags": { "env": "prod" },
            "properties": {
                "addressSpace": { "addressPrefixes": ["10.20.0.0/16"] },
                "subnets": [
                    delegated("snet-reports", "10.20.1.0/24"),
                    delegated("snet-orders", "10.20.2.0/24"),
                    { "name": "snet-endpoints", "properties": { "addressPrefix": "10.20.3.0/24", "privateEndpointNetworkPolicies": "Disabled" } },
                    { "name": "snet-legacy", "properties": { "addressPrefix": "10.20.9.0/24", "networkSecurityGroup": { "id": format!("{net}/networkSecurityGroups/nsg-legacy") } } }
                ]
            }
        }),
    ];
    let site = |name: &str, tags: Value, subnet: Option<&str>| {
        json!({
            "id": format!("{rg}/providers/Microsoft.Web/sites/{name}"),
            "name": name,
            "type": "Microsoft.Web/sites",
            "kind": "functionapp,linux",
            "location": "westeurope",
            "tags": tags,
            "properties": {
                "state": "Running",
                "hostNames": [format!("{name}.azurewebsites.net")],
                "enabled": true,
                "serverFarmId": format!("{rg}/providers/Microsoft.Web/serverfarms/plan-prod"),
                "reserved": true,
                "httpsOnly": true,
                "vnetRouteAllEnabled": true,
                "siteConfig": { "linuxFxVersion": "Python|3.12", "alwaysOn": false, "ftpsState": "Disabled", "minTlsVersion": "1.2" },
                "clientCertEnabled": false,
                "virtualNetworkSubnetId": subnet.map(|s| format!("{vnet}/subnets/{s}")),
            }
        })
    };
    resources.push(site("func-reports", json!({ "env": "prod" }), None));
    resources.push(site(
        "func-orders",
        json!({ "app": "orders", "env": "prod" }),
        Some("snet-orders"),
    ));
    for i in 2..functions {
        if i % 4 == 0 {
            resources.push(site(
                &format!("func-misc-{i:03}"),
                json!({ "env": "prod" }),
                None,
            ));
        } else {
            resources.push(site(
                &format!("func-orders-{i:03}"),
                json!({ "app": "orders", "env": "prod" }),
                None,
            ));
        }
    }
    json!({ "resourceGroups": [rg], "resources": resources })
}
