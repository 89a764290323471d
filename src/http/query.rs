//! Prepared queries, Consul's `/v1/query`: stored service lookups with filters and a
//! failover policy, global data (created in any datacenter, known in all).
//!
//! Execution runs in this datacenter first; only when it finds no healthy instance does it
//! try other datacenters, the `NearestN` nearest then the listed `Datacenters`
//! (`murmur_federation::directory::failover_order`), each asked through the `?dc=`
//! forwarding path to run the query definition there without failing over again, as
//! Consul's `ExecuteRemote` does. The answer says where it came from (`Datacenter`) and
//! how many datacenters were tried (`Failovers`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use murmur_catalog::{Health, Instance, PreparedQuery, QueryTemplate};
use rand::seq::SliceRandom;
use serde_json::{Value, json};

use super::blocking::{self, Topic};
use super::{Api, ApiError, ApiResult, with_index};
use crate::agent::runtime::Agent;
use crate::agent::view::View;
use crate::forward::Forwarder;

/// The one template type Consul has.
const NAME_PREFIX_MATCH: &str = "name_prefix_match";
/// Where a datacenter runs a query definition sent from another, without failover.
pub const REMOTE_EXECUTE: &str = "/v1/internal/query/execute";

/// Consul's answer for a query that does not exist.
const NOT_FOUND: &str = "Query not found";

/// Runs prepared queries for the HTTP API and DNS.
pub struct Executor {
    agent: Arc<Agent>,
    forwarder: Arc<Forwarder>,
    datacenter: String,
}

/// What running a query found.
pub struct Executed {
    /// The query as run (a template rendered for the name asked).
    pub query: PreparedQuery,
    /// The instances, as `/v1/health/service` entries.
    pub nodes: Vec<Value>,
    /// Where they are.
    pub datacenter: String,
    /// How many other datacenters were tried.
    pub failovers: usize,
}

impl Executed {
    /// Consul's `PreparedQueryExecuteResponse`.
    pub fn to_json(&self) -> Value {
        json!({
            "Service": self.query.service,
            "Nodes": self.nodes,
            "DNS": {"TTL": self.query.dns_ttl},
            "Datacenter": self.datacenter,
            "Failovers": self.failovers,
        })
    }
}

impl Executor {
    /// An executor for an agent of `datacenter`.
    pub fn new(agent: Arc<Agent>, forwarder: Arc<Forwarder>, datacenter: &str) -> Self {
        Self {
            agent,
            forwarder,
            datacenter: datacenter.to_owned(),
        }
    }

    /// The forwarder it asks other datacenters through (the router's too).
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// The query `id_or_name` resolves to, rendered for that name; `None` when none does.
    pub fn resolve(&self, id_or_name: &str) -> Result<Option<PreparedQuery>, String> {
        let found = self.agent.view(|v| {
            let queries: Vec<&PreparedQuery> = v.replica().queries().map(|(q, _)| q).collect();
            lookup(&queries, id_or_name).cloned()
        });
        found.map(|q| render(&q, id_or_name)).transpose()
    }

    /// Runs `query` here; with `failover`, in other datacenters when none is found here.
    /// `near` names the node to sort from (`_agent`: this one); `limit` cuts the answer.
    pub async fn execute(
        &self,
        query: PreparedQuery,
        near: Option<&str>,
        limit: Option<usize>,
        failover: bool,
    ) -> Executed {
        let near = near
            .map(str::to_owned)
            .or_else(|| (!query.near.is_empty()).then(|| query.near.clone()));
        let mut nodes = self.agent.view(|v| run_here(v, &query, near.as_deref()));
        if let Some(limit) = limit {
            nodes.truncate(limit);
        }
        let mut executed = Executed {
            query,
            nodes,
            datacenter: self.datacenter.clone(),
            failovers: 0,
        };
        if !failover || !executed.nodes.is_empty() {
            return executed;
        }
        let ranked = self.ranked();
        let nearest = usize::try_from(executed.query.nearest_n).unwrap_or(usize::MAX);
        let (order, unknown) = murmur_federation::directory::failover_order(
            &ranked,
            nearest,
            &executed.query.datacenters,
        );
        for dc in unknown {
            tracing::warn!(datacenter = %dc, query = %executed.query.id, "skipping an unknown datacenter in a prepared query's failover");
        }
        for dc in order {
            executed.failovers += 1;
            match self.execute_in(&dc, &executed.query, limit).await {
                Ok(nodes) if !nodes.is_empty() => {
                    executed.nodes = nodes;
                    executed.datacenter = dc;
                    break;
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(datacenter = %dc, "prepared query failover not answered: {why}");
                }
            }
        }
        metrics::counter!("murmur_prepared_query_failovers_total")
            .increment(executed.failovers as u64);
        executed
    }

    fn ranked(&self) -> Vec<(String, Option<std::time::Duration>)> {
        super::coordinate::ranked_datacenters(&self.agent, &self.datacenter).1
    }

    /// Runs `query` in datacenter `dc`, over the `?dc=` forwarding path.
    async fn execute_in(
        &self,
        dc: &str,
        query: &PreparedQuery,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, String> {
        let mut uri = format!("{REMOTE_EXECUTE}?dc={dc}");
        if let Some(limit) = limit {
            uri.push_str(&format!("&limit={limit}"));
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            // Rendered already: the remote runs it as it is.
            .body(Body::from(
                query_json(
                    &PreparedQuery {
                        template: None,
                        ..query.clone()
                    },
                    0,
                )
                .to_string(),
            ))
            .map_err(|e| e.to_string())?;
        let response = self.forwarder.http(dc.to_owned(), request).await;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 8 << 20)
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok(answer["Nodes"].as_array().cloned().unwrap_or_default())
    }
}

/// The query named `id_or_name`: by id; else by exact name (not a template; the lowest id
/// when two datacenters created one name at once); else the template whose name is the
/// longest prefix of it (Consul's `name_prefix_match`; an empty name matches all).
fn lookup<'a>(queries: &[&'a PreparedQuery], id_or_name: &str) -> Option<&'a PreparedQuery> {
    let all = || queries.iter().copied();
    all()
        .find(|q| q.id == id_or_name)
        .or_else(|| {
            all()
                .filter(|q| q.template.is_none() && !q.name.is_empty() && q.name == id_or_name)
                .min_by(|a, b| a.id.cmp(&b.id))
        })
        .or_else(|| {
            all()
                .filter(|q| q.template.is_some() && id_or_name.starts_with(&q.name))
                .max_by(|a, b| a.name.len().cmp(&b.name.len()).then(b.id.cmp(&a.id)))
        })
}

/// `query` with its template's variables filled in for the name `asked`: `${name.full}`,
/// `${name.prefix}`, `${name.suffix}`, `${match(N)}` (the regexp's groups). A query that is
/// no template is returned as it is.
fn render(query: &PreparedQuery, asked: &str) -> Result<PreparedQuery, String> {
    let Some(template) = &query.template else {
        return Ok(query.clone());
    };
    let regexp = regex::Regex::new(&template.regexp).map_err(|e| format!("Bad Regexp: {e}"))?;
    let groups: Vec<String> = regexp
        .captures(asked)
        .map(|c| {
            c.iter()
                .map(|m| m.map_or_else(String::new, |m| m.as_str().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let suffix = asked.strip_prefix(&query.name).unwrap_or("");
    let fill = |text: &str| interpolate(text, asked, &query.name, suffix, &groups);
    let mut rendered = query.clone();
    rendered.service = fill(&query.service)?;
    rendered.near = fill(&query.near)?;
    rendered.tags = query
        .tags
        .iter()
        .map(|t| fill(t))
        .collect::<Result<Vec<_>, _>>()?;
    if template.remove_empty_tags {
        rendered.tags.retain(|t| !t.is_empty());
    }
    rendered.datacenters = query
        .datacenters
        .iter()
        .map(|d| fill(d))
        .collect::<Result<_, _>>()?;
    for (rendered_map, map) in [
        (&mut rendered.node_meta, &query.node_meta),
        (&mut rendered.service_meta, &query.service_meta),
    ] {
        *rendered_map = map
            .iter()
            .map(|(k, v)| Ok((k.clone(), fill(v)?)))
            .collect::<Result<_, String>>()?;
    }
    Ok(rendered)
}

/// Fills the `${…}` variables of one text.
fn interpolate(
    text: &str,
    full: &str,
    prefix: &str,
    suffix: &str,
    groups: &[String],
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated variable in {text:?}"))?;
        let variable = after[..end].trim();
        let value = match variable {
            "name.full" => full.to_owned(),
            "name.prefix" => prefix.to_owned(),
            "name.suffix" => suffix.to_owned(),
            _ => {
                let index = variable
                    .strip_prefix("match(")
                    .and_then(|v| v.strip_suffix(')'))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        format!("unknown variable ${{{variable}}} (use name.full, name.prefix, name.suffix or match(N))")
                    })?;
                groups.get(index).cloned().unwrap_or_default()
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The healthy instances of `query`'s service here, filtered, sorted near `near` (else
/// shuffled, spreading the load as Consul does), as health entries.
fn run_here(v: &View<'_>, query: &PreparedQuery, near: Option<&str>) -> Vec<Value> {
    let failed = v.failed_owners();
    let view = v.replica().catalog(&failed);
    let mut instances: Vec<Instance<'_>> = view
        .instances(&query.service, &[])
        .into_iter()
        .filter(|i| healthy(query, i) && tagged(query, i) && meta_fits(query, i))
        .collect();
    instances.shuffle(&mut rand::rng());
    if let Some(near) = near {
        let wanted: HashMap<String, String> = [("near".to_owned(), near.to_owned())].into();
        super::coordinate::sort_near(v, &wanted, &mut instances, |i| i.node);
    }
    instances
        .iter()
        .filter_map(|i| serde_json::to_value(super::health::entry_json(v, &view, i)).ok())
        .collect()
}

fn healthy(query: &PreparedQuery, i: &Instance<'_>) -> bool {
    let health = if query.ignore_check_ids.is_empty() {
        i.health
    } else {
        i.checks
            .iter()
            .filter(|c| !query.ignore_check_ids.iter().any(|id| *id == c.id))
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    };
    if query.only_passing {
        health == Health::Passing
    } else {
        health < Health::Critical
    }
}

/// Every tag the query names, none it forbids (`!tag`), case-insensitively.
fn tagged(query: &PreparedQuery, i: &Instance<'_>) -> bool {
    let has = |tag: &str| i.service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    query.tags.iter().all(|tag| match tag.strip_prefix('!') {
        Some(forbidden) => !has(forbidden),
        None => has(tag),
    })
}

fn meta_fits(query: &PreparedQuery, i: &Instance<'_>) -> bool {
    query
        .node_meta
        .iter()
        .all(|(k, v)| i.record.meta.get(k) == Some(v))
        && query
            .service_meta
            .iter()
            .all(|(k, v)| i.service.meta.get(k) == Some(v))
}

/// A query from Consul's JSON definition (`id` kept), checked as Consul checks it; the
/// error is Consul's words.
fn parse(body: &[u8], id: &str) -> Result<PreparedQuery, ApiError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Invalid prepared query: {why}"),
        )
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let texts = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    };
    let map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect()
    };
    let service = &json["Service"];
    let nearest = service["Failover"]["NearestN"].as_i64().unwrap_or(0);
    let query = PreparedQuery {
        id: id.to_owned(),
        name: text(&json["Name"]),
        service: text(&service["Service"]),
        nearest_n: u32::try_from(nearest)
            .map_err(|_| invalid(format!("Bad NearestN '{nearest}', must be >= 0")))?,
        datacenters: texts(&service["Failover"]["Datacenters"]),
        only_passing: service["OnlyPassing"].as_bool().unwrap_or(false),
        ignore_check_ids: texts(&service["IgnoreCheckIDs"]),
        near: text(&service["Near"]),
        tags: texts(&service["Tags"]),
        node_meta: map(&service["NodeMeta"]),
        service_meta: map(&service["ServiceMeta"]),
        dns_ttl: text(&json["DNS"]["TTL"]),
        template: match text(&json["Template"]["Type"]).as_str() {
            "" => None,
            NAME_PREFIX_MATCH => Some(QueryTemplate {
                regexp: text(&json["Template"]["Regexp"]),
                remove_empty_tags: json["Template"]["RemoveEmptyTags"]
                    .as_bool()
                    .unwrap_or(false),
            }),
            other => {
                return Err(invalid(format!(
                    "Bad Template.Type '{other}' (the one type is {NAME_PREFIX_MATCH})"
                )));
            }
        },
    };
    if query.service.is_empty() {
        return Err(invalid("Must provide a Service name to query".into()));
    }
    if !query.dns_ttl.is_empty() && crate::duration::parse(&query.dns_ttl).is_none() {
        return Err(invalid(format!(
            "Bad DNS TTL '{}': give a duration such as 10s",
            query.dns_ttl
        )));
    }
    if query.template.is_some() {
        // A template that cannot render for its own name renders for none.
        render(&query, &query.name).map_err(|why| invalid(format!("Bad template: {why}")))?;
    }
    Ok(query)
}

/// A query in Consul's JSON shape.
fn query_json(q: &PreparedQuery, index: u64) -> Value {
    json!({
        "ID": q.id,
        "Name": q.name,
        "Session": "",
        "Token": "",
        "Service": {
            "Service": q.service,
            "Failover": {"NearestN": q.nearest_n, "Datacenters": q.datacenters},
            "OnlyPassing": q.only_passing,
            "IgnoreCheckIDs": q.ignore_check_ids,
            "Near": q.near,
            "Tags": q.tags,
            "NodeMeta": q.node_meta,
            "ServiceMeta": q.service_meta,
        },
        "DNS": {"TTL": q.dns_ttl},
        "Template": q.template.as_ref().map_or_else(
            || json!({"Type": "", "Regexp": "", "RemoveEmptyTags": false}),
            |t| json!({"Type": NAME_PREFIX_MATCH, "Regexp": t.regexp, "RemoveEmptyTags": t.remove_empty_tags}),
        ),
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

/// Refuses a name another query (or an id) already has, as Consul does.
fn check_name(v: &View<'_>, query: &PreparedQuery) -> Result<(), ApiError> {
    if query.name.is_empty() {
        return Ok(());
    }
    for (other, _) in v.replica().queries().filter(|(o, _)| o.id != query.id) {
        if other.name == query.name {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("name '{}' aliases an existing query name", query.name),
            ));
        }
        if other.id == query.name {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("name '{}' aliases an existing query ID", query.name),
            ));
        }
    }
    Ok(())
}

/// `POST /v1/query`: creates a query; answers `{"ID": …}`.
pub(super) async fn create(State(api): State<Api>, body: Bytes) -> ApiResult {
    let id = super::new_uuid();
    super::limits::PREPARED_QUERY.check(body.len())?;
    let query = parse(&body, &id)?;
    store(&api, query).await?;
    Ok(axum::Json(json!({"ID": id})).into_response())
}

/// Writes a checked query (nothing is written when a check fails).
async fn store(api: &Api, query: PreparedQuery) -> Result<(), ApiError> {
    api.agent.view(|v| check_name(v, &query))?;
    api.agent
        .write(|r, now| r.put_query(query, now))
        .await
        .map_err(ApiError::internal)
}

/// `GET /v1/query`: every query, blocking.
pub(super) async fn list(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let (index, queries) = blocking::query(&api.agent, &params, Topic::Other, |v| {
        let queries: Vec<Value> = v
            .replica()
            .queries()
            .map(|(q, index)| query_json(q, index))
            .collect();
        (v.replica().queries_index(), queries)
    })
    .await?;
    Ok(with_index(index, json!(queries)))
}

/// `GET /v1/query/:id`: one query, in a list; 404 `Query not found`.
pub(super) async fn get(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let (index, found) = blocking::query(&api.agent, &params, Topic::Other, |v| {
        let found = v
            .replica()
            .queries()
            .find(|(q, _)| q.id == id)
            .map(|(q, index)| query_json(q, index));
        (v.replica().queries_index(), found)
    })
    .await?;
    let found = found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, NOT_FOUND))?;
    Ok(with_index(index, json!([found])))
}

fn exists(api: &Api, id: &str) -> Result<(), ApiError> {
    let found = api
        .agent
        .view(|v| v.replica().queries().any(|(q, _)| q.id == id));
    if found {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Cannot modify non-existent prepared query: '{id}'"),
        ))
    }
}

/// `PUT /v1/query/:id`: replaces a query.
pub(super) async fn update(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    exists(&api, &id)?;
    super::limits::PREPARED_QUERY.check(body.len())?;
    store(&api, parse(&body, &id)?).await?;
    Ok(StatusCode::OK)
}

/// `DELETE /v1/query/:id`.
pub(super) async fn delete(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    exists(&api, &id)?;
    api.agent
        .write(|r, now| r.delete_query(&id, now))
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::OK)
}

fn limit_of(params: &HashMap<String, String>) -> Result<Option<usize>, ApiError> {
    params
        .get("limit")
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .map_err(|_| ApiError::bad_request(format!("Bad limit {l:?}: give a number")))
        })
        .transpose()
}

fn resolved(api: &Api, id_or_name: &str) -> Result<PreparedQuery, ApiError> {
    api.queries
        .resolve(id_or_name)
        .map_err(|why| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, why))?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, NOT_FOUND))
}

/// `GET /v1/query/:id_or_name/execute?near=&limit=`.
pub(super) async fn execute(
    State(api): State<Api>,
    Path(id_or_name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = limit_of(&params)?;
    let query = resolved(&api, &id_or_name)?;
    let near = params
        .get("near")
        .map(String::as_str)
        .filter(|n| !n.is_empty());
    let executed = api.queries.execute(query, near, limit, true).await;
    let index = api.agent.view(|v| v.replica().records_index());
    Ok(with_index(index, executed.to_json()))
}

/// `GET /v1/query/:id_or_name/explain`: the query as it would run for that name.
pub(super) async fn explain(State(api): State<Api>, Path(id_or_name): Path<String>) -> ApiResult {
    let query = resolved(&api, &id_or_name)?;
    let index = api.agent.view(|v| v.replica().queries_index());
    Ok(with_index(
        index,
        json!({"Query": query_json(&query, index)}),
    ))
}

/// `POST /v1/internal/query/execute?limit=`: runs the definition in the body here, without
/// failover: how another datacenter's failover asks this one.
pub(super) async fn execute_remote(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let limit = limit_of(&params)?;
    let query = parse(&body, "")?;
    let executed = api.queries.execute(query, None, limit, false).await;
    let index = api.agent.view(|v| v.replica().records_index());
    Ok(with_index(index, executed.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_body_is_a_query_or_an_error_never_a_panic(value in crate::arbitrary_json::json()) {
            let _ = parse(&serde_json::to_vec(&value).unwrap(), "id");
        }
    }

    fn query(id: &str, name: &str, template: bool) -> PreparedQuery {
        PreparedQuery {
            id: id.into(),
            name: name.into(),
            service: "${name.suffix}".into(),
            template: template.then(|| QueryTemplate {
                regexp: "^geo-db-(.*?)-([^-]*)$".into(),
                remove_empty_tags: true,
            }),
            tags: vec!["${match(2)}".into(), "${match(7)}".into()],
            ..PreparedQuery::default()
        }
    }

    #[test]
    fn lookup_by_id_then_name_then_longest_template_prefix() {
        let stored = [
            query("1", "geo-", true),
            query("2", "geo-db-", true),
            query("3", "exact", false),
            query("4", "", true),
        ];
        let queries: Vec<&PreparedQuery> = stored.iter().collect();
        let id = |q: Option<&PreparedQuery>| q.map(|q| q.id.clone());
        assert_eq!(id(lookup(&queries, "3")), Some("3".into()));
        assert_eq!(id(lookup(&queries, "exact")), Some("3".into()));
        assert_eq!(
            id(lookup(&queries, "geo-db-customer-primary")),
            Some("2".into())
        );
        assert_eq!(id(lookup(&queries, "geo-web")), Some("1".into()));
        assert_eq!(
            id(lookup(&queries, "anything")),
            Some("4".into()),
            "the catch-all"
        );
        assert_eq!(id(lookup(&queries[..3], "anything")), None);
    }

    #[test]
    fn templates_render_consuls_variables() {
        let rendered = render(&query("2", "geo-db-", true), "geo-db-customer-primary").unwrap();
        assert_eq!(rendered.service, "customer-primary");
        assert_eq!(rendered.tags, ["primary"], "an empty tag removed");
        assert_eq!(
            interpolate(
                "${name.full}/${name.prefix}/${ match(1) }",
                "ab",
                "a",
                "b",
                &["ab".into(), "x".into()]
            ),
            Ok("ab/a/x".into())
        );
        assert!(
            interpolate("${nope}", "", "", "", &[])
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(interpolate("${name.full", "", "", "", &[]).is_err());
    }

    #[test]
    fn bad_definitions_get_consuls_errors() {
        let err = |body: &str| parse(body.as_bytes(), "x").unwrap_err().to_string();
        assert!(err(r#"{"Service": {}}"#).contains("Must provide a Service name to query"));
        assert!(
            err(r#"{"Service": {"Service": "db", "Failover": {"NearestN": -1}}}"#)
                .contains("Bad NearestN '-1', must be >= 0")
        );
        assert!(
            err(r#"{"Service": {"Service": "db"}, "DNS": {"TTL": "soon"}}"#)
                .contains("Bad DNS TTL 'soon'")
        );
        assert!(
            err(r#"{"Service": {"Service": "db"}, "Template": {"Type": "other"}}"#)
                .contains("Bad Template.Type")
        );
        assert!(err(r#"{"Service": {"Service": "db"}, "Template": {"Type": "name_prefix_match", "Regexp": "("}}"#).contains("Bad Regexp"));
        assert!(
            err(
                r#"{"Service": {"Service": "${oops}"}, "Template": {"Type": "name_prefix_match"}}"#
            )
            .contains("Bad template")
        );
        assert!(err("not json").contains("Request decode failed"));
        let ok = parse(br#"{"Name": "q", "Service": {"Service": "db", "Failover": {"NearestN": 2, "Datacenters": ["mars"]}}}"#, "x").unwrap();
        assert_eq!(
            (ok.nearest_n, ok.datacenters.as_slice()),
            (2, &["mars".to_owned()][..]),
            "an unknown datacenter is taken, and skipped when run, as Consul"
        );
        let round = parse(query_json(&ok, 1).to_string().as_bytes(), "x").unwrap();
        assert_eq!(round, ok, "the JSON shape reads back");
    }
}
