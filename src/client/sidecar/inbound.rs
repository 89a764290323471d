//! Inbound: the QUIC endpoint. Each connection's caller is known from its certificate (the
//! handshake checked its chain to the mesh roots); the agent's `authorize` decides whether it
//! may reach this service, once per source service until the intentions change. Each stream
//! of an authorized connection is spliced to the local app over TCP.

use murmur_proxy::quinn;
use std::sync::Arc;

use murmur_proxy::tls::peer_service;
use serde_json::json;
use tokio::net::TcpStream;

use super::Sidecar;
use super::splice::{count_bytes, splice};
use crate::client::watch::follow;

/// QUIC close code for a caller the intentions refuse.
const DENIED: u32 = 1;

/// Accepts connections until the endpoint closes.
pub async fn accept(sidecar: Arc<Sidecar>) -> anyhow::Result<()> {
    while let Some(incoming) = sidecar.endpoint.accept().await {
        let sidecar = sidecar.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    // A foreign CA, no certificate, another ALPN, an expired leaf: refused in
                    // the handshake. (Datagrams that are not QUIC never get this far: quinn
                    // drops them.)
                    sidecar
                        .refusals
                        .note("handshake", &format!("inbound handshake failed: {err}"));
                    return;
                }
            };
            serve(sidecar, connection).await;
        });
    }
    Ok(())
}

async fn serve(sidecar: Arc<Sidecar>, connection: quinn::Connection) {
    let source = match peer_service(&connection) {
        Ok(id) => id,
        Err(err) => {
            sidecar.refusals.note(
                "identity",
                &format!("inbound caller without a service identity: {err}"),
            );
            connection.close(DENIED.into(), b"no service identity");
            return;
        }
    };
    let destination = sidecar.fronted.name.clone();
    if !authorized(&sidecar, &source.uri(), &source.service).await {
        refuse(&sidecar, &connection, &source.service, &destination);
        return;
    }
    sidecar
        .inbound
        .lock()
        .expect("inbound poisoned")
        .push((source.service.clone(), connection.clone()));
    let labels = [
        ("source", source.service.clone()),
        ("destination", destination),
    ];
    metrics::counter!("murmur_proxy_inbound_connections_total", &labels).increment(1);
    while let Ok((send, recv)) = connection.accept_bi().await {
        let sidecar = sidecar.clone();
        let labels = labels.clone();
        tokio::spawn(async move {
            let app = sidecar.fronted.app;
            let tcp = match TcpStream::connect(app).await {
                Ok(tcp) => tcp,
                Err(err) => {
                    tracing::warn!(%app, "cannot reach the local app: {err}");
                    metrics::counter!("murmur_proxy_app_unreachable_total", &labels).increment(1);
                    return;
                }
            };
            let carried = match &sidecar.fronted.tls {
                None => splice(&sidecar, tcp, send, recv).await,
                Some(tls) => splice_tls(tls, app, tcp, send, recv).await,
            };
            match carried {
                Ok((to_app, from_app)) => count_bytes(&labels, "inbound", from_app, to_app),
                Err(err) if sidecar.fronted.tls.is_some() => {
                    tracing::warn!(%app, "TLS to the service failed: {err}");
                }
                Err(_) => {}
            }
        });
    }
}

fn refuse(sidecar: &Sidecar, connection: &quinn::Connection, source: &str, destination: &str) {
    let labels = [
        ("source", source.to_owned()),
        ("destination", destination.to_owned()),
    ];
    metrics::counter!("murmur_proxy_refused_by_intention_total", &labels).increment(1);
    sidecar.refusals.note(
        "intention",
        &format!("{source} => {destination} is denied by intention"),
    );
    connection.close(DENIED.into(), b"denied by intention");
}

/// The agent's decision for `source` (cached until the intentions change); a failure to ask
/// refuses (fail closed).
async fn authorized(sidecar: &Sidecar, uri: &str, source: &str) -> bool {
    if let Some(known) = sidecar
        .decisions
        .lock()
        .expect("decisions poisoned")
        .get(source)
    {
        return *known;
    }
    let body = json!({"Target": sidecar.fronted.name, "ClientCertURI": uri});
    let answer = async {
        let response = sidecar
            .client
            .post("/v1/agent/connect/authorize", serde_json::to_vec(&body)?)
            .await?;
        crate::client::json_of(response).await
    }
    .await;
    let allowed = match answer {
        Ok(answer) => answer["Authorized"].as_bool() == Some(true),
        Err(err) => {
            tracing::warn!("cannot ask the agent to authorize {source}: {err:#}; refusing");
            return false;
        }
    };
    sidecar
        .decisions
        .lock()
        .expect("decisions poisoned")
        .insert(source.to_owned(), allowed);
    allowed
}

/// Follows the intentions naming this service; on a change, forgets the decisions and
/// closes the open connections whose source is now refused.
pub async fn follow_intentions(sidecar: Arc<Sidecar>) -> anyhow::Result<()> {
    let path = format!(
        "/v1/connect/intentions/match?by=destination&name={}&",
        sidecar.fronted.name
    );
    let (changed_tx, mut changed) = tokio::sync::watch::channel(0u64);
    let watcher = follow(&sidecar.client, &path, |_| {
        changed_tx.send_modify(|n| *n += 1);
        Ok(())
    });
    let recheck = async {
        while changed.changed().await.is_ok() {
            sidecar
                .decisions
                .lock()
                .expect("decisions poisoned")
                .clear();
            let open: Vec<(String, quinn::Connection)> = {
                let mut inbound = sidecar.inbound.lock().expect("inbound poisoned");
                inbound.retain(|(_, c)| c.close_reason().is_none());
                inbound.clone()
            };
            for (source, connection) in open {
                let uri = murmur_proxy::tls::peer_service(&connection)
                    .map(|id| id.uri())
                    .unwrap_or_default();
                if !authorized(&sidecar, &uri, &source).await {
                    refuse(&sidecar, &connection, &source, &sidecar.fronted.name);
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(watcher, recheck).map(drop)
}

/// Carries a stream to a service spoken to over TLS (a terminating gateway's `--link-tls`):
/// the handshake checks the service's certificate for its address against the given CA, then
/// bytes are copied both ways; returns the bytes carried (to the service, from it).
async fn splice_tls(
    tls: &tokio_rustls::TlsConnector,
    app: std::net::SocketAddr,
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> std::io::Result<(u64, u64)> {
    use tokio::io::AsyncWriteExt;
    let name = rustls::pki_types::ServerName::IpAddress(app.ip().into());
    let stream = tls.connect(name, tcp).await?;
    let (mut from_service, mut to_service) = tokio::io::split(stream);
    let up = async {
        let n = tokio::io::copy(&mut recv, &mut to_service).await?;
        to_service.shutdown().await?;
        Ok::<_, std::io::Error>(n)
    };
    let down = async {
        let n = tokio::io::copy(&mut from_service, &mut send).await?;
        let _ = send.finish();
        Ok::<_, std::io::Error>(n)
    };
    tokio::try_join!(up, down)
}
