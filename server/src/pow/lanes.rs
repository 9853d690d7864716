//! Two nonces per pass through x86-64's SHA extensions.
//!
//! One SHA-256 compression is a chain of 32 `sha256rnds2` instructions, each waiting
//! for the one before: a core that can start a new one every other cycle spends most
//! of the chain waiting on latency. Interleaving two nonces' compressions (two
//! independent chains) fills those cycles, which `sha2::compress256`, one block at a
//! time, cannot do. Only the hash's first word comes out: it settles the difficulty
//! check up to 32 bits, and a nonce that passes it is confirmed by the scalar path.

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_extract_epi32, _mm_set_epi32,
    _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
};

/// The SHA-256 round constants (FIPS 180-4 §4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Proof that this CPU has the instructions [`Lanes::first_words`] uses.
#[derive(Clone, Copy, Debug)]
pub struct Lanes(());

impl Lanes {
    /// The lanes, if this CPU has the SHA extensions (std caches the answer, so asking
    /// per batch of nonces costs nothing).
    pub fn detect() -> Option<Lanes> {
        let present = std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1");
        present.then_some(Lanes(()))
    }

    /// The first state word after compressing `block` (big-endian words) onto
    /// `midstate`, for each of `nonces` in place of the block's first two words.
    pub fn first_words<const L: usize>(
        self,
        midstate: &[u32; 8],
        block: &[u32; 16],
        nonces: [u64; L],
    ) -> [u32; L] {
        #[allow(unsafe_code)]
        // SAFETY: `compress_lanes` needs only the features `detect` found, and a
        // `Lanes` exists only where it found them.
        unsafe {
            compress_lanes(midstate, block, nonces)
        }
    }
}

/// Four words as one vector, the first in the lowest lane.
#[target_feature(enable = "sse2")]
fn quad(words: &[u32]) -> __m128i {
    _mm_set_epi32(
        words[3] as i32,
        words[2] as i32,
        words[1] as i32,
        words[0] as i32,
    )
}

/// [`Lanes::first_words`]' work: the nonces' compressions interleaved, round by round.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress_lanes<const L: usize>(
    midstate: &[u32; 8],
    block: &[u32; 16],
    nonces: [u64; L],
) -> [u32; L] {
    let [a, b, c, d, e, f, g, h] = midstate.map(|word| word as i32);
    // The instructions keep the state as (A, B, E, F) and (C, D, G, H), A highest.
    let abef = _mm_set_epi32(a, b, e, f);
    let cdgh = _mm_set_epi32(c, d, g, h);
    let mut state0 = [abef; L];
    let mut state1 = [cdgh; L];
    let mut w = [[
        quad(&block[..4]),
        quad(&block[4..8]),
        quad(&block[8..12]),
        quad(&block[12..]),
    ]; L];
    for (lane, nonce) in w.iter_mut().zip(nonces) {
        lane[0] = quad(&[(nonce >> 32) as u32, nonce as u32, block[2], block[3]]);
    }
    // Rounds 4i..4i+3 with message words w[i % 4]; from i = 4 on, the schedule
    // rewrites the oldest quad, W[4i..4i+3] from W[4i-16..4i-1].
    macro_rules! rounds {
        ($i:literal) => {
            let k = quad(&K[4 * $i..4 * $i + 4]);
            for lane in 0..L {
                let w = &mut w[lane];
                if $i >= 4 {
                    let (oldest, next, before, last) =
                        (w[$i % 4], w[($i + 1) % 4], w[($i + 2) % 4], w[($i + 3) % 4]);
                    let sum = _mm_add_epi32(
                        _mm_sha256msg1_epu32(oldest, next),
                        _mm_alignr_epi8::<4>(last, before),
                    );
                    w[$i % 4] = _mm_sha256msg2_epu32(sum, last);
                }
                let message = _mm_add_epi32(w[$i % 4], k);
                state1[lane] = _mm_sha256rnds2_epu32(state1[lane], state0[lane], message);
                state0[lane] = _mm_sha256rnds2_epu32(
                    state0[lane],
                    state1[lane],
                    _mm_shuffle_epi32::<0x0e>(message),
                );
            }
        };
    }
    rounds!(0);
    rounds!(1);
    rounds!(2);
    rounds!(3);
    rounds!(4);
    rounds!(5);
    rounds!(6);
    rounds!(7);
    rounds!(8);
    rounds!(9);
    rounds!(10);
    rounds!(11);
    rounds!(12);
    rounds!(13);
    rounds!(14);
    rounds!(15);
    state0.map(|state| _mm_extract_epi32::<3>(_mm_add_epi32(state, abef)) as u32)
}
