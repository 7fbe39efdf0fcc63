//! Random noise (`--noise-mode random`) from a counter-based generator: the normal at pixel p of noisy layer l of
//! image i of a job with seed s is a function of (s, i, l, p) alone. An image's noise then does not depend on the
//! batch it is rendered in, and a device draws each layer's noise where it uses it, in parallel, with no generator
//! state to carry between layers or passes. The twin of `kernels/noise.cu`, step for step in f32.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// 2^-24: 24-bit integers times this are exact f32 values in [0, 1).
const INV_2_24: f32 = 5.960_464_5e-8;

/// splitmix64's finaliser: a bijection of 64-bit words whose every output bit depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `plane` (one layer's pixels of one image) with the normals of noisy layer `layer` (its index among the
/// network's noisy layers) of image `image` of the job with `seed`, times `strength`. Pixels 2 j and 2 j + 1 are
/// the Box-Muller pair of the j-th hash.
pub fn fill_plane(seed: u32, image: usize, layer: usize, strength: f32, plane: &mut [f32]) {
    let key = mix(((seed as u64) << 32 | image as u64).wrapping_add(GOLDEN));
    for (j, pair) in plane.chunks_mut(2).enumerate() {
        let counter = ((layer as u64) << 40 | j as u64) + 1;
        let h = mix(key.wrapping_add(counter.wrapping_mul(GOLDEN)));
        // u1 in (0, 1) and u2 in [0, 1), both exact in f32.
        let u1 = ((h >> 41) * 2 + 1) as f32 * INV_2_24;
        let u2 = ((h >> 17) & 0xff_ffff) as f32 * INV_2_24;
        let r = (-2.0 * u1.ln()).sqrt();
        // The angle pi (2 u2 - 1) (exact in f32), its sine and cosine as the device's sincospif: within an ulp.
        let angle = std::f64::consts::PI * (2.0 * u2 - 1.0) as f64;
        let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
        pair[0] = r * cos * strength;
        if let Some(second) = pair.get_mut(1) {
            *second = r * sin * strength;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plane of 2^16 normals has mean 0 and variance 1 (to within 5 standard errors), and neighbouring pixels,
    /// layers, images and seeds are unrelated (their correlation within 5 standard errors of 0).
    #[test]
    fn normals_are_standard_and_independent() {
        const N: usize = 1 << 16;
        let plane = |seed, image, layer| {
            let mut p = vec![0f32; N];
            fill_plane(seed, image, layer, 1.0, &mut p);
            p
        };
        let base = plane(7, 3, 2);
        let mean = base.iter().map(|&v| v as f64).sum::<f64>() / N as f64;
        let var = base.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / N as f64;
        let se = 1.0 / (N as f64).sqrt();
        assert!(mean.abs() < 5.0 * se, "mean {mean}");
        // The variance of a sample variance of normals is 2 / N.
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0f64).sqrt() * se,
            "variance {var}"
        );
        let corr = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
                / a.len() as f64
        };
        assert!(corr(&base[..N - 1], &base[1..]).abs() < 5.0 * se);
        for other in [plane(7, 3, 3), plane(7, 4, 2), plane(8, 3, 2)] {
            assert!(corr(&base, &other).abs() < 5.0 * se);
        }
        // The same key gives the same plane, and a strength scales it.
        assert_eq!(plane(7, 3, 2), base);
        let mut scaled = vec![0f32; N];
        fill_plane(7, 3, 2, 0.5, &mut scaled);
        assert!(scaled.iter().zip(&base).all(|(s, b)| *s == b * 0.5));
    }
}
