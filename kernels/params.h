// Kernel parameter structs: the ABI between Rust and the kernels. src/cuda/params.rs mirrors each struct field
// for field (pointers are 64-bit device addresses there); a test compares the layouts through the emulation.
// Fields are ordered 8-byte first so no struct has padding.
#pragma once

enum Activation { ACT_LINEAR = 0, ACT_LRELU = 1 };

// y = clamp(act(x + bias[c]) * gain), x laid out [outer, channels, inner]. bias may be null. clamp < 0: none.
struct BiasActParams {
  float* y;
  const float* x;
  const float* bias;
  long long n;
  int channels;
  int inner;
  int act;
  float alpha;
  float gain;
  float clamp;
};

// Styles of one synthesis layer: styles[b, i] = ws[b, ws_index, :] . affine[i, :] + affine_bias[i], with the affine
// weight already scaled by 1/sqrt(w_dim).
struct ModconvAffineParams {
  float* styles;
  const float* ws;
  const float* affine;
  const float* affine_bias;
  long long ws_sample_stride;
  int batch;
  int in_channels;
  int w_dim;
  int ws_index;
};

// Demodulation coefficients: dcoefs[b, o] = rsqrt(sum_i styles[b, i]^2 * wsq_t[i, o] + 1e-8), where
// wsq_t[i, o] = sum over the taps of weight[o, i]^2 (transposed so consecutive threads read consecutive o).
struct ModconvDemodParams {
  float* dcoefs;
  const float* styles;
  const float* wsq_t;
  long long n;
  int in_channels;
  int out_channels;
};

// One modulated convolution with its fused epilogue, for the whole batch on one shared weight:
// y = clamp(act(conv(x * styles, weight) * dcoefs + noise * noise_strength + bias) * gain).
// x [batch, in_channels, height, width]; y at the output resolution (up * height, up * width); weight in the packing
// of the kernel (modconv.cu), weight_stride floats per packed row; dcoefs [batch, out_channels], noise and bias may
// be null; noise is [height', width'] per sample, noise_sample_stride apart (0: one plane shared by the batch).
// tiles_x: output tiles per tile row (up-sampling kernel). clamp < 0: none.
struct ModconvParams {
  float* y;
  const float* x;
  const float* weight;
  const float* styles;
  const float* dcoefs;
  const float* noise;
  const float* bias;
  long long noise_sample_stride;
  int batch;
  int in_channels;
  int out_channels;
  int height;
  int width;
  int weight_stride;
  int tiles_x;
  int act;
  float alpha;
  float gain;
  float clamp;
  float noise_strength;
};

// The skip image's up-sampling: y = upfirdn2d(x, [1,3,3,1], up=2, pad [2,1,2,1], gain 4) + addend, x
// [batch, channels, height, width], y twice the size. addend (may be null) is read at
// b * addend_sample_stride + c * addend_channel_stride + pixel (0 strides broadcast).
struct SkipUpsampleParams {
  float* y;
  const float* x;
  const float* addend;
  long long addend_sample_stride;
  long long addend_channel_stride;
  int batch;
  int channels;
  int height;
  int width;
};
