//! Golden bytes for every encoding, and decoders that fail cleanly on bad input.

mod common;

use proptest::prelude::*;
use protocol::he::{Ciphertext, PartialDecryption, Quorum};
use protocol::wire::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// One deterministic object of every kind, encoded.
struct Samples {
    contribution: Vec<u8>,
    public_key: Vec<u8>,
    key_share: Vec<u8>,
    ciphertext: Vec<u8>,
    partial: Vec<u8>,
}

fn samples() -> &'static Samples {
    static SAMPLES: OnceLock<Samples> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let keys = common::keys();
        let secret = protocol::he::SecretContribution::generate(&mut rng);
        let contribution =
            encode_public_key_contribution(&secret.public_key_contribution(1, 42, &mut rng));
        let budget = common::budget(16, 1, 1);
        let ciphertext = keys
            .public_key
            .prepare()
            .encrypt(&[1, -2, 3, -4, 5], &budget, &mut rng)
            .unwrap();
        let bound = BoundCiphertext::new(ciphertext.clone());
        let quorum = Quorum::new(&common::config(), vec![0, 1]).unwrap();
        let partial = keys.shares[1]
            .partial_decrypt(&bound, &quorum, &budget, &mut rng)
            .unwrap();
        Samples {
            contribution,
            public_key: encode_public_key(&keys.public_key),
            key_share: encode_key_share(&keys.shares[2]).to_vec(),
            ciphertext: encode_ciphertext(&ciphertext),
            partial: encode_partial_decryption(&partial),
        }
    })
}

/// A readable golden record: the length, the first 96 bytes (header and leading fields) and
/// the SHA-256 of the whole, which pins every byte.
fn golden(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(96)];
    let hex_lines: Vec<String> = head.chunks(32).map(hex::encode).collect();
    format!(
        "length: {}\nhead:\n{}\nsha256: {}\n",
        bytes.len(),
        hex_lines.join("\n"),
        hex::encode(Sha256::digest(bytes))
    )
}

#[test]
fn golden_public_key_contribution() {
    insta::assert_snapshot!(golden(&samples().contribution));
}

#[test]
fn golden_public_key() {
    insta::assert_snapshot!(golden(&samples().public_key));
}

#[test]
fn golden_key_share() {
    insta::assert_snapshot!(golden(&samples().key_share));
}

#[test]
fn golden_ciphertext() {
    insta::assert_snapshot!(golden(&samples().ciphertext));
}

/// Kind 8: a ciphertext under a key of two secrets names them; its one mask polynomial serves
/// both secrets' bins. The key's public key keeps kind 2, one body per secret.
#[test]
fn golden_ciphertext_and_public_key_of_two_secrets() {
    let mut rng = ChaCha20Rng::seed_from_u64(78);
    let keys =
        protocol::he::LocalKeySet::generate_with_secrets(&common::config(), 2, &mut rng).unwrap();
    let ciphertext = keys
        .public_key
        .prepare()
        .encrypt(&[1, -2, 3, -4, 5], &common::budget(16, 1, 1), &mut rng)
        .unwrap();
    insta::assert_snapshot!(golden(&encode_ciphertext(&ciphertext)));
    insta::assert_snapshot!(golden(&encode_public_key(&keys.public_key)));
}

#[test]
fn golden_partial_decryption() {
    insta::assert_snapshot!(golden(&samples().partial));
}

#[test]
fn every_encoding_round_trips() {
    let s = samples();
    let limits = DecodeLimits::default();
    assert_eq!(
        encode_public_key_contribution(
            &decode_public_key_contribution(&s.contribution, Some(1)).unwrap()
        ),
        s.contribution
    );
    assert_eq!(
        encode_public_key(&decode_public_key(&s.public_key).unwrap()),
        s.public_key
    );
    assert_eq!(
        *encode_key_share(&decode_key_share(&s.key_share).unwrap()),
        s.key_share
    );
    let ciphertext = decode_ciphertext(&s.ciphertext, limits).unwrap();
    assert_eq!(encode_ciphertext(&ciphertext), s.ciphertext);
    assert_eq!(
        ciphertext_digest(&ciphertext),
        encoded_digest(&s.ciphertext)
    );
    // Streamed piece by piece: the same bytes, bound to the same digest.
    let mut streamed = Vec::new();
    let bound = BoundCiphertext::streamed(ciphertext.clone(), |piece| {
        streamed.extend_from_slice(piece)
    });
    assert_eq!(streamed, s.ciphertext);
    assert_eq!(bound.digest(), encoded_digest(&s.ciphertext));
    assert_eq!(bound, BoundCiphertext::new(ciphertext));
    assert_eq!(
        encode_partial_decryption(&decode_partial_decryption(&s.partial, limits).unwrap()),
        s.partial
    );
}

/// Runs every decoder on `bytes`; none may panic.
fn decode_all(bytes: &[u8]) -> usize {
    let limits = DecodeLimits::default();
    [
        decode_public_key_contribution(bytes, Some(1)).is_ok()
            || decode_public_key_contribution(bytes, None).is_ok(),
        decode_public_key(bytes).is_ok(),
        decode_key_share(bytes).is_ok(),
        decode_ciphertext(bytes, limits).is_ok(),
        decode_partial_decryption(bytes, limits).is_ok(),
    ]
    .iter()
    .filter(|ok| **ok)
    .count()
}

#[test]
fn every_truncation_of_every_encoding_is_an_error() {
    let s = samples();
    for bytes in [
        &s.contribution,
        &s.public_key,
        &s.key_share,
        &s.ciphertext,
        &s.partial,
    ] {
        assert_eq!(
            decode_all(bytes),
            1,
            "exactly one decoder accepts each encoding"
        );
        // Every cut in the header and first fields, then a sample of cuts further in.
        let cuts = (0..bytes.len().min(200)).chain((200..bytes.len()).step_by(997));
        for cut in cuts {
            assert_eq!(
                decode_all(&bytes[..cut]),
                0,
                "a truncation at {cut} was accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_all(&longer), 0, "trailing bytes were accepted");
    }
}

#[test]
fn a_partials_header_and_view_decode_exactly_when_the_whole_partial_does() {
    let s = samples();
    let limits = DecodeLimits::default();
    let partial = decode_partial_decryption(&s.partial, limits).unwrap();
    let header = decode_partial_header(&s.partial, limits).unwrap();
    assert_eq!(header.party, partial.party);
    assert_eq!(header.quorum, partial.quorum);
    assert_eq!(header.ciphertext, partial.ciphertext);
    assert_eq!(header.value_count, partial.values.len() as u64);
    assert_eq!(header.window, partial.window);
    let view = decode_partial_view(&s.partial, limits).unwrap();
    assert_eq!(view.header, header);
    assert!(view.values().eq(partial.values.iter().copied()));
    let cuts = (0..s.partial.len().min(200)).chain((200..s.partial.len()).step_by(997));
    for cut in cuts {
        assert!(
            decode_partial_header(&s.partial[..cut], limits).is_err(),
            "cut at {cut}"
        );
        assert!(
            decode_partial_view(&s.partial[..cut], limits).is_err(),
            "cut at {cut}"
        );
    }
    let mut longer = s.partial.clone();
    longer.push(0);
    assert!(decode_partial_header(&longer, limits).is_err());
    assert!(decode_partial_view(&longer, limits).is_err());
    let few = DecodeLimits {
        max_values: header.value_count - 1,
    };
    assert!(decode_partial_header(&s.partial, few).is_err());
    assert!(decode_partial_view(&s.partial, few).is_err());
}

/// The window is read before the values and sizes them: one that is not a window is refused
/// by name, before anything of the values' size is read.
#[test]
fn a_partial_whose_window_is_not_one_is_refused_naming_it() {
    let s = samples();
    let partial = decode_partial_decryption(&s.partial, DecodeLimits::default()).unwrap();
    // The window's two bytes sit just before the 8-byte value count, after the digest.
    let at = s.partial.len() - partial.values.len() * partial.window.bytes() - 8 - 2;
    assert_eq!(
        s.partial[at..at + 2],
        [partial.window.dropped_bits(), partial.window.bytes() as u8]
    );
    for (dropped, bytes) in [(63, 8), (64, 9), (80, 0), (121, 1)] {
        let mut bad = s.partial.clone();
        bad[at] = dropped;
        bad[at + 1] = bytes;
        let err = decode_partial_header(&bad, DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Invalid {
                    field: "window",
                    ..
                }
            ),
            "{dropped}, {bytes}: {err}"
        );
    }
    // A window that is one, but not the one the values were written for, does not decode:
    // the length no longer matches.
    let mut wider = s.partial.clone();
    wider[at + 1] = partial.window.bytes() as u8 + 1;
    assert!(matches!(
        decode_partial_view(&wider, DecodeLimits::default()).unwrap_err(),
        WireError::WrongLength { .. }
    ));
}

/// Kind 5, the partial of the top 64 bits of every value that members sent before windows,
/// still decodes (a partial released before an upgrade, a ceremony transcript made before it),
/// and re-encodes as a partial that names that window.
#[test]
fn a_partial_from_before_windows_reads_as_the_top_64_bits() {
    let s = samples();
    let limits = DecodeLimits::default();
    let partial = decode_partial_decryption(&s.partial, limits).unwrap();
    let at = s.partial.len() - partial.values.len() * partial.window.bytes() - 8 - 2;
    let mut old = s.partial[..at].to_vec();
    old[5] = 5;
    old.extend_from_slice(&(partial.values.len() as u64).to_le_bytes());
    let widened: Vec<u64> = partial.values.iter().map(|v| v | 0xab << 56).collect();
    for value in &widened {
        old.extend_from_slice(&value.to_le_bytes());
    }
    let read = decode_partial_decryption(&old, limits).unwrap();
    assert_eq!(read.window, protocol::he::Window::TOP_64);
    assert_eq!(read.values, widened);
    assert_eq!(
        decode_partial_header(&old, limits).unwrap().window,
        read.window
    );
    assert!(
        decode_partial_view(&old, limits)
            .unwrap()
            .values()
            .eq(widened.iter().copied())
    );
    let again = encode_partial_decryption(&read);
    assert_eq!(again[5], 11);
    assert_eq!(decode_partial_decryption(&again, limits).unwrap(), read);
    old.push(0);
    assert!(decode_partial_header(&old, limits).is_err());
}

/// Kind 6, the partial every member sent before BLAKE3, still decodes and keeps the SHA-256
/// digest its member logged; written again, it is kind 11, bound by BLAKE3.
#[test]
fn a_partial_written_before_blake3_reads_from_kind_6_keeping_its_sha256_digest() {
    let s = samples();
    let limits = DecodeLimits::default();
    assert_eq!(s.partial[5], 11);
    assert_eq!(
        digest::encoding_digest(&s.partial),
        *blake3::hash(&s.partial).as_bytes()
    );
    let mut old = s.partial.clone();
    old[5] = 6;
    let read = decode_partial_decryption(&old, limits).unwrap();
    assert_eq!(read, decode_partial_decryption(&s.partial, limits).unwrap());
    assert_eq!(
        digest::encoding_digest(&old),
        <[u8; 32]>::from(Sha256::digest(&old))
    );
    assert_eq!(encode_partial_decryption(&read), s.partial);
}

#[test]
fn wrong_version_kind_and_parameter_set_are_named() {
    let mut bytes = samples().partial.clone();
    bytes[4] = 2;
    assert_eq!(
        decode_partial_decryption(&bytes, DecodeLimits::default()).unwrap_err(),
        WireError::UnsupportedVersion(2)
    );
    let err = decode_ciphertext(&samples().partial, DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, WireError::WrongKind { .. }), "{err}");
    let mut bytes = samples().partial.clone();
    bytes[7 + 8] = b'X';
    let err = decode_partial_decryption(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("quorate-Xlwe128-v1"), "{err}");
}

#[test]
fn oversized_counts_are_refused_before_allocation() {
    // A ciphertext header that claims 2^40 values, followed by nothing.
    let mut bytes = samples().ciphertext[..25].to_vec();
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let err = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLarge {
                field: "value count",
                ..
            }
        ),
        "{err}"
    );
    // A count within the limit but not backed by bytes is a length error, also before allocation.
    let mut bytes = samples().ciphertext[..25].to_vec();
    bytes.extend_from_slice(&(1u64 << 20).to_le_bytes());
    bytes.extend_from_slice(&samples().ciphertext[33..36]);
    let err = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, WireError::WrongLength { .. }), "{err}");
    // An impossible message scale is refused.
    let mut bytes = samples().ciphertext.clone();
    bytes[33] = 0;
    let err = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::Invalid {
                field: "message scale",
                ..
            }
        ),
        "{err}"
    );
    // A caller's tighter limit applies.
    let err = decode_ciphertext(&samples().ciphertext, DecodeLimits { max_values: 4 }).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLarge {
                value: 5,
                limit: 4,
                ..
            }
        ),
        "{err}"
    );
}

/// The header names the body window; one outside bits 64 to 128 is refused naming the field,
/// and so is a ciphertext written before windows, with the reason.
#[test]
fn a_ciphertext_names_its_body_window_and_one_from_before_windows_is_refused_with_the_reason() {
    let s = samples();
    let ciphertext = decode_ciphertext(&s.ciphertext, DecodeLimits::default()).unwrap();
    let window = ciphertext.body_window();
    assert_eq!(
        s.ciphertext[34..36],
        [window.dropped_bits(), window.bytes() as u8]
    );
    assert!(window.bytes() < 8, "{window:?}");
    let shape = ciphertext.shape();
    assert_eq!(ciphertext_encoded_len(shape), s.ciphertext.len());
    assert_eq!(
        decode_ciphertext_header(
            &s.ciphertext[..ciphertext_header_len(1)],
            DecodeLimits::default()
        )
        .unwrap(),
        shape
    );
    for (field, at, byte) in [("body window", 34, 63), ("body window", 35, 9)] {
        let mut bytes = s.ciphertext.clone();
        bytes[at] = byte;
        let err = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, WireError::Invalid { field: f, .. } if f == field),
            "{err}"
        );
    }
    // The same ciphertext claiming wider bodies is the wrong length for its header.
    let mut bytes = s.ciphertext.clone();
    bytes[35] += 1;
    let err = decode_ciphertext(&bytes, DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, WireError::WrongLength { .. }), "{err}");
    let mut before = s.ciphertext.clone();
    before[5] = 4;
    let err = decode_ciphertext(&before, DecodeLimits::default()).unwrap_err();
    assert!(err.to_string().contains("before body windows"), "{err}");
}

/// The key ceremony's validation challenge keeps 64-bit bodies and the digest of the kind-4
/// encoding it had before body windows: today's encoding without the window's two header
/// bytes, under the old kind. Nothing else can be bound that way.
#[test]
fn a_ciphertext_with_64_bit_bodies_binds_to_its_digest_from_before_windows() {
    let keys = common::keys();
    let budget = common::budget(16, 1, 1);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let key = keys.public_key.prepare();
    let top64 = key
        .encrypt_in(&[1, -2, 3], &budget, protocol::he::Window::TOP_64, &mut rng)
        .unwrap();
    let today = encode_ciphertext(&top64);
    let mut before = today[..34].to_vec();
    before[5] = 4;
    before.extend_from_slice(&today[36..]);
    let bound = BoundCiphertext::before_windows(top64.clone()).unwrap();
    assert_eq!(bound.digest(), encoded_digest(&before));
    assert_ne!(bound.digest(), encoded_digest(&today));
    let windowed = key.encrypt(&[1, -2, 3], &budget, &mut rng).unwrap();
    assert!(BoundCiphertext::before_windows(windowed).is_err());
    // A body window the budget does not admit is refused at encryption.
    let coarser = protocol::he::Window::new(budget.body_window().dropped_bits() + 8, 2).unwrap();
    assert!(key.encrypt_in(&[1], &budget, coarser, &mut rng).is_err());
}

#[test]
fn every_model_size_a_plan_takes_is_a_ciphertext_the_wire_takes() {
    // The header of a ciphertext of the largest model a plan may describe decodes under the
    // default limits (a 100M-parameter plan was once valid and its ciphertexts refused); one
    // value more is refused, naming the field.
    let header = |values: u64| {
        let mut bytes = samples().ciphertext[..25].to_vec();
        bytes.extend_from_slice(&values.to_le_bytes());
        bytes.extend_from_slice(&samples().ciphertext[33..36]);
        bytes
    };
    let largest = u64::from(protocol::round::plan::MAX_PLAN_VALUES);
    assert!(largest >= 100_000_000);
    // And it uploads: its encoding fits the chunks an offer may announce.
    use protocol::round::message::{CHUNK_BYTES, MAX_CHUNKS};
    // With the widest bodies any window keeps.
    let widest = protocol::he::CiphertextShape {
        values: largest as usize,
        delta_bits: 85,
        body_window: protocol::he::Window::TOP_64,
        secrets: 1,
    };
    let chunks = ciphertext_encoded_len(widest).div_ceil(CHUNK_BYTES) as u64;
    assert!(chunks <= MAX_CHUNKS, "{chunks} chunks");
    let shape = decode_ciphertext_header(&header(largest), DecodeLimits::default()).unwrap();
    assert_eq!(shape.values as u64, largest);
    let err = decode_ciphertext_header(&header(largest + 1), DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            WireError::TooLarge {
                field: "value count",
                limit,
                ..
            } if limit == largest
        ),
        "{err}"
    );
}

#[test]
fn key_share_of_another_party_layout_is_refused() {
    let mut bytes = samples().key_share.clone();
    // Party byte sits after the header (25), parties and threshold.
    bytes[27] = 9;
    assert!(decode_key_share(&bytes).is_err());
}

#[test]
fn a_flipped_ciphertext_bit_changes_the_digest_partials_are_bound_to() {
    let s = samples();
    let limits = DecodeLimits::default();
    let partial: PartialDecryption = decode_partial_decryption(&s.partial, limits).unwrap();
    let mut tampered = s.ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let ciphertext: Ciphertext = decode_ciphertext(&tampered, limits).unwrap();
    assert_eq!(encoded_digest(&s.ciphertext), partial.ciphertext);
    assert_ne!(ciphertext_digest(&ciphertext), partial.ciphertext);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(
        kind in 1u8..=12,
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = samples().partial[..25].to_vec();
        bytes[5] = kind;
        bytes.extend_from_slice(&rest);
        decode_all(&bytes);
    }

    #[test]
    fn single_bit_flips_never_panic(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let s = samples();
        for original in [&s.contribution, &s.key_share, &s.ciphertext, &s.partial] {
            let mut bytes = original.clone();
            let i = index.index(bytes.len());
            bytes[i] ^= 1 << bit;
            decode_all(&bytes);
        }
    }
}
