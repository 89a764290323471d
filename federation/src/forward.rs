//! Answering a request for another datacenter (`?dc=`): where it goes, how long it may take,
//! and what travels.
//!
//! As in Consul, an agent holds only its own datacenter's catalog and KV; a request for
//! datacenter B is answered in B, from a B agent's replica. The path has at most two hops,
//! over connections that already exist in the design: the asking agent hands the request to
//! one of its datacenter's gateways over the LAN pool, and that gateway hands it to one of
//! B's gateways over the WAN pool, which answers it as if it had been asked directly. No
//! agent ever talks to another datacenter's non-gateway agents, and a request never makes a
//! second WAN hop, so a misrouted request ends instead of looping.

use std::cmp::Reverse;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use murmur_gossip::rendezvous::pair_score;

/// Consul's answer for a datacenter no agent here knows of.
pub const NO_PATH: &str = "No path to datacenter";
/// Consul's answer for a known datacenter none of whose gateways answered.
pub const NO_SERVER: &str = "Remote DC has no server currently reachable";

/// The agent request kind that carries a forwarded request.
pub const FORWARD: &str = "forward";

/// Time each hop may take beyond a blocking query's own wait: connecting, the remote's
/// work, and the reply.
const HOP: Duration = Duration::from_secs(10);
/// Of its budget, what a gateway keeps back to report a failure to the asker before the
/// asker itself gives up (at most; a quarter of a short budget).
const REPORT_MARGIN: Duration = Duration::from_secs(2);

/// How long a DNS query for another datacenter may take: under the 5 s a stub resolver
/// (dig, glibc) waits before it retries, so the client gets SERVFAIL rather than silence.
pub const DNS_BUDGET: Duration = Duration::from_secs(4);

/// How a request reached the agent deciding where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// From this agent's own API (HTTP or DNS).
    Api,
    /// From an agent of this datacenter, over the LAN pool.
    Lan,
    /// From another datacenter's gateway, over the WAN pool.
    Wan,
}

/// Where a request for some datacenter goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It is for this agent's datacenter: answer it here.
    Here,
    /// Hand it to one of this datacenter's gateways.
    LocalGateway,
    /// Hand it to one of the target datacenter's gateways, over the WAN pool.
    Wan,
    /// Refuse it: this agent cannot take it further (why, in words for the log).
    Refuse(&'static str),
}

/// Where a request for `target` goes from an agent of `local` that got it as `arrived`;
/// `gateway` says whether that agent serves in the WAN pool now.
pub fn route(local: &str, target: &str, arrived: Arrived, gateway: bool) -> Route {
    if target == local {
        return Route::Here;
    }
    match (arrived, gateway) {
        // A request from the WAN was sent to the wrong datacenter: one WAN hop is all a
        // request ever makes.
        (Arrived::Wan, _) => Route::Refuse("a forwarded request names another datacenter"),
        (_, true) => Route::Wan,
        (Arrived::Api, false) => Route::LocalGateway,
        (Arrived::Lan, false) => Route::Refuse("this agent no longer serves as a gateway"),
    }
}

/// How long the asking agent waits for a forwarded request's answer: two hops, plus the
/// longest a blocking query with this `wait` holds (the wait and its up-to-1/16 jitter).
pub fn budget(wait: Option<Duration>) -> Duration {
    let held = wait.map_or(Duration::ZERO, |w| w + w / 16);
    2 * HOP + held
}

/// What a gateway may spend on the WAN hop of a request whose asker waits `budget`: all of
/// it when the request came from the gateway's own API, else a little less, so its "no
/// server reachable" reaches the asking agent before that agent gives up.
pub fn wan_budget(arrived: Arrived, budget: Duration) -> Duration {
    match arrived {
        Arrived::Api => budget,
        Arrived::Lan | Arrived::Wan => budget.saturating_sub(REPORT_MARGIN.min(budget / 4)),
    }
}

/// The order in which to try `candidates` (gateways) for the request of `asker`: a fixed
/// ranking per asker, so the askers of a datacenter spread over its gateways while each
/// keeps to the same one, with the next in its ranking when one fails.
pub fn order<T>(candidates: &mut [T], asker: &str, name: impl Fn(&T) -> &str) {
    candidates.sort_by_cached_key(|c| {
        let name = name(c);
        (Reverse(pair_score(asker, name)), name.to_owned())
    });
}

/// A request to be answered in another datacenter, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedRequest {
    /// The datacenter that answers it.
    pub datacenter: String,
    /// How long the asker waits, in milliseconds (see [`budget`], [`DNS_BUDGET`]).
    pub budget_ms: u64,
    /// What is asked.
    pub question: Question,
}

/// What a forwarded request asks, in the form its asker got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Question {
    /// An HTTP API request, answered by the target's router as its own.
    Http {
        /// The HTTP method.
        method: String,
        /// Path and query, `?dc=` included (the answering agent sees it as its own).
        uri: String,
        /// End-to-end headers (the token, the content type).
        headers: Vec<(String, Vec<u8>)>,
        /// The request body.
        body: Vec<u8>,
    },
    /// A DNS query naming the target datacenter (`web.service.dc2.consul`).
    Dns {
        /// The query as the client sent it: the reply keeps its id and question.
        packet: Vec<u8>,
        /// The asker's `--dns-domain`, which the answer's names are under.
        domain: String,
        /// The largest reply the client takes (UDP), or none (TCP).
        max_len: Option<u32>,
    },
}

/// What a forwarded request got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarded {
    /// The answering datacenter's HTTP answer, whatever its status.
    Http {
        /// The HTTP status.
        status: u16,
        /// End-to-end headers (`X-Consul-Index` and the like).
        headers: Vec<(String, Vec<u8>)>,
        /// The body.
        body: Vec<u8>,
    },
    /// The answering datacenter's DNS reply, ready to send.
    Dns(Vec<u8>),
    /// No gateway knows the datacenter: [`NO_PATH`].
    NoPath,
    /// The datacenter is known but none of its gateways answered: [`NO_SERVER`].
    NoServer,
}

/// Why a forwarding message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("undecodable forwarding message (truncated, padded, or over the frame limit)")]
pub struct Undecodable;

/// Encodes a forwarding message, with the codec (and the limits) of every gossip message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    murmur_gossip::encode_bounded(message)
}

/// Decodes a forwarding message, refusing trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Undecodable> {
    murmur_gossip::decode_bounded(bytes).map_err(|_| Undecodable)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_request_makes_at_most_one_lan_and_one_wan_hop() {
        use Arrived::*;
        assert_eq!(route("a", "a", Wan, false), Route::Here);
        assert_eq!(route("a", "a", Api, true), Route::Here);
        assert_eq!(route("a", "b", Api, false), Route::LocalGateway);
        assert_eq!(route("a", "b", Api, true), Route::Wan);
        assert_eq!(route("a", "b", Lan, true), Route::Wan);
        assert!(matches!(route("a", "b", Lan, false), Route::Refuse(_)));
        assert!(matches!(route("a", "b", Wan, true), Route::Refuse(_)));
    }

    #[test]
    fn the_gateway_gives_up_before_the_asker() {
        for wait in [
            None,
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(600)),
        ] {
            let asker = budget(wait);
            let gateway = wan_budget(Arrived::Lan, asker);
            assert!(gateway < asker);
            // The gateway's budget still covers its hop and the whole blocking wait.
            let held = wait.map_or(Duration::ZERO, |w| w + w / 16);
            assert!(gateway >= HOP + held);
            // A gateway asked through its own API has no asking agent to report to.
            assert_eq!(wan_budget(Arrived::Api, asker), asker);
        }
        // A DNS query's short budget leaves most of it to the WAN hop.
        let dns = wan_budget(Arrived::Lan, DNS_BUDGET);
        assert!(dns < DNS_BUDGET && dns >= DNS_BUDGET * 3 / 4);
    }

    proptest! {
        #[test]
        fn messages_round_trip(
            method in "[A-Z]{3,6}",
            uri in "/v1/[a-z/?=&]{0,40}",
            body in proptest::collection::vec(any::<u8>(), 0..256),
            status in 100u16..600,
        ) {
            let http = Question::Http {
                method,
                uri,
                headers: vec![("x-consul-token".into(), b"secret".to_vec())],
                body: body.clone(),
            };
            let dns = Question::Dns { packet: body.clone(), domain: "consul".into(), max_len: Some(512) };
            for question in [http, dns] {
                let request = ForwardedRequest { datacenter: "dc2".into(), budget_ms: 20_000, question };
                prop_assert_eq!(decode::<ForwardedRequest>(&encode(&request)).unwrap(), request);
            }
            for answer in [Forwarded::Http { status, headers: Vec::new(), body: body.clone() }, Forwarded::Dns(body)] {
                prop_assert_eq!(decode::<Forwarded>(&encode(&answer)).unwrap(), answer);
            }
        }

        #[test]
        fn truncated_or_padded_messages_are_refused(cut in 1usize..8) {
            let bytes = encode(&Forwarded::Http { status: 200, headers: Vec::new(), body: vec![7; 16] });
            prop_assert!(decode::<Forwarded>(&bytes[..bytes.len() - cut]).is_err());
            let mut padded = bytes.clone();
            padded.extend(std::iter::repeat_n(0, cut));
            prop_assert!(decode::<Forwarded>(&padded).is_err());
        }

        #[test]
        fn each_asker_ranks_the_gateways_the_same_way_every_time(
            names in proptest::collection::btree_set("[a-z]{1,6}", 1..8),
            asker in "[a-z]{1,6}",
        ) {
            let mut forward: Vec<String> = names.iter().cloned().collect();
            let mut backward: Vec<String> = names.iter().rev().cloned().collect();
            order(&mut forward, &asker, String::as_str);
            order(&mut backward, &asker, String::as_str);
            prop_assert_eq!(forward, backward);
        }
    }
}
