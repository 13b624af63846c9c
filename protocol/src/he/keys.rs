//! Key generation without a dealer: secret contributions, the collective public key, and the
//! replicated sharing of the collective secret.

use rand::Rng;
use rand_core::{CryptoRng, RngCore};
use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed, Seeder};
use tfhe::core_crypto::prelude::{
    CiphertextModulus, Gaussian, LweCompactPublicKey, LweDimension, LweSecretKey,
    SeededLweCompactPublicKeyOwned, StandardDev, generate_seeded_lwe_compact_public_key,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::ntt::{BinaryForm, NttContext};
use super::sampling::{fill_ternary, fill_uniform};
use super::{HeError, MAX_SECRETS, POLYNOMIAL_SIZE, QUORATE_RLWE128_V1, Subset, ThresholdConfig};

/// The number of secrets a key whose polynomials take `coefficients` words in all has: a
/// whole number from 1 to [`MAX_SECRETS`], or the length is refused, naming `what`.
pub(crate) fn secrets_of(coefficients: usize, what: &str) -> Result<usize, HeError> {
    let secrets = coefficients / POLYNOMIAL_SIZE;
    if !coefficients.is_multiple_of(POLYNOMIAL_SIZE) || !(1..=MAX_SECRETS).contains(&secrets) {
        return Err(HeError::Mismatch(format!(
            "{what} has {coefficients} coefficients: a key has 1 to {MAX_SECRETS} secrets of \
             {POLYNOMIAL_SIZE} each"
        )));
    }
    Ok(secrets)
}

fn check_secret_index(secret: usize, secrets: usize) -> Result<(), HeError> {
    if secret >= secrets {
        return Err(HeError::Config(format!(
            "secret {secret} of a key of {secrets} secrets"
        )));
    }
    Ok(())
}

/// Refuses a number of secrets no key may have.
pub(crate) fn check_secrets(secrets: usize) -> Result<(), HeError> {
    if !(1..=MAX_SECRETS).contains(&secrets) {
        return Err(HeError::Config(format!(
            "a key has 1 to {MAX_SECRETS} secrets, not {secrets}"
        )));
    }
    Ok(())
}

/// tfhe's Gaussian is parametrised relative to the modulus (the torus).
pub(crate) fn tfhe_noise_distribution() -> Gaussian<f64> {
    Gaussian::from_standard_dev(
        StandardDev(QUORATE_RLWE128_V1.noise_std_dev / 2f64.powi(128)),
        0.0,
    )
}

/// Lets tfhe draw its noise seed from the caller's CSPRNG instead of its own OS seeder, so
/// key generation stays sans-IO and reproducible in tests.
struct RngSeeder<'a, R>(&'a mut R);

impl<R: RngCore + CryptoRng> Seeder for RngSeeder<'_, R> {
    fn seed(&mut self) -> Seed {
        Seed(self.0.r#gen())
    }

    fn is_available() -> bool {
        true
    }
}

/// One member's secrets s_i: uniform ternary polynomials, one for each of the key's secrets,
/// end to end. Each collective secret is the sum of all members' contributions to it, which
/// nobody ever holds.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretContribution {
    coefficients: Vec<u128>,
}

impl std::fmt::Debug for SecretContribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretContribution(<redacted>)")
    }
}

impl SecretContribution {
    /// A contribution to a key of one secret, as every key was before keys of several.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut coefficients = vec![0u128; POLYNOMIAL_SIZE];
        fill_ternary(rng, &mut coefficients);
        Self { coefficients }
    }

    /// A contribution to a key of `secrets` secrets (see [`super::MAX_SECRETS`]).
    pub fn generate_with_secrets<R: RngCore + CryptoRng>(
        secrets: usize,
        rng: &mut R,
    ) -> Result<Self, HeError> {
        check_secrets(secrets)?;
        let mut coefficients = vec![0u128; secrets * POLYNOMIAL_SIZE];
        fill_ternary(rng, &mut coefficients);
        Ok(Self { coefficients })
    }

    pub fn secrets(&self) -> usize {
        self.coefficients.len() / POLYNOMIAL_SIZE
    }

    #[cfg(test)]
    pub(crate) fn coefficients(&self) -> &[u128] {
        &self.coefficients
    }

    /// This member's public-key bodies b_ij = a * rev(s_ij) + e_ij, one for each secret j,
    /// all with the one mask a expanded from the ceremony's common seed by tfhe, so that the
    /// bodies of all members add up to a public key for the collective secrets.
    pub fn public_key_contribution<R: RngCore + CryptoRng>(
        &self,
        party: u8,
        mask_seed: u128,
        rng: &mut R,
    ) -> PublicKeyContribution {
        let mut body = Vec::with_capacity(self.coefficients.len());
        for secret in self.coefficients.chunks(POLYNOMIAL_SIZE) {
            let secret = LweSecretKey::from_container(secret);
            let mut seeded = SeededLweCompactPublicKeyOwned::new(
                0u128,
                LweDimension(POLYNOMIAL_SIZE),
                CompressionSeed::from(Seed(mask_seed)),
                CiphertextModulus::new_native(),
            );
            generate_seeded_lwe_compact_public_key(
                &secret,
                &mut seeded,
                tfhe_noise_distribution(),
                &mut RngSeeder(rng),
            );
            body.extend_from_slice(seeded.get_body().as_ref());
        }
        PublicKeyContribution {
            party,
            mask_seed,
            body,
        }
    }

    /// Splits s_i into one additive piece per (t-1)-subset U (all uniform but the last), to be
    /// sent to the members outside U. Any t members together receive every piece; any t-1 miss
    /// the piece of the subset they form.
    pub fn deal<R: RngCore + CryptoRng>(&self, config: &ThresholdConfig, rng: &mut R) -> Dealing {
        let subsets = config.share_subsets();
        let mut remainder = self.coefficients.clone();
        let mut subshares = Vec::with_capacity(subsets.len());
        for (index, subset) in subsets.iter().enumerate() {
            let coefficients = if index + 1 == subsets.len() {
                std::mem::take(&mut remainder)
            } else {
                let mut piece = vec![0u128; remainder.len()];
                fill_uniform(rng, &mut piece);
                for (rest, value) in remainder.iter_mut().zip(&piece) {
                    *rest = rest.wrapping_sub(*value);
                }
                piece
            };
            subshares.push(Subshare {
                subset: *subset,
                coefficients,
            });
        }
        remainder.zeroize();
        Dealing { subshares }
    }
}

/// One piece of a seeded dealing as it travels to a recipient: all pieces but the last are
/// uniform and so can be sent as the 32-byte seed they expand from; the last one is whatever
/// makes the pieces add up to the secret, and must be sent whole.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub enum DealtPiece {
    Seed([u8; 32]),
    Full(Vec<u128>),
}

impl std::fmt::Debug for DealtPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DealtPiece::Seed(_) => f.write_str("DealtPiece::Seed(<redacted>)"),
            DealtPiece::Full(_) => f.write_str("DealtPiece::Full(<redacted>)"),
        }
    }
}

impl DealtPiece {
    /// The polynomials this piece stands for, for a key of `secrets` secrets.
    pub fn expand(&self, subset: Subset, secrets: usize) -> Subshare {
        let coefficients = match self {
            DealtPiece::Seed(seed) => {
                let mut stream = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(*seed);
                let mut piece = vec![0u128; secrets * POLYNOMIAL_SIZE];
                fill_uniform(&mut stream, &mut piece);
                piece
            }
            DealtPiece::Full(coefficients) => coefficients.clone(),
        };
        Subshare {
            subset,
            coefficients,
        }
    }
}

/// A dealing whose uniform pieces are given by seeds (see [`DealtPiece`]), so that what a
/// dealer sends each recipient is small.
#[derive(Debug)]
pub struct SeededDealing {
    pub pieces: Vec<(Subset, DealtPiece)>,
}

impl SeededDealing {
    /// The pieces destined for `party` (those of the subsets it is not in).
    pub fn for_party(&self, party: u8) -> Vec<(Subset, DealtPiece)> {
        self.pieces
            .iter()
            .filter(|(subset, _)| !subset.contains(party))
            .cloned()
            .collect()
    }
}

impl SecretContribution {
    /// Like [`SecretContribution::deal`], with the uniform pieces expanded from fresh seeds.
    pub fn deal_seeded<R: RngCore + CryptoRng>(
        &self,
        config: &ThresholdConfig,
        rng: &mut R,
    ) -> SeededDealing {
        let subsets = config.share_subsets();
        let mut remainder = self.coefficients.clone();
        let mut pieces = Vec::with_capacity(subsets.len());
        for (index, subset) in subsets.iter().enumerate() {
            if index + 1 == subsets.len() {
                pieces.push((*subset, DealtPiece::Full(std::mem::take(&mut remainder))));
            } else {
                let piece = DealtPiece::Seed(rng.r#gen());
                let expanded = piece.expand(*subset, self.secrets());
                for (rest, value) in remainder.iter_mut().zip(expanded.coefficients()) {
                    *rest = rest.wrapping_sub(*value);
                }
                pieces.push((*subset, piece));
            }
        }
        SeededDealing { pieces }
    }
}

/// One additive piece of a member's secret contribution (all its secrets, end to end), for
/// the subset `subset`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Subshare {
    #[zeroize(skip)]
    pub subset: Subset,
    pub(crate) coefficients: Vec<u128>,
}

impl std::fmt::Debug for Subshare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subshare({:?}, <redacted>)", self.subset)
    }
}

impl Subshare {
    pub fn from_coefficients(subset: Subset, coefficients: Vec<u128>) -> Result<Self, HeError> {
        secrets_of(coefficients.len(), "a subshare")?;
        Ok(Self {
            subset,
            coefficients,
        })
    }

    pub fn coefficients(&self) -> &[u128] {
        &self.coefficients
    }
}

/// Everything one member deals: one subshare per (t-1)-subset.
#[derive(Debug)]
pub struct Dealing {
    subshares: Vec<Subshare>,
}

impl Dealing {
    /// The subshares destined for `party` (those of the subsets it is not in).
    pub fn for_party(&self, party: u8) -> Vec<Subshare> {
        self.subshares
            .iter()
            .filter(|subshare| !subshare.subset.contains(party))
            .cloned()
            .collect()
    }
}

/// A member's share of the collective public key: one body of N coefficients per secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyContribution {
    pub party: u8,
    pub mask_seed: u128,
    pub body: Vec<u128>,
}

/// The collective public key: the mask expanded from `mask_seed` and the sum of the members'
/// bodies, one body of N coefficients per secret, end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub mask_seed: u128,
    pub body: Vec<u128>,
}

impl PublicKey {
    /// Adds the contributions of all members, each exactly once.
    pub fn combine(
        config: &ThresholdConfig,
        contributions: &[PublicKeyContribution],
    ) -> Result<Self, HeError> {
        let first = contributions
            .first()
            .ok_or_else(|| HeError::Mismatch("no public-key contributions".into()))?;
        let mut seen = 0u16;
        let length = first.body.len();
        secrets_of(length, &format!("party {}'s public-key body", first.party))?;
        let mut body = vec![0u128; length];
        for contribution in contributions {
            config.check_party(contribution.party)?;
            if seen & (1 << contribution.party) != 0 {
                return Err(HeError::Mismatch(format!(
                    "party {} contributed to the public key twice",
                    contribution.party
                )));
            }
            seen |= 1 << contribution.party;
            if contribution.mask_seed != first.mask_seed {
                return Err(HeError::Mismatch(format!(
                    "party {} used a different common seed",
                    contribution.party
                )));
            }
            if contribution.body.len() != length {
                return Err(HeError::Mismatch(format!(
                    "party {} sent a body of {} coefficients, party {} one of {length}",
                    contribution.party,
                    contribution.body.len(),
                    first.party
                )));
            }
            for (sum, value) in body.iter_mut().zip(&contribution.body) {
                *sum = sum.wrapping_add(*value);
            }
        }
        if seen.count_ones() != u32::from(config.parties()) {
            return Err(HeError::Mismatch(format!(
                "{} of {} parties contributed to the public key",
                seen.count_ones(),
                config.parties()
            )));
        }
        Ok(Self {
            mask_seed: first.mask_seed,
            body,
        })
    }

    /// How many secrets the key has: bodies of N coefficients.
    pub fn secrets(&self) -> usize {
        self.body.len() / POLYNOMIAL_SIZE
    }

    /// The key of secret `secret` alone: the mask and that secret's body. A key ceremony
    /// validates each secret with it.
    pub fn secret(&self, secret: usize) -> Result<PublicKey, HeError> {
        check_secret_index(secret, self.secrets())?;
        Ok(PublicKey {
            mask_seed: self.mask_seed,
            body: self.body[secret * POLYNOMIAL_SIZE..][..POLYNOMIAL_SIZE].to_vec(),
        })
    }

    /// The mask a, expanded from the seed exactly as tfhe expands a seeded compact public key.
    pub fn mask(&self) -> Vec<u128> {
        let seeded = self.as_tfhe_seeded();
        let expanded: LweCompactPublicKey<Vec<u128>> =
            seeded.decompress_into_lwe_compact_public_key();
        expanded.get_mask().as_ref().to_vec()
    }

    pub(crate) fn as_tfhe_seeded(&self) -> SeededLweCompactPublicKeyOwned<u128> {
        let mut seeded = SeededLweCompactPublicKeyOwned::new(
            0u128,
            LweDimension(POLYNOMIAL_SIZE),
            CompressionSeed::from(Seed(self.mask_seed)),
            CiphertextModulus::new_native(),
        );
        seeded
            .get_mut_body()
            .as_mut()
            .copy_from_slice(&self.body[..POLYNOMIAL_SIZE]);
        seeded
    }

    /// Precomputes the transforms encryption needs (done once per key, not per ciphertext).
    pub fn prepare(&self) -> EncryptionKey {
        let context = NttContext::get();
        EncryptionKey {
            public: self.clone(),
            mask_form: context.binary_form(&self.mask()),
            body_forms: self
                .body
                .chunks(POLYNOMIAL_SIZE)
                .map(|body| context.binary_form(body))
                .collect(),
        }
    }

    /// A short, stable identifier of the key: SHA-256 over its canonical encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(crate::wire::encode_public_key(self)).into()
    }
}

/// A public key ready for fast encryption.
pub struct EncryptionKey {
    pub(crate) public: PublicKey,
    pub(crate) mask_form: BinaryForm,
    /// One per secret.
    pub(crate) body_forms: Vec<BinaryForm>,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("mask_seed", &self.public.mask_seed)
            .finish_non_exhaustive()
    }
}

impl EncryptionKey {
    /// The fingerprint of the public key this was prepared from.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.public.fingerprint()
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn secrets(&self) -> usize {
        self.body_forms.len()
    }
}

/// A member's share of the collective secrets: the sum, over all dealers, of the subshares for
/// every (t-1)-subset the member is not in.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyShare {
    #[zeroize(skip)]
    pub(crate) config: ThresholdConfig,
    pub(crate) party: u8,
    pub(crate) subshares: Vec<Subshare>,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyShare(party {} of {}/{}, <redacted>)",
            self.party,
            self.config.threshold(),
            self.config.parties()
        )
    }
}

impl KeyShare {
    pub fn config(&self) -> &ThresholdConfig {
        &self.config
    }

    pub fn party(&self) -> u8 {
        self.party
    }

    pub fn subshares(&self) -> &[Subshare] {
        &self.subshares
    }

    /// How many secrets the key has (every subshare holds one polynomial of each).
    pub fn secrets(&self) -> usize {
        self.subshares
            .first()
            .map_or(1, |s| s.coefficients.len() / POLYNOMIAL_SIZE)
    }

    /// This member's share of secret `secret` alone, a share of [`PublicKey::secret`]'s key.
    pub fn secret(&self, secret: usize) -> Result<KeyShare, HeError> {
        check_secret_index(secret, self.secrets())?;
        Ok(KeyShare {
            config: self.config,
            party: self.party,
            subshares: self
                .subshares
                .iter()
                .map(|s| Subshare {
                    subset: s.subset,
                    coefficients: s.coefficients[secret * POLYNOMIAL_SIZE..][..POLYNOMIAL_SIZE]
                        .to_vec(),
                })
                .collect(),
        })
    }

    /// Rebuilds a share from its parts (as read back from a sealed file), checking that it holds
    /// exactly the subsets its party should.
    pub fn from_parts(
        config: ThresholdConfig,
        party: u8,
        subshares: Vec<Subshare>,
    ) -> Result<Self, HeError> {
        config.check_party(party)?;
        let expected = config.subsets_held_by(party);
        let actual: Vec<Subset> = subshares.iter().map(|s| s.subset).collect();
        if actual != expected {
            return Err(HeError::Mismatch(format!(
                "party {party}'s key share holds subsets {actual:?}, expected {expected:?}"
            )));
        }
        let length = subshares
            .first()
            .map_or(POLYNOMIAL_SIZE, |s| s.coefficients.len());
        secrets_of(length, &format!("party {party}'s key share"))?;
        if let Some(other) = subshares.iter().find(|s| s.coefficients.len() != length) {
            return Err(HeError::Mismatch(format!(
                "party {party}'s key share holds subshares of {length} and of {} coefficients",
                other.coefficients.len()
            )));
        }
        Ok(Self {
            config,
            party,
            subshares,
        })
    }
}

/// Collects the subshares one member receives from every dealer.
pub struct KeyShareBuilder {
    config: ThresholdConfig,
    party: u8,
    dealers_seen: u16,
    sums: Vec<Subshare>,
}

impl std::fmt::Debug for KeyShareBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyShareBuilder(party {}, dealers {:#b}, <redacted>)",
            self.party, self.dealers_seen
        )
    }
}

impl KeyShareBuilder {
    pub fn with_secrets(
        config: ThresholdConfig,
        party: u8,
        secrets: usize,
    ) -> Result<Self, HeError> {
        config.check_party(party)?;
        check_secrets(secrets)?;
        let sums = config
            .subsets_held_by(party)
            .into_iter()
            .map(|subset| Subshare {
                subset,
                coefficients: vec![0u128; secrets * POLYNOMIAL_SIZE],
            })
            .collect();
        Ok(Self {
            config,
            party,
            dealers_seen: 0,
            sums,
        })
    }

    /// Adds dealer `dealer`'s subshares for this member: exactly one per held subset.
    pub fn add(&mut self, dealer: u8, subshares: &[Subshare]) -> Result<(), HeError> {
        self.config.check_party(dealer)?;
        if self.dealers_seen & (1 << dealer) != 0 {
            return Err(HeError::Mismatch(format!(
                "dealer {dealer} delivered subshares twice"
            )));
        }
        let received: Vec<Subset> = subshares.iter().map(|s| s.subset).collect();
        let expected: Vec<Subset> = self.sums.iter().map(|s| s.subset).collect();
        if received != expected {
            return Err(HeError::Mismatch(format!(
                "dealer {dealer} sent subsets {received:?} to party {}, expected {expected:?}",
                self.party
            )));
        }
        let length = self.sums.first().map_or(0, |s| s.coefficients.len());
        if let Some(wrong) = subshares.iter().find(|s| s.coefficients.len() != length) {
            return Err(HeError::Mismatch(format!(
                "dealer {dealer} sent a subshare of {} coefficients, expected {length}",
                wrong.coefficients.len()
            )));
        }
        for (sum, subshare) in self.sums.iter_mut().zip(subshares) {
            for (acc, value) in sum.coefficients.iter_mut().zip(&subshare.coefficients) {
                *acc = acc.wrapping_add(*value);
            }
        }
        self.dealers_seen |= 1 << dealer;
        Ok(())
    }

    pub fn finish(mut self) -> Result<KeyShare, HeError> {
        let dealt = self.dealers_seen.count_ones();
        if dealt != u32::from(self.config.parties()) {
            return Err(HeError::Mismatch(format!(
                "party {} received subshares from {dealt} of {} dealers",
                self.party,
                self.config.parties()
            )));
        }
        Ok(KeyShare {
            config: self.config,
            party: self.party,
            subshares: std::mem::take(&mut self.sums),
        })
    }
}

impl Drop for KeyShareBuilder {
    fn drop(&mut self) {
        self.sums.zeroize();
    }
}

/// A whole consortium's keys generated in one process, for tests, benchmarks and rehearsals.
/// Real deployments run the same steps at each member's site through the key ceremony.
#[derive(Debug)]
pub struct LocalKeySet {
    pub public_key: PublicKey,
    pub shares: Vec<KeyShare>,
}

impl LocalKeySet {
    /// Keys of one secret, as every key was before keys of several.
    pub fn generate<R: RngCore + CryptoRng>(
        config: &ThresholdConfig,
        rng: &mut R,
    ) -> Result<Self, HeError> {
        Self::generate_with_secrets(config, 1, rng)
    }

    pub fn generate_with_secrets<R: RngCore + CryptoRng>(
        config: &ThresholdConfig,
        secrets: usize,
        rng: &mut R,
    ) -> Result<Self, HeError> {
        check_secrets(secrets)?;
        let mask_seed: u128 = rng.r#gen();
        let secrets: Vec<SecretContribution> = (0..config.parties())
            .map(|_| SecretContribution::generate_with_secrets(secrets, rng))
            .collect::<Result<_, _>>()?;
        let contributions: Vec<PublicKeyContribution> = secrets
            .iter()
            .enumerate()
            .map(|(party, secret)| secret.public_key_contribution(party as u8, mask_seed, rng))
            .collect();
        let public_key = PublicKey::combine(config, &contributions)?;
        let dealings: Vec<Dealing> = secrets.iter().map(|s| s.deal(config, rng)).collect();
        let mut shares = Vec::with_capacity(usize::from(config.parties()));
        for party in 0..config.parties() {
            let mut builder = KeyShareBuilder::with_secrets(*config, party, public_key.secrets())?;
            for (dealer, dealing) in dealings.iter().enumerate() {
                builder.add(dealer as u8, &dealing.for_party(party))?;
            }
            shares.push(builder.finish()?);
        }
        Ok(Self { public_key, shares })
    }
}
