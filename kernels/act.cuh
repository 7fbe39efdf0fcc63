// Activations in device memory: f32, or in the fp16 and bf16 modes 16-bit values between synthesis layers (the
// high-resolution layers are memory-bound on the tensor cores, so halving their bytes is most of their time).
// 16-bit values are kept as bit patterns (unsigned short): no fp16 header is needed under nvcc or NVRTC, and the
// emulation's conversions (cuda_emu.h) round exactly as cvt.rn does.
#pragma once

#include "common.cuh"

__device__ __forceinline__ float f16_bits_to_float(unsigned short h) {
#ifdef MMENGINE_EMU
  __half x;
  x.bits = h;
  return __half2float(x);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#endif
}

__device__ __forceinline__ unsigned short float_to_f16_bits(float v) {
#ifdef MMENGINE_EMU
  return __float2half_rn(v).bits;
#else
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
#endif
}

// bf16 is the top half of an f32, so widening is a shift.
__device__ __forceinline__ float bf16_bits_to_float(unsigned short b) { return __uint_as_float(unsigned(b) << 16); }

__device__ __forceinline__ unsigned short float_to_bf16_bits(float v) {
#ifdef MMENGINE_EMU
  return __float2bfloat16_rn(v).bits;
#else
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
  return h;
#endif
}

// Element types of a kernel's input activation, chosen at compile time (the gather sits in the main loop).
struct ActF32 {
  using T = float;
  __device__ static float load(const T* p) { return *p; }
};
struct ActF16 {
  using T = unsigned short;
  __device__ static float load(const T* p) { return f16_bits_to_float(*p); }
};
struct ActBf16 {
  using T = unsigned short;
  __device__ static float load(const T* p) { return bf16_bits_to_float(*p); }
};

// Stores of an output activation, one type per struct (rounding to nearest even). The output type is a run-time
// choice (one kernel serves layers whose output stays f32, ToRGB, and those whose output is the next layer's 16-bit
// input): with_output_type branches once and runs the whole epilogue with the store fixed.
// rounded(v): the value a store of v leaves in memory.
// quad(y, i, v): v[0..3] into elements i..i + 3 with one store (i a multiple of 4, y 16-byte aligned).
struct StoreF32 {
  __device__ void operator()(void* y, long long i, float v) const { static_cast<float*>(y)[i] = v; }
  __device__ void quad(void* y, long long i, const float (&v)[4]) const {
    *reinterpret_cast<float4*>(static_cast<float*>(y) + i) = make_float4(v[0], v[1], v[2], v[3]);
  }
  __device__ static float rounded(float v) { return v; }
};
struct StoreF16 {
  __device__ void operator()(void* y, long long i, float v) const {
    static_cast<unsigned short*>(y)[i] = float_to_f16_bits(v);
  }
  __device__ void quad(void* y, long long i, const float (&v)[4]) const {
    uint2 u;
    u.x = float_to_f16_bits(v[0]) | (unsigned)float_to_f16_bits(v[1]) << 16;
    u.y = float_to_f16_bits(v[2]) | (unsigned)float_to_f16_bits(v[3]) << 16;
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(y) + i) = u;
  }
  __device__ static float rounded(float v) { return f16_bits_to_float(float_to_f16_bits(v)); }
};
struct StoreBf16 {
  __device__ void operator()(void* y, long long i, float v) const {
    static_cast<unsigned short*>(y)[i] = float_to_bf16_bits(v);
  }
  __device__ void quad(void* y, long long i, const float (&v)[4]) const {
    uint2 u;
    u.x = float_to_bf16_bits(v[0]) | (unsigned)float_to_bf16_bits(v[1]) << 16;
    u.y = float_to_bf16_bits(v[2]) | (unsigned)float_to_bf16_bits(v[3]) << 16;
    *reinterpret_cast<uint2*>(static_cast<unsigned short*>(y) + i) = u;
  }
  __device__ static float rounded(float v) { return bf16_bits_to_float(float_to_bf16_bits(v)); }
};

// Calls f(store) with the store for `dtype` (a DType of params.h).
template <class F>
__device__ __forceinline__ void with_output_type(int dtype, F&& f) {
  if (dtype == DTYPE_F16)
    f(StoreF16{});
  else if (dtype == DTYPE_BF16)
    f(StoreBf16{});
  else
    f(StoreF32{});
}
