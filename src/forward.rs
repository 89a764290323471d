//! Answering for another datacenter (`?dc=`, `web.service.dc2.consul`): the request travels
//! to a gateway of that datacenter (through one of this datacenter's gateways) and is
//! answered there as if asked there: by the same HTTP router, or the same DNS answer, from
//! that datacenter's replica (`murmur_federation::forward` decides the route).
//!
//! Each hop is an agent request over an existing gossip pool: sealed with that pool's key,
//! bounded in time by the asker's budget (a blocking query's wait included), and refused
//! with a reason the asker acts on by trying the next gateway.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use murmur_federation::forward::{
    self, Arrived, DNS_BUDGET, FORWARD, Forwarded, ForwardedRequest, NO_PATH, NO_SERVER, Question,
    Route,
};
use tower::ServiceExt;

use crate::agent::runtime::{Agent, PeerRequests, PendingAnswer, Via};
use crate::dns::DnsSettings;
use crate::http::blocking;
use murmur_federation::gateways::GATEWAY_META;

/// The largest request or answer body a forwarded request carries: the gossip stream's
/// 4 MiB frame, less room for the envelope and headers.
const MAX_BODY: usize = 3 << 20;

/// Marks a request that arrived forwarded, so the router never forwards it again.
#[derive(Clone, Copy)]
struct ArrivedForwarded;

/// Forwards requests for other datacenters, and answers those forwarded to this one.
pub struct Forwarder {
    agent: Arc<Agent>,
    local: String,
    /// This agent's node name: the key of its ranking of gateways.
    me: String,
    /// The API router, answering forwarded requests as its own (set once it is built).
    router: OnceLock<Router>,
    /// This agent's DNS settings, answering forwarded DNS queries as its own.
    dns: DnsSettings,
}

impl Forwarder {
    /// A forwarder for the agent `me` of datacenter `local`, answering forwarded DNS
    /// queries with `dns` (in the asker's domain).
    pub fn new(agent: Arc<Agent>, me: &str, local: &str, dns: DnsSettings) -> Self {
        Self {
            agent,
            local: local.to_owned(),
            me: me.to_owned(),
            router: OnceLock::new(),
            dns,
        }
    }

    /// Starts answering requests forwarded to this agent, with `router`.
    pub fn serve(self: &Arc<Self>, router: Router) {
        let _ = self.router.set(router);
        self.agent
            .serve_peer_requests(FORWARD, Arc::new(Answering(self.clone())));
    }

    /// Answers `request`, addressed by `?dc=` to datacenter `dc` (not this one), with the
    /// answer of that datacenter or Consul's error.
    pub async fn http(&self, dc: String, request: Request<Body>) -> Response {
        if request.extensions().get::<ArrivedForwarded>().is_some() {
            // Only a misrouted request gets here: a gateway answers for its own datacenter.
            return (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH).into_response();
        }
        match encode_request(dc, request).await {
            Ok(request) => decode_answer(self.ask(request).await),
            Err(refusal) => refusal,
        }
    }

    /// Asks datacenter `dc` (not this one) the DNS query `packet`, whose names are under
    /// `domain`, for a reply of at most `max_len` bytes (UDP); what came back, or why none.
    pub async fn dns(
        &self,
        dc: String,
        packet: Vec<u8>,
        domain: String,
        max_len: Option<usize>,
    ) -> Forwarded {
        let max_len = max_len.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        self.ask(ForwardedRequest {
            datacenter: dc,
            budget_ms: millis(DNS_BUDGET),
            question: Question::Dns {
                packet,
                domain,
                max_len,
            },
        })
        .await
    }

    /// Sends `request` on its way from this agent's API and waits for what it gets.
    async fn ask(&self, request: ForwardedRequest) -> Forwarded {
        let started = Instant::now();
        let target = request.datacenter.clone();
        let question = match request.question {
            Question::Http { .. } => "http",
            Question::Dns { .. } => "dns",
        };
        let outcome = self
            .forward(Arrived::Api, request)
            .await
            .unwrap_or_else(|why| {
                tracing::warn!(datacenter = %target, "request not forwarded: {why}");
                Forwarded::NoServer
            });
        let result = match &outcome {
            Forwarded::Http { .. } | Forwarded::Dns(_) => "answered",
            Forwarded::NoPath => "no_path",
            Forwarded::NoServer => "no_server",
        };
        metrics::counter!("murmur_federation_forwarded_total", "question" => question, "result" => result)
            .increment(1);
        metrics::histogram!("murmur_federation_forward_seconds", "question" => question)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Takes `request` one hop on, as `route` says from here; an error means this agent
    /// could not, and the asker should try another.
    async fn forward(
        &self,
        arrived: Arrived,
        request: ForwardedRequest,
    ) -> Result<Forwarded, String> {
        let gateway = self.agent.wan().is_some();
        match forward::route(&self.local, &request.datacenter, arrived, gateway) {
            Route::Here => self.answer_here(request).await,
            Route::LocalGateway => Ok(self.via_local_gateway(request).await),
            Route::Wan => {
                let budget = Duration::from_millis(request.budget_ms);
                Ok(self
                    .via_wan(request, forward::wan_budget(arrived, budget))
                    .await)
            }
            Route::Refuse(why) => Err(why.to_owned()),
        }
    }

    /// Hands `request` to this datacenter's gateways in turn until one answers.
    async fn via_local_gateway(&self, request: ForwardedRequest) -> Forwarded {
        let mut gateways = self.agent.view(|v| {
            let failed = v.failed_owners();
            v.replica()
                .records()
                .iter()
                .filter(|(name, record)| {
                    record.meta.contains_key(GATEWAY_META) && !failed.contains(*name)
                })
                .filter_map(|(name, _)| v.peer(name).map(|m| (name.clone(), m.identity.addr)))
                .collect::<Vec<_>>()
        });
        if gateways.is_empty() {
            // This datacenter is linked to no other.
            return Forwarded::NoPath;
        }
        forward::order(&mut gateways, &self.me, |(name, _)| name);
        let budget = Duration::from_millis(request.budget_ms);
        self.ask_in_turn(Via::Lan, &gateways, &request, budget)
            .await
            .unwrap_or(Forwarded::NoServer)
    }

    /// Hands `request` to the target datacenter's gateways in the WAN pool in turn.
    async fn via_wan(&self, request: ForwardedRequest, budget: Duration) -> Forwarded {
        let Some(members) = self.agent.read_wan(|m| m.node().members()) else {
            // Stepped down since the route was chosen.
            return Forwarded::NoServer;
        };
        let of_target: Vec<_> = members
            .iter()
            .filter(|m| *m.identity.datacenter == *request.datacenter)
            .collect();
        if of_target.is_empty() {
            return Forwarded::NoPath;
        }
        let mut gateways: Vec<(String, _)> = of_target
            .iter()
            .filter(|m| m.status.is_active())
            .map(|m| (m.identity.name.to_string(), m.identity.addr))
            .collect();
        forward::order(&mut gateways, &self.me, |(name, _)| name);
        self.ask_in_turn(Via::Wan, &gateways, &request, budget)
            .await
            .unwrap_or(Forwarded::NoServer)
    }

    /// Asks each of `gateways` in turn, within `budget` in all, until one answers; `None`
    /// when none did.
    async fn ask_in_turn(
        &self,
        via: Via,
        gateways: &[(String, std::net::SocketAddr)],
        request: &ForwardedRequest,
        budget: Duration,
    ) -> Option<Forwarded> {
        let deadline = Instant::now() + budget;
        let body = forward::encode(request);
        for (name, addr) in gateways {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let answer = self
                .agent
                .ask(via, *addr, FORWARD, body.clone(), left)
                .await
                .and_then(|reply| Ok(forward::decode::<Forwarded>(&reply)?));
            match answer {
                Ok(answer) => return Some(answer),
                Err(err) => {
                    metrics::counter!("murmur_federation_forward_hop_errors_total").increment(1);
                    tracing::debug!(gateway = %name, %addr, ?via, "forwarding hop failed: {err:#}");
                }
            }
        }
        None
    }

    /// Answers a request forwarded to this datacenter as this agent's own API would.
    async fn answer_here(&self, request: ForwardedRequest) -> Result<Forwarded, String> {
        let within = Duration::from_millis(request.budget_ms);
        match request.question {
            Question::Http {
                method,
                uri,
                headers,
                body,
            } => {
                let method = Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("bad method {method:?}"))?;
                let mut http = Request::builder()
                    .method(method)
                    .uri(&uri)
                    .extension(ArrivedForwarded);
                for (name, value) in &headers {
                    http = http.header(name.as_str(), value.as_slice());
                }
                let http = http
                    .body(Body::from(body))
                    .map_err(|e| format!("bad forwarded request: {e}"))?;
                self.answer_http_here(http, within).await
            }
            Question::Dns {
                packet,
                domain,
                max_len,
            } => {
                let settings = DnsSettings {
                    domain,
                    ..self.dns.clone()
                };
                let max_len = max_len.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
                crate::dns::answer_locally(&self.agent, &settings, &packet, max_len)
                    .map(Forwarded::Dns)
                    .ok_or_else(|| "a forwarded DNS query too short to answer".to_owned())
            }
        }
    }

    /// Answers a forwarded HTTP request with this agent's own router.
    async fn answer_http_here(
        &self,
        http: Request<Body>,
        within: Duration,
    ) -> Result<Forwarded, String> {
        let router = self
            .router
            .get()
            .ok_or("this agent's API is not up yet")?
            .clone();
        let response = tokio::time::timeout(within, router.oneshot(http))
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        let answer = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(body) => Forwarded::Http {
                status: parts.status.as_u16(),
                headers: end_to_end(&parts.headers),
                body: body.to_vec(),
            },
            Err(_) => Forwarded::Http {
                status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                headers: Vec::new(),
                body: format!(
                    "the answer is over the {MAX_BODY} bytes a request for another datacenter carries: narrow the query (?filter=, a key prefix)"
                )
                .into_bytes(),
            },
        };
        Ok(answer)
    }
}

/// The forwarder as the handler of forwarded requests that reach this agent.
struct Answering(Arc<Forwarder>);

impl PeerRequests for Answering {
    fn answer(&self, _agent: Arc<Agent>, via: Via, body: Vec<u8>) -> PendingAnswer {
        let forwarder = self.0.clone();
        Box::pin(async move {
            let request: ForwardedRequest = forward::decode(&body).map_err(|e| e.to_string())?;
            let arrived = match via {
                Via::Lan => Arrived::Lan,
                Via::Wan => Arrived::Wan,
            };
            let answer = forwarder.forward(arrived, request).await?;
            Ok(forward::encode(&answer))
        })
    }
}

/// The request as it travels, with the asker's budget: a blocking query's wait on top of
/// the hops. A body too large to carry is refused here with a 413.
async fn encode_request(dc: String, request: Request<Body>) -> Result<ForwardedRequest, Response> {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request for another datacenter carries at most {MAX_BODY} bytes of body"),
        )
            .into_response());
    };
    let wait = Query::<std::collections::HashMap<String, String>>::try_from_uri(&parts.uri)
        .ok()
        .filter(|Query(q)| q.contains_key("index"))
        .and_then(|Query(q)| blocking::wait(&q).ok());
    Ok(ForwardedRequest {
        datacenter: dc,
        budget_ms: millis(forward::budget(wait)),
        question: Question::Http {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
            headers: end_to_end(&parts.headers),
            body: body.to_vec(),
        },
    })
}

fn millis(budget: Duration) -> u64 {
    u64::try_from(budget.as_millis()).unwrap_or(u64::MAX)
}

/// The HTTP answer for what a forwarded HTTP request got.
fn decode_answer(outcome: Forwarded) -> Response {
    match outcome {
        Forwarded::Http {
            status,
            headers,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut response = (status, body).into_response();
            let map = response.headers_mut();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(&value),
                ) {
                    map.insert(name, value);
                }
            }
            response
        }
        Forwarded::NoPath => (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH).into_response(),
        // A DNS reply to an HTTP request is a remote's fault: as if it had not answered.
        Forwarded::NoServer | Forwarded::Dns(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, NO_SERVER).into_response()
        }
    }
}

/// The headers that travel with a forwarded request or answer: all but those about one
/// connection or one encoding of the body, which each hop sets for itself.
fn end_to_end(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| {
            ![
                header::CONNECTION,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
                header::HOST,
                header::UPGRADE,
                header::TE,
            ]
            .contains(name)
                && name.as_str() != "keep-alive"
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}
