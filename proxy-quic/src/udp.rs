//! The UDP side of mesh connections: the socket a QUIC endpoint runs on, and how large its
//! datagrams may grow.
//!
//! quinn hands the socket up to 10 datagrams at once for one `sendmsg` with UDP segmentation
//! offload (GSO), but one `sendmsg` carries at most one UDP payload (65,507 bytes over IPv4):
//! the kernel refuses a larger batch with `EMSGSIZE`, which quinn takes for a failed MTU probe
//! and drops silently. Datagrams larger than 6,550 bytes therefore need their batches split
//! ([`SplitSends`]).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::busy_poll::BusyPoll;

/// The largest UDP payload path-MTU discovery may probe up to and peers are told we accept.
///
/// Beyond Ethernet's 1,452 because sidecar pairs often share a host (loopback's MTU is 64 KiB)
/// or a jumbo-frame network, and every datagram costs quinn much the same work whatever its
/// size: 1,452 → 6,500 took the CPU per GB of a sidecar pair from 2.24 to 1.57 s and one flow
/// from 5.7 to 7.0 Gbit/s; 6,500 → 16,000 about 7% more off the CPU per GB (5 alternating
/// pairs, 4 in its favour); 32,000 and 60,000 did no better (BENCHMARKS.md). Paths with a
/// smaller MTU keep the size discovery finds.
pub const MAX_DATAGRAM: u16 = 16_000;

/// The largest UDP payload one `sendmsg` may carry over IPv4 (65,535 less IP and UDP headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// UDP socket buffers asked for (the kernel caps them at `net.core.rmem_max`/`wmem_max`): with
/// the default 208 KiB a single flow through a sidecar pair overflowed the receive buffer
/// (0.44% of datagrams dropped, `RcvbufErrors` in /proc/net/snmp during `bench/proxy.sh`),
/// and each drop halved the congestion window.
const SOCKET_BUFFER: usize = 4 << 20;

/// Path-MTU discovery up to [`MAX_DATAGRAM`], for the transport configuration.
pub fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_DATAGRAM);
    mtu
}

/// A UDP socket with large buffers on `addr`, as quinn drives its own: receives coalesce a
/// burst of datagrams from one sender into one batch (GRO) and a batch goes out in one send
/// (GSO), where the kernel offers them. What a mesh gateway forwards with: one system call
/// per batch instead of one per datagram.
pub fn batched_socket(addr: SocketAddr) -> io::Result<BatchedSocket> {
    let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, bound(addr)?.into())?;
    Ok(BatchedSocket { inner })
}

/// A UDP socket bound to `addr` (both families on `[::]`), with [`SOCKET_BUFFER`]-sized
/// buffers where the system allows (best effort: a smaller buffer still works, only slower).
fn bound(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// See [`batched_socket`].
#[derive(Debug, Clone)]
pub struct BatchedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
}

/// One batch received: `len` bytes in `buffer` of datagrams of `stride` bytes each (the last
/// may be shorter), all from `from`.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// The sender.
    pub from: SocketAddr,
    /// Bytes in the batch.
    pub len: usize,
    /// Size of each datagram but the last.
    pub stride: usize,
}

impl BatchedSocket {
    /// The next batch of datagrams, into `buffer` (64 KiB holds any batch).
    pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<Batch> {
        let mut meta = [RecvMeta::default()];
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(buffer)];
            self.inner.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await?;
        Ok(Batch {
            from: meta[0].addr,
            len: meta[0].len,
            stride: meta[0].stride.max(1),
        })
    }

    /// Sends `contents`, datagrams of `stride` bytes each (the last may be shorter), to `to`
    /// in as few system calls as the kernel allows, waiting while the send buffer is full.
    pub async fn send(&self, to: SocketAddr, contents: &[u8], stride: usize) -> io::Result<()> {
        let per_send = (MAX_UDP_PAYLOAD / stride.max(1)).max(1) * stride.max(1);
        let segments = self.inner.max_transmit_segments().max(1);
        let per_send = per_send.min(segments * stride.max(1));
        for part in contents.chunks(per_send.max(1)) {
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: part,
                segment_size: (part.len() > stride).then_some(stride),
                src_ip: None,
            };
            loop {
                match self.inner.try_send(&transmit) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        let mut poller = self.inner.clone().create_io_poller();
                        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                    }
                    done => {
                        done?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A QUIC endpoint on `addr` with large socket buffers and datagrams up to [`MAX_DATAGRAM`];
/// a server when `server` is given; its traffic keeps `busy_poll` polling, if given.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    busy_poll: Option<Arc<BusyPoll>>,
) -> io::Result<quinn::Endpoint> {
    let socket = bound(addr)?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_DATAGRAM)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = quinn::Runtime::wrap_udp_socket(&*runtime, socket.into())?;
    let socket = SplitSends { inner, busy_poll };
    quinn::Endpoint::new_with_abstract_socket(config, server, Arc::new(socket), runtime)
}

/// A socket that sends a GSO batch larger than one UDP payload as several `sendmsg`s of whole
/// datagrams, so quinn may batch datagrams of any size up to its own limit; and tells
/// busy polling about its traffic.
#[derive(Debug)]
struct SplitSends {
    inner: Arc<dyn AsyncUdpSocket>,
    busy_poll: Option<Arc<BusyPoll>>,
}

impl SplitSends {
    fn traffic(&self) {
        if let Some(busy_poll) = &self.busy_poll {
            busy_poll.touch();
        }
    }
}

impl AsyncUdpSocket for SplitSends {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A batch too large for one send goes out in parts. If a later part would block (the 4 MiB
    /// send buffer is full), the rest is dropped and reported sent: QUIC retransmits what is
    /// lost, while `WouldBlock` would make quinn send the parts already gone again. Dropped
    /// datagrams are counted in `murmur_proxy_split_send_dropped_datagrams_total`.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.traffic();
        let segment = match transmit.segment_size {
            Some(segment) if transmit.contents.len() > MAX_UDP_PAYLOAD => segment,
            _ => return self.inner.try_send(transmit),
        };
        let per_send = (MAX_UDP_PAYLOAD / segment).max(1) * segment;
        for (i, part) in transmit.contents.chunks(per_send).enumerate() {
            let sent = self.inner.try_send(&Transmit {
                contents: part,
                segment_size: (part.len() > segment).then_some(segment),
                ..*transmit
            });
            match sent {
                Ok(()) => {}
                Err(err) if i == 0 => return Err(err),
                Err(err) => {
                    let unsent = transmit.contents.len() - i * per_send;
                    metrics::counter!("murmur_proxy_split_send_dropped_datagrams_total")
                        .increment(unsent.div_ceil(segment) as u64);
                    tracing::debug!("dropped the rest of a split GSO batch: {err}");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = self.inner.poll_recv(cx, bufs, meta);
        if matches!(received, Poll::Ready(Ok(_))) {
            self.traffic();
        }
        received
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback socket as quinn's runtime makes it, wrapped in [`SplitSends`].
    fn split_sends(busy_poll: Option<Arc<BusyPoll>>) -> Arc<SplitSends> {
        let inner = quinn::Runtime::wrap_udp_socket(
            &quinn::TokioRuntime,
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        Arc::new(SplitSends { inner, busy_poll })
    }

    /// Waits until `socket` may send (a new socket may not, until its runtime has seen it).
    async fn writable(socket: &Arc<SplitSends>) {
        let mut poller = socket.clone().create_io_poller();
        std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn sending_and_receiving_start_busy_polling() {
        let window = std::time::Duration::from_millis(1);
        let (sends, receives) = (BusyPoll::new(window), BusyPoll::new(window));
        let sender = split_sends(Some(sends.clone()));
        let receiver = split_sends(Some(receives.clone()));
        assert!(!sends.polling() && !receives.polling());
        writable(&sender).await;
        sender
            .try_send(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: b"ping",
                segment_size: None,
                src_ip: None,
            })
            .unwrap();
        assert!(sends.polling(), "a send did not start polling");
        assert!(!receives.polling(), "polling before anything arrived");
        let mut buf = [0; 64];
        let mut meta = [RecvMeta::default()];
        let received = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| {
                receiver.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta)
            }),
        )
        .await
        .expect("the datagram arrives")
        .unwrap();
        assert_eq!(received, 1);
        assert!(receives.polling(), "a receive did not start polling");
    }

    #[tokio::test]
    async fn a_batch_larger_than_a_udp_payload_arrives_whole() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let socket = split_sends(None);
        let segments = socket.max_transmit_segments().min(10);
        let segment = usize::from(MAX_DATAGRAM);
        let contents: Vec<u8> = (0..segments * segment)
            .map(|i| (i / segment) as u8)
            .collect();
        writable(&socket).await;
        socket
            .try_send(&Transmit {
                destination: receiver.local_addr().unwrap(),
                ecn: None,
                contents: &contents,
                segment_size: (segments > 1).then_some(segment),
                src_ip: None,
            })
            .unwrap();
        let mut buf = vec![0; 65_536];
        for n in 0..segments {
            let len = receiver
                .recv(&mut buf)
                .expect("every datagram of the batch arrives");
            assert_eq!(len, segment);
            assert!(
                buf[..len].iter().all(|&b| b == n as u8),
                "datagram {n} in order"
            );
        }
    }
}
