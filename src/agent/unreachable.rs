//! The host's word for a crashed agent. A datagram sent to a port nobody listens on comes back
//! as ICMP "port unreachable"; the kernel hands that to the sender only if the socket asked for
//! it (`IP_RECVERR`), on the socket's error queue (`MSG_ERRQUEUE`). Each such bounce names the
//! destination, which the gossip core takes as evidence that the member there crashed
//! (`PoolMember::handle_unreachable`; it is confirmed by other members before anyone is
//! declared down).

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// ICMP's "destination unreachable" and its "port unreachable" code.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// ICMPv6's "destination unreachable" and its "port unreachable" code.
const ICMP6_DST_UNREACH: u8 = 1;
const ICMP6_DST_UNREACH_NOPORT: u8 = 4;

/// Asks the kernel to queue the ICMP errors of `socket`'s datagrams.
pub fn enable(socket: &UdpSocket) -> io::Result<()> {
    match socket.local_addr()? {
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4RecvErr, &true)?,
        SocketAddr::V6(_) => {
            setsockopt(socket, sockopt::Ipv6RecvErr, &true)?;
            // A dual-stack socket's IPv4 peers report through the IPv4 option; a v6-only
            // socket refuses it, which is fine.
            let _ = setsockopt(socket, sockopt::Ipv4RecvErr, &true);
        }
    }
    Ok(())
}

/// Waits until a datagram `socket` sent bounces because nobody listens at its destination,
/// and returns that destination. Other queued errors (host unreachable, message too big) are
/// read and skipped.
pub async fn next_refused(socket: &UdpSocket) -> io::Result<SocketAddr> {
    loop {
        if let Some(to) = socket
            .async_io(Interest::ERROR, || read_error(socket))
            .await?
        {
            return Ok(to);
        }
    }
}

/// Reads one message of the error queue: `Some(destination)` when it is a port unreachable.
fn read_error(socket: &UdpSocket) -> io::Result<Option<SocketAddr>> {
    // The head of the datagram that bounced comes back too; it is not needed.
    let mut head = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut head)];
    let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )?;
    let destination = message.address.and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::V4(SocketAddrV4::from(*v4)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
            })
    });
    let refused = message.cmsgs()?.any(|c| match c {
        ControlMessageOwned::Ipv4RecvErr(e, _) => {
            e.ee_origin == libc::SO_EE_ORIGIN_ICMP
                && e.ee_type == ICMP_DEST_UNREACH
                && e.ee_code == ICMP_PORT_UNREACH
        }
        ControlMessageOwned::Ipv6RecvErr(e, _) => {
            e.ee_origin == libc::SO_EE_ORIGIN_ICMP6
                && e.ee_type == ICMP6_DST_UNREACH
                && e.ee_code == ICMP6_DST_UNREACH_NOPORT
        }
        _ => false,
    });
    Ok(destination.filter(|_| refused).map(unmapped))
}

/// A v4-mapped IPv6 address as the IPv4 address it stands for, as members' addresses are kept.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Sends a datagram from a socket bound at `loopback` to a port there that nobody
    /// listens on, and checks the bounce names that port.
    async fn bounces_naming_the_port(socket: UdpSocket, loopback: &str) {
        enable(&socket).unwrap();
        // A port that was just free: nobody listens there.
        let closed = UdpSocket::bind(loopback).await.unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        socket.send_to(b"anyone?", to).await.unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(5), next_refused(&socket))
            .await
            .expect("the bounce arrives")
            .unwrap();
        assert_eq!(refused, to);
    }

    #[tokio::test]
    async fn a_datagram_to_a_closed_port_comes_back_naming_it() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        bounces_naming_the_port(socket, "127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn over_ipv6_too() {
        let Ok(socket) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        };
        bounces_naming_the_port(socket, "[::1]:0").await;
    }

    #[tokio::test]
    async fn a_datagram_to_a_listener_does_not_bounce() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable(&socket).unwrap();
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(b"hello", listener.local_addr().unwrap())
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), next_refused(&socket)).await;
        assert!(waited.is_err(), "nothing bounced: {waited:?}");
    }

    #[test]
    fn mapped_addresses_are_kept_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:8301".parse().unwrap();
        assert_eq!(
            unmapped(mapped),
            "127.0.0.1:8301".parse::<SocketAddr>().unwrap()
        );
        let v6: SocketAddr = "[::1]:8301".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }
}
