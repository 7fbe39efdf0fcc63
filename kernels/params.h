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
