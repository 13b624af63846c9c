//! Which bits of a partial decryption, or of a ciphertext body, leave their author.
//!
//! A partial decryption is a 128-bit word per value, but combining needs only a window of it:
//! - **below**, bits far under Delta only carry smudging, so they are rounded away (their
//!   rounding adds to the decryption error, which the budget keeps under Delta / 2);
//! - **above**, the combined phase Delta * m + e is small, so it is known from its residue
//!   modulo 2^w for any w with |Delta * m + e| < 2^(w - 1). Reducing modulo 2^w commutes with
//!   the subtraction (2^w divides 2^128), so each partial may be sent modulo 2^w.
//!
//! The window is a function of what is revealed anyway, so it weakens nothing: a simulator
//! of the full partial yields the windowed one. What it saves is bytes: at the default plan a
//! partial is 4 bytes per value instead of 8, read against the model the round builds on (5
//! under plans that read models absolutely; see `Budget::share_window` and `he::Decoding`).
//!
//! A ciphertext body is the same kind of word and is kept the same way (`Budget::body_window`):
//! rounded where Delta leaves room for the rounding of every body summed into an aggregate,
//! reduced just above the largest phase. Its rounding is public arithmetic on what the
//! encryptor sends, independent of the key, so it needs no smudging.

use super::HeError;

/// The bits `[dropped_bits, dropped_bits + 8 * bytes)` of a 128-bit word (a smudged partial,
/// a ciphertext body), rounded to nearest at the bottom. Only [`super::Budget`] chooses one for
/// real use; partials and ciphertexts carry theirs, and a combination refuses a partial window
/// that is not the budget's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    dropped_bits: u8,
    bytes: u8,
}

impl Window {
    /// Fewest low bits any window drops: combining works on the top 64 bits, where the
    /// ciphertext bodies live.
    pub const MIN_DROPPED_BITS: u8 = 64;

    /// A window, or why it is not one: 1 to 8 bytes, at least 64 dropped bits, and nothing
    /// above bit 128.
    pub fn new(dropped_bits: u8, bytes: u8) -> Result<Self, HeError> {
        if !(1..=8).contains(&bytes) {
            return Err(HeError::Config(format!(
                "a window of {bytes} bytes per value: between 1 and 8"
            )));
        }
        if dropped_bits < Self::MIN_DROPPED_BITS
            || u32::from(dropped_bits) + 8 * u32::from(bytes) > 128
        {
            return Err(HeError::Config(format!(
                "{dropped_bits} dropped bits and {bytes} bytes per value: the window must lie \
                 between bit {} and bit 128",
                Self::MIN_DROPPED_BITS
            )));
        }
        Ok(Self {
            dropped_bits,
            bytes,
        })
    }

    /// The top 64 bits, as every partial and body was before windows. A combination takes it
    /// beside the budget's window: it holds every bit of any window, rounded at bit 64, which
    /// Delta was chosen for.
    pub const TOP_64: Self = Self {
        dropped_bits: 64,
        bytes: 8,
    };

    pub fn dropped_bits(self) -> u8 {
        self.dropped_bits
    }

    /// Bytes per value on the wire.
    pub fn bytes(self) -> usize {
        usize::from(self.bytes)
    }

    /// The bits of the 128-bit word that partials are reduced to: w.
    pub fn top_bit(self) -> u32 {
        u32::from(self.dropped_bits) + 8 * u32::from(self.bytes)
    }

    /// The word rounded to nearest at `dropped_bits` and reduced modulo 2^w.
    #[inline]
    pub(crate) fn keep(self, word: u128) -> u64 {
        let d = u32::from(self.dropped_bits);
        self.reduce((word.wrapping_add(1u128 << (d - 1)) >> d) as u64)
    }

    /// A kept value moved back to the top 64 bits (bit 64 of the word is bit 0 there), where
    /// it is subtracted from the bodies.
    #[inline]
    pub(crate) fn to_top(self, kept: u64) -> u64 {
        kept << (self.dropped_bits - 64)
    }

    /// The kept value of a word in the top 64 bits (a body): the inverse of [`Self::to_top`],
    /// dropping whatever a sum carried above the top.
    #[inline]
    pub(crate) fn of_top(self, top: u64) -> u64 {
        self.reduce(top >> (self.dropped_bits - 64))
    }

    /// A value counted from the window's bottom, reduced modulo 2^(8 * bytes).
    #[inline]
    fn reduce(self, value: u64) -> u64 {
        if self.bytes == 8 {
            value
        } else {
            value & ((1u64 << (8 * self.bytes)) - 1)
        }
    }

    /// The value of `bytes` little-endian bytes.
    #[inline]
    pub(crate) fn read(self, bytes: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(word)
    }
}

/// "bits 81..121": what the window keeps of the 128-bit word, as errors name it.
impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bits {}..{}", self.dropped_bits, self.top_bit())
    }
}

/// A phase in the top 64 bits, known modulo 2^top_bit (top_bit in 64..=128), as the signed
/// value it stands for.
#[inline]
pub(crate) fn sign_extend(phase: u64, top_bit: u32) -> u64 {
    let unknown = 128 - top_bit;
    (((phase << unknown) as i64) >> unknown) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_keeps_its_bits_rounded_to_nearest_and_reduced() {
        let window = Window::new(80, 5).unwrap();
        assert_eq!(window.top_bit(), 120);
        assert_eq!(window.keep(0), 0);
        assert_eq!(window.keep((1u128 << 79) - 1), 0);
        assert_eq!(window.keep(1u128 << 79), 1);
        assert_eq!(window.keep(7u128 << 80), 7);
        // Bits from 120 up are reduced away, and rounding up wraps modulo 2^120.
        assert_eq!(window.keep((1u128 << 120) | (3u128 << 80)), 3);
        assert_eq!(window.keep(u128::MAX), 0);
        assert_eq!(window.to_top(window.keep(9u128 << 80)), 9 << 16);
    }

    /// A body is kept in the top 64 bits at its window's place; a sum may carry above the
    /// top, which reading it back for the wire drops.
    #[test]
    fn a_body_in_the_top_64_bits_reads_back_its_kept_value_whatever_a_sum_carried() {
        let window = Window::new(81, 5).unwrap();
        for kept in [0u64, 1, 0x12_3456_789a, (1 << 40) - 1] {
            let top = window.to_top(kept);
            assert_eq!(top & ((1 << 17) - 1), 0);
            assert_eq!(window.of_top(top), kept);
            assert_eq!(window.of_top(top | (1 << 57) | (1 << 63)), kept);
        }
        assert_eq!(Window::TOP_64.of_top(u64::MAX), u64::MAX);
        assert_eq!(
            window.of_top(window.to_top(window.keep(5u128 << 81) + 3)),
            8
        );
    }

    #[test]
    fn a_phase_known_modulo_two_to_the_w_reads_back_signed() {
        let window = Window::new(80, 5).unwrap();
        // In the top 64 bits, the window reaches bit 56: a phase of -1 there reads as -1.
        let minus_one = (1u64 << 56) - 1;
        assert_eq!(sign_extend(minus_one, window.top_bit()) as i64, -1);
        assert_eq!(sign_extend(5, window.top_bit()), 5);
        // The largest positive phase and the most negative one, at the window's top.
        assert_eq!(sign_extend((1 << 55) - 1, window.top_bit()), (1 << 55) - 1);
        assert_eq!(sign_extend(1 << 55, window.top_bit()) as i64, -(1 << 55));
        // Bits above the window are unknown and ignored.
        assert_eq!(sign_extend((1 << 60) | 5, window.top_bit()), 5);
        assert_eq!(sign_extend(u64::MAX, window.top_bit()) as i64, -1);
        assert_eq!(sign_extend(u64::MAX, Window::TOP_64.top_bit()), u64::MAX);
    }

    #[test]
    fn a_window_outside_bits_64_to_128_or_of_no_bytes_is_refused() {
        assert!(Window::new(63, 8).is_err());
        assert!(Window::new(64, 9).is_err());
        assert!(Window::new(80, 0).is_err());
        assert!(Window::new(121, 1).is_err());
        assert!(Window::new(120, 1).is_ok());
        assert_eq!(Window::new(64, 8).unwrap(), Window::TOP_64);
    }
}
