//! The encoding of a partial decryption: the party, its quorum, the digest of the ciphertext it
//! decrypts, its window (the bits it keeps of each value: see `he::Window`) and one
//! value per ciphertext value in the window's bytes. Its header can be checked alone, so a
//! member refuses a malformed partial before it commits to combining.

use super::{DecodeLimits, Kind, WireError, WireReader, header};
use crate::he::{CiphertextDigest, PartialDecryption, Window};

/// Writes each value's low `window.bytes()` bytes, little-endian; the values were reduced to
/// the window, so nothing is lost.
pub fn encode_partial_decryption(partial: &PartialDecryption) -> Vec<u8> {
    let mut out = encode_partial_header(
        partial.party,
        &partial.quorum,
        &partial.ciphertext,
        partial.window,
        partial.values.len(),
    );
    let bytes = partial.window.bytes();
    for value in &partial.values {
        debug_assert!(
            bytes == 8 || value >> (8 * bytes) == 0,
            "a value outside its window"
        );
        out.extend_from_slice(&value.to_le_bytes()[..bytes]);
    }
    out
}

/// Everything of a partial decryption's encoding before its values, with room reserved for
/// them (the window's bytes each, little-endian): a member's partial is computed straight
/// into it.
pub(crate) fn encode_partial_header(
    party: u8,
    quorum: &[u8],
    ciphertext: &CiphertextDigest,
    window: Window,
    value_count: usize,
) -> Vec<u8> {
    let mut out = header(Kind::PartialDecryption);
    out.reserve_exact(2 + quorum.len() + 32 + 2 + 8 + value_count * window.bytes());
    out.push(party);
    out.push(quorum.len() as u8);
    out.extend_from_slice(quorum);
    out.extend_from_slice(&ciphertext.0);
    out.push(window.dropped_bits());
    out.push(window.bytes() as u8);
    out.extend_from_slice(&(value_count as u64).to_le_bytes());
    out
}

pub fn decode_partial_decryption(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<PartialDecryption, WireError> {
    let (header, values) = read_partial_header(bytes, limits)?;
    let window = header.window;
    let values = values
        .chunks_exact(window.bytes())
        .map(|c| window.read(c))
        .collect();
    Ok(PartialDecryption {
        party: header.party,
        quorum: header.quorum,
        ciphertext: header.ciphertext,
        window,
        values,
    })
}

/// Everything of a partial decryption but its values, checked against its length: whether the
/// rest decodes, without decoding it (a member checks every partial this way before it
/// commits to combining them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialHeader {
    pub party: u8,
    pub quorum: Vec<u8>,
    pub ciphertext: CiphertextDigest,
    pub window: Window,
    pub value_count: u64,
}

pub fn decode_partial_header(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<PartialHeader, WireError> {
    read_partial_header(bytes, limits).map(|(header, _)| header)
}

/// A partial decryption's header, checked as [`decode_partial_header`] does, and its values
/// left where they are in the encoding: a combination subtracts them from there
/// (`he::Combination::subtract_encoded`) instead of from a decoded copy of model size (800 MB
/// at 100M values), which would be the largest thing a member holds while it combines.
#[derive(Clone, Debug)]
pub struct PartialView<'a> {
    pub header: PartialHeader,
    /// One value per ciphertext value, the window's bytes each, little-endian.
    pub(crate) values: &'a [u8],
}

impl PartialView<'_> {
    /// The values, decoded one by one.
    pub fn values(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        let window = self.header.window;
        self.values
            .chunks_exact(window.bytes())
            .map(move |v| window.read(v))
    }

    pub(crate) fn value_count(&self) -> usize {
        self.values.len() / self.header.window.bytes()
    }
}

pub fn decode_partial_view(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<PartialView<'_>, WireError> {
    let (header, values) = read_partial_header(bytes, limits)?;
    Ok(PartialView { header, values })
}

/// The header and the values' bytes, exactly `value_count * window.bytes()` of them.
fn read_partial_header(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<(PartialHeader, &[u8]), WireError> {
    let mut reader = WireReader::new(bytes);
    let kind = reader.header_of(&[
        Kind::PartialDecryption,
        Kind::PartialDecryptionSha256,
        Kind::PartialDecryptionTop64,
    ])?;
    let party = reader.u8("party")?;
    let quorum_len = reader.u8("quorum size")?;
    if quorum_len > crate::he::MAX_PARTIES {
        return Err(WireError::TooLarge {
            field: "quorum size",
            value: u64::from(quorum_len),
            limit: u64::from(crate::he::MAX_PARTIES),
        });
    }
    let quorum = reader.take("quorum", usize::from(quorum_len))?.to_vec();
    if quorum.windows(2).any(|w| w[0] >= w[1]) || !quorum.contains(&party) {
        return Err(WireError::Invalid {
            field: "quorum",
            reason: format!("{quorum:?} is not strictly increasing or lacks party {party}"),
        });
    }
    let digest: [u8; 32] = reader
        .take("ciphertext digest", 32)?
        .try_into()
        .expect("32 bytes");
    let window = if kind == Kind::PartialDecryptionTop64 {
        Window::TOP_64
    } else {
        let dropped_bits = reader.u8("window's dropped bits")?;
        let width = reader.u8("window's bytes per value")?;
        Window::new(dropped_bits, width).map_err(|e| WireError::Invalid {
            field: "window",
            reason: e.to_string(),
        })?
    };
    let value_count = super::read_value_count(&mut reader, limits)?;
    let len = value_count * window.bytes() as u64;
    reader.expect_remaining(len)?;
    let values = reader.take("values", len as usize)?;
    let header = PartialHeader {
        party,
        quorum,
        ciphertext: CiphertextDigest(digest),
        window,
        value_count,
    };
    Ok((header, values))
}
