//! The names a QUIC client asks for, read from its first datagram without taking part in the
//! connection: what a mesh gateway routes by (RFC 9000 §17.2.2, RFC 9001 §5).
//!
//! A client's Initial packet is encrypted with keys anyone can derive from its destination
//! connection id, so a gateway can read the TLS ClientHello inside it (the server name and
//! the ALPN protocols) and forward the flow without holding any key of the connection: the
//! end-to-end mutual TLS stays between the two proxies.
//!
//! Pure: bytes in, names or the reason out. Every length is checked, so garbage is an error,
//! never a panic (a property test feeds it arbitrary datagrams).

use rustls::Side;
use rustls::quic::Version;

/// What a client's first datagram says it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The TLS server name (SNI), which a mesh gateway routes by.
    pub server_name: String,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// The destination connection id the client chose: the same in every retransmission of
    /// its first flight, another for each new connection.
    pub connection_id: Vec<u8>,
}

/// Why no ClientHello could be read from a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitialError {
    /// Not a QUIC long-header Initial packet of version 1 (a short-header packet, another
    /// packet type or version, or not QUIC at all).
    #[error("not a QUIC v1 Initial packet")]
    NotInitial,
    /// The packet ends before its own lengths say, or a length is out of bounds.
    #[error("truncated or malformed packet")]
    Malformed,
    /// The payload does not decrypt with the Initial keys of its connection id.
    #[error("the Initial packet does not decrypt")]
    Undecryptable,
    /// A frame an Initial packet may not carry, or a CRYPTO frame that leaves a gap.
    #[error("unexpected frame in an Initial packet")]
    BadFrame,
    /// The ClientHello goes on in a later datagram (large ClientHellos, such as ones with
    /// post-quantum key shares, span two Initials).
    #[error("the ClientHello does not fit in the first datagram")]
    Incomplete,
    /// The TLS message is not a ClientHello, or names no server.
    #[error("no TLS server name in the ClientHello")]
    NoServerName,
}

/// The ClientHello carried by `datagram`, a client's first datagram of a connection.
pub fn client_hello(datagram: &[u8]) -> Result<ClientHello, InitialError> {
    let (connection_id, crypto) = initial_crypto_data(datagram)?;
    let mut hello = parse_client_hello(&crypto)?;
    hello.connection_id = connection_id;
    Ok(hello)
}

/// The destination connection id and the CRYPTO stream bytes from offset 0 of the Initial
/// packet at the start of `datagram`.
fn initial_crypto_data(datagram: &[u8]) -> Result<(Vec<u8>, Vec<u8>), InitialError> {
    // Most datagrams a gateway sees are short-header packets of open flows: refused here,
    // before the copy that decryption needs.
    if datagram.first().is_none_or(|first| first & 0xf0 != 0xc0) {
        return Err(InitialError::NotInitial);
    }
    let mut packet = datagram.to_vec();
    let mut r = Reader::new(&packet);
    let first = r.u8().ok_or(InitialError::NotInitial)?;
    // Long header (0x80), fixed bit (0x40), type Initial (0x00 in bits 4-5 for v1).
    if first & 0xf0 != 0xc0 {
        return Err(InitialError::NotInitial);
    }
    if r.u32().ok_or(InitialError::NotInitial)? != 1 {
        return Err(InitialError::NotInitial);
    }
    let dcid_len = usize::from(r.u8().ok_or(InitialError::Malformed)?);
    if dcid_len > 20 {
        return Err(InitialError::Malformed);
    }
    let dcid = r.bytes(dcid_len).ok_or(InitialError::Malformed)?.to_vec();
    let scid_len = usize::from(r.u8().ok_or(InitialError::Malformed)?);
    if scid_len > 20 {
        return Err(InitialError::Malformed);
    }
    r.bytes(scid_len).ok_or(InitialError::Malformed)?;
    let token_len = r.varint_len().ok_or(InitialError::Malformed)?;
    r.bytes(token_len).ok_or(InitialError::Malformed)?;
    let length = r.varint_len().ok_or(InitialError::Malformed)?;
    let pn_offset = r.position();
    let end = pn_offset
        .checked_add(length)
        .filter(|&end| end <= packet.len())
        .ok_or(InitialError::Malformed)?;

    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or(InitialError::Undecryptable)?;
    let keys = suite.keys(&dcid, Side::Server, Version::V1);
    // Header protection: the sample starts 4 bytes after the packet number's start.
    let sample_start = pn_offset + 4;
    let sample_len = keys.remote.header.sample_len();
    if sample_start + sample_len > end {
        return Err(InitialError::Malformed);
    }
    let sample = packet[sample_start..sample_start + sample_len].to_vec();
    let (head, rest) = packet.split_at_mut(pn_offset);
    keys.remote
        .header
        .decrypt_in_place(&sample, &mut head[0], &mut rest[..4])
        .map_err(|_| InitialError::Undecryptable)?;
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    let packet_number = packet[pn_offset..pn_offset + pn_len]
        .iter()
        .fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let (header, payload) = packet[..end].split_at_mut(pn_offset + pn_len);
    let plain = keys
        .remote
        .packet
        .decrypt_in_place(packet_number, header, payload)
        .map_err(|_| InitialError::Undecryptable)?;
    Ok((dcid, crypto_stream(plain)?))
}

/// The CRYPTO frames' data of a decrypted Initial payload, contiguous from offset 0.
fn crypto_stream(frames: &[u8]) -> Result<Vec<u8>, InitialError> {
    let mut pieces: Vec<(usize, &[u8])> = Vec::new();
    let mut r = Reader::new(frames);
    while !r.is_empty() {
        match r.varint().ok_or(InitialError::BadFrame)? {
            0x00 | 0x01 => {} // PADDING, PING
            kind @ (0x02 | 0x03) => {
                // ACK: largest, delay, range count, first range, then (gap, length) pairs,
                // then three ECN counts for 0x03.
                r.varint().ok_or(InitialError::BadFrame)?;
                r.varint().ok_or(InitialError::BadFrame)?;
                let ranges = r.varint().ok_or(InitialError::BadFrame)?;
                r.varint().ok_or(InitialError::BadFrame)?;
                let extra = if kind == 0x03 { 3 } else { 0 };
                let fields = ranges
                    .checked_mul(2)
                    .and_then(|n| n.checked_add(extra))
                    .ok_or(InitialError::BadFrame)?;
                for _ in 0..fields {
                    r.varint().ok_or(InitialError::BadFrame)?;
                }
            }
            0x06 => {
                let offset = r.varint_len().ok_or(InitialError::BadFrame)?;
                let len = r.varint_len().ok_or(InitialError::BadFrame)?;
                pieces.push((offset, r.bytes(len).ok_or(InitialError::BadFrame)?));
            }
            _ => return Err(InitialError::BadFrame),
        }
    }
    pieces.sort_by_key(|(offset, _)| *offset);
    let mut stream = Vec::new();
    for (offset, data) in pieces {
        if offset > stream.len() {
            break; // a gap: what follows it is of no use yet
        }
        let skip = stream.len() - offset;
        if skip < data.len() {
            stream.extend_from_slice(&data[skip..]);
        }
    }
    Ok(stream)
}

/// The server name and ALPN protocols of the TLS ClientHello at the start of `stream`.
fn parse_client_hello(stream: &[u8]) -> Result<ClientHello, InitialError> {
    let mut r = Reader::new(stream);
    if r.u8().ok_or(InitialError::Incomplete)? != 1 {
        return Err(InitialError::NoServerName);
    }
    let len = r.u24().ok_or(InitialError::Incomplete)?;
    let body = r.bytes(len).ok_or(InitialError::Incomplete)?;
    let malformed = || InitialError::NoServerName;
    let mut r = Reader::new(body);
    r.bytes(2 + 32).ok_or_else(malformed)?; // legacy_version, random
    let session = usize::from(r.u8().ok_or_else(malformed)?);
    r.bytes(session).ok_or_else(malformed)?;
    let suites = usize::from(r.u16().ok_or_else(malformed)?);
    r.bytes(suites).ok_or_else(malformed)?;
    let compression = usize::from(r.u8().ok_or_else(malformed)?);
    r.bytes(compression).ok_or_else(malformed)?;
    let extensions = usize::from(r.u16().ok_or_else(malformed)?);
    let mut r = Reader::new(r.bytes(extensions).ok_or_else(malformed)?);
    let (mut server_name, mut alpn) = (None, Vec::new());
    while !r.is_empty() {
        let kind = r.u16().ok_or_else(malformed)?;
        let len = usize::from(r.u16().ok_or_else(malformed)?);
        let mut data = Reader::new(r.bytes(len).ok_or_else(malformed)?);
        match kind {
            0 => {
                let list = usize::from(data.u16().ok_or_else(malformed)?);
                let mut names = Reader::new(data.bytes(list).ok_or_else(malformed)?);
                while !names.is_empty() {
                    let name_type = names.u8().ok_or_else(malformed)?;
                    let len = usize::from(names.u16().ok_or_else(malformed)?);
                    let name = names.bytes(len).ok_or_else(malformed)?;
                    if name_type == 0 {
                        server_name = Some(
                            std::str::from_utf8(name)
                                .map_err(|_| malformed())?
                                .to_owned(),
                        );
                    }
                }
            }
            16 => {
                let list = usize::from(data.u16().ok_or_else(malformed)?);
                let mut protocols = Reader::new(data.bytes(list).ok_or_else(malformed)?);
                while !protocols.is_empty() {
                    let len = usize::from(protocols.u8().ok_or_else(malformed)?);
                    alpn.push(protocols.bytes(len).ok_or_else(malformed)?.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(ClientHello {
        server_name: server_name.ok_or(InitialError::NoServerName)?,
        alpn,
        connection_id: Vec::new(),
    })
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn position(&self) -> usize {
        self.at
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(
            self.bytes(n)?
                .iter()
                .fold(0u64, |v, b| (v << 8) | u64::from(*b)),
        )
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.uint(2).and_then(|v| u16::try_from(v).ok())
    }

    fn u24(&mut self) -> Option<usize> {
        self.uint(3).and_then(|v| usize::try_from(v).ok())
    }

    fn u32(&mut self) -> Option<u32> {
        self.uint(4).and_then(|v| u32::try_from(v).ok())
    }

    /// A QUIC variable-length integer (RFC 9000 §16).
    fn varint(&mut self) -> Option<u64> {
        let first = *self.bytes.get(self.at)?;
        let len = 1usize << (first >> 6);
        let raw = self.uint(len)?;
        Some(raw & ((1u64 << (8 * len - 2)) - 1))
    }

    fn varint_len(&mut self) -> Option<usize> {
        self.varint().and_then(|v| usize::try_from(v).ok())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;

    /// The first datagram a quinn client sends to reach `server_name`, with `alpn`.
    pub(crate) fn first_datagram(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let to = sink.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name = server_name.to_owned();
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        runtime.block_on(async move {
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            tls.alpn_protocols = alpn;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
            let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let config = quinn::ClientConfig::new(Arc::new(crypto));
            // The handshake cannot finish (nobody answers): only its first datagram matters.
            let _connecting = endpoint.connect_with(config, to, &name).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        let mut datagram = vec![0u8; 65536];
        let (n, _) = sink.recv_from(&mut datagram).unwrap();
        datagram.truncate(n);
        datagram
    }

    #[test]
    fn the_server_name_and_alpn_of_a_real_quinn_client_are_read() {
        let datagram = first_datagram("db.svc.dc2.11111111.consul", &[b"murmur/1", b"h3"]);
        let hello = client_hello(&datagram).unwrap();
        assert_eq!(hello.server_name, "db.svc.dc2.11111111.consul");
        assert_eq!(hello.alpn, vec![b"murmur/1".to_vec(), b"h3".to_vec()]);
    }

    #[test]
    fn a_changed_byte_or_a_cut_datagram_is_refused() {
        let datagram = first_datagram("web.svc.dc1.td", &[b"murmur/1"]);
        let mut flipped = datagram.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 0x40;
        assert_eq!(client_hello(&flipped), Err(InitialError::Undecryptable));
        assert_eq!(client_hello(&datagram[..60]), Err(InitialError::Malformed));
        let mut short_header = datagram.clone();
        short_header[0] = 0x40;
        assert_eq!(client_hello(&short_header), Err(InitialError::NotInitial));
        assert_eq!(client_hello(&[]), Err(InitialError::NotInitial));
    }

    #[test]
    fn crypto_frames_out_of_order_are_put_together_and_a_gap_stops_them() {
        // CRYPTO(offset 3, "def"), PADDING, CRYPTO(offset 0, "abc"), CRYPTO(offset 10, "x")
        let frames = [
            &[0x06, 3, 3][..],
            b"def",
            &[0x00, 0x00, 0x06, 0, 3],
            b"abc",
            &[0x06, 10, 1],
            b"x",
        ]
        .concat();
        assert_eq!(crypto_stream(&frames).unwrap(), b"abcdef");
        assert_eq!(crypto_stream(&[0x08, 0x00]), Err(InitialError::BadFrame));
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_are_refused_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..1500),
            initial_like in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if initial_like && bytes.len() > 5 {
                // Most random bytes fail at the first check: make them look like v1 Initials.
                bytes[0] = 0xc0 | (bytes[0] & 0x0f);
                bytes[1..5].copy_from_slice(&[0, 0, 0, 1]);
            }
            prop_assert!(client_hello(&bytes).is_err());
        }

        #[test]
        fn arbitrary_crypto_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_client_hello(&bytes);
            let _ = crypto_stream(&bytes);
        }
    }
}
