// Host emulation of the CUDA dialect our kernels use, so the same .cu source compiles as C++ and runs on the CPU.
//
// Model: every CUDA thread of a block is a fiber (its own stack, switched in user space, runtime.cpp); a launch's
// blocks are shared out among one OS thread per core, each running one block's fibers at a time. A fiber runs until
// it waits at a barrier or finishes; `__syncthreads` lets a block's threads go on once every one still running
// waits at it, and warp operations are a barrier among the warp's lanes plus an exchange buffer. Between two
// barriers the threads run one after another, in opposite orders in turn, so a read that lacks its barrier sees the
// value from before the write one way round, and the thread sanitizer (told of every barrier) reports it either
// way. `__shared__` is a function-local `static thread_local`: one copy per OS thread, i.e. per running block.
// Speed matters only as far as CI's time: this exists so CI, which has no GPU, executes every kernel.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#define MMENGINE_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#if defined(__SANITIZE_ADDRESS__)
// The address sanitizer guards statics with redzones but not thread_locals: its build runs one block at a time
// (runtime.cpp), so a kernel's static __shared__ can be one per process.
#define __shared__ static
#else
#define __shared__ static thread_local
#endif

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace emu {

struct ThreadState {
  uint3 thread_idx, block_idx, block_dim, grid_dim;
  unsigned char* dynamic_shared;
  unsigned linear_tid;  // threadIdx flattened, x fastest, as the hardware numbers lanes
  std::vector<std::shared_ptr<void>> privates;  // thread_private's objects, by slot
};
// The running thread's state. Atomic (relaxed) so the thread sanitizer reads the fiber switches' writes to it as
// the runtime's own bookkeeping, not as a race between the CUDA threads that share an OS thread.
extern thread_local std::atomic<ThreadState*> current_thread;
inline ThreadState& current() { return *current_thread.load(std::memory_order_relaxed); }

// One T for each emulated CUDA thread, made on first use and kept from block to block: what the hardware keeps per
// thread outside the kernel's own variables (the wgmma twin's operands in flight). A thread_local would be shared by
// all the fibers of an OS thread.
unsigned next_private_slot();
template <class T>
T& thread_private() {
  static const unsigned slot = next_private_slot();
  std::vector<std::shared_ptr<void>>& slots = current().privates;
  if (slots.size() <= slot) slots.resize(slot + 1);
  if (!slots[slot]) slots[slot] = std::make_shared<T>();
  return *static_cast<T*>(slots[slot].get());
}

void sync_block();
void sync_warp();
// Every lane of the calling warp passes `bytes` (at most 256) bytes; on return `all` holds all 32 lanes'
// contributions in lane order (lanes past the end of a partial warp are zero).
void warp_exchange(const void* mine, void* all, size_t bytes);

inline unsigned lane() { return current().linear_tid & 31u; }

// cp.async (16 bytes): the hardware may land a copy at any moment between its issue and the thread's wait, so the
// issue fills the destination with NaN (a read before the wait sees it; TSan sees a write racing any unsynchronised
// reader) and the wait lands the data (src is read at issue).
// Commit groups as in PTX: commit closes the copies issued since the last one; wait_groups(n) lands all but those
// of the n most recent committed groups; async_copy_wait commits and lands everything.
void async_copy16_issue(void* dst, const void* src);
void async_copy_commit();
void async_copy_wait_groups(unsigned pending);
void async_copy_wait();

}  // namespace emu

#define threadIdx (::emu::current().thread_idx)
#define blockIdx (::emu::current().block_idx)
#define blockDim (::emu::current().block_dim)
#define gridDim (::emu::current().grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

// Warp shuffles (full-warp masks only: our kernels never shuffle in divergent code).
template <class T>
T __shfl_sync(unsigned, T v, int src, int width = 32) {
  static_assert(sizeof(T) <= 16, "shuffle of a large type");
  T all[32];
  emu::warp_exchange(&v, all, sizeof(T));
  unsigned base = emu::lane() & ~unsigned(width - 1);
  return all[base + (unsigned(src) & unsigned(width - 1))];
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  T all[32];
  emu::warp_exchange(&v, all, sizeof(T));
  unsigned lane = emu::lane(), base = lane & ~unsigned(width - 1), src = lane ^ unsigned(lane_mask);
  return src >= base + unsigned(width) ? v : all[src];
}
template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  T all[32];
  emu::warp_exchange(&v, all, sizeof(T));
  unsigned lane = emu::lane(), base = lane & ~unsigned(width - 1), src = lane + delta;
  return src >= base + unsigned(width) ? v : all[src];
}
template <class T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  T all[32];
  emu::warp_exchange(&v, all, sizeof(T));
  unsigned lane = emu::lane(), base = lane & ~unsigned(width - 1);
  return lane < base + delta ? v : all[lane - delta];
}
inline unsigned __ballot_sync(unsigned, int predicate) {
  int all[32];
  int mine = predicate != 0;
  emu::warp_exchange(&mine, all, sizeof(int));
  unsigned bits = 0;
  for (unsigned i = 0; i < 32; ++i) bits |= unsigned(all[i] != 0) << i;
  return bits;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, !predicate) == 0;  // lanes past a partial warp contribute 0, i.e. "true"
}

// Atomics on global or shared memory.
template <class T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
inline int atomicMax(int* address, int value) {
  std::atomic_ref<int> a(*address);
  int old = a.load();
  while (old < value && !a.compare_exchange_weak(old, value)) {
  }
  return old;
}
inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
  std::atomic_ref<unsigned>(*address).compare_exchange_strong(compare, value);
  return compare;
}

// Math intrinsics: the host functions, correctly rounded where CUDA's are approximate (the tolerances allow it).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// Each rounded on its own: the emulation is built without floating-point contraction (strict ISO C++).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
// sin(pi x) and cos(pi x) through double, so within rounding of the exact values (CUDA's are within an ulp).
inline void sincospif(float x, float* s, float* c) {
  const double a = 3.14159265358979323846 * static_cast<double>(x);
  *s = static_cast<float>(std::sin(a));
  *c = static_cast<float>(std::cos(a));
}
template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }

// Half and bfloat16 storage types with the round-to-nearest-even conversions of cuda_fp16.h / cuda_bf16.h.
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline __half __float2half_rn(float f) {
  _Float16 h = static_cast<_Float16>(f);  // GCC's conversion rounds to nearest even, like cvt.rn.f16.f32
  __half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return static_cast<float>(v);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned u = __float_as_uint(f);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = uint16_t((u >> 16) | 0x40u);  // quiet NaN
  } else {
    r.bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return r;
}
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(unsigned(b.bits) << 16); }
