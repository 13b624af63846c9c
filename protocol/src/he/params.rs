//! The fixed parameter set and the t-of-n configuration.

use super::HeError;

/// Number of coefficients of the ring polynomial, which is also the number of values one
/// ciphertext bin carries.
pub const POLYNOMIAL_SIZE: usize = 8192;

/// Most secrets one key may have. A key of k secrets encrypts k bins of values under one mask
/// polynomial, each bin's bodies under its own secret, so a ciphertext carries a mask
/// coefficient per k values instead of one per value (see `Ciphertext`). Eight bring the mask
/// below 2 bytes a value; more would only save on a model of over 64K values.
pub const MAX_SECRETS: usize = 8;

/// Largest consortium replicated secret sharing supports: a party holds C(n-1, t-1) subshares,
/// which is at most 126 at n = 10 but grows exponentially beyond.
pub const MAX_PARTIES: u8 = 10;

/// A named, immutable set of lattice parameters. Every key, ciphertext and partial decryption
/// carries the id, and decoders refuse any other set, so objects made for different parameters
/// can never be mixed silently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParameterSet {
    pub id: &'static str,
    /// Ring dimension N of Z_q[X]/(X^N + 1), q = 2^128.
    pub polynomial_size: usize,
    /// Standard deviation of the Gaussian noise in the public key and in encryptions.
    pub noise_std_dev: f64,
    /// Smallest smudging margin (in bits) that a budget may use.
    pub min_kappa: u32,
    /// Low bits of every ciphertext mask coefficient dropped before it leaves the encryptor.
    pub mask_dropped_bits: u32,
    /// Low bits of every ciphertext body dropped before it leaves the encryptor.
    pub body_dropped_bits: u32,
    /// Low bits of a partial decryption dropped as Delta is chosen: the fewest any partial
    /// drops. The budget's window then drops as many more as Delta leaves room for.
    pub share_dropped_bits: u32,
}

/// `quorate-rlwe128-v1`: N = 8192, q = 2^128, sigma = 3.19 (128-bit security by the HE standard
/// table: N = 8192 allows log q <= 214).
pub const QUORATE_RLWE128_V1: ParameterSet = ParameterSet {
    id: "quorate-rlwe128-v1",
    polynomial_size: POLYNOMIAL_SIZE,
    noise_std_dev: 3.19,
    min_kappa: 40,
    mask_dropped_bits: 8,
    body_dropped_bits: 64,
    share_dropped_bits: 64,
};

impl ParameterSet {
    /// Looks a parameter set up by its id, as read from a file or a message.
    pub fn by_id(id: &str) -> Result<&'static ParameterSet, HeError> {
        if id == QUORATE_RLWE128_V1.id {
            Ok(&QUORATE_RLWE128_V1)
        } else {
            Err(HeError::UnknownParameterSet(id.to_owned()))
        }
    }
}

/// A validated t-of-n threshold: `parties` members, any `threshold` of whom can decrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThresholdConfig {
    parties: u8,
    threshold: u8,
}

impl ThresholdConfig {
    pub fn new(parties: u8, threshold: u8) -> Result<Self, HeError> {
        if parties < 2 {
            return Err(HeError::Config(format!(
                "parties = {parties}: a consortium needs at least 2 members"
            )));
        }
        if parties > MAX_PARTIES {
            return Err(HeError::Config(format!(
                "parties = {parties}: at most {MAX_PARTIES} members are supported with replicated \
                 secret sharing (larger consortia need Shamir sharing over a Galois ring, not yet \
                 implemented)"
            )));
        }
        if threshold < 2 {
            return Err(HeError::Config(format!(
                "threshold = {threshold}: it must be at least 2, or a single member could decrypt alone"
            )));
        }
        if threshold > parties {
            return Err(HeError::Config(format!(
                "threshold = {threshold} exceeds parties = {parties}"
            )));
        }
        Ok(Self { parties, threshold })
    }

    pub fn parties(&self) -> u8 {
        self.parties
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// Every (t-1)-subset U of the parties, in a fixed order. Each U names one additive share
    /// s_U of the collective secret; its holders are the parties outside U.
    pub fn share_subsets(&self) -> Vec<Subset> {
        let size = u32::from(self.threshold - 1);
        (0u16..(1u16 << self.parties))
            .filter(|bits| bits.count_ones() == size)
            .map(Subset)
            .collect()
    }

    /// The subsets whose share `party` holds (those not containing it).
    pub fn subsets_held_by(&self, party: u8) -> Vec<Subset> {
        self.share_subsets()
            .into_iter()
            .filter(|subset| !subset.contains(party))
            .collect()
    }

    pub(crate) fn check_party(&self, party: u8) -> Result<(), HeError> {
        if party >= self.parties {
            Err(HeError::Config(format!(
                "party index {party} is out of range for {} parties",
                self.parties
            )))
        } else {
            Ok(())
        }
    }
}

/// A set of party indices as a bit mask (bit i = party i).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subset(pub u16);

impl Subset {
    pub fn contains(&self, party: u8) -> bool {
        party < 16 && self.0 & (1 << party) != 0
    }

    pub fn members(&self) -> impl Iterator<Item = u8> + '_ {
        (0u8..16).filter(|&party| self.contains(party))
    }
}

/// The t members that decrypt one ciphertext together, in increasing index order. Every share
/// subset U is decrypted by the lowest-indexed quorum member outside U, so members agree on the
/// split without talking to each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quorum {
    config: ThresholdConfig,
    members: Vec<u8>,
}

impl Quorum {
    pub fn new(config: &ThresholdConfig, mut members: Vec<u8>) -> Result<Self, HeError> {
        members.sort_unstable();
        members.dedup();
        if members.len() != usize::from(config.threshold) {
            return Err(HeError::Config(format!(
                "a quorum needs exactly {} distinct members, got {}",
                config.threshold,
                members.len()
            )));
        }
        for &member in &members {
            config.check_party(member)?;
        }
        Ok(Self {
            config: *config,
            members,
        })
    }

    pub fn config(&self) -> &ThresholdConfig {
        &self.config
    }

    pub fn members(&self) -> &[u8] {
        &self.members
    }

    pub fn contains(&self, party: u8) -> bool {
        self.members.contains(&party)
    }

    /// The quorum member responsible for decrypting with share `subset`: the lowest-indexed
    /// member outside it. Every (t-1)-subset has one, since |Q| = t.
    pub fn assignee(&self, subset: Subset) -> Option<u8> {
        self.members
            .iter()
            .copied()
            .find(|&member| !subset.contains(member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_thresholds_with_the_reason() {
        let err = ThresholdConfig::new(11, 3).unwrap_err().to_string();
        assert!(err.contains("at most 10"), "{err}");
        let err = ThresholdConfig::new(5, 6).unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
        let err = ThresholdConfig::new(5, 1).unwrap_err().to_string();
        assert!(err.contains("at least 2"), "{err}");
        assert!(ThresholdConfig::new(10, 10).is_ok());
    }

    #[test]
    fn every_t_subset_holds_every_share_and_no_smaller_one_does() {
        for (n, t) in [(3, 2), (5, 3), (7, 4), (10, 5)] {
            let config = ThresholdConfig::new(n, t).unwrap();
            let subsets = config.share_subsets();
            for group in 0u16..(1 << n) {
                let group = Subset(group);
                let holds_all = subsets
                    .iter()
                    .all(|u| group.members().any(|member| !u.contains(member)));
                let size = group.0.count_ones();
                if size >= u32::from(t) {
                    assert!(holds_all, "{n}/{t}: {group:?} should hold every share");
                } else {
                    assert!(!holds_all, "{n}/{t}: {group:?} must miss a share");
                }
            }
        }
    }

    #[test]
    fn quorum_assigns_every_subset_to_a_member_outside_it() {
        let config = ThresholdConfig::new(7, 4).unwrap();
        let quorum = Quorum::new(&config, vec![6, 1, 3, 4]).unwrap();
        assert_eq!(quorum.members(), &[1, 3, 4, 6]);
        for subset in config.share_subsets() {
            let assignee = quorum.assignee(subset).unwrap();
            assert!(quorum.contains(assignee) && !subset.contains(assignee));
        }
        assert!(Quorum::new(&config, vec![1, 1, 2, 3]).is_err());
        assert!(Quorum::new(&config, vec![1, 2, 3, 9]).is_err());
    }
}
