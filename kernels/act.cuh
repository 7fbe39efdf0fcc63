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

// Half `high` (0: bits 0-15, 1: bits 16-31) of a and of b as one word, a's in the low half: one byte permute.
__device__ __forceinline__ unsigned pair_halves(unsigned a, unsigned b, int high) {
#ifdef MMENGINE_EMU
  return high ? (a >> 16) | (b & 0xffff0000u) : (a & 0xffffu) | (b << 16);
#else
  return __byte_perm(a, b, high ? 0x7632 : 0x5410);
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

// The input activation of a modulated conv (ModconvParams::x, [batch, in_channels, height, width] of T) from
// channel c0 of sample b on, read N channels of a pixel at a time (the tensor-core convs' gathers). Offsets within
// the sample are 32-bit (conv.rs keeps a sample under 2^31 elements), so a value costs an address instruction and
// its load, where 64-bit pointer steps and a test per value cost about four more.
template <class T>
struct SampleChannels {
  const T* x;  // channel c0 of the sample
  int hw;

  __device__ SampleChannels(const ModconvParams& p, int b, int c0)
      : x(static_cast<const T*>(p.x) + ((long long)b * p.in_channels + c0) * p.height * p.width),
        hw(p.height * p.width) {}
  // v[k] = channel c + k (from c0) at plane offset pix for k < n, zeros past n (channels past the layer: n is
  // warp-uniform, and at least N in every layer whose channels fill the kernel's chunks). A pixel outside the image
  // (pix < 0) reads the plane's first pixel instead: the caller stores zeros for it.
  template <int N>
  __device__ void load(int c, int pix, int n, T (&v)[N]) const {
    const int off = c * hw + (pix < 0 ? 0 : pix);
    if (n >= N) {
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = x[off + k * hw];
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = k < n ? x[off + k * hw] : T(0);
    }
  }
  // A run of 4 pixels from plane offset pix in 8 channels (16-bit T): v[k] holds channel c + k's, pixel e in bits
  // 16 e .. of the 64 (as in memory), for k < n, zeros past n. Pixel e is read where bit e of `inside` is set, else
  // 0. `aligned` (pix a multiple of 4, inside 0 or 15): each channel's run is one 8-byte load.
  __device__ void load_run(int c, int pix, int n, unsigned inside, bool aligned, uint2 (&v)[8]) const {
    static_assert(sizeof(T) == 2, "runs of 16-bit values");
    const int off = c * hw + (inside ? pix : 0);  // an int: negative where the run starts left of the image
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = make_uint2(0, 0);
    if (aligned) {
      if (!inside) return;
      if (n >= 8) {
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = *reinterpret_cast<const uint2*>(x + (off + k * hw));
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k)
          if (k < n) v[k] = *reinterpret_cast<const uint2*>(x + (off + k * hw));
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        unsigned h[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) h[e] = k < n && (inside >> e & 1) ? x[off + k * hw + e] : 0u;
        v[k] = make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
      }
    }
  }
};

// Stores of an output activation, one type per struct (rounding to nearest even). The output type is a run-time
// choice (one kernel serves layers whose output stays f32, ToRGB, and those whose output is the next layer's 16-bit
// input): with_output_type branches once and runs the whole epilogue with the store fixed.
// rounded(v): the value a store of v leaves in memory.
// quad(y, i, v): v[0..3] into elements i..i + 3 with one store (i a multiple of 4, y 16-byte aligned).
// at(y, i): the address of element i, from which an epilogue's stores then take 32-bit offsets (one multiply-add
// per address where 64-bit indices take four or five instructions).
struct StoreF32 {
  __device__ void operator()(void* y, long long i, float v) const { static_cast<float*>(y)[i] = v; }
  __device__ static void* at(void* y, long long i) { return static_cast<float*>(y) + i; }
  __device__ void quad(void* y, long long i, const float (&v)[4]) const {
    *reinterpret_cast<float4*>(static_cast<float*>(y) + i) = make_float4(v[0], v[1], v[2], v[3]);
  }
  __device__ static float rounded(float v) { return v; }
};
struct StoreF16 {
  __device__ void operator()(void* y, long long i, float v) const {
    static_cast<unsigned short*>(y)[i] = float_to_f16_bits(v);
  }
  __device__ static void* at(void* y, long long i) { return static_cast<unsigned short*>(y) + i; }
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
  __device__ static void* at(void* y, long long i) { return static_cast<unsigned short*>(y) + i; }
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

// A store of type S that writes nothing: for a layer output that only the fused ToRGB in the same kernel reads,
// which still sees the value as S would have stored it (rounded).
template <class S>
struct RoundOnly {
  __device__ void operator()(void*, long long, float) const {}
  __device__ void quad(void*, long long, const float (&)[4]) const {}
  __device__ static void* at(void* y, long long) { return y; }
  __device__ static float rounded(float v) { return S::rounded(v); }
};

// with_output_type where y may be null (the fused ToRGB kernels): then f gets RoundOnly, so the epilogue has no
// test per value of whether to store.
template <class F>
__device__ __forceinline__ void with_output_store(const void* y, int dtype, F&& f) {
  with_output_type(dtype, [&](auto store) {
    if (y)
      f(store);
    else
      f(RoundOnly<decltype(store)>{});
  });
}
