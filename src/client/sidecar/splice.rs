//! Carries bytes both ways between a TCP connection and a QUIC stream, with backpressure: each
//! direction writes before it reads more, and QUIC's flow control holds back a fast sender.

use murmur_proxy::quinn;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Sidecar;

/// Splices `tcp` with the stream (`send`, `recv`) until both directions end; returns the
/// bytes carried (TCP → QUIC, QUIC → TCP). An end of one direction is passed on (FIN both
/// ways), so half-closed connections work.
pub async fn splice(
    sidecar: &Sidecar,
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> std::io::Result<(u64, u64)> {
    sidecar.active.fetch_add(1, Ordering::Relaxed);
    let _ = tcp.set_nodelay(true);
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let up = async {
        let carried = tokio::io::copy(&mut tcp_read, &mut send).await;
        match carried {
            Ok(n) => {
                let _ = send.finish();
                Ok(n)
            }
            Err(err) => {
                let _ = send.reset(1u32.into());
                Err(err)
            }
        }
    };
    let down = async {
        let carried = tokio::io::copy(&mut recv, &mut tcp_write).await;
        let _ = tcp_write.shutdown().await;
        if carried.is_err() {
            let _ = recv.stop(1u32.into());
        }
        carried
    };
    let result = tokio::try_join!(up, down);
    sidecar.active.fetch_sub(1, Ordering::Relaxed);
    result
}
