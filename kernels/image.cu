// images_to_u8: the finished images as bytes, on the device, so that a render to PNG downloads a quarter of the
// f32 images' bytes (12.6 MB -> 3.1 MB per 1024 px image). Twin: io::image::Images8::from_tensor. Memory-bound:
// a thread per pixel reads its channels from their planes (coalesced across the warp) and writes them together.
#include "common.cuh"

KERNEL_BOUNDED(images_to_u8, ImagesU8Params, 256) {
  GRID_STRIDE_LOOP(i, p.pixels) {
    const long long image = i / p.plane, at = i % p.plane;
    const float* const src = p.x + image * p.channels * p.plane + at;
    unsigned char* const dst = p.y + i * p.channels;
    for (int c = 0; c < p.channels; ++c) {
      // A multiply and an add, each rounded (never fused), as the host computes x * 127.5 + 128.
      const float v = __fadd_rn(__fmul_rn(src[(long long)c * p.plane], 127.5f), 128.0f);
      // fmaxf returns 0 for NaN, and the conversion truncates, as Rust's `as u8`.
      dst[c] = (unsigned char)fminf(fmaxf(v, 0.0f), 255.0f);
    }
  }
}
