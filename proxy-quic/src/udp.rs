//! The UDP side of mesh connections: the socket a QUIC endpoint runs on, and how large its
//! datagrams may grow.
//!
//! quinn sends up to 10 datagrams per `sendmsg` with UDP segmentation offload (GSO), and the
//! whole batch must fit one UDP payload (65,507 bytes over IPv4): the kernel refuses a larger
//! one with `EMSGSIZE`, which quinn takes for a failed MTU probe and drops silently. So the
//! datagram size path-MTU discovery may reach ([`MAX_DATAGRAM`]) and the segments per send
//! ([`SegmentCapped`]) are chosen together.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The largest UDP payload path-MTU discovery may probe up to and peers are told we accept.
///
/// Beyond Ethernet's 1,452 because sidecar pairs often share a host (loopback's MTU is 64 KiB)
/// or a jumbo-frame network, and every datagram costs quinn the same work whatever its size:
/// 1,452 → 6,500 took the CPU per GB of a sidecar pair from 2.24 to 1.57 s and one flow from
/// 5.7 to 7.0 Gbit/s (BENCHMARKS.md). Paths with a smaller MTU keep the size discovery finds.
/// 6,500 is the most that lets quinn's full 10-datagram batch fit one UDP payload; larger
/// datagrams (16,000 with 4 per batch) measured no better, and would shrink batches on
/// Ethernet-sized paths.
pub const MAX_DATAGRAM: u16 = 6_500;

/// The largest UDP payload one `sendmsg` may carry over IPv4 (65,535 less IP and UDP headers).
const MAX_UDP_PAYLOAD: usize = 65_507;

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

/// A QUIC endpoint on `addr` with large socket buffers and datagrams up to [`MAX_DATAGRAM`];
/// a server when `server` is given.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, only slower.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_DATAGRAM)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = SegmentCapped::new(quinn::Runtime::wrap_udp_socket(&*runtime, socket.into())?);
    quinn::Endpoint::new_with_abstract_socket(config, server, Arc::new(socket), runtime)
}

/// A socket that never lets quinn batch more datagrams of [`MAX_DATAGRAM`] bytes into one
/// send than fit a UDP payload, whatever quinn's own limit is.
#[derive(Debug)]
struct SegmentCapped {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl SegmentCapped {
    fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        let max_segments = inner
            .max_transmit_segments()
            .min(MAX_UDP_PAYLOAD / usize::from(MAX_DATAGRAM));
        SegmentCapped {
            inner,
            max_segments,
        }
    }
}

impl AsyncUdpSocket for SegmentCapped {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_segments
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

    #[tokio::test]
    async fn a_full_send_batch_fits_one_udp_payload() {
        let socket = quinn::Runtime::wrap_udp_socket(
            &quinn::TokioRuntime,
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        let capped = SegmentCapped::new(socket);
        assert!(capped.max_transmit_segments() >= 1);
        assert!(capped.max_transmit_segments() * usize::from(MAX_DATAGRAM) <= MAX_UDP_PAYLOAD);
    }
}
