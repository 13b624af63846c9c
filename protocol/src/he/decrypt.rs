//! Threshold decryption: partial decryptions by an agreed quorum, and their combination.

use rand::{Rng, SeedableRng};
use rand_core::{CryptoRng, RngCore};
use rayon::prelude::*;
use zeroize::Zeroize;

use super::ciphertext::Ciphertext;
use super::ciphertext::MASK_DROPPED_BITS as MASK_LOW_BITS;
use super::keys::KeyShare;
use super::keystream::StreamRng;
use super::ntt::{FullForm, NttContext};
use super::sampling::add_smudging;
use super::{Budget, HeError, POLYNOMIAL_SIZE, Quorum, Subset, Window};
use crate::wire::{BoundCiphertext, PartialHeader, PartialView};

/// SHA-256 of a ciphertext's canonical encoding: what a decryption request names and what
/// every partial decryption is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CiphertextDigest(pub [u8; 32]);

impl std::fmt::Display for CiphertextDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// One quorum member's contribution to decrypting one ciphertext: for each value, the
/// budget's window of <mask, F_j> + E_j, where F_j sums the key-share pieces assigned to the
/// member and E_j is fresh smudging noise. The bits below the window are rounded away within
/// the error Delta allows, those above it are not needed to combine (see [`Window`]);
/// neither is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct PartialDecryption {
    pub party: u8,
    pub quorum: Vec<u8>,
    pub ciphertext: CiphertextDigest,
    pub window: Window,
    /// Each below 2^(8 * window.bytes()).
    pub values: Vec<u64>,
}

impl std::fmt::Debug for PartialDecryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PartialDecryption(party {}, quorum {:?}, ciphertext {}, {} values)",
            self.party,
            self.quorum,
            self.ciphertext,
            self.values.len()
        )
    }
}

impl KeyShare {
    /// This member's partial decryption of `ciphertext` for `quorum`, bound to the
    /// ciphertext's digest. The caller (the node's release policy) decides whether it may be
    /// released at all, and records the release against that same digest.
    pub fn partial_decrypt<R: RngCore + CryptoRng>(
        &self,
        ciphertext: &BoundCiphertext,
        quorum: &Quorum,
        budget: &Budget,
        rng: &mut R,
    ) -> Result<PartialDecryption, HeError> {
        self.partial_decrypt_in(ciphertext, quorum, budget, budget.share_window(), rng)
    }

    /// [`Self::partial_decrypt`] in another window than the budget's: a combination also
    /// takes any window `Budget::admits`, such as [`Window::TOP_64`], what members sent
    /// before windows.
    pub(crate) fn partial_decrypt_in<R: RngCore + CryptoRng>(
        &self,
        ciphertext: &BoundCiphertext,
        quorum: &Quorum,
        budget: &Budget,
        window: Window,
        rng: &mut R,
    ) -> Result<PartialDecryption, HeError> {
        self.check_partial_request(quorum, budget)?;
        let values = self.partial_decrypt_subsets(
            ciphertext.ciphertext(),
            &self.assigned_subsets(quorum),
            budget.smudging_bits(),
            window,
            rng,
        )?;
        Ok(PartialDecryption {
            party: self.party,
            quorum: quorum.members().to_vec(),
            ciphertext: ciphertext.digest(),
            window,
            values,
        })
    }

    /// The same partial decryption as [`Self::partial_decrypt`], computed straight into its
    /// encoding (`encode_partial_decryption`'s bytes): a member sends and keeps the encoding,
    /// and never needs the values apart, which would be one more copy of the partial (80 MB
    /// at 10M values) at the node's peak.
    pub fn partial_decrypt_encoded<R: RngCore + CryptoRng>(
        &self,
        ciphertext: &BoundCiphertext,
        quorum: &Quorum,
        budget: &Budget,
        rng: &mut R,
    ) -> Result<Vec<u8>, HeError> {
        self.check_partial_request(quorum, budget)?;
        let values = ciphertext.ciphertext().value_count;
        let window = budget.share_window();
        let mut out = crate::wire::encode_partial_header(
            self.party,
            quorum.members(),
            &ciphertext.digest(),
            window,
            values,
        );
        let start = out.len();
        let bytes = window.bytes();
        out.resize(start + bytes * values, 0);
        self.partial_decrypt_into(
            ciphertext.ciphertext(),
            &self.assigned_subsets(quorum),
            budget.smudging_bits(),
            window,
            rng,
            (&mut out[start..], bytes),
            |place, value| place.copy_from_slice(&value.to_le_bytes()[..bytes]),
        )?;
        Ok(out)
    }

    fn check_partial_request(&self, quorum: &Quorum, budget: &Budget) -> Result<(), HeError> {
        if quorum.config() != &self.config {
            return Err(HeError::Mismatch(
                "the quorum was formed for another threshold configuration".into(),
            ));
        }
        if !quorum.contains(self.party) {
            return Err(HeError::Mismatch(format!(
                "party {} is not in the quorum {:?}",
                self.party,
                quorum.members()
            )));
        }
        if budget.request().config != self.config {
            return Err(HeError::Mismatch(
                "the budget was computed for another threshold configuration".into(),
            ));
        }
        Ok(())
    }

    /// The share subsets this member decrypts with for `quorum`.
    fn assigned_subsets(&self, quorum: &Quorum) -> Vec<Subset> {
        self.config
            .share_subsets()
            .into_iter()
            .filter(|&subset| quorum.assignee(subset) == Some(self.party))
            .collect()
    }

    /// The smudged inner products of every bin's mask with the sum of the shares of
    /// `subsets`, all of which this member must hold, each reduced to `window`.
    pub(crate) fn partial_decrypt_subsets<R: RngCore + CryptoRng>(
        &self,
        ciphertext: &Ciphertext,
        subsets: &[Subset],
        smudging_bits: u32,
        window: Window,
        rng: &mut R,
    ) -> Result<Vec<u64>, HeError> {
        let mut out = vec![0u64; ciphertext.value_count];
        self.partial_decrypt_into(
            ciphertext,
            subsets,
            smudging_bits,
            window,
            rng,
            (&mut out, 1),
            |place, value| place[0] = value,
        )?;
        Ok(out)
    }

    /// The work of both: `out` holds `per_value` places for each value, and each value is
    /// handed to `store` with its places.
    #[allow(clippy::too_many_arguments)]
    fn partial_decrypt_into<R: RngCore + CryptoRng, T: Send>(
        &self,
        ciphertext: &Ciphertext,
        subsets: &[Subset],
        smudging_bits: u32,
        window: Window,
        rng: &mut R,
        (out, per_value): (&mut [T], usize),
        store: impl Fn(&mut [T], u64) + Sync,
    ) -> Result<(), HeError> {
        if let Some(missing) = subsets
            .iter()
            .find(|subset| !self.subshares.iter().any(|s| s.subset == **subset))
        {
            return Err(HeError::Mismatch(format!(
                "party {} does not hold the share of {missing:?}",
                self.party
            )));
        }
        // The product skips a mask's low bits, which every ciphertext has at zero: one that
        // does not is refused, never decrypted wrong.
        let low = (1u128 << MASK_LOW_BITS) - 1;
        if ciphertext.masks.iter().fold(0, |any, mask| any | mask) & low != 0 {
            let index = ciphertext.masks.iter().position(|mask| mask & low != 0);
            return Err(HeError::MaskLowBits {
                index: index.expect("some mask has low bits set"),
            });
        }
        if ciphertext.secrets != self.secrets() {
            return Err(HeError::Mismatch(format!(
                "a ciphertext of {} cannot be decrypted with party {}'s share of a key of {} \
                 secrets",
                ciphertext.shape(),
                self.party,
                self.secrets()
            )));
        }
        let context = NttContext::get();
        // For each secret j, F_j = the sum of the assigned pieces of it;
        // <mask_k, F_j> = (A * rev(F_j))[N-1-k].
        let mut key_forms = Vec::with_capacity(self.secrets());
        let mut reversed_sum = vec![0u128; POLYNOMIAL_SIZE];
        for secret in 0..self.secrets() {
            reversed_sum.fill(0);
            let piece = secret * POLYNOMIAL_SIZE..(secret + 1) * POLYNOMIAL_SIZE;
            for subshare in self
                .subshares
                .iter()
                .filter(|s| subsets.contains(&s.subset))
            {
                for (acc, value) in reversed_sum
                    .iter_mut()
                    .zip(subshare.coefficients[piece.clone()].iter().rev())
                {
                    *acc = acc.wrapping_add(*value);
                }
            }
            let mut key_form = context.new_full_form();
            context.full_form(&reversed_sum, &mut key_form);
            key_forms.push(key_form);
        }
        reversed_sum.zeroize();

        // One smudging stream per bin, drawn in order.
        let mut seeds: Vec<[u8; 32]> = (0..ciphertext.bin_count()).map(|_| rng.r#gen()).collect();
        assert_eq!(
            out.len(),
            ciphertext.value_count * per_value,
            "places for every value"
        );
        let group = ciphertext.shape().group_values();
        out.par_chunks_mut(group * per_value)
            .zip(ciphertext.masks.par_chunks(POLYNOMIAL_SIZE))
            .zip(seeds.par_chunks(self.secrets()))
            .for_each_init(
                || PartialScratch::new(context),
                |scratch, ((out, mask), seeds)| {
                    // The mask is transformed once for its group; every bin but the last
                    // multiplies a copy of the transform, and the last the transform itself.
                    context.mask_transform(mask, &mut scratch.mask_form);
                    let last = out.len().div_ceil(POLYNOMIAL_SIZE * per_value) - 1;
                    let bins = out.chunks_mut(POLYNOMIAL_SIZE * per_value);
                    for (bin, ((out, key_form), seed)) in
                        bins.zip(&key_forms).zip(seeds).enumerate()
                    {
                        if bin == last {
                            context.finish_product(
                                &mut scratch.mask_form,
                                key_form,
                                &mut scratch.product,
                            );
                        } else {
                            context.transformed_mask_product(
                                &scratch.mask_form,
                                key_form,
                                &mut scratch.form,
                                &mut scratch.product,
                            );
                        }
                        let len = out.len() / per_value;
                        for (k, value) in scratch.values[..len].iter_mut().enumerate() {
                            *value = scratch.product[POLYNOMIAL_SIZE - 1 - k];
                        }
                        let mut bin_rng = StreamRng::from_seed(*seed);
                        add_smudging(&mut bin_rng, &mut scratch.values[..len], smudging_bits);
                        for (places, v) in out.chunks_exact_mut(per_value).zip(&scratch.values) {
                            store(places, window.keep(*v));
                        }
                    }
                },
            );
        key_forms.zeroize();
        seeds.zeroize();
        Ok(())
    }
}

struct PartialScratch {
    /// The transform of the group's mask.
    mask_form: FullForm,
    form: FullForm,
    product: Vec<u128>,
    values: Vec<u128>,
}

impl PartialScratch {
    fn new(context: &NttContext) -> Self {
        Self {
            mask_form: context.new_full_form(),
            form: context.new_full_form(),
            product: vec![0; POLYNOMIAL_SIZE],
            values: vec![0; POLYNOMIAL_SIZE],
        }
    }
}

impl Drop for PartialScratch {
    fn drop(&mut self) {
        // The product holds <mask, F_j> before smudging: as sensitive as the share itself.
        self.form.zeroize();
        self.product.zeroize();
        self.values.zeroize();
    }
}

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
