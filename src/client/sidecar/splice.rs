//! Carries bytes both ways between a TCP connection and a QUIC stream, with backpressure: each
//! direction writes before it reads more, and QUIC's flow control holds back a fast sender.
//!
//! Neither direction copies the bytes in user space: what TCP gives is handed to quinn as one
//! owned chunk (`write_chunk`), and the chunks quinn received are written to TCP with one
//! `writev` (`read_chunks`). Through an 8 KiB copy buffer each byte was copied once more and
//! each 8 KiB cost a TCP read, a window update and the softirq work that comes with it.

use murmur_proxy::quinn;
use std::io::IoSlice;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::Sidecar;

/// Room offered to each TCP read: a fast sender's reads fill it, so each costs one read, one
/// window update and one chunk for quinn.
const READ_SIZE: usize = 64 * 1024;
/// Reads shorter than this are copied out into a chunk of their own size, so a chatty
/// connection's many small unacknowledged writes do not each hold a whole read buffer.
const COPY_BELOW: usize = 4 * 1024;
/// Chunks taken from the QUIC stream per `writev`.
const CHUNKS_PER_WRITE: usize = 32;

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
        let carried = tcp_to_quic(&mut tcp_read, &mut send).await;
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
        let carried = quic_to_tcp(&mut recv, &mut tcp_write).await;
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

/// Counts the bytes of a finished connection of the pair `labels` (source, destination), as
/// seen by the proxy on `side` (`upstream`: the source's; `inbound`: the destination's): `out`
/// is what that proxy sent on, `into` what it received. The side is a label so that two
/// proxies of one agent, each end of the same pair, count into different series.
pub fn count_bytes(labels: &[(&'static str, String); 2], side: &'static str, out: u64, into: u64) {
    let labels = [
        labels[0].clone(),
        labels[1].clone(),
        ("side", side.to_owned()),
    ];
    metrics::counter!("murmur_proxy_bytes_out_total", &labels).increment(out);
    metrics::counter!("murmur_proxy_bytes_in_total", &labels).increment(into);
}

/// Reads TCP until its end, handing each read to the stream as one chunk. The read buffer
/// is taken once the socket is readable and given away with the bytes (or dropped after a
/// small read), so an idle connection holds none.
async fn tcp_to_quic(
    tcp: &mut OwnedReadHalf,
    send: &mut quinn::SendStream,
) -> std::io::Result<u64> {
    let mut carried = 0;
    loop {
        tcp.readable().await?;
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let n = match tcp.try_read_buf(&mut buf) {
            Ok(0) => return Ok(carried),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        };
        carried += n as u64;
        let chunk = if n < COPY_BELOW {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        send.write_chunk(chunk).await?;
    }
}

/// Reads the stream until its end, writing what each read gave with one `writev`.
async fn quic_to_tcp(
    recv: &mut quinn::RecvStream,
    tcp: &mut OwnedWriteHalf,
) -> std::io::Result<u64> {
    let mut chunks: [Bytes; CHUNKS_PER_WRITE] = Default::default();
    let mut carried = 0;
    while let Some(n) = recv.read_chunks(&mut chunks).await? {
        carried += write_all_chunks(tcp, &mut chunks[..n]).await?;
        // A chunk is a slice of quinn's receive buffer: even emptied it keeps that buffer
        // alive, so none is kept while the connection waits.
        chunks[..n].fill(Bytes::new());
    }
    Ok(carried)
}

/// Writes every chunk, in order, however the kernel splits the writes; returns the bytes.
async fn write_all_chunks(tcp: &mut OwnedWriteHalf, chunks: &mut [Bytes]) -> std::io::Result<u64> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut first = 0;
    while first < chunks.len() {
        if chunks[first].is_empty() {
            first += 1;
            continue;
        }
        let written = {
            let slices: Vec<IoSlice<'_>> =
                chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
            tcp.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let take = left.min(chunks[first].len());
            chunks[first].advance(take);
            left -= take;
            if chunks[first].is_empty() {
                first += 1;
            }
        }
    }
    Ok(total as u64)
}
