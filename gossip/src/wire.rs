//! The bytes on the wire.
//!
//! Every datagram and every stream frame is one *envelope*:
//!
//! ```text
//! "mm" | version u8 | flags u8 | cluster-id length u8 | cluster id | [nonce 24 | sealed body] or [body]
//! ```
//!
//! The cleartext header lets a receiver tell *why* it drops something (another protocol version,
//! another cluster, a key it does not hold) and is bound to the body as AEAD associated data, so
//! it cannot be altered. Bodies are bincode 2 with a size limit, so a hostile length prefix can
//! never make a decoder allocate more than [`MAX_FRAME`] bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use murmur_catalog::{
    Change, ChangeKey, Coordinate, SyncDigest, SyncPush, SyncPushReply, SyncSummary,
};

use crate::keyring::{Keyring, KeyringOp, NONCE_LEN, TAG_LEN};
use crate::repeats::RepeatFilter;
use crate::{Identities, NodeIdentity};

/// The wire protocol version this build speaks. Packets of another version are dropped.
/// 2: user events carry service and tag filters; shared values may be external nodes or CA
/// roots; agent requests ride on streams.
/// 3: datagrams start with their kind (SWIM or coordinate ping); shared values may be
/// coordinates or datacenter directory entries.
/// 4: coordinates hash into anti-entropy digest buckets of their own
/// (`murmur_catalog::bucket_of`). Two replicas that bucket keys differently must not compare
/// buckets: a key the peer holds in another bucket looks absent there, and an old key a fresh
/// peer seems to lack is dropped as a collected delete. So 3 and 4 do not talk.
/// 5: a change may be a record patch (`Change::Patch`), which 4 cannot decode; large changes
/// are offered by key before they are flooded.
/// 6: offers travel as datagrams (`DatagramKind::Offer`), no longer as stream messages; an
/// ack carries its sender's coordinate after the header (`ProbeTap`), and coordinate pings
/// (datagram kind 1) are gone.
pub const PROTOCOL_VERSION: u8 = 6;
/// Largest UDP datagram murmur sends: one value cluster-wide so every member can read every packet.
pub const MAX_DATAGRAM: usize = 1400;
/// Longest cluster id (bytes).
pub const MAX_CLUSTER_ID_LEN: usize = 32;
/// Largest stream frame (push-pull of a large member list, keyring replies).
pub const MAX_FRAME: usize = 4 << 20;
/// Room the envelope takes around a datagram body (the kind byte included); foca packs its
/// messages into what is left.
pub const ENVELOPE_OVERHEAD: usize =
    FIXED_HEADER_LEN + MAX_CLUSTER_ID_LEN + NONCE_LEN + TAG_LEN + 1;

const MAGIC: [u8; 2] = *b"mm";
/// Magic, protocol version, flags and the cluster id's length, before the cluster id.
const FIXED_HEADER_LEN: usize = MAGIC.len() + 3;
const FLAG_SEALED: u8 = 1;

/// Why a received packet or frame was dropped unread. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a murmur envelope at all, or truncated.
    Malformed,
    /// Another protocol version.
    WrongVersion,
    /// Another cluster id.
    WrongCluster,
    /// Sealed, but none of our keys opens it.
    Undecryptable,
    /// Plaintext, but this member requires encryption.
    UnexpectedPlaintext,
    /// Sealed, but this member has no keys (it runs without `--encrypt`).
    UnexpectedSealed,
    /// Opened fine, but the body does not decode.
    Undecodable,
}

impl DropReason {
    /// What to tell the operator of the peer whose message was dropped for this reason.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Malformed => "the message is not a murmur gossip message",
            Self::WrongVersion => {
                "the peer speaks another murmur protocol version: run one murmur version across the cluster"
            }
            Self::WrongCluster => "the peer belongs to another cluster: check --cluster-id",
            Self::Undecryptable => {
                "gossip key mismatch: no installed key opens the message; start the agent with the cluster's --encrypt key"
            }
            Self::UnexpectedPlaintext => {
                "this cluster encrypts gossip: start the agent with the cluster's --encrypt key"
            }
            Self::UnexpectedSealed => {
                "this cluster does not encrypt gossip: start the agent without --encrypt"
            }
            Self::Undecodable => {
                "the message did not decode: the peer may run an incompatible murmur build"
            }
        }
    }
}

/// An opened envelope.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) body: Vec<u8>,
    pub(crate) sealed: bool,
}

/// Seals `body` (or leaves it plaintext for an empty keyring) inside an envelope.
pub(crate) fn seal(
    cluster_id: &str,
    keyring: &Keyring,
    rng: &mut impl Rng,
    body: &[u8],
) -> Vec<u8> {
    let sealed = keyring.is_encrypted();
    let mut out = header(cluster_id, sealed, body.len());
    if sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let aad_len = out.len();
        let ciphertext = keyring
            .seal(&nonce, &out[..aad_len], body)
            .expect("keyring holds a key");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
    } else {
        out.extend_from_slice(body);
    }
    out
}

/// What a datagram's body is, told by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramKind {
    /// foca's SWIM messages.
    Swim = 0,
    /// A report that a member's host says nobody listens, or a probe confirming it.
    Evidence = 2,
    /// An offer of large changes by key, or the answer asking for some ([`OfferMessage`]).
    Offer = 3,
}

impl DatagramKind {
    /// The kind of an opened datagram body, and the rest of it.
    pub(crate) fn split(body: &[u8]) -> Result<(Self, &[u8]), DropReason> {
        match body.split_first() {
            Some((0, rest)) => Ok((Self::Swim, rest)),
            Some((2, rest)) => Ok((Self::Evidence, rest)),
            Some((3, rest)) => Ok((Self::Offer, rest)),
            _ => Err(DropReason::Undecodable),
        }
    }
}

/// Seals a datagram of `kind` carrying `body`.
pub(crate) fn seal_datagram(
    cluster_id: &str,
    keyring: &Keyring,
    rng: &mut impl Rng,
    kind: DatagramKind,
    body: &[u8],
) -> Vec<u8> {
    let mut framed = Vec::with_capacity(1 + body.len());
    framed.push(kind as u8);
    framed.extend_from_slice(body);
    seal(cluster_id, keyring, rng, &framed)
}

/// A plaintext envelope, used only for rejections a peer must be able to read whatever its keys.
pub(crate) fn plaintext(cluster_id: &str, body: &[u8]) -> Vec<u8> {
    let mut out = header(cluster_id, false, body.len());
    out.extend_from_slice(body);
    out
}

/// The envelope's header, in a buffer sized for exactly the datagram that follows: a sent
/// datagram waits in queues (the simulator holds ~300,000 at once while 1,000 nodes form a
/// cluster), so room for the largest one would cost up to 1.4 KiB for every small one.
fn header(cluster_id: &str, sealed: bool, body_len: usize) -> Vec<u8> {
    debug_assert!(cluster_id.len() <= MAX_CLUSTER_ID_LEN);
    let seal_len = if sealed { NONCE_LEN + TAG_LEN } else { 0 };
    let mut out = Vec::with_capacity(FIXED_HEADER_LEN + cluster_id.len() + seal_len + body_len);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(if sealed { FLAG_SEALED } else { 0 });
    out.push(cluster_id.len() as u8);
    out.extend_from_slice(cluster_id.as_bytes());
    out
}

/// Opens an envelope. Whether a plaintext one is acceptable is the caller's decision
/// (`opened.sealed`), because rejections travel in plaintext on purpose.
pub(crate) fn open(
    cluster_id: &str,
    keyring: &Keyring,
    bytes: &[u8],
) -> Result<Opened, DropReason> {
    if bytes.len() < FIXED_HEADER_LEN || bytes[..2] != MAGIC {
        return Err(DropReason::Malformed);
    }
    if bytes[2] != PROTOCOL_VERSION {
        return Err(DropReason::WrongVersion);
    }
    let flags = bytes[3];
    let id_len = usize::from(bytes[4]);
    let header_len = FIXED_HEADER_LEN + id_len;
    let id = bytes
        .get(FIXED_HEADER_LEN..header_len)
        .ok_or(DropReason::Malformed)?;
    if id != cluster_id.as_bytes() {
        return Err(DropReason::WrongCluster);
    }
    let rest = &bytes[header_len..];
    if flags & FLAG_SEALED == 0 {
        return Ok(Opened {
            body: rest.to_vec(),
            sealed: false,
        });
    }
    if !keyring.is_encrypted() {
        return Err(DropReason::UnexpectedSealed);
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(DropReason::Malformed);
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let body = keyring
        .open(nonce, &bytes[..header_len], sealed)
        .ok_or(DropReason::Undecryptable)?;
    Ok(Opened { body, sealed: true })
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a body with the bounded bincode configuration: every murmur message, gossip's own
/// and those other crates carry over gossip (federation's forwarded requests).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode's `encode_to_vec` starts from an empty vector and doubles it as it goes: four
    // allocations for a member update of ~45 bytes, the value encoded most often.
    let mut out = Vec::with_capacity(FIRST_ENCODE_CAPACITY);
    encode_onto(value, &mut out);
    out
}

/// Appends the encoding of `value` (as [`encode`]) to `out`, for callers that reuse a vector.
fn encode_onto<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing our own in-memory types into a Vec cannot fail.
    bincode::serde::encode_into_std_write(value, out, bincode_config()).expect("encodable");
}

/// Room [`encode`] starts with: a member update with a short name and few tags fits.
const FIRST_ENCODE_CAPACITY: usize = 96;

/// Decodes a body, rejecting trailing bytes so one input has one meaning, and any length over
/// [`MAX_FRAME`] before allocating it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DropReason> {
    match bincode::serde::decode_from_slice(bytes, bincode_config()) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        _ => Err(DropReason::Undecodable),
    }
}

/// The datagrams of the offer exchange ([`DatagramKind::Offer`]). A member floods the keys of
/// changes too large for a datagram before the changes themselves, and sends each change only
/// to the members that ask for it: each member receives (and decodes) about one copy, not one
/// from every member that floods it. Datagrams, not streams: a flood offers each change to
/// ln N + 2 members from every member that learns it, and as streams those offers filled a
/// seed's stream slots when many agents joined at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OfferMessage {
    /// "I hold these": the keys of changes the sender floods; `from` is where to ask.
    Offer {
        /// The offered changes.
        keys: Vec<ChangeKey>,
        /// The offering member's gossip address.
        from: SocketAddr,
    },
    /// "Send me these": the offered changes the sender lacks; `from` is where to stream them.
    Wanted {
        /// The changes asked for.
        keys: Vec<ChangeKey>,
        /// The asking member's gossip address.
        from: SocketAddr,
    },
}

/// Messages exchanged over the TCP stream (one request frame, one reply frame).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StreamMessage {
    /// Full-state exchange: the initiator's view; also how a new member joins through a seed.
    PushPull(PushPullState),
    /// The responder's view in return.
    PushPullReply(PushPullState),
    /// The responder refuses; the text says what to do. Travels in plaintext.
    Reject(String),
    /// One keyring rotation step for the responder to apply.
    Keyring(KeyringOp),
    /// The responder's keys after the step, or why the step failed there.
    KeyringReply(Result<Vec<[u8; 32]>, String>),
    /// Anti-entropy step 1: the initiator's digest.
    Sync(SyncDigest),
    /// Anti-entropy step 2: the responder's records and key summaries.
    SyncSummary(SyncSummary),
    /// Anti-entropy step 3: what the responder lacks, and what the initiator wants.
    SyncPush(SyncPush),
    /// Anti-entropy step 4: the wanted registers.
    SyncPushReply(SyncPushReply),
    /// Changes too large for a datagram, flooded over streams (after an offer, the wanted ones).
    Changes(Vec<Change>),
    /// The responder took the flooded changes.
    ChangesAck,
    /// A request for the agent around the core (e.g. "sign this mesh leaf"), which the core
    /// carries sealed but does not interpret; `kind` names the agent's handler.
    AgentRequest {
        /// Which handler.
        kind: String,
        /// Its input.
        body: Vec<u8>,
    },
    /// The agent's answer, or why it could not answer.
    AgentReply(Result<Vec<u8>, String>),
    /// Periodic push-pull, step 1: the initiator's member digests (no members), who left and
    /// recent events (see `digest`).
    PushPullDigest(DigestedState),
    /// Step 2: the responder's digests and its members of every bucket that differed.
    PushPullDelta(DigestedState),
    /// Step 3: the initiator's members of the buckets that still differ after it merged.
    MembersPush(PushPullState),
    /// The responder merged them.
    MembersPushAck,
    /// "Hold this stream open for me": a tether (`node::tether`). The responder holds it
    /// without answering; when it ends, the responder checks the member named.
    Tether(NodeIdentity),
}

/// One side of a push-pull: who is talking, what it knows of the members, and who left.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PushPullState {
    pub(crate) from: NodeIdentity,
    pub(crate) members: Vec<Member<NodeIdentity>>,
    pub(crate) left: Vec<(String, u64)>,
    /// Recent user events, so a member that missed one catches up (as serf's push-pull does).
    pub(crate) events: Vec<crate::UserEvent>,
}

/// One side of a digest push-pull: the state, whose member list holds only the members of
/// buckets that differed (none in the request), and the sender's digests of its list without
/// the two members talking (each lists itself differently from how the other lists it).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DigestedState {
    pub(crate) state: PushPullState,
    pub(crate) digests: Vec<u64>,
}

/// The codec foca uses for headers and member updates.
///
/// Every member update foca decides to disseminate is encoded here, which makes the codec the
/// one place that sees each state change (foca has no "suspect" notification); the changes are
/// recorded in `changes` for the core to turn into member events. Members a `Feed` repeats
/// (known ones, sent to an announcer) come through `encode_feed_member` and are not recorded.
pub(crate) struct WireCodec {
    pub(crate) changes: Arc<Mutex<Vec<Member<NodeIdentity>>>>,
    /// The probes foca sends and answers, for network coordinates ([`ProbeTap`]).
    pub(crate) probes: Arc<Mutex<ProbeTap>>,
    /// Decoded identities that foca keeps are exchanged for their shared copies.
    pub(crate) identities: Identities,
    /// Member updates applied before, recognised without decoding them.
    pub(crate) repeats: RepeatFilter,
    /// This member's name: updates about it are always decoded.
    pub(crate) own_name: compact_str::CompactString,
    /// Room each encoding is made in before it is copied into the packet.
    pub(crate) scratch: Vec<u8>,
}

/// A member update's fields as they lie in a packet, borrowed: parsing it finds where the
/// update ends without allocating, so a repeat is recognised before it is decoded. The fields
/// mirror `Member<NodeIdentity>` in order and type (bincode is not self-describing);
/// `an_update_is_measured_as_it_decodes` checks that they agree.
#[derive(Deserialize)]
struct UpdateBytes<'a> {
    #[serde(borrow)]
    identity: IdentityBytes<'a>,
    _incarnation: foca::Incarnation,
    _state: foca::State,
}

/// [`crate::IdentityFields`], borrowed.
#[derive(Deserialize)]
struct IdentityBytes<'a> {
    name: &'a str,
    _node_id: u64,
    _generation: u64,
    _addr: SocketAddr,
    _datacenter: &'a str,
    #[serde(borrow)]
    _tags: Vec<(&'a str, &'a str)>,
}

/// The member update at the start of `bytes`, and how many bytes it takes.
fn peek_update(bytes: &[u8]) -> Result<(UpdateBytes<'_>, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, bincode_config())
        .map_err(|_| CodecError("undecodable"))
}

/// What the codec sees of SWIM's direct probes, for network coordinates: serf's way, the
/// probe's round trip is the sample and the ack carries the acking member's coordinate, so
/// no datagram is sent for coordinates alone. An ack header is followed by the sender's
/// coordinate on the wire.
#[derive(Debug, Default)]
pub(crate) struct ProbeTap {
    /// This member's coordinate, sent after the header of every ack.
    pub(crate) own: Coordinate,
    /// Pings sent since the node last looked: the addressee's name and the probe's number.
    pub(crate) pings: Vec<(compact_str::CompactString, foca::ProbeNumber)>,
    /// Acks received since: the sender's name, the probe's number, its coordinate.
    pub(crate) acks: Vec<(compact_str::CompactString, foca::ProbeNumber, Coordinate)>,
}

/// Codec failures inside foca; foca reports them as its own errors.
#[derive(Debug, thiserror::Error)]
#[error("gossip codec: {0}")]
pub(crate) struct CodecError(&'static str);

impl WireCodec {
    /// Encodes `value` into `buf` whole or not at all, through `scratch` (the codec's own,
    /// reused: foca encodes each queued member update again every time it sends it, and a
    /// fresh vector each time was a malloc and a free per update sent).
    fn put<T: Serialize>(
        scratch: &mut Vec<u8>,
        value: &T,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        scratch.clear();
        encode_onto(value, scratch);
        if buf.remaining_mut() < scratch.len() {
            return Err(CodecError("no room in packet"));
        }
        buf.put_slice(scratch);
        Ok(())
    }

    fn take<T: DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
        let chunk = buf.chunk();
        let (value, used) = bincode::serde::decode_from_slice(chunk, bincode_config())
            .map_err(|_| CodecError("undecodable"))?;
        buf.advance(used);
        Ok(value)
    }
}

impl foca::Codec<NodeIdentity> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(&mut self.scratch, header, &mut buf)?;
        let mut probes = self.probes.lock().expect("probe tap poisoned");
        match header.message {
            Message::Ping(probe) => probes.pings.push((header.dst.name.clone(), probe)),
            Message::Ack(_) => Self::put(&mut self.scratch, &probes.own, buf)?,
            _ => {}
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        self.repeats.start_packet();
        let header: Header<NodeIdentity> = Self::take(&mut buf)?;
        if let Message::Ack(probe) = header.message {
            let coordinate: Coordinate = Self::take(buf)?;
            let mut probes = self.probes.lock().expect("probe tap poisoned");
            probes
                .acks
                .push((header.src.name.clone(), probe, coordinate));
        }
        // Sender and addressee are the identities foca compares and keeps; the ones inside
        // indirect-probe messages are used once and left as decoded.
        Ok(Header {
            src: self.identities.intern(header.src),
            dst: self.identities.intern(header.dst),
            ..header
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        self.changes
            .lock()
            .expect("codec tap poisoned")
            .push(member.clone());
        Self::put(&mut self.scratch, member, buf)
    }

    fn encode_feed_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        // Members of our own list, already seen as changes: not tapped.
        Self::put(&mut self.scratch, member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        Self::take(buf).map(|member| self.identities.intern_member(member))
    }

    fn decode_new_member(
        &mut self,
        mut buf: impl Buf,
    ) -> Result<Option<Member<NodeIdentity>>, CodecError> {
        let (update, len) = peek_update(buf.chunk())?;
        // News about ourselves is never passed over: foca answers even a stale suspicion of
        // us with a gossip round that spreads our refutation.
        let about_us = update.identity.name == self.own_name;
        if !about_us && self.repeats.is_repeat(&buf.chunk()[..len]) {
            buf.advance(len);
            return Ok(None);
        }
        self.decode_member(buf).map(Some)
    }

    fn members_applied(&mut self) {
        self.repeats.commit();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_digest_bucket_layout_is_pinned_to_the_protocol_version() {
        // Replicas that bucket keys differently must not run anti-entropy together (see
        // `PROTOCOL_VERSION`). If this fails, the layout changed: bump the version, then
        // update the buckets below.
        let layout: Vec<usize> = ["kv/app/a", "kv/app/b", "coordinate/n1", "intention/web/db"]
            .into_iter()
            .map(murmur_catalog::bucket_of)
            .collect();
        assert_eq!((PROTOCOL_VERSION, layout), (6, vec![209, 214, 30, 118]));
    }

    #[test]
    fn a_datagram_says_its_kind_first() {
        assert_eq!(
            DatagramKind::split(&[0, 7]),
            Ok((DatagramKind::Swim, &[7u8][..]))
        );
        assert_eq!(
            DatagramKind::split(&[3]),
            Ok((DatagramKind::Offer, &[][..]))
        );
        // 1 was the coordinate ping, gone in version 6.
        for unknown in [&[][..], &[1][..], &[4, 0][..], &[255][..]] {
            assert_eq!(DatagramKind::split(unknown), Err(DropReason::Undecodable));
        }
    }
    use crate::keyring::SecretKey;

    fn ring(b: u8) -> Keyring {
        Keyring::new(Some(SecretKey::from_bytes([b; 32])))
    }

    #[test]
    fn a_datagram_is_allocated_at_its_exact_size() {
        let mut rng = StdRng::seed_from_u64(1);
        for keyring in [Keyring::new(None), ring(1)] {
            for body in [&b""[..], b"x", &[7u8; 900]] {
                let out = seal("murmur", &keyring, &mut rng, body);
                assert_eq!(out.capacity(), out.len(), "{} bytes", body.len());
            }
        }
        let out = plaintext("murmur", b"refused");
        assert_eq!(out.capacity(), out.len());
    }

    #[test]
    fn each_drop_reason_is_told_apart() {
        let mut rng = StdRng::seed_from_u64(1);
        let sealed = seal("c1", &ring(1), &mut rng, b"body");
        assert_eq!(open("c1", &ring(1), &sealed).unwrap().body, b"body");
        assert_eq!(
            open("c2", &ring(1), &sealed).unwrap_err(),
            DropReason::WrongCluster
        );
        assert_eq!(
            open("c1", &ring(2), &sealed).unwrap_err(),
            DropReason::Undecryptable
        );
        assert_eq!(
            open("c1", &Keyring::new(None), &sealed).unwrap_err(),
            DropReason::UnexpectedSealed
        );
        let mut old = sealed.clone();
        old[2] = 0;
        assert_eq!(
            open("c1", &ring(1), &old).unwrap_err(),
            DropReason::WrongVersion
        );
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            open("c1", &ring(1), &tampered).unwrap_err(),
            DropReason::Undecryptable
        );
        let plain = plaintext("c1", b"hi");
        assert!(!open("c1", &ring(1), &plain).unwrap().sealed);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A varint claiming a 2^60-byte vector must fail quickly, not allocate.
        let hostile = [0xff, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert!(decode::<Vec<u8>>(&hostile).is_err());
    }

    /// A codec for the member named `own_name`.
    fn codec(own_name: &str) -> WireCodec {
        WireCodec {
            changes: Arc::default(),
            probes: Arc::default(),
            identities: Identities::default(),
            repeats: RepeatFilter::new(1),
            own_name: own_name.into(),
            scratch: Vec::new(),
        }
    }

    #[test]
    fn an_ack_carries_its_senders_coordinate_and_a_ping_is_noted() {
        use foca::Codec;
        let (a, b) = (
            crate::identity::tests::identity("a", 1),
            crate::identity::tests::identity("b", 2),
        );
        let mut sender = codec("b");
        let coordinate = Coordinate {
            vec: [0.5; murmur_catalog::DIMENSIONS],
            ..Coordinate::default()
        };
        sender.probes.lock().unwrap().own = coordinate.clone();
        let header = |src: &crate::NodeIdentity, dst: &crate::NodeIdentity, message| Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: dst.clone(),
            message,
        };
        let mut buf = Vec::new();
        sender
            .encode_header(&header(&b, &a, Message::Ack(7)), &mut buf)
            .unwrap();
        buf.extend_from_slice(b"rest");
        let mut receiver = codec("a");
        let mut read = &buf[..];
        let decoded = receiver.decode_header(&mut read).unwrap();
        assert_eq!(decoded.message, Message::Ack(7));
        assert_eq!(read, b"rest", "the coordinate is read with the header");
        let acks = std::mem::take(&mut receiver.probes.lock().unwrap().acks);
        assert_eq!(acks, [("b".into(), 7, coordinate)]);

        receiver
            .encode_header(&header(&a, &b, Message::Ping(8)), &mut Vec::new())
            .unwrap();
        let pings = std::mem::take(&mut receiver.probes.lock().unwrap().pings);
        assert_eq!(pings, [("b".into(), 8)]);
    }

    #[test]
    fn only_changes_are_tapped_not_the_members_a_feed_repeats() {
        let mut codec = codec("me");
        let changes = Arc::clone(&codec.changes);
        let member = Member::alive(crate::identity::tests::identity("a", 1));
        let mut buf = Vec::new();
        foca::Codec::encode_feed_member(&mut codec, &member, &mut buf).unwrap();
        assert!(changes.lock().unwrap().is_empty());
        let fed = buf.len();
        foca::Codec::encode_member(&mut codec, &member, &mut buf).unwrap();
        assert_eq!(*changes.lock().unwrap(), vec![member]);
        assert_eq!(buf.len(), 2 * fed, "both encode the same bytes");
    }

    #[test]
    fn news_about_ourselves_is_never_passed_over() {
        let me = crate::identity::tests::identity("me", 1);
        let mut codec = codec(&me.name);
        let suspicion = encode(&Member::new(me, 0, foca::State::Suspect));
        for _ in 0..3 {
            let decoded = foca::Codec::decode_new_member(&mut codec, &mut &suspicion[..]);
            assert!(
                decoded.unwrap().is_some(),
                "foca gossips our refutation each time"
            );
            foca::Codec::members_applied(&mut codec);
        }
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = open("c1", &ring(1), &bytes);
            let _ = open("c1", &Keyring::new(None), &bytes);
        }

        #[test]
        fn stream_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<StreamMessage>(&bytes);
        }

        #[test]
        fn an_update_is_measured_as_it_decodes(
            name in "[a-z0-9.-]{1,64}",
            node_id: u64,
            generation: u64,
            v6: bool,
            port: u16,
            datacenter in "[a-z0-9-]{0,32}",
            tags in proptest::collection::vec(("[a-z]{1,8}", "[ -~]{0,20}"), 0..4),
            incarnation: u16,
            state in 0..3u8,
            trailing in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let addr = if v6 {
                std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
            } else {
                std::net::SocketAddr::from(([10, 1, 2, 3], port))
            };
            let identity = crate::IdentityFields {
                name: name.into(),
                node_id,
                generation,
                addr,
                datacenter: datacenter.into(),
                tags,
            };
            let state = [foca::State::Alive, foca::State::Suspect, foca::State::Down][state as usize];
            let member = Member::new(NodeIdentity::from(identity), incarnation, state);
            let mut bytes = encode(&member);
            let len = bytes.len();
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(peek_update(&bytes).unwrap().1, len);
            let mut codec = codec("another-name-than-any-generated");
            let mut buf = &bytes[..];
            let decoded = foca::Codec::decode_new_member(&mut codec, &mut buf).unwrap();
            prop_assert_eq!(decoded, Some(member.clone()));
            prop_assert_eq!(buf.len(), trailing.len());
            // Once its packet was applied, the same bytes are recognised and passed over.
            foca::Codec::members_applied(&mut codec);
            let mut buf = &bytes[..];
            prop_assert_eq!(foca::Codec::decode_new_member(&mut codec, &mut buf).unwrap(), None);
            prop_assert_eq!(buf.len(), trailing.len());
            // foca encodes a queued update through `encode_member` when it queues it and
            // through `encode_feed_member` each time it sends it (its patch 18): the same bytes.
            let (mut tapped, mut repeated) = (Vec::new(), Vec::new());
            foca::Codec::encode_member(&mut codec, &member, &mut tapped).unwrap();
            foca::Codec::encode_feed_member(&mut codec, &member, &mut repeated).unwrap();
            prop_assert_eq!(&tapped[..], &bytes[..len]);
            prop_assert_eq!(&repeated[..], &bytes[..len]);
        }

        #[test]
        fn seal_open_round_trip(body in proptest::collection::vec(any::<u8>(), 0..1300), seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let sealed = seal("cluster", &ring(4), &mut rng, &body);
            prop_assert!(sealed.len() <= body.len() + ENVELOPE_OVERHEAD);
            prop_assert_eq!(open("cluster", &ring(4), &sealed).unwrap().body, body);
        }
    }
}
