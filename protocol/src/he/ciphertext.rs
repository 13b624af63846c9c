//! Encryption into tfhe's compact-list layout and linear operations on it.
//!
//! A ciphertext of c values has ceil(c / N) bins; each bin is one mask polynomial of N
//! coefficients and the bodies of up to N values, like tfhe's `LweCompactCiphertextList`. It
//! is never expanded (that would take N + 1 words per value). Under a key of k secrets, k bins
//! in a row share one mask polynomial (a group), each bin's bodies under its own secret: the
//! public key holds k bodies for its one mask, and the encryption multiplies one r by all of
//! them, so a group is k RLWE samples under the one secret r. The encryptor rounds mask
//! coefficients to multiples of 2^8 and bodies to the bottom of the budget's body window before
//! anything leaves it; sums keep those low bits zero, so masks travel as their top 120 bits,
//! one coefficient per k values, and bodies as their window's bytes: 15 / k + 5 bytes per
//! value at `bench he`'s plan, 15 / k + 7 at the default round plan, whose 50 rounds of
//! weights multiply every body's rounding (k = 4 for every key a ceremony makes).

use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha12Rng, ChaCha20Rng};
use rand_core::{CryptoRng, RngCore};
use rayon::prelude::*;

use super::keys::EncryptionKey;
use super::ntt::NttContext;
use super::sampling::{GaussianSampler, fill_binary};
use super::{Budget, HeError, POLYNOMIAL_SIZE, Window};

/// Largest number of values one ciphertext may hold (2^27, a 134M-parameter model: 3.1 GB
/// encoded). A plan takes at most as many (`round::plan::MAX_PLAN_VALUES` is this), so every
/// ciphertext a valid plan makes decodes.
pub const MAX_VALUES: u64 = 1 << 27;

/// What decides how ciphertexts add up and how long their encoding is: ciphertexts of
/// different shapes never add up, and a decryption with another scale is refused. Every
/// ciphertext of one plan has the shape its budget gives (`Budget::ciphertext_shape`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CiphertextShape {
    pub values: usize,
    /// The scale messages are encoded at: m * 2^delta_bits.
    pub delta_bits: u32,
    /// The bits of each body that are kept and sent.
    pub body_window: Window,
    /// The secrets of the key it was made under: each mask polynomial serves that many bins.
    pub secrets: usize,
}

impl CiphertextShape {
    /// Mask polynomials: one per group of `secrets` bins.
    pub fn mask_count(&self) -> usize {
        self.values.div_ceil(POLYNOMIAL_SIZE * self.secrets)
    }

    /// Mask coefficients in all.
    pub fn mask_words(&self) -> usize {
        self.mask_count() * POLYNOMIAL_SIZE
    }

    /// Values per mask polynomial.
    pub fn group_values(&self) -> usize {
        POLYNOMIAL_SIZE * self.secrets
    }
}

/// "1000 values at 2^80 with bodies in bits 72..120", as errors name a shape.
impl std::fmt::Display for CiphertextShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} values at 2^{} with bodies in {}",
            self.values, self.delta_bits, self.body_window
        )?;
        if self.secrets > 1 {
            write!(f, " under {} secrets", self.secrets)?;
        }
        Ok(())
    }
}

impl Budget {
    /// The shape of this budget's ciphertexts of `values` values under a key of one secret,
    /// as every key was before keys of several secrets.
    pub fn ciphertext_shape(&self, values: usize) -> CiphertextShape {
        self.ciphertext_shape_under(values, 1)
    }

    /// The shape of this budget's ciphertexts of `values` values under a key of `secrets`
    /// secrets. The noise of each body is that of a key of one secret: the secrets share the
    /// mask, never an error term.
    pub fn ciphertext_shape_under(&self, values: usize, secrets: usize) -> CiphertextShape {
        CiphertextShape {
            values,
            delta_bits: self.delta_bits(),
            body_window: self.body_window(),
            secrets,
        }
    }
}

#[derive(Clone)]
pub struct Ciphertext {
    pub(crate) value_count: usize,
    /// The scale messages were encoded at (m * 2^delta_bits).
    pub(crate) delta_bits: u32,
    pub(crate) body_window: Window,
    pub(crate) secrets: usize,
    /// One mask polynomial per group of `secrets` bins.
    pub(crate) masks: Vec<u128>,
    /// Top 64 bits of each value's body, multiples of the window's bottom. Sums may carry
    /// above the window's top; those bits are never read, encoded or compared.
    pub(crate) bodies: Vec<u64>,
}

/// Equal as encoded: the same shape, masks and kept body bits.
impl PartialEq for Ciphertext {
    fn eq(&self, other: &Self) -> bool {
        let window = self.body_window;
        self.shape() == other.shape()
            && self.masks == other.masks
            && self
                .bodies
                .iter()
                .zip(&other.bodies)
                .all(|(a, b)| window.of_top(*a) == window.of_top(*b))
    }
}

impl Eq for Ciphertext {}

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ciphertext({} values at 2^{})",
            self.value_count, self.delta_bits
        )
    }
}

pub(crate) fn bin_count(values: usize) -> usize {
    values.div_ceil(POLYNOMIAL_SIZE)
}

/// Low bits of a mask coefficient that are dropped (see `ParameterSet::mask_dropped_bits`).
pub(crate) const MASK_DROPPED_BITS: u32 = super::QUORATE_RLWE128_V1.mask_dropped_bits;

/// Rounds a mask coefficient to the nearest multiple of 2^MASK_DROPPED_BITS.
#[inline]
pub(crate) fn round_mask(mask: u128) -> u128 {
    mask.wrapping_add(1u128 << (MASK_DROPPED_BITS - 1)) & !((1u128 << MASK_DROPPED_BITS) - 1)
}

impl Ciphertext {
    /// The trivial encryption of zeros: the neutral element for sums.
    pub fn zero(shape: CiphertextShape) -> Self {
        Self {
            value_count: shape.values,
            delta_bits: shape.delta_bits,
            body_window: shape.body_window,
            secrets: shape.secrets,
            masks: vec![0; shape.mask_words()],
            bodies: vec![0; shape.values],
        }
    }

    /// Builds a ciphertext from decoded parts; masks must already be multiples of 2^8 and
    /// bodies of the window's bottom.
    pub(crate) fn from_parts(
        shape: CiphertextShape,
        masks: Vec<u128>,
        bodies: Vec<u64>,
    ) -> Result<Self, HeError> {
        let CiphertextShape {
            values: value_count,
            delta_bits,
            body_window,
            secrets,
        } = shape;
        debug_assert!(masks.iter().all(|m| *m == round_mask(*m)));
        super::keys::check_secrets(secrets)?;
        if masks.len() != shape.mask_words() || bodies.len() != value_count {
            return Err(HeError::Mismatch(format!(
                "a ciphertext of {shape} needs {} mask and {value_count} body words, got {} and {}",
                shape.mask_words(),
                masks.len(),
                bodies.len()
            )));
        }
        if !(1..128).contains(&delta_bits) {
            return Err(HeError::Mismatch(format!(
                "a message scale of 2^{delta_bits} is impossible"
            )));
        }
        Ok(Self {
            value_count,
            delta_bits,
            body_window,
            secrets,
            masks,
            bodies,
        })
    }

    pub fn value_count(&self) -> usize {
        self.value_count
    }

    pub fn bin_count(&self) -> usize {
        bin_count(self.value_count)
    }

    pub fn masks(&self) -> &[u128] {
        &self.masks
    }

    pub fn bodies(&self) -> &[u64] {
        &self.bodies
    }

    pub fn delta_bits(&self) -> u32 {
        self.delta_bits
    }

    pub fn body_window(&self) -> Window {
        self.body_window
    }

    pub fn shape(&self) -> CiphertextShape {
        CiphertextShape {
            values: self.value_count,
            delta_bits: self.delta_bits,
            body_window: self.body_window,
            secrets: self.secrets,
        }
    }

    /// The secrets of the key it was made under (see [`CiphertextShape::secrets`]).
    pub fn secrets(&self) -> usize {
        self.secrets
    }

    pub(crate) fn check_same_shape(&self, other: CiphertextShape) -> Result<(), HeError> {
        let ours = self.shape();
        if ours != other {
            return Err(HeError::Mismatch(format!(
                "cannot combine ciphertexts of {ours} and of {other}"
            )));
        }
        Ok(())
    }

    /// self += other.
    pub fn add_assign(&mut self, other: &Ciphertext) -> Result<(), HeError> {
        self.add_weighted(other, 1)
    }

    /// self += weight * other.
    pub fn add_weighted(&mut self, other: &Ciphertext, weight: i64) -> Result<(), HeError> {
        self.check_same_shape(other.shape())?;
        let w128 = weight as i128 as u128;
        let w64 = weight as u64;
        for (acc, value) in self.masks.iter_mut().zip(&other.masks) {
            *acc = acc.wrapping_add(value.wrapping_mul(w128));
        }
        for (acc, value) in self.bodies.iter_mut().zip(&other.bodies) {
            *acc = acc.wrapping_add(value.wrapping_mul(w64));
        }
        Ok(())
    }

    /// The integer-weighted sum of ciphertexts, computed block by block so that the accumulator
    /// stays in cache while every input streams through once.
    pub fn weighted_sum(terms: &[(&Ciphertext, i64)]) -> Result<Ciphertext, HeError> {
        let first = terms
            .first()
            .ok_or_else(|| HeError::Mismatch("a weighted sum needs at least one term".into()))?;
        let mut acc = Ciphertext::zero(first.0.shape());
        for (term, _) in terms {
            acc.check_same_shape(term.shape())?;
        }
        const BLOCK: usize = 4096;
        acc.masks
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let start = block * BLOCK;
                for (term, weight) in terms {
                    let w = *weight as i128 as u128;
                    for (acc, value) in out.iter_mut().zip(&term.masks[start..]) {
                        *acc = acc.wrapping_add(value.wrapping_mul(w));
                    }
                }
            });
        acc.bodies
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(block, out)| {
                let start = block * BLOCK;
                for (term, weight) in terms {
                    let w = *weight as u64;
                    for (acc, value) in out.iter_mut().zip(&term.bodies[start..]) {
                        *acc = acc.wrapping_add(value.wrapping_mul(w));
                    }
                }
            });
        Ok(acc)
    }
}

/// Per-group randomness of an encryption: r (binary, N), mask noise e1 (N) and body noise e2
/// (one per value in the group), all mod 2^128.
pub(crate) struct GroupRandomness<'a> {
    pub binary: &'a [u128],
    pub mask_noise: &'a [u128],
    pub body_noise: &'a [u128],
}

impl EncryptionKey {
    /// Encrypts messages (each |m| <= budget's max value) as m * 2^delta.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &self,
        messages: &[i64],
        budget: &Budget,
        rng: &mut R,
    ) -> Result<Ciphertext, HeError> {
        self.encrypt_in(messages, budget, budget.body_window(), rng)
    }

    /// [`Self::encrypt`] with bodies kept in `body_window`, any the budget admits
    /// (`Budget::check_body`). The key ceremony's validation challenge keeps all the top 64
    /// bits ([`Window::TOP_64`]), as every body was kept before windows, so that transcripts
    /// made before them still verify.
    pub fn encrypt_in<R: RngCore + CryptoRng>(
        &self,
        messages: &[i64],
        budget: &Budget,
        body_window: Window,
        rng: &mut R,
    ) -> Result<Ciphertext, HeError> {
        budget.check_body(body_window)?;
        let max = budget.max_value();
        if let Some(index) = messages.iter().position(|m| m.unsigned_abs() > max as u64) {
            return Err(HeError::ValueOutOfRange {
                index,
                value: messages[index],
                bits: budget.request().value_bits,
            });
        }
        let shape = CiphertextShape {
            body_window,
            ..budget.ciphertext_shape_under(messages.len(), self.secrets())
        };
        let delta = shape.delta_bits;
        Ok(self.encrypt_with(shape, messages, |m| (*m as i128 as u128) << delta, rng))
    }

    /// Encrypts a whole model (integers at the model's scale, within the budget's message
    /// space) with randomness expanded from `seed`, so that every member holding the model
    /// computes the same ciphertext and can check the one the next round builds on by its
    /// digest. Whoever knows the seed can decrypt this ciphertext without the key, so the seed
    /// must be derived from secrets only the model's holders share (the model itself).
    pub fn encrypt_model(
        &self,
        model: &[i64],
        budget: &Budget,
        seed: [u8; 32],
    ) -> Result<Ciphertext, HeError> {
        let bits = budget.message_bits().min(62);
        if let Some(index) = model.iter().position(|m| m.unsigned_abs() >> bits != 0) {
            return Err(HeError::ValueOutOfRange {
                index,
                value: model[index],
                bits,
            });
        }
        let shape = budget.ciphertext_shape_under(model.len(), self.secrets());
        let delta = shape.delta_bits;
        let mut stream = ChaCha20Rng::from_seed(seed);
        Ok(self.encrypt_with(shape, model, |m| (*m as i128 as u128) << delta, &mut stream))
    }

    /// Re-randomises a ciphertext before a retried decryption by adding an encryption of zero
    /// whose randomness is expanded from `seed`.
    ///
    /// The seed is public (the decryption request names it), so every member recomputes the
    /// same term and can check the retried ciphertext. Whoever chose the term freely could
    /// otherwise add a malformed "encryption of zero" (say, a scaled unit in the mask) whose
    /// decryption reveals the collective secret. Knowing the term's randomness costs nothing:
    /// the retry only needs a ciphertext no member has partially decrypted before.
    pub fn rerandomize(&self, ciphertext: &mut Ciphertext, seed: [u8; 32]) -> Result<(), HeError> {
        if ciphertext.secrets != self.secrets() {
            return Err(HeError::Mismatch(format!(
                "a ciphertext of {} cannot be re-randomised under a key of {} secrets",
                ciphertext.shape(),
                self.secrets()
            )));
        }
        let mut stream = ChaCha20Rng::from_seed(seed);
        let zeros = self.encrypt_with(
            ciphertext.shape(),
            &vec![(); ciphertext.value_count],
            |()| 0,
            &mut stream,
        );
        ciphertext.add_assign(&zeros)
    }

    /// Encrypts `encode(message)` for every message, encoding group by group so no plaintext
    /// vector of the whole size is ever allocated.
    fn encrypt_with<M: Sync, R: RngCore + CryptoRng>(
        &self,
        shape: CiphertextShape,
        messages: &[M],
        encode: impl Fn(&M) -> u128 + Sync,
        rng: &mut R,
    ) -> Ciphertext {
        debug_assert_eq!(shape.values, messages.len());
        debug_assert_eq!(shape.secrets, self.secrets());
        let window = shape.body_window;
        let group = shape.group_values();
        let mut ciphertext = Ciphertext::zero(shape);
        // One independent stream per group, drawn in order, so the result does not depend on
        // how many threads run the groups.
        let mut seeds: Vec<[u8; 32]> = (0..shape.mask_count()).map(|_| rng.r#gen()).collect();
        let sampler = GaussianSampler::standard();
        ciphertext
            .masks
            .par_chunks_mut(POLYNOMIAL_SIZE)
            .zip(ciphertext.bodies.par_chunks_mut(group))
            .zip(messages.par_chunks(group))
            .zip(seeds.par_iter())
            .for_each_init(
                || EncryptScratch::new(group),
                |scratch, (((mask, bodies), messages), seed)| {
                    // ChaCha12, not the smudging's AES streams (`super::keystream`): an
                    // encryption from a seed (the ceremony's challenge, a server step, a retry)
                    // must come out the same in every build that checks it.
                    let mut group_rng = ChaCha12Rng::from_seed(*seed);
                    let len = messages.len();
                    for (plaintext, message) in scratch.plaintexts.iter_mut().zip(messages) {
                        *plaintext = encode(message);
                    }
                    fill_binary(&mut group_rng, &mut scratch.binary);
                    sampler.fill_u128(&mut group_rng, &mut scratch.mask_noise);
                    sampler.fill_u128(&mut group_rng, &mut scratch.body_noise[..len]);
                    let randomness = GroupRandomness {
                        binary: &scratch.binary,
                        mask_noise: &scratch.mask_noise,
                        body_noise: &scratch.body_noise[..len],
                    };
                    self.encrypt_group(
                        &scratch.plaintexts[..len],
                        &randomness,
                        &mut scratch.work,
                        mask,
                        &mut scratch.full_bodies[..len],
                    );
                    for coefficient in mask.iter_mut() {
                        *coefficient = round_mask(*coefficient);
                    }
                    for (body, full) in bodies.iter_mut().zip(&scratch.full_bodies) {
                        *body = window.to_top(window.keep(*full));
                    }
                },
            );
        zeroize::Zeroize::zeroize(&mut seeds);
        ciphertext
    }

    /// The compact public-key encryption of one group, as tfhe defines it for one bin:
    /// mask = a * rev(r) + e1, and for the bin under secret j,
    /// body[k] = (b_j * rev(r))[N-1-k] + e2[k] + plaintext[k], with the products done on
    /// precomputed transforms of a and every b_j and one transform of r.
    pub(crate) fn encrypt_group(
        &self,
        plaintexts: &[u128],
        randomness: &GroupRandomness<'_>,
        work: &mut EncryptWork,
        mask_out: &mut [u128],
        body_out: &mut [u128],
    ) {
        let context = NttContext::get();
        context.transform_binary_reversed(randomness.binary, &mut work.binary_form);
        context.binary_product(
            &self.mask_form,
            &work.binary_form,
            &mut work.scratch,
            mask_out,
        );
        for (mask, noise) in mask_out.iter_mut().zip(randomness.mask_noise) {
            *mask = mask.wrapping_add(*noise);
        }
        for (((body_form, bodies), plaintexts), noise) in self
            .body_forms
            .iter()
            .zip(body_out.chunks_mut(POLYNOMIAL_SIZE))
            .zip(plaintexts.chunks(POLYNOMIAL_SIZE))
            .zip(randomness.body_noise.chunks(POLYNOMIAL_SIZE))
        {
            context.binary_product(
                body_form,
                &work.binary_form,
                &mut work.scratch,
                &mut work.product,
            );
            for (k, body) in bodies.iter_mut().enumerate() {
                *body = work.product[POLYNOMIAL_SIZE - 1 - k]
                    .wrapping_add(noise[k])
                    .wrapping_add(plaintexts[k]);
            }
        }
    }
}

/// Scratch space of one group's encryption; it holds the transform of r and b_j * rev(r),
/// which would strip the encryption, so it is wiped when dropped.
pub(crate) struct EncryptWork {
    binary_form: super::ntt::BinaryForm,
    scratch: super::ntt::BinaryForm,
    product: Vec<u128>,
}

impl Drop for EncryptWork {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.binary_form);
        zeroize::Zeroize::zeroize(&mut self.scratch);
        zeroize::Zeroize::zeroize(&mut self.product);
    }
}

impl EncryptWork {
    pub(crate) fn new() -> Self {
        let context = NttContext::get();
        Self {
            binary_form: context.new_binary_form(),
            scratch: context.new_binary_form(),
            product: vec![0; POLYNOMIAL_SIZE],
        }
    }
}

struct EncryptScratch {
    plaintexts: Vec<u128>,
    binary: Vec<u128>,
    mask_noise: Vec<u128>,
    body_noise: Vec<u128>,
    full_bodies: Vec<u128>,
    work: EncryptWork,
}

impl Drop for EncryptScratch {
    fn drop(&mut self) {
        // r and the noise would let anyone strip the encryption off the last bin.
        zeroize::Zeroize::zeroize(&mut self.plaintexts);
        zeroize::Zeroize::zeroize(&mut self.binary);
        zeroize::Zeroize::zeroize(&mut self.mask_noise);
        zeroize::Zeroize::zeroize(&mut self.body_noise);
        zeroize::Zeroize::zeroize(&mut self.full_bodies);
    }
}

impl EncryptScratch {
    /// Scratch for groups of `group` values.
    fn new(group: usize) -> Self {
        Self {
            plaintexts: vec![0; group],
            binary: vec![0; POLYNOMIAL_SIZE],
            mask_noise: vec![0; POLYNOMIAL_SIZE],
            body_noise: vec![0; group],
            full_bodies: vec![0; group],
            work: EncryptWork::new(),
        }
    }
}

impl Ciphertext {
    pub(crate) fn parts_mut(&mut self) -> (&mut [u128], &mut [u64]) {
        (&mut self.masks, &mut self.bodies)
    }
}
