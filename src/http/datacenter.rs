//! `?dc=`: which datacenter a request is for, decided once for every datacenter-scoped route.
//!
//! Consul answers catalog, health, KV, event, intention and status requests for any
//! datacenter it can reach, named by `?dc=`; absent or empty means the agent's own. The
//! decision is a tower layer around those routes rather than a check inside each handler:
//! forwarding a request to another datacenter (federation) needs the whole request (method,
//! path, query, body), which only a layer holds, and one layer cannot be forgotten by a new
//! handler the way a per-handler call was (the KV endpoints never checked `?dc=`).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Query;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

/// Consul's answer for a datacenter this agent has no path to.
pub const NO_PATH: &str = "No path to datacenter";

/// Wraps datacenter-scoped routes: requests for the local datacenter go on to the handler;
/// requests for another one are answered `500 No path to datacenter`, as Consul answers a
/// datacenter it cannot reach (this agent reaches none but its own until federation).
#[derive(Clone)]
pub struct DatacenterLayer {
    local: Arc<str>,
}

impl DatacenterLayer {
    /// A layer for an agent of datacenter `local`.
    pub fn new(local: &str) -> Self {
        Self {
            local: local.into(),
        }
    }
}

impl<S> Layer<S> for DatacenterLayer {
    type Service = Datacenter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Datacenter {
            inner,
            local: self.local.clone(),
        }
    }
}

/// The service [`DatacenterLayer`] makes.
#[derive(Clone)]
pub struct Datacenter<S> {
    inner: S,
    local: Arc<str>,
}

impl<S, B> Service<Request<B>> for Datacenter<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    // Not boxed: a parked blocking query holds this future for as long as it waits.
    type Future = Either<S::Future, Ready<Result<Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match requested(request.uri()) {
            Some(dc) if !dc.is_empty() && *dc != *self.local => {
                metrics::counter!("murmur_http_unreachable_datacenter_total").increment(1);
                Either::Right(ready(Ok(
                    (StatusCode::INTERNAL_SERVER_ERROR, NO_PATH).into_response()
                )))
            }
            _ => Either::Left(self.inner.call(request)),
        }
    }
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
    use std::convert::Infallible;

    use super::*;

    /// Answers 200 with the path it was called for, so a test sees what got through.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response;
        type Error = Infallible;
        type Future = Ready<Result<Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            ready(Ok(request.uri().to_string().into_response()))
        }
    }

    async fn status_of(uri: &str) -> StatusCode {
        let mut service = DatacenterLayer::new("dc-1").layer(Echo);
        let request = Request::builder().uri(uri).body(()).unwrap();
        service.call(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_local_datacenter_or_none_passes_and_another_is_refused() {
        for passes in [
            "/v1/kv/a",
            "/v1/kv/a?dc=",
            "/v1/kv/a?dc=dc-1",
            "/v1/kv/a?dc=dc%2D1",
            "/v1/kv/a?index=3&dc=dc-1",
            "/v1/kv/a?dc=elsewhere&dc=dc-1",
            "/v1/kv/a?dcx=elsewhere",
            "/v1/kv/dc?recurse",
        ] {
            assert_eq!(status_of(passes).await, StatusCode::OK, "{passes}");
        }
        for refused in [
            "/v1/kv/a?dc=elsewhere",
            "/v1/kv/a?dc=DC-1",
            "/v1/kv/a?recurse&dc=dc-2",
            "/v1/kv/a?dc=dc-1&dc=dc-2",
        ] {
            let status = status_of(refused).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{refused}");
        }
    }
}
