//! Stream framing for push-pull and keyring requests over TCP: a 4-byte big-endian length,
//! then the envelope. One request frame, one reply frame, then the connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use murmur_gossip::MAX_FRAME;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one whole exchange (connect, send, receive) may take.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one frame, refusing lengths over [`MAX_FRAME`] before allocating.
pub async fn read_frame(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let len = stream.read_u32().await.context("reading frame length")? as usize;
    if len > MAX_FRAME {
        bail!("frame of {len} bytes is over the {MAX_FRAME}-byte limit");
    }
    let mut body = vec![0; len];
    stream
        .read_exact(&mut body)
        .await
        .context("reading frame body")?;
    Ok(body)
}

/// Writes one frame.
pub async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(body.len()).context("frame too large")?;
    stream.write_u32(len).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(())
}

/// Sends `request` to `to` and returns the reply frame.
pub async fn exchange(to: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    exchange_within(to, request, EXCHANGE_TIMEOUT).await
}

/// Whether an [`exchange`] failed because the peer's host refused the connection (nobody
/// listens at that port), as opposed to a timeout or a broken stream.
pub fn refused(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Like [`exchange`], for requests whose answer may take longer (a forwarded blocking query).
pub async fn exchange_within(
    to: SocketAddr,
    request: &[u8],
    within: Duration,
) -> anyhow::Result<Vec<u8>> {
    let run = async {
        let mut stream = TcpStream::connect(to).await.with_context(|| {
            format!("cannot connect to {to}: is a murmur agent listening there?")
        })?;
        write_frame(&mut stream, request).await?;
        read_frame(&mut stream).await
    };
    tokio::time::timeout(within, run)
        .await
        .with_context(|| format!("{to} did not answer within {within:?}"))?
}
