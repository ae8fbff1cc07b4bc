//! A small seeded random generator (xoshiro256**, seeded through SplitMix64).
//!
//! Random tensors are drawn on the host and then moved to their device, so one seed gives the
//! same tensor on the CPU and on every GPU.

/// A deterministic pseudo-random generator.
///
/// ```
/// let mut a = nabla::Generator::new(7);
/// let mut b = nabla::Generator::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Clone, Debug)]
pub struct Generator {
    state: [u64; 4],
}

/// A 64-bit value determined by both `a` and `b` (a seed derived from a seed and a stream).
pub fn mix(a: u64, b: u64) -> u64 {
    Generator::new(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)).next_u64()
}

impl Generator {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut splitmix = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Generator { state: [splitmix(), splitmix(), splitmix(), splitmix()] }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: log is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in [0, n); an empty range (`n` = 0) is an error.
    pub fn below(&mut self, n: u64) -> crate::Result<u64> {
        match std::num::NonZeroU64::new(n) {
            Some(n) => Ok(self.below_nonzero(n)),
            None => Err(crate::Error::invalid("below", "cannot draw from the empty range [0, 0)")),
        }
    }

    /// Uniform integer in [0, n).
    fn below_nonzero(&mut self, n: std::num::NonZeroU64) -> u64 {
        let n = n.get();
        // Lemire's multiply-shift, with rejection to remove the bias.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below_nonzero(std::num::NonZeroU64::MIN.saturating_add(i as u64)) as usize;
            items.swap(i, j);
        }
    }
}
