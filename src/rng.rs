//! snapfs's one seeded generator (splitmix64): reproducible data and choices from a seed, the
//! same on every platform. It lives in the library, not behind the `testing` feature, because
//! `snapfs demo` (a release command) writes reproducible files with it; the crash simulator
//! (`device::SimDevice`, which tears unflushed sectors by a seed), the unit tests, the library
//! tests (`tests/common`), the end-to-end and hostile-input harnesses and the kernel
//! compatibility suite all draw from it too, each seeding it its own way (`Rng(state)`,
//! [`Rng::new`], [`Rng::for_stream`]). Not for anything secret.

/// splitmix64's finaliser: every input bit reaches every output bit (also a good 64-bit hash
/// step).
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator; its state is the tuple field, so `Rng(seed)` starts a plain splitmix64
/// stream.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The library tests' seeding: the seed mixed with a constant, so seed 0 is not state 0.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    /// An independent stream per name for one seed (FNV-1a of the name over the mixed seed),
    /// so adding a draw to one stream never shifts another.
    pub fn for_stream(seed: u64, stream: &str) -> Rng {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in stream.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        Rng(h)
    }

    /// The next draw: the state steps by the golden gamma and is mixed by [`mix`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n`; 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "Rng::between({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }

    /// Fills `buf` with the next draws, little-endian, 8 bytes per draw.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }

    /// `len` bytes of [`Rng::fill`].
    pub fn bytes(&mut self, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.fill(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference splitmix64 outputs for state 0 (Vigna's splitmix64.c): data and crash
    /// images replayed from a seed stay what they were.
    #[test]
    fn the_reference_sequence() {
        let mut r = Rng(0);
        assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next(), 0x06c4_5d18_8009_454f);
        let mut r = Rng(7);
        let mut buf = [0u8; 12];
        r.fill(&mut buf);
        let mut again = Rng(7);
        assert_eq!(buf[..8], again.next().to_le_bytes());
        assert_eq!(buf[8..], again.next().to_le_bytes()[..4]);
    }
}
