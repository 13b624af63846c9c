//! Combination: the quorum's partial decryptions subtracted from a ciphertext's bodies, each
//! checked before it touches the sum, and the phases read back into messages.

use rayon::prelude::*;

#[cfg(test)]
use super::Ciphertext;
use super::decrypt::{CiphertextDigest, PartialDecryption};
use super::{Budget, HeError, Quorum, Window};
use crate::wire::{BoundCiphertext, PartialHeader, PartialView};

/// What combining needs of a ciphertext: its digest, its scale and its bodies. The masks only
/// matter to partial decryption, so a member waiting for the quorum's partials keeps this, a
/// third of the ciphertext, and combines into it in place.
pub struct CombineTarget {
    digest: CiphertextDigest,
    delta_bits: u32,
    body_window: Window,
    bodies: Vec<u64>,
}

impl std::fmt::Debug for CombineTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CombineTarget(ciphertext {}, {} values)",
            self.digest,
            self.bodies.len()
        )
    }
}

impl std::fmt::Debug for Combination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Combination({:?}, quorum {:?}, {} subtracted)",
            self.target,
            self.quorum.members(),
            self.seen.count_ones()
        )
    }
}

impl CombineTarget {
    /// Takes the bodies out of the ciphertext and drops its masks.
    pub fn from_bound(ciphertext: BoundCiphertext) -> Self {
        let digest = ciphertext.digest();
        let ciphertext = ciphertext.into_ciphertext();
        Self {
            digest,
            delta_bits: ciphertext.delta_bits,
            body_window: ciphertext.body_window,
            bodies: ciphertext.bodies,
        }
    }

    /// Copies the bodies, leaving the ciphertext as it is.
    pub fn of(ciphertext: &BoundCiphertext) -> Self {
        Self {
            digest: ciphertext.digest(),
            delta_bits: ciphertext.ciphertext().delta_bits,
            body_window: ciphertext.ciphertext().body_window,
            bodies: ciphertext.ciphertext().bodies.clone(),
        }
    }

    pub fn digest(&self) -> CiphertextDigest {
        self.digest
    }
}

/// The quorum's partial decryptions subtracted one at a time from the target's bodies, each
/// checked before it touches the sum; nothing is decoded until every quorum member's is in.
/// A member subtracts them from their encodings ([`Self::subtract_encoded`]), so combining adds
/// nothing of model size to the bodies and the partials it holds; decoded partials
/// ([`Self::subtract`]) serve `combine` and the key ceremony's check.
pub struct Combination {
    target: CombineTarget,
    quorum: Quorum,
    budget: Budget,
    /// The lowest top of the body window and the partials' windows subtracted: the phase is
    /// known modulo 2^top_bit.
    top_bit: u32,
    seen: u16,
}

impl Combination {
    pub fn new(target: CombineTarget, quorum: Quorum, budget: &Budget) -> Result<Self, HeError> {
        if target.delta_bits != budget.delta_bits() {
            return Err(HeError::Mismatch(format!(
                "the ciphertext encodes messages at 2^{}, the budget at 2^{}",
                target.delta_bits,
                budget.delta_bits()
            )));
        }
        // Bodies rounded no higher than the budget rounds them, and kept up to the phase's
        // top: the error and the phase stay within what Delta and the windows were chosen for.
        budget.check_body(target.body_window)?;
        Ok(Self {
            top_bit: target.body_window.top_bit(),
            target,
            quorum,
            budget: *budget,
            seen: 0,
        })
    }

    /// Subtracts one quorum member's partial decryption, refusing (and leaving the sum as it
    /// was) one bound to another ciphertext or quorum, from outside the quorum, a second from
    /// the same member, of another window or of another length.
    pub fn subtract(&mut self, partial: &PartialDecryption) -> Result<(), HeError> {
        self.admit(
            partial.party,
            &partial.quorum,
            partial.ciphertext,
            partial.window,
            partial.values.len(),
        )?;
        let window = partial.window;
        subtract_share(&mut self.target.bodies, (&partial.values, 1), |v| {
            window.to_top(v[0])
        });
        Ok(())
    }

    /// [`Self::subtract`] straight from a partial's encoding: the same checks, and no decoded
    /// copy of its values.
    pub fn subtract_encoded(&mut self, partial: &PartialView<'_>) -> Result<(), HeError> {
        let header = &partial.header;
        self.admit(
            header.party,
            &header.quorum,
            header.ciphertext,
            header.window,
            partial.value_count(),
        )?;
        let window = header.window;
        subtract_share(
            &mut self.target.bodies,
            (partial.values, window.bytes()),
            |v| window.to_top(window.read(v)),
        );
        Ok(())
    }

    /// The checks of [`Expected::admit`]; marks the party as subtracted.
    fn admit(
        &mut self,
        party: u8,
        quorum: &[u8],
        ciphertext: CiphertextDigest,
        window: Window,
        values: usize,
    ) -> Result<(), HeError> {
        let expected = Expected {
            ciphertext: self.target.digest,
            values: self.target.bodies.len() as u64,
            quorum: &self.quorum,
            budget: &self.budget,
        };
        self.seen |= expected.admit(self.seen, party, quorum, ciphertext, window, values as u64)?;
        self.top_bit = self.top_bit.min(window.top_bit());
        Ok(())
    }

    /// The decoded messages, once every quorum member's partial was subtracted.
    ///
    /// Under a budget of relative decoding ([`super::Decoding::Relative`]) each message is
    /// read against its `reference` (the model the round builds on; `None` stands for
    /// zeros): the phase keeps only the bits of the difference, so the result is the message
    /// only for the reference the budget's bound was counted from. Under absolute decoding
    /// the reference is not needed and not read.
    pub fn finish(self, reference: Option<&[i64]>) -> Result<Vec<i64>, HeError> {
        let mut reading = self.into_reading()?;
        match reference {
            Some(reference) => reading.next(reference)?,
            None => {
                let rest = reading.phases.len();
                reading.decode(rest, None);
            }
        }
        reading.finish()
    }

    /// The combined phases, once every quorum member's partial was subtracted, to be read
    /// against their reference piece by piece: a member need not hold its model whole beside
    /// the bodies (800 MB at 100M values).
    pub fn into_reading(self) -> Result<Reading, HeError> {
        complete(&self.quorum, self.seen)?;
        Ok(Reading {
            relative: matches!(
                self.budget.request().decoding,
                super::Decoding::Relative { .. }
            ),
            phases: self.target.bodies,
            top_bit: self.top_bit,
            delta_bits: self.target.delta_bits,
            read: 0,
        })
    }
}

/// A combination's phases being read into messages, in order, each against its reference
/// value (see [`Combination::finish`]).
pub struct Reading {
    phases: Vec<u64>,
    top_bit: u32,
    delta_bits: u32,
    relative: bool,
    /// Values read so far, from the first.
    read: usize,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Reading({} of {} values read)",
            self.read,
            self.phases.len()
        )
    }
}

impl Reading {
    /// Reads the next `reference.len()` values against `reference` (under absolute decoding,
    /// from their phase alone), refusing a piece that would pass the last value.
    pub fn next(&mut self, reference: &[i64]) -> Result<(), HeError> {
        let left = self.phases.len() - self.read;
        if reference.len() > left {
            return Err(HeError::Mismatch(format!(
                "a reference of {} more values, where the ciphertext has {left} left",
                reference.len()
            )));
        }
        self.decode(reference.len(), self.relative.then_some(reference));
        Ok(())
    }

    fn decode(&mut self, count: usize, reference: Option<&[i64]>) {
        let phases = &mut self.phases[self.read..self.read + count];
        decode_phases(phases, self.top_bit, self.delta_bits, reference);
        self.read += count;
    }

    /// The messages, once every value was read.
    pub fn finish(self) -> Result<Vec<i64>, HeError> {
        if self.read != self.phases.len() {
            return Err(HeError::Mismatch(format!(
                "{} of the ciphertext's {} values were read",
                self.read,
                self.phases.len()
            )));
        }
        // Same size and alignment: collects in place, no second buffer.
        Ok(self.phases.into_iter().map(|p| p as i64).collect())
    }
}

/// Whether partials with these headers would all be subtracted from a combination of
/// `ciphertext` (of `values` values) for `quorum` under `budget`, and complete it: the checks
/// `Combination::subtract` makes, without the values. A member checks what it received this
/// way before it commits a recomputation or its target to combining.
pub fn check_partials<'a>(
    ciphertext: CiphertextDigest,
    values: u64,
    quorum: &Quorum,
    budget: &Budget,
    headers: impl IntoIterator<Item = &'a PartialHeader>,
) -> Result<(), HeError> {
    let expected = Expected {
        ciphertext,
        values,
        quorum,
        budget,
    };
    let mut seen = 0;
    for header in headers {
        seen |= expected.admit(
            seen,
            header.party,
            &header.quorum,
            header.ciphertext,
            header.window,
            header.value_count,
        )?;
    }
    complete(quorum, seen)
}

/// What a combination takes partials for.
struct Expected<'a> {
    ciphertext: CiphertextDigest,
    values: u64,
    quorum: &'a Quorum,
    budget: &'a Budget,
}

impl Expected<'_> {
    /// The checks a partial passes before it touches the sum, given the parties already
    /// subtracted (`seen`): bound to this ciphertext and quorum, from a member of it not seen
    /// before, of a window the budget admits (its own, or one holding more of the word, such
    /// as all the top 64 bits partials kept before windows) and of this length. Its party's
    /// bit.
    fn admit(
        &self,
        seen: u16,
        party: u8,
        quorum: &[u8],
        ciphertext: CiphertextDigest,
        window: Window,
        values: u64,
    ) -> Result<u16, HeError> {
        let refused = |reason: String| HeError::Partial { party, reason };
        if ciphertext != self.ciphertext {
            return Err(refused(format!(
                "it decrypts ciphertext {ciphertext}, not {}",
                self.ciphertext
            )));
        }
        if quorum != self.quorum.members() {
            return Err(refused(format!(
                "it was made for quorum {quorum:?}, not {:?}",
                self.quorum.members()
            )));
        }
        if !self.quorum.contains(party) || seen & (1 << party) != 0 {
            return Err(refused(
                "the party is outside the quorum or sent twice".into(),
            ));
        }
        if !self.budget.admits(window) {
            let ours = self.budget.share_window();
            return Err(refused(format!(
                "it keeps bits {} to {} of each value, the budget bits {} to {}",
                window.dropped_bits(),
                window.top_bit(),
                ours.dropped_bits(),
                ours.top_bit()
            )));
        }
        if values != self.values {
            return Err(refused(format!(
                "it has {values} values, the ciphertext {}",
                self.values
            )));
        }
        Ok(1 << party)
    }
}

/// Every quorum member's partial is in.
fn complete(quorum: &Quorum, seen: u16) -> Result<(), HeError> {
    if seen.count_ones() as usize != quorum.members().len() {
        return Err(HeError::Mismatch(format!(
            "{} of {} quorum members' partial decryptions are present",
            seen.count_ones(),
            quorum.members().len()
        )));
    }
    Ok(())
}

/// Combines the partial decryptions of the whole quorum and decodes the messages.
pub fn combine(
    ciphertext: &BoundCiphertext,
    quorum: &Quorum,
    partials: &[PartialDecryption],
    budget: &Budget,
) -> Result<Vec<i64>, HeError> {
    let mut combination = Combination::new(CombineTarget::of(ciphertext), quorum.clone(), budget)?;
    for partial in partials {
        combination.subtract(partial)?;
    }
    combination.finish(None)
}

/// body - sum of shares, then signed rounding by Delta (see `decode_phases`).
#[cfg(test)]
pub(crate) fn combine_raw(
    ciphertext: &Ciphertext,
    shares: &[&[u64]],
    window: Window,
    delta_bits: u32,
) -> Vec<i64> {
    let mut phases = ciphertext.bodies.clone();
    for share in shares {
        subtract_share(&mut phases, (share, 1), |v| window.to_top(v[0]));
    }
    let top = window.top_bit().min(ciphertext.body_window.top_bit());
    decode_phases(&mut phases, top, delta_bits, None);
    phases.into_iter().map(|p| p as i64).collect()
}

/// Everything lives in the top 64 bits (bodies were rounded there, and a window starts at
/// bit 64 or above), so the subtraction is done on u64.
/// `share` holds `per_value` places for each value.
fn subtract_share<T: Sync>(
    phases: &mut [u64],
    (share, per_value): (&[T], usize),
    value: impl Fn(&[T]) -> u64 + Sync,
) {
    const BLOCK: usize = 1 << 16;
    phases
        .par_chunks_mut(BLOCK)
        .zip(share.par_chunks(BLOCK * per_value))
        .for_each(|(phases, share)| {
            for (p, s) in phases.iter_mut().zip(share.chunks_exact(per_value)) {
                *p = p.wrapping_sub(value(s));
            }
        });
}

/// Each phase, known modulo 2^top_bit, less Delta times its reference, read as signed, shifted
/// back up to 128 bits, rounded by Delta to its signed message, and the reference added back,
/// in place (each u64 then holds an i64). Delta exceeds 2^64 (every window starts at bit 64 or
/// above, and Delta sits above the partials' rounding), so Delta times a reference has
/// nothing below the top 64 bits.
fn decode_phases(phases: &mut [u64], top_bit: u32, delta_bits: u32, reference: Option<&[i64]>) {
    debug_assert!(delta_bits > 64);
    let half = 1u128 << (delta_bits - 1);
    let read = move |phase: u64| -> i64 {
        let full = u128::from(super::window::sign_extend(phase, top_bit)) << 64;
        ((full.wrapping_add(half) as i128) >> delta_bits) as i64
    };
    match reference {
        None => phases.par_iter_mut().for_each(|p| *p = read(*p) as u64),
        Some(reference) => phases
            .par_iter_mut()
            .zip(reference.par_iter())
            .for_each(|(p, &r)| {
                let shift = ((r as i128 as u128) << delta_bits >> 64) as u64;
                *p = read(p.wrapping_sub(shift)).wrapping_add(r) as u64;
            }),
    }
}
