// random_noise: one noisy layer's random noise [N, 1, H, W] times its strength, for images first_image ... Each
// normal is a function of (seed, image, layer, pixel) alone, so a layer's noise is drawn where it is used, in
// parallel, with no generator state to carry between layers, passes or devices. Twin: cpu::noise (the same hash
// and Box-Muller transform, in f32 with the same rounding steps, its sine and cosine through f64). A thread takes
// one pair of pixels.
#include "common.cuh"

constexpr unsigned long long kNoiseGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's finaliser: a bijection of 64-bit words whose every output bit depends on every input bit.
__device__ __forceinline__ unsigned long long noise_mix(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

KERNEL_BOUNDED(random_noise, RandomNoiseParams, 256) {
  const long long pairs = (p.plane + 1) / 2;
  GRID_STRIDE_LOOP(i, p.images * pairs) {
    const long long b = i / pairs, j = i % pairs;
    const unsigned long long image = (unsigned long long)(p.first_image + b);
    const unsigned long long key = noise_mix(((unsigned long long)p.seed << 32 | image) + kNoiseGolden);
    const unsigned long long counter = ((unsigned long long)p.layer << 40 | (unsigned long long)j) + 1;
    const unsigned long long h = noise_mix(key + counter * kNoiseGolden);
    // u1 in (0, 1) and u2 in [0, 1), both exact in f32 (24 significant bits at most).
    const float u1 = (float)((h >> 41) * 2 + 1) * 5.9604644775390625e-8f;
    const float u2 = (float)((h >> 17) & 0xffffff) * 5.9604644775390625e-8f;
    const float r = sqrtf(-2.0f * logf(u1));
    // The angle pi (2 u2 - 1), uniform over a period: sincospif needs no argument reduction, where sinf and cosf
    // carry a slow path for large arguments in local memory.
    float s, c;
    sincospif(2.0f * u2 - 1.0f, &s, &c);
    float* const y = p.y + b * p.plane + 2 * j;
    y[0] = r * c * p.strength;
    if (2 * j + 1 < p.plane) y[1] = r * s * p.strength;
  }
}
