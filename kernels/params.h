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
