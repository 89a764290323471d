/* This Source Code Form is subject to the terms of the Mozilla Public
 * License, v. 2.0. If a copy of the MPL was not distributed with this
 * file, You can obtain one at https://mozilla.org/MPL/2.0/. */
use core::fmt;

use bytes::{Buf, BufMut};

use crate::{Header, Member};

#[cfg(feature = "postcard-codec")]
pub(crate) mod postcard_impl;

/// A Codec is responsible to encoding and decoding the data that
/// is sent between cluster members.
///
/// So you can paint your bike shed however you like.
pub trait Codec<T> {
    /// The codec error type. Will be wrapped by [`crate::Error`].
    type Error: fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// Encodes a `foca::Header` into the given buffer.
    fn encode_header(&mut self, header: &Header<T>, buf: impl BufMut) -> Result<(), Self::Error>;

    /// Decode a [`Header`] from the given buffer.
    ///
    /// Implementations MUST read a single item from the buffer and
    /// advance the cursor accordingly.
    ///
    /// Implementations may assume the data in the buffer is contiguous.
    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<T>, Self::Error>;

    /// Encodes a [`Member`] into the given buffer.
    ///
    /// Implementations MUST NOT leave the buffer dirty when there's
    /// not enough space to encode the item.
    fn encode_member(&mut self, member: &Member<T>, buf: impl BufMut) -> Result<(), Self::Error>;

    /// Decode a [`Member`] from the given buffer.
    ///
    /// Implementations MUST read a single item from the buffer and
    /// advance the cursor accordingly.
    ///
    /// Implementations may assume the data in the buffer is contiguous.
    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<T>, Self::Error>;

    /// murmur's patch: decodes a member update unless the codec recognises it as one it
    /// already handed over and saw applied (`Ok(None)`: the cursor is past it, foca skips
    /// it). Nearly every update a member receives repeats one it has (each is sent by every
    /// member about 4·log10(N) times); recognising it before decoding saves the decode and
    /// the lookup in the member list.
    ///
    /// Implementations MUST NOT recognise an update before [`Codec::members_applied`] told
    /// them that the packet it came in was applied: a packet from a member we list down is
    /// dropped unapplied, and its updates must still count when they come again.
    fn decode_new_member(&mut self, buf: impl Buf) -> Result<Option<Member<T>>, Self::Error> {
        self.decode_member(buf).map(Some)
    }

    /// murmur's patch: every update decoded from the packet just handled was applied.
    fn members_applied(&mut self) {}

    /// murmur's patch: encodes a member of our list into a `Feed` (the answer to an
    /// `Announce`), or a queued member update each time it is sent (patch 18). Unlike
    /// [`Codec::encode_member`], which foca calls once for each change it applies, this
    /// repeats what is known, so a codec that watches `encode_member` for changes need not
    /// look at these. Both must encode a member to the same bytes.
    fn encode_feed_member(
        &mut self,
        member: &Member<T>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        self.encode_member(member, buf)
    }
}

impl<C, T> Codec<T> for &mut C
where
    C: Codec<T>,
{
    type Error = C::Error;

    fn encode_header(&mut self, header: &Header<T>, buf: impl BufMut) -> Result<(), Self::Error> {
        C::encode_header(self, header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<T>, Self::Error> {
        C::decode_header(self, buf)
    }

    fn encode_member(&mut self, member: &Member<T>, buf: impl BufMut) -> Result<(), Self::Error> {
        C::encode_member(self, member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<T>, Self::Error> {
        C::decode_member(self, buf)
    }

    fn decode_new_member(&mut self, buf: impl Buf) -> Result<Option<Member<T>>, Self::Error> {
        C::decode_new_member(self, buf)
    }

    fn members_applied(&mut self) {
        C::members_applied(self);
    }

    fn encode_feed_member(
        &mut self,
        member: &Member<T>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        C::encode_feed_member(self, member, buf)
    }
}
