//! NVlabs-compatible seeds: `gen_images.py` draws z with numpy's legacy `RandomState(seed).randn(z_dim)`, so seed 42
//! here must give the same z (and the same face) as there. This is MT19937 seeded with `init_genrand`, 53-bit doubles
//! from two outputs, and the polar Box-Muller method that keeps the second value of each pair.

use crate::bail;
use crate::error::Result;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The state of numpy's legacy `RandomState` as far as `random_sample` and `randn` use it.
#[derive(Clone)]
pub struct RandomState {
    mt: [u32; N],
    index: usize,
    /// The second normal of the last Box-Muller pair, returned by the next `randn` call.
    gauss_next: Option<f64>,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for an integer seed (numpy accepts exactly 0..=2^32-1).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        RandomState {
            mt,
            index: N,
            gauss_next: None,
        }
    }

    fn regenerate(&mut self) {
        for i in 0..N {
            let y = (self.mt[i] & UPPER_MASK) | (self.mt[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.mt[i] = self.mt[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next tempered 32-bit MT19937 output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.regenerate();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A double in [0, 1) with 53 random bits, as `random_sample()`.
    pub fn random_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// A standard normal, as one element of `randn()`.
    pub fn randn(&mut self) -> f64 {
        if let Some(g) = self.gauss_next.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.random_f64() - 1.0;
            let x2 = 2.0 * self.random_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss_next = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// The latent NVlabs `gen_images.py` uses for `seed`: `RandomState(seed).randn(1, z_dim)` cast to float32.
pub fn z_from_seed(seed: u32, z_dim: usize) -> Vec<f32> {
    let mut rng = RandomState::new(seed);
    (0..z_dim).map(|_| rng.randn() as f32).collect()
}

/// More seeds than anyone renders in one run; the cap keeps a typo like `0-4294967295` from exhausting memory.
pub const MAX_SEEDS: usize = 1 << 20;

/// Parse a CLI seed list in NVlabs syntax: comma-separated numbers and inclusive ranges `a-b`, e.g. `0-7,12,20-23`.
/// Order (and repetition) is kept as written; whitespace around items is allowed. At most [`MAX_SEEDS`] in total.
pub fn parse_seeds(s: &str) -> Result<Vec<u32>> {
    if s.trim().is_empty() {
        bail!("empty seed list");
    }
    let mut seeds = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            bail!("empty item in seed list '{s}'");
        }
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_seed(a, s)?, parse_seed(b, s)?);
                if a > b {
                    bail!("seed range '{item}' is reversed (start {a} > end {b})");
                }
                if (b - a) as usize >= MAX_SEEDS - seeds.len() {
                    bail!("seed list '{s}' has more than {MAX_SEEDS} seeds");
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(parse_seed(item, s)?),
        }
        if seeds.len() > MAX_SEEDS {
            bail!("seed list '{s}' has more than {MAX_SEEDS} seeds");
        }
    }
    Ok(seeds)
}

fn parse_seed(text: &str, list: &str) -> Result<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        bail!("'{text}' in seed list '{list}' is not a non-negative integer");
    }
    match text.parse::<u32>() {
        Ok(v) => Ok(v),
        Err(_) => bail!(
            "seed {text} in seed list '{list}' is out of range (seeds are 0..={})",
            u32::MAX
        ),
    }
}
