//! The HTTP API's accept loop, with the limits that keep one client from silencing an agent:
//! a deadline for each request's head (which also closes idle keep-alive connections and
//! connections that never send anything), a cap on open connections per client address
//! (answered `429`) and in all (answered `503`), and an accept loop that outlives a full file
//! table instead of spinning on `EMFILE`.
//!
//! axum's own `serve` has none of these: 500 connections sending half a header were all still
//! held after 60 s, and past the file-descriptor limit the agent answered nobody.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Limits of the HTTP API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a client has to send a request's head, counted from the connection's start or
    /// from the end of the previous answer: a connection idle that long is closed.
    pub header_timeout: Duration,
    /// Open connections from one client address at most (Consul's
    /// `http_max_conns_per_client`, 200 by default); past it, `429`.
    pub max_conns_per_client: usize,
    /// Open connections in all at most; past it, `503`.
    pub max_conns: usize,
}

/// Consul's `http_max_conns_per_client`.
pub const DEFAULT_MAX_CONNS_PER_CLIENT: usize = 200;
/// How long a request's head may take by default (Go's servers in Consul give 10 s too).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept out of the HTTP API's share: gossip, DNS, checks, sidecars, journal.
pub const FD_RESERVE: u64 = 512;

impl HttpLimits {
    /// The default total cap for a process allowed `nofile` open files: half of what is left
    /// after [`FD_RESERVE`], so the API can never take the descriptors the agent's other
    /// work needs (at least 64).
    pub fn default_max_conns(nofile: u64) -> usize {
        usize::try_from(nofile.saturating_sub(FD_RESERVE) / 2)
            .unwrap_or(usize::MAX)
            .max(64)
    }
}

/// Raises the soft limit on open files to the hard one, as Consul does at start, and returns
/// the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            tracing::warn!(soft, "cannot raise the open-files limit: {err}");
            soft
        }
    }
}

/// Open connections, per client address and in all.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Open`], given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection counts poisoned");
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Client,
    Total,
}

impl Refusal {
    /// The whole answer, written straight to the socket (the connection is not served).
    fn answer(self, limits: &HttpLimits) -> String {
        let (status, body) = match self {
            Self::Client => (
                "429 Too Many Requests",
                format!(
                    "this client address has {} connections open to the HTTP API, the most allowed (--http-max-conns-per-client): close some or reuse them\n",
                    limits.max_conns_per_client
                ),
            ),
            Self::Total => (
                "503 Service Unavailable",
                format!(
                    "the HTTP API has {} connections open, the most allowed (--http-max-conns): try again shortly\n",
                    limits.max_conns
                ),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
            body.len()
        )
    }
}

impl Open {
    /// Takes a slot for `client`, or says which limit is reached.
    fn admit(
        open: &Arc<Mutex<Self>>,
        client: IpAddr,
        limits: &HttpLimits,
    ) -> Result<Slot, Refusal> {
        let mut counts = open.lock().expect("connection counts poisoned");
        let mine = counts.per_client.get(&client).copied().unwrap_or(0);
        if mine >= limits.max_conns_per_client {
            return Err(Refusal::Client);
        }
        if counts.total >= limits.max_conns {
            return Err(Refusal::Total);
        }
        counts.total += 1;
        *counts.per_client.entry(client).or_default() += 1;
        Ok(Slot {
            open: open.clone(),
            client,
        })
    }
}

/// The HTTP API's server: one app and one set of limits for every listener, plain HTTP and
/// HTTPS alike, so that the connection caps count the process's descriptors wherever the
/// connections came in.
pub struct ApiServer {
    app: axum::Router,
    limits: HttpLimits,
    open: Arc<Mutex<Open>>,
    http: hyper::server::conn::http1::Builder,
}

impl ApiServer {
    /// A server of `app` under `limits`.
    pub fn new(app: axum::Router, limits: HttpLimits) -> Arc<Self> {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        Arc::new(Self {
            app,
            limits,
            open: Arc::new(Mutex::new(Open::default())),
            http,
        })
    }

    /// Serves `listener` until the process ends, with a TLS handshake first when `tls` is
    /// given (`--https-addr`).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        let mut last_accept_error: Option<tokio::time::Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection reset before accept:
                    // wait a little instead of spinning, and say so at most once a minute.
                    metrics::counter!("murmur_http_accept_errors_total").increment(1);
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!("HTTP API cannot accept connections: {err}");
                        last_accept_error = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match Open::admit(&self.open, peer.ip(), &self.limits) {
                Ok(slot) => {
                    tokio::spawn(self.clone().connection(stream, peer, tls.clone(), slot));
                }
                Err(refusal) => {
                    metrics::counter!("murmur_http_refused_connections_total", "limit" => match refusal {
                        Refusal::Client => "per-client",
                        Refusal::Total => "total",
                    })
                    .increment(1);
                    tokio::spawn(refuse(
                        stream,
                        peer,
                        tls.clone(),
                        refusal.answer(&self.limits),
                    ));
                }
            }
        }
    }

    /// Serves one admitted connection, holding its `slot` until it closes. The TLS handshake
    /// has the time a request's head has: a client that opens a connection and says nothing
    /// is closed as soon over HTTPS as over HTTP.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        _slot: Slot,
    ) {
        let service = TowerToHyperService::new(self.app.clone());
        let served = match tls {
            None => {
                self.http
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            }
            Some(tls) => {
                let stream = match tokio::time::timeout(
                    self.limits.header_timeout,
                    tls.accept(stream),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        metrics::counter!("murmur_http_tls_handshake_failures_total").increment(1);
                        tracing::debug!(%peer, "HTTPS handshake failed: {err}");
                        return;
                    }
                    Err(_) => return,
                };
                self.http
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            }
        };
        if let Err(err) = served {
            tracing::debug!(%peer, "HTTP connection ended: {err}");
        }
    }
}

/// Answers a connection turned away and closes it, within a second whatever the client does
/// (over TLS when it came to the HTTPS listener, so the client can read why).
///
/// The close lingers: the client's request is read and dropped (up to [`REFUSED_READ_LIMIT`]
/// bytes) until it closes its side, because closing a socket with unread data sends a reset, and
/// a client still writing its request would then see "connection reset" or "broken pipe" instead
/// of the answer that names the limit.
async fn refuse(stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, answer: String) {
    let answered = async {
        match tls {
            None => answer_then_drain(stream, &answer).await,
            Some(tls) => answer_then_drain(tls.accept(stream).await?, &answer).await,
        }
    };
    if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(1), answered).await {
        tracing::debug!(%peer, "could not tell a refused client why: {err}");
    }
}

async fn answer_then_drain(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    answer: &str,
) -> std::io::Result<()> {
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    let mut drained = 0;
    let mut sink = [0u8; 4096];
    while drained < REFUSED_READ_LIMIT {
        match stream.read(&mut sink).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// How much of a refused client's request is read (and dropped) before its connection is closed.
const REFUSED_READ_LIMIT: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        header_timeout: DEFAULT_HEADER_TIMEOUT,
        max_conns_per_client: 2,
        max_conns: 3,
    };

    #[test]
    fn connections_are_capped_per_client_then_in_all_and_counted_back_when_closed() {
        let open = Arc::new(Mutex::new(Open::default()));
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let a1 = Open::admit(&open, a, &LIMITS).unwrap();
        let _a2 = Open::admit(&open, a, &LIMITS).unwrap();
        assert_eq!(Open::admit(&open, a, &LIMITS).err(), Some(Refusal::Client));
        let _b1 = Open::admit(&open, b, &LIMITS).unwrap();
        assert_eq!(Open::admit(&open, c, &LIMITS).err(), Some(Refusal::Total));
        drop(a1);
        let _c1 = Open::admit(&open, c, &LIMITS).unwrap();
        assert_eq!(open.lock().unwrap().total, 3);
    }

    #[test]
    fn the_default_total_cap_leaves_the_reserve_and_half_the_rest() {
        assert_eq!(HttpLimits::default_max_conns(1024), 256);
        assert_eq!(HttpLimits::default_max_conns(600), 64);
        assert_eq!(HttpLimits::default_max_conns(1_048_576), 524_032);
    }

    #[test]
    fn a_refusal_is_a_whole_http_answer_naming_the_flag() {
        let answer = Refusal::Client.answer(&LIMITS);
        assert!(answer.starts_with("HTTP/1.1 429 "));
        assert!(answer.contains("--http-max-conns-per-client"));
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
