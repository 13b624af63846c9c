//! The two ends of a partial decryption's product mod 2^128: coefficients (120 bits of them,
//! see [`super::ntt`]) into residues modulo tfhe-ntt's 30-bit primes, and residues back into
//! coefficients.
//!
//! tfhe-ntt goes back one coefficient at a time through Garner's mixed-radix digits (45
//! modular multiplications for ten primes, in 64- and 128-bit arithmetic the compiler cannot
//! vectorise); profiled, that was a third of a partial decryption, and reducing the mask into
//! residues a fifth. Here the reductions and the modular multiplications are products of two
//! 32-bit numbers on blocks of coefficients, which the compiler vectorises (AVX2 or AVX-512,
//! chosen at run time by `pulp`; plain code elsewhere, with the same result), and the way back
//! takes one modular multiplication per prime (see [`Crt`]). The results equal tfhe-ntt's for
//! ten primes, and exact sums of products for the nine partial decryption uses, which the
//! tests check.
//!
//! For the five primes of encryption's binary products tfhe-ntt's own way back, which pairs
//! the primes into 60-bit moduli, measured faster, so it is kept there.

use zeroize::Zeroize;

/// Coefficients converted back together: long enough for the loops to vectorise, short enough
/// for their digits to stay in the L1 cache.
const BLOCK: usize = 64;

const LOW_32: u64 = 0xffff_ffff;

/// The product of the low 32 bits of each: written so that the compiler sees two 32-bit
/// operands and emits one widening multiply per lane (`vpmuludq`).
#[inline(always)]
fn mul32(a: u64, b: u64) -> u64 {
    (a & LOW_32) * (b & LOW_32)
}

/// One prime with what reducing modulo it needs.
#[derive(Clone, Copy, Debug)]
struct Prime {
    value: u32,
    /// 2^32 mod p: folds the high half of a 64-bit number onto the low half.
    fold: u64,
    /// floor(2^61 / p), below 2^32 because every prime exceeds 2^29.
    barrett: u64,
}

impl Prime {
    fn new(value: u32) -> Self {
        assert!(
            value > 1 << 29 && value < 1 << 30,
            "prime {value} is not between 2^29 and 2^30: the reductions assume 30-bit primes"
        );
        let p = u64::from(value);
        Self {
            value,
            fold: (1u64 << 32) % p,
            barrett: (1u64 << 61) / p,
        }
    }

    /// x mod p for any 64-bit x, with 32 x 32-bit products only.
    #[inline(always)]
    fn reduce(&self, x: u64) -> u32 {
        let p = u64::from(self.value);
        // Two folds: below 2^62 + 2^32, then below 2^61.
        let x = mul32(x >> 32, self.fold) + (x & LOW_32);
        let x = mul32(x >> 32, self.fold) + (x & LOW_32);
        // Barrett on the top 32 bits: the estimate falls short by at most 2 (a third
        // correction is kept as margin; it costs one minimum).
        let quotient = mul32(x >> 29, self.barrett) >> 32;
        let mut rest = x - mul32(quotient, p);
        for _ in 0..3 {
            // A subtraction that would go below zero wraps above, and the minimum keeps the
            // other: no branch, so it vectorises.
            rest = rest.min(rest.wrapping_sub(p));
        }
        rest as u32
    }
}

/// A constant multiplier modulo one prime, in Shoup's form.
#[derive(Clone, Copy, Debug)]
struct ShoupConstant {
    value: u32,
    /// floor(value * 2^32 / p).
    quotient: u32,
}

impl ShoupConstant {
    fn new(value: u64, prime: u32) -> Self {
        Self {
            value: value as u32,
            quotient: ((value << 32) / u64::from(prime)) as u32,
        }
    }

    /// a * value mod p, for any a below 2^32.
    #[inline(always)]
    fn multiply(&self, a: u32, p: u32) -> u32 {
        let quotient = ((u64::from(a) * u64::from(self.quotient)) >> 32) as u32;
        // The true remainder a * value - quotient * p lies in [0, 2p), so its low 32 bits are it.
        let rest = a
            .wrapping_mul(self.value)
            .wrapping_sub(quotient.wrapping_mul(p));
        rest.min(rest.wrapping_sub(p))
    }
}

/// Conversion between coefficients mod 2^128 and residues modulo K primes, whose product P
/// must exceed twice the largest exact coefficient a product can have, with room to spare for
/// the rounding below (nine primes give 2^8.9 times the largest of a partial decryption's).
///
/// Back from residues r_i it uses the explicit formula: with Q_i = P / p_i and
/// y_i = r_i Q_i^-1 mod p_i, the value is sum(y_i Q_i) - k P, where k is the integer nearest
/// sum(y_i / p_i). That sum lies within |value| / P of an integer, so computing it in double
/// precision picks k exactly, and the value comes out as its representative in (-P/2, P/2)
/// (for every value a product can have; only within 2^-45 P of P/2 could the rounding err).
/// Against Garner's mixed-radix digits this takes K modular multiplications instead of
/// K (K - 1) / 2.
#[derive(Debug)]
pub(crate) struct Crt<const K: usize> {
    primes: [Prime; K],
    /// 2^32, 2^64 and 2^96 modulo each prime.
    limb_weights: [[u64; 3]; K],
    /// Q_i^-1 mod p_i.
    cofactor_inverses: [ShoupConstant; K],
    /// 1 / p_i.
    reciprocals: [f64; K],
    /// Q_i mod 2^128.
    cofactors: [u128; K],
    /// -P mod 2^128, added k times.
    minus_modulus: u128,
}

impl<const K: usize> Crt<K> {
    pub(crate) fn new(primes: [u32; K]) -> Self {
        let power = |p: u64, base: u64, exponent: u64| -> u64 {
            let (mut result, mut base, mut exponent) = (1u128, u128::from(base % p), exponent);
            while exponent > 0 {
                if exponent & 1 == 1 {
                    result = result * base % u128::from(p);
                }
                base = base * base % u128::from(p);
                exponent >>= 1;
            }
            result as u64
        };
        let cofactor_inverses = std::array::from_fn(|i| {
            let p = u64::from(primes[i]);
            let cofactor = (0..K)
                .filter(|&j| j != i)
                .fold(1u64, |acc, j| acc * (u64::from(primes[j]) % p) % p);
            ShoupConstant::new(power(p, cofactor, p - 2), primes[i])
        });
        let cofactors = std::array::from_fn(|i| {
            (0..K)
                .filter(|&j| j != i)
                .fold(1u128, |acc, j| acc.wrapping_mul(u128::from(primes[j])))
        });
        let modulus = primes
            .iter()
            .fold(1u128, |acc, &p| acc.wrapping_mul(u128::from(p)));
        let limb_weights = primes.map(|p| {
            let p = u128::from(p);
            [32, 64, 96].map(|shift| ((1u128 << shift) % p) as u64)
        });
        Self {
            primes: primes.map(Prime::new),
            limb_weights,
            cofactor_inverses,
            reciprocals: primes.map(|p| 1.0 / f64::from(p)),
            cofactors,
            minus_modulus: modulus.wrapping_neg(),
        }
    }

    #[cfg(test)]
    fn primes(&self) -> [u32; K] {
        self.primes.map(|p| p.value)
    }

    /// residues[i][k] = (coefficients[k] mod 2^BITS) mod p_i, for BITS = 120 or 128: a mask
    /// times a key share needs only 120 bits of the share (see [`super::ntt`]).
    pub(crate) fn residues<const BITS: u32>(
        &self,
        coefficients: &[u128],
        residues: &mut [Vec<u32>; K],
    ) {
        const { assert!(BITS == 120 || BITS == 128) };
        pulp::Arch::new().dispatch(Residues::<K, BITS> {
            crt: self,
            coefficients,
            residues,
        });
    }

    /// out[k] = the coefficient mod 2^128 whose residues are residues[i][k], taking the
    /// representative in (-P/2, P/2) (products of the negacyclic ring have either sign).
    /// The residues are scratch, left holding the y_i: with the key share's transform in a
    /// partial decryption they are as secret as the share, and their owner wipes them.
    pub(crate) fn reconstruct(&self, residues: &mut [Vec<u32>; K], out: &mut [u128]) {
        pulp::Arch::new().dispatch(Reconstruct {
            crt: self,
            residues,
            out,
        });
    }

    #[inline(always)]
    fn residues_of<const BITS: u32>(&self, coefficients: &[u128], residues: &mut [Vec<u32>; K]) {
        let top_limb = LOW_32 >> (128 - BITS);
        for (i, out) in residues.iter_mut().enumerate() {
            let prime = &self.primes[i];
            let [w1, w2, w3] = self.limb_weights[i];
            for (out, &value) in out.iter_mut().zip(coefficients) {
                let limb = |index: u32| (value >> (32 * index)) as u64 & LOW_32;
                // Each weighted limb is below 2^62, so the sum stays below 2^64.
                let sum = limb(0)
                    + mul32(limb(1), w1)
                    + mul32(limb(2), w2)
                    + mul32(limb(3) & top_limb, w3);
                *out = prime.reduce(sum);
            }
        }
    }

    #[inline(always)]
    fn reconstruct_into(&self, residues: &mut [Vec<u32>; K], out: &mut [u128]) {
        for (block, out) in out.chunks_mut(BLOCK).enumerate() {
            let range = block * BLOCK..block * BLOCK + out.len();
            // y_i goes back into the residues' place: both are as secret as the product.
            let mut nearest = [0f64; BLOCK];
            for (i, residues) in residues.iter_mut().enumerate() {
                let p = self.primes[i].value;
                let inverse = self.cofactor_inverses[i];
                let reciprocal = self.reciprocals[i];
                for (y, nearest) in residues[range.clone()].iter_mut().zip(nearest.iter_mut()) {
                    *y = inverse.multiply(*y, p);
                    *nearest += f64::from(*y) * reciprocal;
                }
            }
            let mut multiples = [0u32; BLOCK];
            for (multiple, nearest) in multiples.iter_mut().zip(&nearest) {
                // Between 0 and K.
                *multiple = (nearest + 0.5) as u32;
            }
            // A 32 x 128-bit product mod 2^128 is two multiplications on x86-64, which beats
            // splitting it into vector lanes.
            for (k, (out, &multiple)) in out.iter_mut().zip(&multiples).enumerate() {
                let mut value = u128::from(multiple).wrapping_mul(self.minus_modulus);
                for (y, cofactor) in residues.iter().zip(&self.cofactors) {
                    value =
                        value.wrapping_add(u128::from(y[range.start + k]).wrapping_mul(*cofactor));
                }
                *out = value;
            }
            // The top bits of the unsmudged product: not left on the worker's stack.
            nearest.zeroize();
            multiples.zeroize();
        }
    }
}

/// The conversions as `pulp` operations, so that they are compiled once per instruction set
/// and the best one the CPU has is chosen at run time (a closure would be called through a
/// shim that is not inlined, and so not vectorised).
struct Residues<'a, const K: usize, const BITS: u32> {
    crt: &'a Crt<K>,
    coefficients: &'a [u128],
    residues: &'a mut [Vec<u32>; K],
}

impl<const K: usize, const BITS: u32> pulp::WithSimd for Residues<'_, K, BITS> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.crt
            .residues_of::<BITS>(self.coefficients, self.residues);
    }
}

struct Reconstruct<'a, const K: usize> {
    crt: &'a Crt<K>,
    residues: &'a mut [Vec<u32>; K],
    out: &'a mut [u128],
}

impl<const K: usize> pulp::WithSimd for Reconstruct<'_, K> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.crt.reconstruct_into(self.residues, self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::sampling::fill_uniform;
    use rand::Rng;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use tfhe_ntt::native128;

    const N: usize = 8192;

    fn ten_plans(plan: &native128::Plan32) -> [&tfhe_ntt::prime32::Plan; 10] {
        [
            plan.ntt_0(),
            plan.ntt_1(),
            plan.ntt_2(),
            plan.ntt_3(),
            plan.ntt_4(),
            plan.ntt_5(),
            plan.ntt_6(),
            plan.ntt_7(),
            plan.ntt_8(),
            plan.ntt_9(),
        ]
    }

    fn full_primes() -> [u32; 10] {
        ten_plans(&native128::Plan32::try_new(N).unwrap()).map(|plan| plan.modulus())
    }

    fn random_residues<const K: usize>(rng: &mut ChaCha20Rng, primes: [u32; K]) -> [Vec<u32>; K] {
        primes.map(|p| (0..N).map(|_| rng.gen_range(0..p)).collect())
    }

    #[test]
    fn reducing_agrees_with_division_at_the_edges_and_at_random() {
        let crt = Crt::new(full_primes());
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let mut values = vec![0u128; N - 8];
        fill_uniform(&mut rng, &mut values);
        values.extend([
            0,
            1,
            u128::MAX,
            u128::MAX - 1,
            1 << 96,
            (1 << 64) - 1,
            1 << 127,
            3,
        ]);
        let mut residues: [Vec<u32>; 10] = std::array::from_fn(|_| vec![0; N]);
        for bits in [128, 120] {
            if bits == 128 {
                crt.residues::<128>(&values, &mut residues);
            } else {
                crt.residues::<120>(&values, &mut residues);
            }
            for (residues, p) in residues.iter().zip(crt.primes()) {
                for (&residue, &value) in residues.iter().zip(&values) {
                    let kept = value & (u128::MAX >> (128 - bits));
                    assert_eq!(
                        u128::from(residue),
                        kept % u128::from(p),
                        "{value} mod 2^{bits} mod {p}"
                    );
                }
            }
        }
        for prime in &crt.primes {
            for x in [u64::MAX, u64::MAX - 1, 1 << 63, (1 << 62) - 1, 0, 1] {
                assert_eq!(u64::from(prime.reduce(x)), x % u64::from(prime.value));
            }
        }
    }

    /// Arbitrary residues name arbitrary values in [0, P): the reconstruction must give what
    /// tfhe-ntt's own gives. The two rules for the sign differ only within 2^-45 P of P / 2,
    /// where no product comes and no random value here falls.
    #[test]
    fn reconstruction_equals_tfhe_ntts_for_ten_primes() {
        let plan = native128::Plan32::try_new(N).unwrap();
        let crt = Crt::new(full_primes());
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        for _ in 0..4 {
            let residues = random_residues(&mut rng, crt.primes());
            let mut ours = vec![0u128; N];
            crt.reconstruct(&mut residues.clone(), &mut ours);
            // tfhe-ntt's inverse runs the inverse transforms first; undo them beforehand.
            let mut transformed = residues.clone();
            let plans = ten_plans(&plan);
            for (plan, residues) in plans.iter().zip(&mut transformed) {
                plan.fwd(residues);
                plan.normalize(residues);
            }
            let mut theirs = vec![0u128; N];
            let [p0, p1, p2, p3, p4, p5, p6, p7, p8, p9] = &mut transformed;
            plan.inv(&mut theirs, p0, p1, p2, p3, p4, p5, p6, p7, p8, p9);
            assert_eq!(ours, theirs);
        }
    }

    /// Nine primes, as partial decryption uses: sums of up to N signed products of a 128-bit
    /// and a 120-bit number (the size of a product's coefficients there, up to 2^261) come back
    /// exactly mod 2^128, whatever their sign.
    #[test]
    fn nine_primes_reconstruct_sums_of_products_of_128_and_120_bit_numbers_exactly() {
        let primes: [u32; 9] = std::array::from_fn(|i| full_primes()[i]);
        let crt = Crt::new(primes);
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let top = (1u128 << 120) - 1;
        let mut expected = vec![0u128; 64];
        let mut residues: [Vec<u32>; 9] = std::array::from_fn(|_| vec![0; 64]);
        for (k, expected) in expected.iter_mut().enumerate() {
            // Every term at its largest, of one sign, for the first two; random after.
            let terms = if k < 2 { N } else { rng.gen_range(1..=N) };
            for _ in 0..terms {
                let (a, b) = if k < 2 {
                    (u128::MAX, top)
                } else {
                    (rng.r#gen::<u128>(), rng.r#gen::<u128>() & top)
                };
                let negative = if k < 2 { k == 1 } else { rng.r#gen::<bool>() };
                let product = a.wrapping_mul(b);
                *expected = if negative {
                    expected.wrapping_sub(product)
                } else {
                    expected.wrapping_add(product)
                };
                for (residues, &p) in residues.iter_mut().zip(&primes) {
                    let p = u128::from(p);
                    let term = (a % p) * (b % p) % p;
                    let term = if negative { (p - term) % p } else { term };
                    residues[k] = ((u128::from(residues[k]) + term) % p) as u32;
                }
            }
        }
        let mut ours = vec![0u128; 64];
        crt.reconstruct(&mut residues, &mut ours);
        assert_eq!(ours, expected);
    }
}
