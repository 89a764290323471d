//! ACLs on the HTTP API: which token a request carries (`X-Consul-Token`, `Authorization:
//! Bearer`, or `?token=`), what its policies allow ([`Auth`], from `murmur_acl`), and Consul's
//! `/v1/acl/*` endpoints for tokens and policies. Tokens and policies are replicated data,
//! so every agent decides from its own replica; a token deleted anywhere stops working here
//! as soon as the deletion arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use murmur_acl::{
    ANONYMOUS_ACCESSOR, Access, Authorizer, GLOBAL_MANAGEMENT_ID, GLOBAL_MANAGEMENT_NAME, Resource,
    Rules, secret_hash,
};
use murmur_catalog::{AclPolicy, AclRole, AclToken, Replica};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, with_index};
use crate::agent::watchers::Subscription;

/// The agent's ACL settings and its cache of authorizers.
pub struct Acl {
    enabled: bool,
    /// What every request may do with ACLs off: made once, not per request.
    everything: Arc<Authorizer>,
    default_allow: bool,
    datacenter: String,
    /// Authorizers by secret, dropped whenever replicated data other than the catalog and KV
    /// changes (ACL data among it), so a cache hit costs no look at the replica.
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("enabled", &self.enabled)
            .field("default_allow", &self.default_allow)
            .finish_non_exhaustive()
    }
}

/// The cache and what invalidates it.
struct Cache {
    /// Bumped by the agent on every change to intentions, roots, ACL data, … (none with
    /// ACLs off: a subscription costs every write a look at the topics).
    changes: Option<Subscription>,
    /// The bump the entries were made at.
    seen: u64,
    by_secret: HashMap<String, Resolved>,
}

impl Cache {
    fn generation(&self) -> u64 {
        self.changes.as_ref().map_or(0, |c| *c.changes.borrow())
    }
}

/// A token found, and what it may do.
#[derive(Clone)]
struct Resolved {
    accessor: String,
    authorizer: Arc<Authorizer>,
}

/// Most authorizers cached; past it the cache starts over (a flood of unknown secrets cannot
/// grow it without bound).
const CACHE_MAX: usize = 10_000;

impl Acl {
    /// ACLs as `--acl-enabled` and `--acl-default-policy` set them, in `datacenter`; `changes`
    /// wakes on every change of replicated data outside the catalog and KV.
    pub fn new(
        enabled: bool,
        default_allow: bool,
        datacenter: &str,
        changes: Option<Subscription>,
    ) -> Self {
        Self {
            enabled,
            everything: Arc::new(Authorizer::Management),
            default_allow,
            datacenter: datacenter.to_owned(),
            cache: Mutex::new(Cache {
                changes,
                seen: 0,
                by_secret: HashMap::new(),
            }),
        }
    }

    /// What a request without a token may do: what DNS answers show, as Consul's DNS answers
    /// with the anonymous token. Cached as the HTTP API's anonymous requests are, so a query
    /// costs no policy parsing until ACL data changes.
    pub fn anonymous(&self, replica: &Replica) -> Arc<Authorizer> {
        if !self.enabled {
            return self.everything.clone();
        }
        match self.cached("") {
            (Some(hit), _) => hit.authorizer,
            (None, generation) => {
                let resolved = self.resolve_anonymous(replica);
                let authorizer = resolved.authorizer.clone();
                self.store(String::new(), generation, resolved);
                authorizer
            }
        }
    }

    /// The cached answer for `secret` (`""`: anonymous), and the generation to store a new
    /// one at.
    fn cached(&self, secret: &str) -> (Option<Resolved>, u64) {
        let mut cache = self.cache.lock().expect("ACL cache poisoned");
        let now = cache.generation();
        if now != cache.seen || cache.by_secret.len() >= CACHE_MAX {
            cache.seen = now;
            cache.by_secret.clear();
        }
        (cache.by_secret.get(secret).cloned(), now)
    }

    /// Keeps `resolved` for `secret` unless ACL data changed since `generation` (it may have
    /// been read before the change).
    fn store(&self, secret: String, generation: u64, resolved: Resolved) {
        let mut cache = self.cache.lock().expect("ACL cache poisoned");
        if cache.seen == generation && cache.generation() == generation {
            cache.by_secret.insert(secret, resolved);
        }
    }

    /// What a request without a token may do, read from `replica`.
    fn resolve_anonymous(&self, replica: &Replica) -> Resolved {
        let token = anonymous_token(replica);
        Resolved {
            accessor: token.accessor_id.clone(),
            authorizer: Arc::new(self.authorizer_of(replica, &token)),
        }
    }

    /// What the holder of `secret` (none: the anonymous token) may do, read from `replica`.
    fn resolve(&self, replica: &Replica, secret: Option<&str>) -> Result<Resolved, ApiError> {
        let Some(secret) = secret else {
            return Ok(self.resolve_anonymous(replica));
        };
        let hash = secret_hash(secret);
        let token = replica
            .acl_tokens()
            .map(|(t, _)| t)
            .find(|t| t.secret_hash == hash)
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "ACL not found"))?;
        if token.local && token.datacenter != self.datacenter {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "ACL not found: the token is local to datacenter {}",
                    token.datacenter
                ),
            ));
        }
        Ok(Resolved {
            accessor: token.accessor_id.clone(),
            authorizer: Arc::new(self.authorizer_of(replica, &token)),
        })
    }

    fn authorizer_of(&self, replica: &Replica, token: &AclToken) -> Authorizer {
        authorizer_for(replica, token, self.default_allow, &self.datacenter)
    }
}

/// What `token`'s policies allow in `datacenter`, under the default policy.
fn authorizer_for(
    replica: &Replica,
    token: &AclToken,
    default_allow: bool,
    datacenter: &str,
) -> Authorizer {
    // The token's own policies, and those of its roles.
    let mut policies: Vec<&String> = token.policies.iter().collect();
    for (role, _) in replica.acl_roles() {
        if token.roles.contains(&role.id) {
            policies.extend(&role.policies);
        }
    }
    if policies.iter().any(|p| *p == GLOBAL_MANAGEMENT_ID) {
        return Authorizer::Management;
    }
    let rules: Vec<Rules> = replica
        .acl_policies()
        .map(|(p, _)| p)
        .filter(|p| policies.contains(&&p.id))
        .filter(|p| p.datacenters.is_empty() || p.datacenters.iter().any(|d| d == datacenter))
        .filter_map(|p| match Rules::parse(&p.rules) {
            Ok(rules) => Some(rules),
            Err(err) => {
                tracing::warn!(policy = %p.name, "policy ignored: {err}");
                None
            }
        })
        .collect();
    Authorizer::of(&rules, default_allow)
}

/// The anonymous token: the one under Consul's anonymous accessor if it was made (to give
/// requests without a token some policies), else one with none.
fn anonymous_token(replica: &Replica) -> AclToken {
    replica
        .acl_tokens()
        .map(|(t, _)| t)
        .find(|t| t.accessor_id == ANONYMOUS_ACCESSOR)
        .cloned()
        .unwrap_or_else(|| AclToken {
            accessor_id: ANONYMOUS_ACCESSOR.into(),
            ..AclToken::default()
        })
}

/// The secret a request carries, if any: `X-Consul-Token`, `Authorization: Bearer`, or
/// `?token=`. One that is not plain visible text is refused (400) rather than looked up.
fn secret_of(parts: &Parts) -> Result<Option<String>, ApiError> {
    let bad = || {
        ApiError::bad_request("the ACL token is not valid text: send it as printed by murmur acl")
    };
    if let Some(value) = parts.headers.get("X-Consul-Token") {
        return value
            .to_str()
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|_| bad());
    }
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().map_err(|_| bad())?;
        if let Some(token) = text.strip_prefix("Bearer ") {
            return Ok(Some(token.trim().to_owned()));
        }
    }
    // Query decoding is axum's, as every handler's `?…` parameters are read.
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map_err(|_| bad())?;
    match query.0.get("token") {
        Some(token) if token.chars().any(char::is_control) => Err(bad()),
        Some(token) => Ok(Some(token.clone())),
        None => Ok(None),
    }
}

/// What the request's token may do; handlers take it as an argument.
pub struct Auth {
    /// The token's accessor (empty with ACLs off).
    pub accessor: String,
    /// The token's secret as sent (for the sidecar a registration asks for).
    pub secret: Option<String>,
    authorizer: Arc<Authorizer>,
}

impl FromRequestParts<Api> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        if !api.acl.enabled {
            return Ok(Self {
                accessor: String::new(),
                secret: None,
                authorizer: api.acl.everything.clone(),
            });
        }
        let secret = secret_of(parts)?;
        let key = secret.clone().unwrap_or_default();
        let resolved = match api.acl.cached(&key) {
            (Some(hit), _) => hit,
            (None, generation) => {
                let resolved = api
                    .agent
                    .view(|v| api.acl.resolve(v.replica(), secret.as_deref()))?;
                api.acl.store(key, generation, resolved.clone());
                resolved
            }
        };
        Ok(Self {
            accessor: resolved.accessor,
            secret,
            authorizer: resolved.authorizer,
        })
    }
}

/// An answer that ACLs emptied says so, as Consul's do (`X-Consul-Results-Filtered-By-ACLs`).
pub fn filtered_unless(readable: bool, answer: ApiResult) -> ApiResult {
    let mut answer = answer?;
    if !readable {
        answer.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(answer)
}

/// Consul's 403.
fn denied(what: &str, on: Option<&str>) -> ApiError {
    let on = on.map(|n| format!(" on {n:?}")).unwrap_or_default();
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("Permission denied: token lacks permission '{what}'{on}"),
    )
}

impl Auth {
    /// The authorizer, for checks a handler makes itself (filtering lists).
    pub fn can(&self, kind: Resource, name: &str, need: Access) -> bool {
        self.authorizer.allows(kind, name, need)
    }

    /// `Ok` when it may act on `name` of `kind` with `need`, else Consul's 403.
    pub fn require(&self, kind: Resource, name: &str, need: Access) -> Result<(), ApiError> {
        if self.can(kind, name, need) {
            return Ok(());
        }
        Err(denied(&permission(kind, need), Some(name)))
    }

    /// Whether it may read or change intentions whose destination is `destination`.
    pub fn can_intention(&self, destination: &str, need: Access) -> bool {
        self.authorizer.intention(destination, need)
    }

    /// `Ok` when it may read or change intentions whose destination is `destination`.
    pub fn require_intention(&self, destination: &str, need: Access) -> Result<(), ApiError> {
        if self.can_intention(destination, need) {
            return Ok(());
        }
        Err(denied(
            &format!("intention:{}", word(need)),
            Some(destination),
        ))
    }

    /// `Ok` when it has `operator:<need>`.
    pub fn require_operator(&self, need: Access) -> Result<(), ApiError> {
        if self.authorizer.operator(need) {
            return Ok(());
        }
        Err(denied(&format!("operator:{}", word(need)), None))
    }

    /// `Ok` when it has `acl:<need>`.
    pub fn require_acl(&self, need: Access) -> Result<(), ApiError> {
        if self.authorizer.acl(need) {
            return Ok(());
        }
        Err(denied(&format!("acl:{}", word(need)), None))
    }

    /// `Ok` when it has `keyring:<need>`.
    pub fn require_keyring(&self, need: Access) -> Result<(), ApiError> {
        if self.authorizer.keyring(need) {
            return Ok(());
        }
        Err(denied(&format!("keyring:{}", word(need)), None))
    }
}

fn word(need: Access) -> &'static str {
    match need {
        Access::Deny => "deny",
        Access::List => "list",
        Access::Read => "read",
        Access::Write => "write",
    }
}

fn permission(kind: Resource, need: Access) -> String {
    let kind = match kind {
        Resource::Service => "service",
        Resource::Node => "node",
        Resource::Key => "key",
        Resource::Event => "event",
        Resource::Agent => "agent",
        Resource::Query => "query",
        Resource::Session => "session",
    };
    format!("{kind}:{}", word(need))
}

fn disabled() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "ACL support disabled: start the agents with --acl-enabled",
    )
}

/// `[{ID, Name}]` of the policies `ids`, as tokens and roles show their links.
fn policy_links(replica: &Replica, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            let name = if id == GLOBAL_MANAGEMENT_ID {
                GLOBAL_MANAGEMENT_NAME.to_owned()
            } else {
                replica
                    .acl_policies()
                    .find(|(p, _)| &p.id == id)
                    .map(|(p, _)| p.name.clone())
                    .unwrap_or_default()
            };
            json!({"ID": id, "Name": name})
        })
        .collect()
}

/// Consul's token JSON; the secret only when the caller is entitled to see it (it is not
/// kept: only at creation, and to its own holder).
fn token_json(replica: &Replica, token: &AclToken, secret: Option<&str>, index: u64) -> Value {
    let policies = policy_links(replica, &token.policies);
    let roles: Vec<Value> = token
        .roles
        .iter()
        .map(|id| {
            let name = replica
                .acl_roles()
                .find(|(r, _)| &r.id == id)
                .map(|(r, _)| r.name.clone())
                .unwrap_or_default();
            json!({"ID": id, "Name": name})
        })
        .collect();
    let mut out = json!({
        "AccessorID": token.accessor_id,
        "Description": token.description,
        "Policies": policies,
        "Roles": roles,
        "Local": token.local,
        "CreateTime": super::connect::rfc3339(token.create_ms / 1000),
        "Hash": token.secret_hash,
        "CreateIndex": index,
        "ModifyIndex": index,
    });
    if let Some(secret) = secret {
        out["SecretID"] = json!(secret);
    }
    out
}

fn policy_json(policy: &AclPolicy, index: u64) -> Value {
    json!({
        "ID": policy.id,
        "Name": policy.name,
        "Description": policy.description,
        "Rules": policy.rules,
        "Datacenters": policy.datacenters,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

fn builtin_management_json() -> Value {
    json!({
        "ID": GLOBAL_MANAGEMENT_ID,
        "Name": GLOBAL_MANAGEMENT_NAME,
        "Description": "Builtin Policy that grants unlimited access",
        "Rules": "",
        "Datacenters": [],
        "CreateIndex": 1,
        "ModifyIndex": 1,
    })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad_request(
            "Request decode failed: the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Request decode failed: {e}"))),
    }
}

fn text(o: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match o
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
    {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

fn field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The IDs a body's `field` (`Policies`, `Roles`) names as `[{ID} | {Name}]`, each found by
/// `find(id, name)`; one that names nothing is a 400 saying which.
fn linked_ids(
    o: &Map<String, Value>,
    field_name: &str,
    what: &str,
    find: impl Fn(&str, &str) -> Option<String>,
) -> Result<Vec<String>, ApiError> {
    let Some(list) = field(o, field_name) else {
        return Ok(Vec::new());
    };
    let shape =
        || ApiError::bad_request(format!("{field_name} must be a list of {{ID}} or {{Name}}"));
    list.as_array()
        .ok_or_else(shape)?
        .iter()
        .map(|link| {
            let link = link.as_object().ok_or_else(shape)?;
            let (id, name) = (text(link, "ID")?, text(link, "Name")?);
            find(&id, &name).ok_or_else(|| {
                let which = if id.is_empty() { name } else { id };
                ApiError::bad_request(format!("cannot find {what} {which:?}"))
            })
        })
        .collect()
}

/// The policy IDs a body names (`Policies`), the builtin one included.
fn policy_ids(replica: &Replica, o: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    linked_ids(o, "Policies", "policy", |id, name| {
        if id == GLOBAL_MANAGEMENT_ID || name == GLOBAL_MANAGEMENT_NAME {
            return Some(GLOBAL_MANAGEMENT_ID.to_owned());
        }
        replica
            .acl_policies()
            .map(|(p, _)| p)
            .find(|p| (!id.is_empty() && p.id == id) || (!name.is_empty() && p.name == name))
            .map(|p| p.id.clone())
    })
}

/// The role IDs a body names (`Roles`).
fn role_ids(replica: &Replica, o: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    linked_ids(o, "Roles", "role", |id, name| {
        replica
            .acl_roles()
            .map(|(r, _)| r)
            .find(|r| (!id.is_empty() && r.id == id) || (!name.is_empty() && r.name == name))
            .map(|r| r.id.clone())
    })
}

/// `PUT /v1/acl/bootstrap`: the first management token; refused once any token exists.
pub async fn bootstrap(State(api): State<Api>) -> ApiResult {
    if !api.acl.enabled {
        return Err(disabled());
    }
    let (accessor, secret) = (super::new_uuid(), super::new_uuid());
    let datacenter = api.config.datacenter.clone();
    let token = AclToken {
        accessor_id: accessor.clone(),
        secret_hash: secret_hash(&secret),
        description: "Bootstrap Token (Global Management)".into(),
        policies: vec![GLOBAL_MANAGEMENT_ID.into()],
        roles: Vec::new(),
        local: false,
        datacenter,
        create_ms: crate::agent::runtime::wall_ms(),
    };
    let made = api
        .agent
        .write(move |r, now| {
            if r.acl_bootstrapped() {
                return None;
            }
            r.put_acl_token(token.clone(), now);
            Some(token)
        })
        .await
        .map_err(ApiError::internal)?;
    let Some(token) = made else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ACL bootstrap no longer allowed: a token exists already (manage tokens with a management token)",
        ));
    };
    answer_token(&api, &token, Some(&secret))
}

fn answer_token(api: &Api, token: &AclToken, secret: Option<&str>) -> ApiResult {
    let (body, index) = api.agent.view(|v| {
        let replica = v.replica();
        (
            token_json(replica, token, secret, replica.acl_index()),
            replica.acl_index(),
        )
    });
    Ok(with_index(index, body))
}

/// `PUT /v1/acl/token`: a new token (`acl:write`); its secret is in this answer only.
pub async fn create_token(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    let o = object(&body)?;
    let secret = match text(&o, "SecretID")? {
        s if s.is_empty() => super::new_uuid(),
        s => s,
    };
    let accessor = match text(&o, "AccessorID")? {
        a if a.is_empty() => super::new_uuid(),
        a => a,
    };
    let (policies, roles) = api
        .agent
        .view(|v| Ok::<_, ApiError>((policy_ids(v.replica(), &o)?, role_ids(v.replica(), &o)?)))?;
    let token = AclToken {
        accessor_id: accessor,
        secret_hash: secret_hash(&secret),
        description: text(&o, "Description")?,
        policies,
        roles,
        local: field(&o, "Local").and_then(Value::as_bool).unwrap_or(false),
        datacenter: api.config.datacenter.clone(),
        create_ms: crate::agent::runtime::wall_ms(),
    };
    let written = token.clone();
    let clash = api
        .agent
        .write(move |r, now| {
            let clash = r.acl_revoked(&written.accessor_id)
                || r.acl_tokens().any(|(t, _)| {
                    t.accessor_id == written.accessor_id || t.secret_hash == written.secret_hash
                });
            if !clash {
                r.put_acl_token(written, now);
            }
            clash
        })
        .await
        .map_err(ApiError::internal)?;
    if clash {
        return Err(ApiError::bad_request(
            "Invalid Token: AccessorID or SecretID already in use",
        ));
    }
    answer_token(&api, &token, Some(&secret))
}

fn enabled(api: &Api) -> Result<(), ApiError> {
    if api.acl.enabled {
        Ok(())
    } else {
        Err(disabled())
    }
}

fn find_token(api: &Api, accessor: &str) -> Result<AclToken, ApiError> {
    api.agent
        .view(|v| {
            v.replica()
                .acl_tokens()
                .find(|(t, _)| t.accessor_id == accessor)
                .map(|(t, _)| t.clone())
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "ACL not found"))
}

/// `GET /v1/acl/token/self`: the request's own token, with its secret.
pub async fn token_self(State(api): State<Api>, auth: Auth) -> ApiResult {
    enabled(&api)?;
    if auth.secret.is_none() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ACL not found: send a token",
        ));
    }
    let token = find_token(&api, &auth.accessor)?;
    answer_token(&api, &token, auth.secret.as_deref())
}

/// `GET /v1/acl/token/:accessor` (`acl:read`).
pub async fn read_token(
    State(api): State<Api>,
    auth: Auth,
    Path(accessor): Path<String>,
) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Read)?;
    let token = find_token(&api, &accessor)?;
    answer_token(&api, &token, None)
}

/// `PUT /v1/acl/token/:accessor` (`acl:write`): new description and policies.
pub async fn update_token(
    State(api): State<Api>,
    auth: Auth,
    Path(accessor): Path<String>,
    body: Bytes,
) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    let o = object(&body)?;
    let mut token = find_token(&api, &accessor)?;
    token.description = text(&o, "Description")?;
    (token.policies, token.roles) = api
        .agent
        .view(|v| Ok::<_, ApiError>((policy_ids(v.replica(), &o)?, role_ids(v.replica(), &o)?)))?;
    let written = token.clone();
    api.agent
        .write(move |r, now| r.put_acl_token(written, now))
        .await
        .map_err(ApiError::internal)?;
    answer_token(&api, &token, None)
}

/// `DELETE /v1/acl/token/:accessor` (`acl:write`): `true`. The token is revoked for good.
pub async fn delete_token(
    State(api): State<Api>,
    auth: Auth,
    Path(accessor): Path<String>,
) -> ApiResult {
    let refused =
        (accessor == ANONYMOUS_ACCESSOR).then_some("the anonymous token cannot be deleted");
    acl_delete(&api, &auth, refused, move |r, now| {
        r.revoke_acl_token(&accessor, now);
    })
    .await
}

/// A listing under `acl:read`, made by `list` from the replica, at the ACL index.
fn acl_list(api: &Api, auth: &Auth, list: impl FnOnce(&Replica) -> Vec<Value>) -> ApiResult {
    enabled(api)?;
    auth.require_acl(Access::Read)?;
    let (list, index) = api.agent.view(|v| {
        let replica = v.replica();
        (list(replica), replica.acl_index())
    });
    Ok(with_index(index, json!(list)))
}

/// A deletion under `acl:write` (`refused`: why this one may not be deleted): `true`.
async fn acl_delete(
    api: &Api,
    auth: &Auth,
    refused: Option<&str>,
    delete: impl FnOnce(&mut Replica, u64),
) -> ApiResult {
    enabled(api)?;
    auth.require_acl(Access::Write)?;
    if let Some(why) = refused {
        return Err(ApiError::bad_request(why));
    }
    api.agent.write(delete).await.map_err(ApiError::internal)?;
    let index = api.agent.view(|v| v.replica().acl_index());
    Ok(with_index(index, json!(true)))
}

/// `GET /v1/acl/tokens` (`acl:read`).
pub async fn list_tokens(State(api): State<Api>, auth: Auth) -> ApiResult {
    acl_list(&api, &auth, |r| {
        r.acl_tokens()
            .map(|(t, i)| token_json(r, t, None, i))
            .collect()
    })
}

/// `PUT /v1/acl/policy` (`acl:write`): a new policy; its rules must parse.
pub async fn create_policy(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    let policy = parse_policy(&object(&body)?, super::new_uuid())?;
    store_policy(&api, policy).await
}

/// `PUT /v1/acl/policy/:id` (`acl:write`).
pub async fn update_policy(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    if id == GLOBAL_MANAGEMENT_ID {
        return Err(ApiError::bad_request(
            "the builtin global-management policy cannot change",
        ));
    }
    find_policy(&api, |p| p.id == id)?;
    let policy = parse_policy(&object(&body)?, id)?;
    store_policy(&api, policy).await
}

fn parse_policy(o: &Map<String, Value>, id: String) -> Result<AclPolicy, ApiError> {
    let name = text(o, "Name")?;
    valid_name("Policy", &name)?;
    let rules = text(o, "Rules")?;
    Rules::parse(&rules).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let datacenters = match field(o, "Datacenters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|d| d.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("Datacenters must be a list of names"))?,
        Some(_) => return Err(ApiError::bad_request("Datacenters must be a list of names")),
    };
    Ok(AclPolicy {
        id,
        name,
        description: text(o, "Description")?,
        rules,
        datacenters,
    })
}

async fn store_policy(api: &Api, policy: AclPolicy) -> ApiResult {
    let (checked, written) = (policy.clone(), policy.clone());
    write_unique(
        api,
        "Policy",
        &policy.name,
        move |r| {
            checked.name == GLOBAL_MANAGEMENT_NAME
                || r.acl_policies()
                    .any(|(p, _)| p.name == checked.name && p.id != checked.id)
        },
        move |r, now| r.put_acl_policy(written, now),
    )
    .await?;
    let index = api.agent.view(|v| v.replica().acl_index());
    Ok(with_index(index, policy_json(&policy, index)))
}

/// Writes a policy or role (`kind`) unless its name is `taken` by another (checked and written
/// in one step, so two writers on this agent cannot both take it).
async fn write_unique(
    api: &Api,
    kind: &str,
    name: &str,
    taken: impl FnOnce(&Replica) -> bool,
    write: impl FnOnce(&mut Replica, u64),
) -> Result<(), ApiError> {
    let written = api
        .agent
        .write(move |r, now| {
            if taken(r) {
                return false;
            }
            write(r, now);
            true
        })
        .await
        .map_err(ApiError::internal)?;
    if written {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid {kind}: A {kind} with Name {name:?} already exists"
        )))
    }
}

/// A policy or role name (`kind`): letters, digits, `-` and `_`, as Consul's.
fn valid_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(format!(
            "Invalid {kind}: invalid Name {name:?}: use letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

fn find_policy(
    api: &Api,
    which: impl Fn(&AclPolicy) -> bool,
) -> Result<(AclPolicy, u64), ApiError> {
    api.agent
        .view(|v| {
            v.replica()
                .acl_policies()
                .find(|(p, _)| which(p))
                .map(|(p, i)| (p.clone(), i))
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "ACL policy not found"))
}

/// `GET /v1/acl/policy/:id` (`acl:read`).
pub async fn read_policy(State(api): State<Api>, auth: Auth, Path(id): Path<String>) -> ApiResult {
    answer_policy(&api, &auth, id == GLOBAL_MANAGEMENT_ID, |p| p.id == id)
}

/// `GET /v1/acl/policy/name/:name` (`acl:read`).
pub async fn read_policy_by_name(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult {
    answer_policy(&api, &auth, name == GLOBAL_MANAGEMENT_NAME, |p| {
        p.name == name
    })
}

/// One policy (`acl:read`): the builtin one, or the one `which` picks.
fn answer_policy(
    api: &Api,
    auth: &Auth,
    builtin: bool,
    which: impl Fn(&AclPolicy) -> bool,
) -> ApiResult {
    enabled(api)?;
    auth.require_acl(Access::Read)?;
    if builtin {
        return Ok(with_index(1, builtin_management_json()));
    }
    let (policy, index) = find_policy(api, which)?;
    Ok(with_index(index, policy_json(&policy, index)))
}

/// `DELETE /v1/acl/policy/:id` (`acl:write`): `true`.
pub async fn delete_policy(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult {
    let refused = (id == GLOBAL_MANAGEMENT_ID)
        .then_some("the builtin global-management policy cannot be deleted");
    acl_delete(&api, &auth, refused, move |r, now| {
        r.delete_acl_policy(&id, now);
    })
    .await
}

/// `GET /v1/acl/policies` (`acl:read`), the builtin one first.
pub async fn list_policies(State(api): State<Api>, auth: Auth) -> ApiResult {
    acl_list(&api, &auth, |r| {
        std::iter::once(builtin_management_json())
            .chain(r.acl_policies().map(|(p, i)| policy_json(p, i)))
            .collect()
    })
}

fn role_json(replica: &Replica, role: &AclRole, index: u64) -> Value {
    let policies = policy_links(replica, &role.policies);
    json!({
        "ID": role.id,
        "Name": role.name,
        "Description": role.description,
        "Policies": policies,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// `PUT /v1/acl/role` (`acl:write`): a named set of policies.
pub async fn create_role(State(api): State<Api>, auth: Auth, body: Bytes) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    store_role(&api, &object(&body)?, super::new_uuid()).await
}

/// `PUT /v1/acl/role/:id` (`acl:write`).
pub async fn update_role(
    State(api): State<Api>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    enabled(&api)?;
    auth.require_acl(Access::Write)?;
    find_role(&api, |r| r.id == id)?;
    store_role(&api, &object(&body)?, id).await
}

async fn store_role(api: &Api, o: &Map<String, Value>, id: String) -> ApiResult {
    let name = text(o, "Name")?;
    valid_name("Role", &name)?;
    let policies = api.agent.view(|v| policy_ids(v.replica(), o))?;
    let role = AclRole {
        id,
        name,
        description: text(o, "Description")?,
        policies,
    };
    let (checked, written) = (role.clone(), role.clone());
    write_unique(
        api,
        "Role",
        &role.name,
        move |r| {
            r.acl_roles()
                .any(|(o, _)| o.name == checked.name && o.id != checked.id)
        },
        move |r, now| r.put_acl_role(written, now),
    )
    .await?;
    let (body, index) = api.agent.view(|v| {
        let replica = v.replica();
        (
            role_json(replica, &role, replica.acl_index()),
            replica.acl_index(),
        )
    });
    Ok(with_index(index, body))
}

fn find_role(api: &Api, which: impl Fn(&AclRole) -> bool) -> Result<(Value, u64), ApiError> {
    api.agent
        .view(|v| {
            let replica = v.replica();
            replica
                .acl_roles()
                .find(|(r, _)| which(r))
                .map(|(r, i)| (role_json(replica, r, i), i))
        })
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "ACL role not found"))
}

/// `GET /v1/acl/role/:id` (`acl:read`).
pub async fn read_role(State(api): State<Api>, auth: Auth, Path(id): Path<String>) -> ApiResult {
    answer_role(&api, &auth, |r| r.id == id)
}

/// `GET /v1/acl/role/name/:name` (`acl:read`).
pub async fn read_role_by_name(
    State(api): State<Api>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult {
    answer_role(&api, &auth, |r| r.name == name)
}

fn answer_role(api: &Api, auth: &Auth, which: impl Fn(&AclRole) -> bool) -> ApiResult {
    enabled(api)?;
    auth.require_acl(Access::Read)?;
    let (role, index) = find_role(api, which)?;
    Ok(with_index(index, role))
}

/// `DELETE /v1/acl/role/:id` (`acl:write`): `true`.
pub async fn delete_role(State(api): State<Api>, auth: Auth, Path(id): Path<String>) -> ApiResult {
    acl_delete(&api, &auth, None, move |r, now| {
        r.delete_acl_role(&id, now);
    })
    .await
}

/// `GET /v1/acl/roles` (`acl:read`).
pub async fn list_roles(State(api): State<Api>, auth: Auth) -> ApiResult {
    acl_list(&api, &auth, |r| {
        r.acl_roles().map(|(o, i)| role_json(r, o, i)).collect()
    })
}
