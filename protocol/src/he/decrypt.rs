//! Threshold decryption: each quorum member's partial decryption, smudged and reduced to its
//! window (their combination is `combine.rs`'s).

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
use crate::wire::BoundCiphertext;

/// The digest of a ciphertext's canonical encoding (BLAKE3 for the kinds written now, see
/// `wire::digest`): what a decryption request names and what every partial decryption is
/// bound to.
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
