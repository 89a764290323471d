//! `?dc=`: which datacenter a request is for, decided once for every datacenter-scoped route.
//!
//! Consul answers catalog, health, KV, event, intention and status requests for any
//! datacenter it can reach, named by `?dc=`; absent or empty means the agent's own. The
//! decision is a tower layer around those routes rather than a check inside each handler:
//! forwarding a request to another datacenter (federation) needs the whole request (method,
//! path, query, body), which only a layer holds, and one layer cannot be forgotten by a new
//! handler the way a per-handler call was (the KV endpoints never checked `?dc=`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Query;
use axum::http::{Request, Uri};
use axum::response::Response;
use futures_util::future::Either;
use tower::{Layer, Service};

use crate::forward::Forwarder;

/// Wraps datacenter-scoped routes: requests for the local datacenter go on to the handler;
/// requests for another one are forwarded there ([`Forwarder`]), which answers with that
/// datacenter's answer or Consul's error.
#[derive(Clone)]
pub struct DatacenterLayer {
    local: Arc<str>,
    forwarder: Arc<Forwarder>,
}

impl DatacenterLayer {
    /// A layer for an agent of datacenter `local`.
    pub fn new(local: &str, forwarder: Arc<Forwarder>) -> Self {
        Self {
            local: local.into(),
            forwarder,
        }
    }
}

impl<S> Layer<S> for DatacenterLayer {
    type Service = Datacenter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Datacenter {
            inner,
            local: self.local.clone(),
            forwarder: self.forwarder.clone(),
        }
    }
}

/// The service [`DatacenterLayer`] makes.
#[derive(Clone)]
pub struct Datacenter<S> {
    inner: S,
    local: Arc<str>,
    forwarder: Arc<Forwarder>,
}

/// A request on its way to another datacenter.
type Forwarding<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S> Service<Request<Body>> for Datacenter<S>
where
    S: Service<Request<Body>, Response = Response>,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    // Local requests are not boxed: a parked blocking query holds this future for as long
    // as it waits. Forwarded ones are, being rarer and larger.
    type Future = Either<S::Future, Forwarding<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match other_datacenter(request.uri(), &self.local) {
            Some(dc) => {
                let forwarder = self.forwarder.clone();
                Either::Right(Box::pin(
                    async move { Ok(forwarder.http(dc, request).await) },
                ))
            }
            None => Either::Left(self.inner.call(request)),
        }
    }
}

/// The datacenter `uri` names with `?dc=` when it is not `local`; none for the local one
/// (named, empty or absent).
fn other_datacenter(uri: &Uri, local: &str) -> Option<String> {
    requested(uri).filter(|dc| !dc.is_empty() && dc != local)
}

/// The `?dc=` of `uri`, percent-decoded; the last one when repeated (as the handlers read
/// their parameters). A query that does not parse is left to the handler, which answers it
/// with its own 400.
fn requested(uri: &Uri) -> Option<String> {
    // Most requests name no datacenter: they skip the parse.
    if !uri.query().is_some_and(|q| q.contains("dc")) {
        return None;
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .rev()
        .find(|(k, _)| k == "dc")
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(uri: &str) -> Option<String> {
        other_datacenter(&uri.parse().unwrap(), "dc-1")
    }

    #[test]
    fn the_local_datacenter_or_none_stays_and_another_is_named() {
        for stays in [
            "/v1/kv/a",
            "/v1/kv/a?dc=",
            "/v1/kv/a?dc=dc-1",
            "/v1/kv/a?dc=dc%2D1",
            "/v1/kv/a?index=3&dc=dc-1",
            "/v1/kv/a?dc=elsewhere&dc=dc-1",
            "/v1/kv/a?dcx=elsewhere",
            "/v1/kv/dc?recurse",
        ] {
            assert_eq!(other(stays), None, "{stays}");
        }
        for (uri, dc) in [
            ("/v1/kv/a?dc=elsewhere", "elsewhere"),
            ("/v1/kv/a?dc=DC-1", "DC-1"),
            ("/v1/kv/a?recurse&dc=dc-2", "dc-2"),
            ("/v1/kv/a?dc=dc-1&dc=dc-2", "dc-2"),
        ] {
            assert_eq!(other(uri).as_deref(), Some(dc), "{uri}");
        }
    }
}
