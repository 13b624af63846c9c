//! The randomness streams smudging draws from, one per bin: AES-256 in counter mode, keyed by
//! the stream's 32-byte seed.
//!
//! Smudging takes 32 bytes of randomness a value: at ChaCha12 (the streams before) that was
//! 16 % of a partial decryption's time. AES-256 with the CPU's AES instructions draws the same
//! bytes in two thirds of the time (BENCHMARKS.md). A stream never draws near 2^64 blocks (a
//! bin takes 256 KiB), so its output is indistinguishable from uniform as long as AES-256 is
//! a pseudorandom permutation; each seed is fresh from the caller's CSPRNG, and nothing ever
//! recomputes a partial decryption, so no other build has to reproduce these bytes.
//!
//! Encryption keeps its ChaCha12 streams: encryptions from a seed (the ceremony's validation
//! challenge, a server step, a retry) are recomputed and compared by digest, by every build.
//! Where the CPU has no AES instructions (or on ARM, where the `aes` crate uses them only when
//! built with `--cfg aes_armv8`) the crate's constant-time software AES runs instead, slower
//! than ChaCha12.

use aes::Aes256Enc;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use rand_core::{CryptoRng, RngCore, SeedableRng};

/// Blocks encrypted at once: the AES instructions pipeline eight, and a kibibyte amortises
/// the call.
const BLOCKS: usize = 64;

/// AES-256-CTR from block 0, as a `rand_core` generator. Bytes are handed out in order, so
/// a stream read by any mix of calls yields the same bytes.
pub(crate) struct StreamRng {
    cipher: Aes256Enc,
    /// The index of the next block to encrypt.
    counter: u128,
    buffer: [u8; 16 * BLOCKS],
    /// Bytes of `buffer` already handed out.
    used: usize,
}

impl SeedableRng for StreamRng {
    type Seed = [u8; 32];

    fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            cipher: Aes256Enc::new(&GenericArray::from(seed)),
            counter: 0,
            buffer: [0; 16 * BLOCKS],
            used: 16 * BLOCKS,
        }
    }
}

impl StreamRng {
    /// Encrypts the next `out.len() / 16` counter blocks into `out`.
    fn keystream(&mut self, out: &mut [u8]) {
        debug_assert_eq!(out.len() % 16, 0);
        if out.is_empty() {
            return;
        }
        let mut blocks = [GenericArray::<u8, aes::cipher::consts::U16>::default(); BLOCKS];
        for piece in out.chunks_mut(16 * BLOCKS) {
            let count = piece.len() / 16;
            for block in &mut blocks[..count] {
                block.copy_from_slice(&self.counter.to_le_bytes());
                self.counter = self.counter.wrapping_add(1);
            }
            self.cipher.encrypt_blocks(&mut blocks[..count]);
            for (out, block) in piece.chunks_exact_mut(16).zip(&blocks) {
                out.copy_from_slice(block);
            }
        }
        // The blocks are keystream already handed out; nothing secret stays on the stack.
        for block in &mut blocks {
            zeroize::Zeroize::zeroize(block.as_mut_slice());
        }
    }

    fn refill(&mut self) {
        let mut buffer = [0u8; 16 * BLOCKS];
        self.keystream(&mut buffer);
        self.buffer = buffer;
        zeroize::Zeroize::zeroize(&mut buffer);
        self.used = 0;
    }
}

impl RngCore for StreamRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, mut dest: &mut [u8]) {
        // What is left of the buffer first, then whole blocks straight into `dest`, then the
        // rest from a fresh buffer.
        let from_buffer = dest.len().min(self.buffer.len() - self.used);
        dest[..from_buffer].copy_from_slice(&self.buffer[self.used..self.used + from_buffer]);
        self.used += from_buffer;
        dest = &mut dest[from_buffer..];
        let whole = dest.len() / 16 * 16;
        let (blocks, rest) = dest.split_at_mut(whole);
        self.keystream(blocks);
        if !rest.is_empty() {
            self.refill();
            rest.copy_from_slice(&self.buffer[..rest.len()]);
            self.used = rest.len();
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for StreamRng {}

impl Drop for StreamRng {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS-197 appendix C.3: AES-256 of one block under the key 00 01 .. 1f.
    #[test]
    fn the_stream_is_aes_256_of_the_block_counter_under_the_seed() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let plaintext: [u8; 16] = std::array::from_fn(|i| (i as u8) * 0x11);
        let cipher = Aes256Enc::new(&GenericArray::from(key));
        let mut block = GenericArray::from(plaintext);
        cipher.encrypt_block(&mut block);
        assert_eq!(
            hex::encode(block),
            "8ea2b7ca516745bfeafc49904b496089",
            "the AES the stream uses is AES-256"
        );

        let mut stream = StreamRng::from_seed(key);
        let mut first = [0u8; 48];
        stream.fill_bytes(&mut first);
        for (index, got) in first.chunks(16).enumerate() {
            let mut block = GenericArray::from((index as u128).to_le_bytes());
            cipher.encrypt_block(&mut block);
            assert_eq!(got, block.as_slice(), "block {index}");
        }
    }

    #[test]
    fn any_mix_of_reads_yields_the_same_bytes_in_order() {
        let seed = [7u8; 32];
        let mut whole = vec![0u8; 5000];
        StreamRng::from_seed(seed).fill_bytes(&mut whole);
        for sizes in [
            &[1usize, 15, 16, 17, 1024, 3][..],
            &[4, 8, 1000, 2048, 7],
            &[5000],
        ] {
            let mut stream = StreamRng::from_seed(seed);
            let mut read = Vec::new();
            let mut sizes = sizes.iter().cycle();
            while read.len() < whole.len() {
                let size = (*sizes.next().unwrap()).min(whole.len() - read.len());
                let mut piece = vec![0u8; size];
                match size {
                    4 => piece.copy_from_slice(&stream.next_u32().to_le_bytes()),
                    8 => piece.copy_from_slice(&stream.next_u64().to_le_bytes()),
                    _ => stream.fill_bytes(&mut piece),
                }
                read.extend_from_slice(&piece);
            }
            assert_eq!(read, whole, "reads of {sizes:?}");
        }
        let mut other = vec![0u8; 64];
        StreamRng::from_seed([8u8; 32]).fill_bytes(&mut other);
        assert_ne!(other, whole[..64]);
    }
}
