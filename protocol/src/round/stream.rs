//! One weighted term of an aggregate, added as its encoded bytes arrive.
//!
//! A member recomputes every aggregate it decrypts from contributions it fetches; at 10M values
//! each is 210 MB. Holding each whole before adding it cost a fresh buffer, a scratch file
//! written and read back, and a second hash of every byte. [`TermStream`] takes the encoding in
//! pieces of any size, hashes each piece once and adds it into the accumulator straight away,
//! so a term costs one pass and no buffer of its size.
//!
//! The accumulator is written before the last piece shows whether the whole matches its
//! digest: on any error the caller must drop it (both callers do, by returning the error).
//! Nothing is used before [`TermStream::finish`] has checked the digest.

use std::borrow::BorrowMut;

use super::policy::AggregateError;
use crate::audit::entry::Digest;
use crate::he::{Ciphertext, CiphertextShape};
use crate::wire::digest::EncodingHasher;
use crate::wire::{self, BoundCiphertext, DecodeLimits, MASK_WIRE_BYTES, WireError};

/// Adds `weight` times one encoded ciphertext into an accumulator of the same shape (borrowed,
/// or owned as in [`WholeStream`]).
#[derive(Debug)]
pub struct TermStream<A: BorrowMut<Ciphertext>> {
    acc: A,
    digest: Digest,
    weight: i64,
    limits: DecodeLimits,
    hasher: EncodingHasher,
    header: Vec<u8>,
    /// Mask coefficients and bodies added so far; the header sets how many there are.
    masks_done: usize,
    bodies_done: usize,
    layout: Option<(usize, usize)>,
    /// A coefficient split between two pieces.
    carry: Vec<u8>,
}

impl<A: BorrowMut<Ciphertext>> TermStream<A> {
    /// A term whose encoding must hash to `digest`.
    pub fn new(acc: A, digest: Digest, weight: i64, limits: DecodeLimits) -> Self {
        Self {
            acc,
            digest,
            weight,
            limits,
            hasher: EncodingHasher::new(),
            header: Vec::new(),
            masks_done: 0,
            bodies_done: 0,
            layout: None,
            carry: Vec::with_capacity(MASK_WIRE_BYTES),
        }
    }

    /// The next piece of the encoding, in order.
    pub fn push<E: std::fmt::Display>(&mut self, piece: &[u8]) -> Result<(), AggregateError<E>> {
        self.hasher.update(piece);
        let mut rest = piece;
        if self.layout.is_none() {
            let header_len = wire::ciphertext_header_len(self.acc.borrow().secrets());
            let wanted = header_len - self.header.len();
            let (head, tail) = rest.split_at(wanted.min(rest.len()));
            self.header.extend_from_slice(head);
            rest = tail;
            if self.header.len() < header_len {
                return Ok(());
            }
            let shape = wire::decode_ciphertext_header(&self.header, self.limits)
                .map_err(|source| self.decode(source))?;
            self.acc
                .borrow()
                .check_same_shape(shape)
                .map_err(|source| AggregateError::Shape {
                    digest: self.digest,
                    source,
                })?;
            let masks = shape.mask_words();
            self.layout = Some((masks, shape.values));
        }
        let Some((masks, bodies)) = self.layout else {
            unreachable!("the header was read above");
        };
        while !rest.is_empty() {
            if self.masks_done < masks {
                rest = self.take(rest, MASK_WIRE_BYTES, masks, true);
            } else if self.bodies_done < bodies {
                rest = self.take(rest, self.body_width(), bodies, false);
            } else {
                return Err(self.decode(WireError::WrongLength {
                    expected: self.expected_length(),
                    actual: self.expected_length() + rest.len() as u64,
                }));
            }
        }
        Ok(())
    }

    /// Checks that the whole encoding arrived and hashes to the digest.
    pub fn finish<E: std::fmt::Display>(self) -> Result<(), AggregateError<E>> {
        self.check().map(|_| ())
    }

    fn check<E: std::fmt::Display>(self) -> Result<A, AggregateError<E>> {
        let complete = self
            .layout
            .is_some_and(|(masks, bodies)| self.masks_done == masks && self.bodies_done == bodies);
        if !complete {
            let received = self.header.len() as u64
                + (self.masks_done * MASK_WIRE_BYTES
                    + self.bodies_done * self.body_width()
                    + self.carry.len()) as u64;
            return Err(self.decode(WireError::WrongLength {
                expected: self.expected_length(),
                actual: received,
            }));
        }
        if self.hasher.finalize() != self.digest {
            return Err(AggregateError::Digest {
                digest: self.digest,
            });
        }
        Ok(self.acc)
    }

    fn expected_length(&self) -> u64 {
        wire::ciphertext_encoded_len(self.acc.borrow().shape()) as u64
    }

    /// Bytes of each body: the accumulator's window, which the header matched.
    fn body_width(&self) -> usize {
        self.acc.borrow().body_window().bytes()
    }

    fn decode<E: std::fmt::Display>(&self, source: WireError) -> AggregateError<E> {
        AggregateError::Decode {
            digest: self.digest,
            source,
        }
    }

    /// Adds the whole coefficients at the start of `bytes` (completing a split one first) and
    /// keeps a trailing part; returns what is left for the next region.
    fn take<'b>(
        &mut self,
        mut bytes: &'b [u8],
        width: usize,
        total: usize,
        mask: bool,
    ) -> &'b [u8] {
        let done = if mask {
            self.masks_done
        } else {
            self.bodies_done
        };
        if !self.carry.is_empty() {
            let wanted = (width - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..wanted]);
            bytes = &bytes[wanted..];
            if self.carry.len() < width {
                return bytes;
            }
            let carry = std::mem::take(&mut self.carry);
            self.add(done, &carry, mask);
            self.carry = carry;
            self.carry.clear();
            return bytes;
        }
        let whole = (bytes.len() / width).min(total - done);
        self.add(done, &bytes[..whole * width], mask);
        let rest = &bytes[whole * width..];
        if done + whole < total && rest.len() < width {
            self.carry.extend_from_slice(rest);
            return &[];
        }
        rest
    }

    /// acc[start..] += weight * the coefficients encoded in `bytes`.
    fn add(&mut self, start: usize, bytes: &[u8], mask: bool) {
        use rayon::prelude::*;
        const BLOCK: usize = 4096;
        let window = self.acc.borrow().body_window();
        let (masks, bodies) = self.acc.borrow_mut().parts_mut();
        let weight = self.weight;
        if mask {
            let count = bytes.len() / MASK_WIRE_BYTES;
            masks[start..start + count]
                .par_chunks_mut(BLOCK)
                .zip(bytes.par_chunks(BLOCK * MASK_WIRE_BYTES))
                .for_each(|(out, bytes)| wire::add_masks(out, bytes, weight));
            self.masks_done += count;
        } else {
            let count = bytes.len() / window.bytes();
            bodies[start..start + count]
                .par_chunks_mut(BLOCK)
                .zip(bytes.par_chunks(BLOCK * window.bytes()))
                .for_each(|(out, bytes)| wire::add_bodies(out, bytes, weight, window));
            self.bodies_done += count;
        }
    }
}

/// One whole ciphertext read piece by piece (a model kept on disk, say) and bound to the digest
/// it hashed to: a term of weight 1 onto zero, whose encoding is canonical, so the digest
/// checked on the way in is the digest of the ciphertext that comes out.
#[derive(Debug)]
pub struct WholeStream(TermStream<Ciphertext>);

impl WholeStream {
    /// A ciphertext of this shape that must hash to `digest`.
    pub fn new(shape: CiphertextShape, digest: Digest, limits: DecodeLimits) -> Self {
        Self(TermStream::new(Ciphertext::zero(shape), digest, 1, limits))
    }

    pub fn push<E: std::fmt::Display>(&mut self, piece: &[u8]) -> Result<(), AggregateError<E>> {
        self.0.push(piece)
    }

    pub fn finish<E: std::fmt::Display>(self) -> Result<BoundCiphertext, AggregateError<E>> {
        let digest = self.0.digest;
        let ciphertext = self.0.check()?;
        Ok(BoundCiphertext::checked(
            ciphertext,
            crate::he::CiphertextDigest(digest),
        ))
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::he::POLYNOMIAL_SIZE;
    use crate::he::Window;
    use crate::wire::{encode_ciphertext, encoded_digest};

    type Error = AggregateError<std::convert::Infallible>;

    /// Bodies in bits 81..121, as at `bench he`'s plan.
    fn shape(values: usize) -> CiphertextShape {
        shape_in(values, Window::new(81, 5).unwrap())
    }

    fn shape_in(values: usize, body_window: Window) -> CiphertextShape {
        CiphertextShape {
            values,
            delta_bits: 85,
            body_window,
            secrets: 1,
        }
    }

    fn random_ciphertext(rng: &mut ChaCha20Rng, values: usize) -> Ciphertext {
        random_in(rng, shape(values))
    }

    fn random_in(rng: &mut ChaCha20Rng, shape: CiphertextShape) -> Ciphertext {
        let bins = shape.mask_count();
        // Masks carry their top 120 bits on the wire, bodies their window, as encryption
        // leaves them.
        let masks = (0..bins * POLYNOMIAL_SIZE)
            .map(|_| rng.r#gen::<u128>() & !0xff)
            .collect();
        let window = shape.body_window;
        let bodies = (0..shape.values)
            .map(|_| window.to_top(window.of_top(rng.r#gen())))
            .collect();
        Ciphertext::from_parts(shape, masks, bodies).unwrap()
    }

    fn streamed(
        acc: &mut Ciphertext,
        bytes: &[u8],
        digest: Digest,
        weight: i64,
        pieces: &[usize],
    ) -> Result<(), Error> {
        let mut stream = TermStream::new(acc, digest, weight, DecodeLimits::default());
        let mut rest = bytes;
        for &size in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            stream.push(piece)?;
            rest = tail;
        }
        stream.finish()
    }

    #[test]
    fn pieces_of_any_size_add_exactly_what_the_whole_encoding_adds() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let values = POLYNOMIAL_SIZE + 1234;
        for window in [Window::new(81, 5).unwrap(), Window::TOP_64] {
            let base = random_in(&mut rng, shape_in(values, window));
            let term = random_in(&mut rng, shape_in(values, window));
            let bytes = encode_ciphertext(&term);
            let digest = encoded_digest(&bytes).0;
            let mut whole = base.clone();
            wire::decode_ciphertext_view(&bytes, DecodeLimits::default())
                .unwrap()
                .add_weighted_into(&mut whole, -37)
                .unwrap();
            // The same sum, word by word: the encoding adds what the ciphertext holds.
            let mut expected = base.clone();
            expected.add_weighted(&term, -37).unwrap();
            assert_eq!(whole, expected);
            // Piece sizes that split the header, mask coefficients (15 bytes) and bodies.
            for pieces in [
                vec![bytes.len()],
                vec![1],
                vec![7, 16, 3],
                vec![4096 * 15 + 11],
                vec![22],
            ] {
                let mut acc = base.clone();
                streamed(&mut acc, &bytes, digest, -37, &pieces).unwrap();
                assert_eq!(acc, whole, "{window:?}, pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn a_whole_ciphertext_read_in_pieces_is_bound_to_the_digest_it_was_checked_against() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let model = random_ciphertext(&mut rng, 3000);
        let bytes = encode_ciphertext(&model);
        let digest = encoded_digest(&bytes).0;
        let mut stream = WholeStream::new(shape(3000), digest, DecodeLimits::default());
        for piece in bytes.chunks(1000) {
            stream.push::<std::convert::Infallible>(piece).unwrap();
        }
        let bound = stream.finish::<std::convert::Infallible>().unwrap();
        assert_eq!(bound, BoundCiphertext::new(model));
    }

    #[test]
    fn an_encoding_that_is_not_the_logged_one_is_refused_naming_its_digest() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let term = random_ciphertext(&mut rng, 100);
        let mut bytes = encode_ciphertext(&term);
        let digest = encoded_digest(&bytes).0;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut acc = Ciphertext::zero(shape(100));
        let refused = streamed(&mut acc, &bytes, digest, 1, &[1000]).unwrap_err();
        assert!(matches!(refused, AggregateError::Digest { digest: d } if d == digest));
    }

    #[test]
    fn a_short_or_long_encoding_is_refused_before_its_digest_is_trusted() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let term = random_ciphertext(&mut rng, 100);
        let bytes = encode_ciphertext(&term);
        let digest = encoded_digest(&bytes).0;
        let mut acc = Ciphertext::zero(shape(100));
        let short = streamed(&mut acc, &bytes[..bytes.len() - 3], digest, 1, &[64]).unwrap_err();
        assert!(
            matches!(
                short,
                AggregateError::Decode {
                    source: WireError::WrongLength { .. },
                    ..
                }
            ),
            "{short}"
        );
        let mut long = bytes.clone();
        long.push(0);
        let mut acc = Ciphertext::zero(shape(100));
        let long = streamed(&mut acc, &long, digest, 1, &[64]).unwrap_err();
        assert!(
            matches!(
                long,
                AggregateError::Decode {
                    source: WireError::WrongLength { .. },
                    ..
                }
            ),
            "{long}"
        );
    }

    #[test]
    fn a_term_of_another_shape_is_refused_from_its_header() {
        let mut rng = ChaCha20Rng::seed_from_u64(10);
        let term = random_ciphertext(&mut rng, 100);
        let bytes = encode_ciphertext(&term);
        let digest = encoded_digest(&bytes).0;
        let header = wire::ciphertext_header_len(1);
        // Another length, and the same length with bodies rounded elsewhere.
        for other in [shape(101), shape_in(100, Window::new(80, 6).unwrap())] {
            let mut acc = Ciphertext::zero(other);
            let mut stream = TermStream::new(&mut acc, digest, 1, DecodeLimits::default());
            let refused = stream
                .push::<std::convert::Infallible>(&bytes[..header])
                .unwrap_err();
            assert!(matches!(refused, AggregateError::Shape { .. }), "{refused}");
        }
    }
}
