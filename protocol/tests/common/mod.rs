//! Deterministic keys and objects shared by the integration tests.
#![allow(dead_code)]

use protocol::he::{
    Budget, BudgetRequest, Ciphertext, Decoding, LocalKeySet, PartialDecryption, Quorum,
    ThresholdConfig,
};
use protocol::wire::BoundCiphertext;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::OnceLock;

pub fn config() -> ThresholdConfig {
    ThresholdConfig::new(3, 2).unwrap()
}

pub fn keys() -> &'static LocalKeySet {
    static KEYS: OnceLock<LocalKeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        LocalKeySet::generate(&config(), &mut ChaCha20Rng::seed_from_u64(2024)).unwrap()
    })
}

pub fn budget(value_bits: u32, contributions: u32, weight_bound: u64) -> Budget {
    Budget::compute(BudgetRequest {
        config: config(),
        max_contributions: contributions,
        weight_bound,
        value_bits,
        kappa: 40,
        rounds: 1,
        decoding: Decoding::Absolute,
    })
    .unwrap()
}

pub fn decrypt(ciphertext: &Ciphertext, budget: &Budget, rng: &mut ChaCha20Rng) -> Vec<i64> {
    let ciphertext = &BoundCiphertext::new(ciphertext.clone());
    let quorum = Quorum::new(&config(), vec![0, 2]).unwrap();
    let partials: Vec<PartialDecryption> = [0usize, 2]
        .iter()
        .map(|&m| {
            keys().shares[m]
                .partial_decrypt(ciphertext, &quorum, budget, rng)
                .unwrap()
        })
        .collect();
    protocol::he::combine(ciphertext, &quorum, &partials, budget).unwrap()
}
