//! Negacyclic products mod 2^128 with `tfhe-ntt`.
//!
//! Two kinds of product occur, and each gets its own fast path:
//! - encryption multiplies the public key by a *binary* polynomial: the exact integer result is
//!   below N * 2^128, so five 30-bit primes suffice (`native_binary128`), and the key's
//!   transforms are computed once per key;
//! - partial decryption multiplies a uniform mask by a uniform key share: ten primes
//!   (`native128`), with the share transformed once per request and the mask's residues
//!   computed here with precomputed constants instead of 128-bit divisions.

use std::sync::OnceLock;
use tfhe_ntt::{native_binary128, native128, prime32};

use super::POLYNOMIAL_SIZE;

const BINARY_PRIMES: usize = 5;
const FULL_PRIMES: usize = 10;

/// The transform of one polynomial under the five primes of the binary path.
#[derive(Clone)]
pub(crate) struct BinaryForm([Vec<u32>; BINARY_PRIMES]);

/// The transform of one polynomial under the ten primes of the full path.
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

/// Reduction of 128-bit values modulo one 30-bit prime without division.
struct FastModulus {
    prime: u64,
    /// 2^32, 2^64 and 2^96 modulo the prime.
    limb_weights: [u64; 3],
    /// floor(2^64 / prime), for Barrett reduction.
    barrett: u64,
}

impl FastModulus {
    fn new(prime: u32) -> Self {
        let prime = u64::from(prime);
        let weight = |shift: u32| ((1u128 << shift) % u128::from(prime)) as u64;
        Self {
            prime,
            limb_weights: [weight(32), weight(64), weight(96)],
            barrett: ((1u128 << 64) / u128::from(prime)) as u64,
        }
    }

    #[inline(always)]
    fn reduce(&self, value: u128) -> u32 {
        let limb = |index: u32| (value >> (32 * index)) as u64 & 0xffff_ffff;
        // Each weighted limb is below 2^62, so the sum of four stays below 2^64.
        let sum = limb(0)
            + limb(1) * self.limb_weights[0]
            + limb(2) * self.limb_weights[1]
            + limb(3) * self.limb_weights[2];
        let quotient = ((u128::from(sum) * u128::from(self.barrett)) >> 64) as u64;
        let mut rest = sum - quotient * self.prime;
        if rest >= self.prime {
            rest -= self.prime;
        }
        rest as u32
    }
}

pub(crate) struct NttContext {
    binary: native_binary128::Plan32,
    full: native128::Plan32,
    full_moduli: Vec<FastModulus>,
}

impl NttContext {
    fn new() -> Self {
        let binary =
            native_binary128::Plan32::try_new(POLYNOMIAL_SIZE).expect("tfhe-ntt supports N = 8192");
        let full = native128::Plan32::try_new(POLYNOMIAL_SIZE).expect("tfhe-ntt supports N = 8192");
        let full_moduli = full_plans(&full)
            .iter()
            .map(|plan| FastModulus::new(plan.modulus()))
            .collect();
        Self {
            binary,
            full,
            full_moduli,
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
        let mut form = BinaryForm(std::array::from_fn(|_| vec![0u32; POLYNOMIAL_SIZE]));
        let [p0, p1, p2, p3, p4] = &mut form.0;
        self.binary.fwd(poly, p0, p1, p2, p3, p4);
        form
    }

    /// out = fixed * binary mod (X^N + 1, 2^128), where `binary_transform` is the transform of a
    /// polynomial with coefficients in {0, 1} (see [`Self::transform_binary`]).
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

    /// The transform of an arbitrary polynomial under the ten primes.
    pub(crate) fn full_form(&self, poly: &[u128], out: &mut FullForm) {
        let plans = full_plans(&self.full);
        for (prime, residues) in out.0.iter_mut().enumerate() {
            let modulus = &self.full_moduli[prime];
            for (residue, &value) in residues.iter_mut().zip(poly) {
                *residue = modulus.reduce(value);
            }
            plans[prime].fwd(residues);
        }
    }

    /// out = poly * fixed mod (X^N + 1, 2^128) for arbitrary polynomials.
    pub(crate) fn full_product(
        &self,
        poly: &[u128],
        fixed: &FullForm,
        scratch: &mut FullForm,
        out: &mut [u128],
    ) {
        let plans = full_plans(&self.full);
        self.full_form(poly, scratch);
        for ((plan, product), fixed) in plans.iter().zip(&mut scratch.0).zip(&fixed.0) {
            plan.mul_assign_normalize(product, fixed);
        }
        let [p0, p1, p2, p3, p4, p5, p6, p7, p8, p9] = &mut scratch.0;
        self.full.inv(out, p0, p1, p2, p3, p4, p5, p6, p7, p8, p9);
    }
}

/// The ten prime plans of the full path. The first five use the same primes, in the same
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
        full.ntt_9(),
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
    fn fast_modulus_agrees_with_division() {
        let context = NttContext::get();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut values = vec![0u128; 2000];
        fill_uniform(&mut rng, &mut values);
        values.extend([0, 1, u128::MAX, u128::MAX - 1, 1 << 96, (1 << 64) - 1]);
        for modulus in &context.full_moduli {
            for &value in &values {
                assert_eq!(
                    u64::from(modulus.reduce(value)),
                    (value % u128::from(modulus.prime)) as u64
                );
            }
        }
    }

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

        let mut b_form = context.new_full_form();
        context.full_form(&b, &mut b_form);
        let mut full_scratch = context.new_full_form();
        context.full_product(&a, &b_form, &mut full_scratch, &mut out);
        assert_eq!(out, schoolbook_product(&a, &b));
    }
}
