//! Negacyclic products mod 2^128 with `tfhe-ntt`.
//!
//! Two kinds of product occur, and each gets its own fast path:
//! - encryption multiplies the public key by a *binary* polynomial: the exact integer result is
//!   below N * 2^128, so five 30-bit primes suffice (`native_binary128`), and the key's
//!   transforms are computed once per key;
//! - partial decryption multiplies a ciphertext's mask by a uniform key share. Every mask is a
//!   multiple of 2^8 (its low bits are dropped before it is sent), so the product mod 2^128
//!   depends only on the share mod 2^120: with the share taken so, the exact product lies
//!   within N * 2^248 of zero, which nine 30-bit primes cover (ten for two 128-bit operands).
//!   The share is transformed once per request; tfhe-ntt does the transforms, and going into
//!   residues and back is [`super::crt`]'s, vectorised.

use std::sync::OnceLock;
use tfhe_ntt::{native_binary128, native128, prime32};

use super::POLYNOMIAL_SIZE;
use super::ciphertext::MASK_DROPPED_BITS as MASK_LOW_BITS;
use super::crt::Crt;

// The share is taken mod 2^120 because every mask has its low 8 bits at zero.
const _: () = assert!(128 - MASK_LOW_BITS == 120);

const BINARY_PRIMES: usize = 5;
const FULL_PRIMES: usize = 9;

/// The transform of one polynomial under the five primes of the binary path.
#[derive(Clone)]
pub(crate) struct BinaryForm([Vec<u32>; BINARY_PRIMES]);

/// The transform of one polynomial under the nine primes of the full path.
#[derive(Clone)]
pub(crate) struct FullForm([Vec<u32>; FULL_PRIMES]);

impl zeroize::Zeroize for BinaryForm {
    fn zeroize(&mut self) {
        for residues in &mut self.0 {
            residues.zeroize();
        }
    }
}

impl zeroize::Zeroize for FullForm {
    fn zeroize(&mut self) {
        for residues in &mut self.0 {
            residues.zeroize();
        }
    }
}

pub(crate) struct NttContext {
    binary: native_binary128::Plan32,
    full: native128::Plan32,
    full_crt: Crt<FULL_PRIMES>,
}

impl NttContext {
    fn new() -> Self {
        let binary =
            native_binary128::Plan32::try_new(POLYNOMIAL_SIZE).expect("tfhe-ntt supports N = 8192");
        let full = native128::Plan32::try_new(POLYNOMIAL_SIZE).expect("tfhe-ntt supports N = 8192");
        Self {
            binary,
            full_crt: Crt::new(full_plans(&full).map(prime32::Plan::modulus)),
            full,
        }
    }

    /// The shared plans, built once per process.
    pub(crate) fn get() -> &'static NttContext {
        static CONTEXT: OnceLock<NttContext> = OnceLock::new();
        CONTEXT.get_or_init(NttContext::new)
    }

    /// The transform of an arbitrary polynomial, for use as the fixed operand of products
    /// with binary polynomials.
    pub(crate) fn binary_form(&self, poly: &[u128]) -> BinaryForm {
        let mut form = self.new_binary_form();
        let [p0, p1, p2, p3, p4] = &mut form.0;
        self.binary.fwd(poly, p0, p1, p2, p3, p4);
        form
    }

    /// out = fixed * binary mod (X^N + 1, 2^128), where `binary_transform` is the transform of a
    /// polynomial with coefficients in {0, 1} (see [`Self::transform_binary_reversed`]). The
    /// exact product lies within N * 2^128 of zero, which five 30-bit primes cover.
    pub(crate) fn binary_product(
        &self,
        fixed: &BinaryForm,
        binary_transform: &BinaryForm,
        scratch: &mut BinaryForm,
        out: &mut [u128],
    ) {
        let plans = full_plans(&self.full);
        for (((plan, product), binary), fixed) in plans
            .iter()
            .zip(&mut scratch.0)
            .zip(&binary_transform.0)
            .zip(&fixed.0)
        {
            product.copy_from_slice(binary);
            plan.mul_assign_normalize(product, fixed);
        }
        // tfhe-ntt's own way back pairs the five primes into 60-bit moduli, which measured
        // faster than [`Crt`] for five (it is not for ten).
        let [p0, p1, p2, p3, p4] = &mut scratch.0;
        self.binary.inv(out, p0, p1, p2, p3, p4);
    }

    /// The transform of a binary polynomial given by its coefficients in reverse order (the
    /// encryption uses rev(r)).
    pub(crate) fn transform_binary_reversed(&self, binary: &[u128], out: &mut BinaryForm) {
        let plans = full_plans(&self.full);
        for (prime, residues) in out.0.iter_mut().enumerate() {
            for (residue, bit) in residues.iter_mut().zip(binary.iter().rev()) {
                *residue = *bit as u32;
            }
            plans[prime].fwd(residues);
        }
    }

    pub(crate) fn new_binary_form(&self) -> BinaryForm {
        BinaryForm(std::array::from_fn(|_| vec![0u32; POLYNOMIAL_SIZE]))
    }

    pub(crate) fn new_full_form(&self) -> FullForm {
        FullForm(std::array::from_fn(|_| vec![0u32; POLYNOMIAL_SIZE]))
    }

    /// The transform of an arbitrary polynomial, mod 2^120, under the nine primes: the fixed
    /// operand of [`Self::mask_product`].
    pub(crate) fn full_form(&self, poly: &[u128], out: &mut FullForm) {
        self.transform::<120>(poly, out);
    }

    /// out = mask * fixed mod (X^N + 1, 2^128), for a mask whose every coefficient is a
    /// multiple of 2^8 (the caller checks; the low bits would be ignored).
    #[cfg(test)]
    pub(crate) fn mask_product(
        &self,
        mask: &[u128],
        fixed: &FullForm,
        scratch: &mut FullForm,
        out: &mut [u128],
    ) {
        self.mask_transform(mask, scratch);
        self.finish_product(scratch, fixed, out);
    }

    /// The transform of a mask (every coefficient a multiple of 2^8), for
    /// [`Self::transformed_mask_product`]: a mask that several fixed operands multiply is
    /// transformed once.
    pub(crate) fn mask_transform(&self, mask: &[u128], out: &mut FullForm) {
        self.transform::<128>(mask, out);
    }

    /// [`Self::mask_product`] of a mask given by its transform, which is kept.
    pub(crate) fn transformed_mask_product(
        &self,
        mask: &FullForm,
        fixed: &FullForm,
        scratch: &mut FullForm,
        out: &mut [u128],
    ) {
        for (residues, mask) in scratch.0.iter_mut().zip(&mask.0) {
            residues.copy_from_slice(mask);
        }
        self.finish_product(scratch, fixed, out);
    }

    /// out = the product of the transform in `product` (overwritten) and `fixed`.
    pub(crate) fn finish_product(
        &self,
        product: &mut FullForm,
        fixed: &FullForm,
        out: &mut [u128],
    ) {
        let plans = full_plans(&self.full);
        for ((plan, product), fixed) in plans.iter().zip(&mut product.0).zip(&fixed.0) {
            plan.mul_assign_normalize(product, fixed);
            plan.inv(product);
        }
        // mask * (share mod 2^120) differs from mask * share by a multiple of 2^8 * 2^120.
        self.full_crt.reconstruct(&mut product.0, out);
    }

    fn transform<const BITS: u32>(&self, poly: &[u128], out: &mut FullForm) {
        self.full_crt.residues::<BITS>(poly, &mut out.0);
        for (plan, residues) in full_plans(&self.full).iter().zip(&mut out.0) {
            plan.fwd(residues);
        }
    }
}

/// The nine prime plans of the full path. The first five use the same primes, in the same
/// order, as the binary path (both take tfhe-ntt's 30-bit prime list from its start), which is
/// what lets the binary path borrow them for pointwise products.
fn full_plans(full: &native128::Plan32) -> [&prime32::Plan; FULL_PRIMES] {
    [
        full.ntt_0(),
        full.ntt_1(),
        full.ntt_2(),
        full.ntt_3(),
        full.ntt_4(),
        full.ntt_5(),
        full.ntt_6(),
        full.ntt_7(),
        full.ntt_8(),
    ]
}

/// Schoolbook negacyclic product mod 2^128, the reference the fast paths are tested against.
#[cfg(test)]
pub(crate) fn schoolbook_product(lhs: &[u128], rhs: &[u128]) -> Vec<u128> {
    let n = lhs.len();
    let mut out = vec![0u128; n];
    for (i, &l) in lhs.iter().enumerate() {
        for (j, &r) in rhs.iter().enumerate() {
            let term = l.wrapping_mul(r);
            let k = i + j;
            if k < n {
                out[k] = out[k].wrapping_add(term);
            } else {
                out[k - n] = out[k - n].wrapping_sub(term);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::sampling::{fill_binary, fill_uniform};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn binary_and_full_products_match_schoolbook() {
        let context = NttContext::get();
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut a = vec![0u128; POLYNOMIAL_SIZE];
        let mut b = vec![0u128; POLYNOMIAL_SIZE];
        let mut bits = vec![0u128; POLYNOMIAL_SIZE];
        fill_uniform(&mut rng, &mut a);
        fill_uniform(&mut rng, &mut b);
        fill_binary(&mut rng, &mut bits);

        let reversed: Vec<u128> = bits.iter().rev().copied().collect();
        let mut bits_form = context.new_binary_form();
        context.transform_binary_reversed(&bits, &mut bits_form);
        let mut scratch = context.new_binary_form();
        let mut out = vec![0u128; POLYNOMIAL_SIZE];
        context.binary_product(&context.binary_form(&a), &bits_form, &mut scratch, &mut out);
        assert_eq!(out, schoolbook_product(&a, &reversed));

        // A mask's low bits are zero; the key share is arbitrary.
        let mask: Vec<u128> = a
            .iter()
            .map(|v| v >> MASK_LOW_BITS << MASK_LOW_BITS)
            .collect();
        let mut b_form = context.new_full_form();
        context.full_form(&b, &mut b_form);
        let mut full_scratch = context.new_full_form();
        context.mask_product(&mask, &b_form, &mut full_scratch, &mut out);
        assert_eq!(out, schoolbook_product(&mask, &b));
    }

    /// The largest exact products a mask and a key share can produce, of either sign, come
    /// back exactly: all-maximal polynomials (every term of the negacyclic sum has the same
    /// magnitude, about 2^261 in all) and ones alternating between the two extremes.
    #[test]
    fn mask_products_at_the_largest_magnitudes_match_schoolbook() {
        let context = NttContext::get();
        let top_mask = u128::MAX << MASK_LOW_BITS;
        let alternate = |top: u128| -> Vec<u128> {
            (0..POLYNOMIAL_SIZE)
                .map(|k| if k % 2 == 0 { top } else { 1 << 127 })
                .collect()
        };
        let (maximal_mask, alternating_mask) =
            (vec![top_mask; POLYNOMIAL_SIZE], alternate(top_mask));
        let (maximal_key, alternating_key) =
            (vec![u128::MAX; POLYNOMIAL_SIZE], alternate(u128::MAX));
        let mut scratch = context.new_full_form();
        let mut out = vec![0u128; POLYNOMIAL_SIZE];
        for (mask, key) in [
            (&maximal_mask, &maximal_key),
            (&maximal_mask, &alternating_key),
            (&alternating_mask, &alternating_key),
            (&alternating_mask, &maximal_key),
        ] {
            let mut form = context.new_full_form();
            context.full_form(key, &mut form);
            context.mask_product(mask, &form, &mut scratch, &mut out);
            assert_eq!(out, schoolbook_product(mask, key));
        }
    }
}
