// Kernel parameter structs: the ABI between Rust and the kernels. src/cuda/params.rs mirrors each struct field
// for field (pointers are 64-bit device addresses there); a test compares the layouts through the emulation.
// Fields are ordered 8-byte first so no struct has padding.
#pragma once

enum Activation { ACT_LINEAR = 0, ACT_LRELU = 1 };
// Element types of activations in device memory (act.cuh).
enum DType { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 };

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

// upfirdn2d per plane (twin: cpu::ops::upfirdn2d): x [planes, in_h, in_w] -> y [planes, out_h, out_w]. f is
// [filter_h, filter_w] (2-D) or [filter_w] (separable; filter_h == filter_w), scaled by filter_gain and flipped
// unless flip_filter. Each block computes a tile_out_h x tile_out_w output tile from a tile_in_h x tile_in_w input
// tile in shared memory; the host sizes both (cuda::ops::upfirdn2d_on).
struct UpfirdnParams {
  float* y;
  const float* x;
  const float* f;
  long long planes;
  int in_h;
  int in_w;
  int out_h;
  int out_w;
  int up;
  int down;
  int pad_x0;
  int pad_y0;
  int filter_h;
  int filter_w;
  int flip_filter;
  float filter_gain;
  int tile_out_h;
  int tile_out_w;
  int tile_in_h;
  int tile_in_w;
};

// Fully connected layer on a batch, w [out_features, in_features]:
// y[n, o] = clamp(act(sum_k x[n, k] * (w[o, k] * weight_gain) + bias[o] * bias_gain) * gain).
// normalize_input: x[n] is first scaled by rsqrt(mean_k x[n, k]^2 + 1e-8) (normalize_2nd_moment). bias may be
// null. clamp < 0: none.
struct FullyConnectedParams {
  float* y;
  const float* x;
  const float* w;
  const float* bias;
  int batch;
  int in_features;
  int out_features;
  int normalize_input;
  int act;
  float alpha;
  float gain;
  float clamp;
  float weight_gain;
  float bias_gain;
};

// ws [batch, num_ws, w_dim] (n elements) = w [batch, w_dim] repeated num_ws times; rows l < cutoff are truncated
// toward w_avg with torch's lerp (psi). cutoff 0: a plain broadcast.
struct BroadcastTruncateParams {
  float* ws;
  const float* w;
  const float* w_avg;
  long long n;
  int num_ws;
  int w_dim;
  int cutoff;
  float psi;
};

// C = A B with A [m, k], B [k, n] and C [m, n] row-major f32 with row strides lda, ldb, ldc (gemm_tc.cu).
struct GemmParams {
  float* c;
  const float* a;
  const float* b;
  int m;
  int n;
  int k;
  int lda;
  int ldb;
  int ldc;
};

// One warp's mma.sync operands as raw registers, lane after lane: a [32][4], b [32][2], c and d [32][4].
struct MmaProbeParams {
  float* d;
  const unsigned* a;
  const unsigned* b;
  const float* c;
};

// One warp-wide ldmatrix<4> and one ldmatrix<2> (mma.cuh): the 32 rows of 4 words in `rows` [32 * 4] are copied to
// shared memory, lane l names row row_of_lane[l], and `out` [32 lanes * 4] and `out_x2` [32 lanes * 2] receive each
// lane's registers.
struct LdmatrixProbeParams {
  unsigned* out;
  unsigned* out_x2;
  const unsigned* rows;
  const int* row_of_lane;
};

// wgmma_probe (modconv_wgmma.cu): D = C + A B for one m64n128k16 f16 product, with A [64][16] and B [128][16] (f16
// bits, B n-major) placed in a shared-memory region of WGMMA_PROBE_SHARED_BYTES at the given byte offsets, LBOs and
// SBOs (wgmma.cuh's layout formula); c and d are [64][128] f32.
enum WgmmaProbeLimits { WGMMA_PROBE_SHARED_BYTES = 16384 };
struct WgmmaProbeParams {
  float* d;
  const float* c;
  const unsigned short* a;
  const unsigned short* b;
  int a_offset;
  int a_lbo;
  int a_sbo;
  int b_offset;
  int b_lbo;
  int b_sbo;
};

// The register conversions of mma.cuh applied to x [n] (n even): tf32 [n], half2 and bfloat162 [n / 2].
struct MmaConvertProbeParams {
  unsigned* tf32;
  unsigned* half2;
  unsigned* bfloat162;
  const float* x;
  long long n;
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
// y = clamp(act(conv(x * styles, weight) * dcoefs + noise + bias) * gain).
// x [batch, in_channels, height, width] in the kernel's input type (f32 for the f32 and tf32 kernels, 16-bit for the
// f16 and bf16 ones); y at the output resolution (up * height, up * width), of type y_dtype; weight in the packing
// of the kernel (modconv.cu), weight_stride floats per packed row; dcoefs [batch, out_channels], noise and bias may
// be null; noise is [height', width'] per sample, noise_sample_stride apart (0: one plane shared by the batch),
// already times the layer's noise strength. act: values below zero times slope (leaky ReLU's alpha, 1 for
// linear). clamp and rgb_clamp: +inf for none. tiles_x: output tiles per tile row (up-sampling kernel). y_dtype: a
// DType (the f32 kernels of modconv.cu take DTYPE_F32 only).
// The fused ToRGB (modconv_3x3_torgb_*; the other kernels ignore these): rgb [batch, rgb_channels, height, width]
// f32 = clamp(sum_o y[b, o] * rgb_styles[b, o] * rgb_weight[c, o] + rgb_bias[c]) (to rgb_clamp), from y
// as stored; rgb_weight [rgb_channels, out_channels] with its weight gain, rgb_styles [batch, out_channels].
// skip (may be null; the same-resolution 1x1 kernels with f32 y and the fused ToRGB kernels): the previous block's
// image [batch, channels, height / 2, width / 2] f32, channels = rgb_channels for the fused ToRGB, else
// out_channels; its up-sampling (SkipUpsampleParams' filter) is added to the image the kernel writes (rgb for the
// fused ToRGB, else y) after the clamp, which is StyleGAN2's img = upsample(img) + torgb(x).
// weight_sample_stride (32-bit words; the kernels of modconv_wgmma.cu that take it, see there): 0 for the one weight
// above, else each sample b has its own packed weight at weight + b * weight_sample_stride, already times its styles
// (ModconvSampleWeightsParams), and x is staged as stored.
struct ModconvParams {
  void* y;
  const void* x;
  const float* weight;
  const float* styles;
  const float* dcoefs;
  const float* noise;
  const float* bias;
  float* rgb;
  const float* rgb_weight;
  const float* rgb_styles;
  const float* rgb_bias;
  const float* skip;
  long long weight_sample_stride;
  int noise_sample_stride;
  int batch;
  int in_channels;
  int out_channels;
  int height;
  int width;
  int weight_stride;
  int tiles_x;
  float slope;
  float gain;
  float clamp;
  int y_dtype;
  int rgb_channels;
  float rgb_clamp;
};

// Per-sample weights (ModconvParams::weight_sample_stride): y [batch, words] of 32-bit words, word w of sample b the
// pair (weight[w].x * styles[b, channel lo], weight[w].y * styles[b, channel hi]) rounded to fp16 (bf16 where bf16),
// low half first. weight [words] of 4 floats: the two halves' f32 weights (zero where the packing pads) and, as u32
// bits, their input channels (in range also for a zero weight).
struct ModconvSampleWeightsParams {
  unsigned* y;
  const float* weight;
  const float* styles;
  int words;
  int batch;
  int in_channels;
  int bf16;
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

// Images a person can look at (twin: io::image::Images8::from_tensor): x [images, channels, plane] f32 in the
// generator's range -> y [images, plane, channels] bytes, interleaved as a PNG holds them, by NVlabs'
// gen_images.py rule: x * 127.5 + 128, clamped to [0, 255], truncated (NaN -> 0). pixels = images * plane.
struct ImagesU8Params {
  unsigned char* y;
  const float* x;
  long long pixels;
  int plane;
  int channels;
};

// Random noise of one noisy layer (kernels/noise.cu): y [images, plane] f32, image b drawn as image first_image + b
// of seed's job, layer the noisy layer's index among the network's noisy layers.
struct RandomNoiseParams {
  float* y;
  long long first_image;
  long long images;
  int plane;
  int layer;
  unsigned seed;
  float strength;
};

// Robust PCA of every W+ layer at once (kernels/rpca.cu, the device fit). Matrices are [layers, rows, cols]
// row-major float64 and per-layer values are arrays indexed by layer; active[l] is 1 while layer l iterates.
// w = m - sparse + mu_inv * y for each active layer: the input of the iteration's SVD.
struct RpcaSvdInputParams {
  double* w;
  const double* m;
  const double* sparse;
  const double* y;
  const double* mu_inv;
  const int* active;
  // rows * cols
  long long layer_size;
};

// projector = U diag(shrink(s, mu_inv) / s) U^T per active layer ([layers, rows, rows]), from the singular values
// [layers, components] and left singular vectors [layers, components, rows] of w.
struct RpcaProjectorParams {
  double* projector;
  const double* singular_values;
  const double* left_vectors;
  const double* mu_inv;
  const int* active;
  int rows;
  int components;
};

// One iteration's update per active layer: low_rank = projector w, sparse = shrink(m - low_rank + mu_inv y,
// sparse_threshold), y += mu (m - low_rank - sparse); each block's sum of squared residuals goes to
// partial[layer * gridDim.x + blockIdx.x].
struct RpcaUpdateParams {
  double* low_rank;
  double* sparse;
  double* y;
  double* partial;
  const double* m;
  const double* w;
  const double* projector;
  const double* mu;
  const double* mu_inv;
  const double* sparse_threshold;
  const int* active;
  int rows;
  int cols;
};

// Closes an iteration per active layer: err = sum(partial) / norm2, iterations += 1, and active stays 1 only while
// err > tol and iterations < max_iter.
struct RpcaFinishParams {
  double* err;
  int* iterations;
  int* active;
  const double* partial;
  const double* norm2;
  const double* tol;
  int blocks_per_layer;
  int max_iter;
};
