// Warpgroup matrix multiply-accumulate (wgmma.mma_async, sm_90a only): four warps (a warpgroup, 128 threads) issue
// one m64nNk16 product whose A and B operands the tensor cores read from shared memory through 64-bit matrix
// descriptors, so no fragment passes through registers (mma.sync's ldmatrix traffic capped our kernels near half of
// the tensor cores' rate). Under nvcc each wrapper is one PTX instruction; in the host emulation each has a twin
// that follows the PTX ISA ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate", "Matrix Descriptor Format",
// "Shared Memory Matrix Layout"), and `wgmma_probe` (modconv_wgmma.cu) checks both against that reading.
//
// Operands, without swizzling and K-major (the transpose flags 0): the unit is a "core matrix" of 8 rows x 16 bytes
// (8 f16/bf16 values along K), stored as 128 contiguous bytes, a row after another. Element (r, k) of A (M x K, r
// the M index) or of B (N x K, r the N index) sits at byte
//     start + (r / 8) * SBO + (k / 8) * LBO + (r % 8) * 16 + (k % 8) * 2,
// where the descriptor holds start, LBO ("leading dimension byte offset": between core matrices adjacent along K)
// and SBO ("stride dimension byte offset": along M or N), each in units of 16 bytes in 14-bit fields.
//
// Accumulators of m64nNk16 with f32 D (N / 2 per thread): warp w of the warpgroup holds rows 16 w .. 16 w + 15, laid out per n8 column
// block like mma.sync's C fragment (mma.cuh): d[4 j + i] is D(16 w + groupID + 8 (i >> 1), 8 j + 2 tig + (i & 1)).
//
// Ordering: shared memory written by ordinary stores or cp.async must be made visible to the tensor cores' "async
// proxy" (wgmma_fence_shared_writes, then a barrier) before a wgmma reads it; wgmma_fence orders the accumulator
// registers against earlier instructions; after wgmma_commit, the products run while the warpgroup goes on, and
// wgmma_wait<N> returns once at most N committed groups are still running: only then may the accumulators be read
// or the operands' shared memory be overwritten. The emulation computes each product when it is issued and, at the
// wait, checks that the operands still hold what it read, so a kernel that overwrites them too early fails there.
#pragma once

#include "mma.cuh"

#ifdef MMENGINE_EMU
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace emu_wgmma {

struct Issued {
  emu_mma::Input type;
  unsigned long long a_desc, b_desc;
  unsigned n;
  unsigned group;
  std::vector<float> operands;  // what it read (read_operands)
};
// A CUDA thread's wgmma state. A descriptor's start address counts from the block's shared-memory window: on the
// GPU the shared address space; in the emulation the __shared__ object that the kernel names when it builds the
// descriptor.
struct ThreadState {
  const unsigned char* window = nullptr;
  std::vector<Issued> in_flight;
  unsigned committed = 0;
};
inline ThreadState& state() { return emu::thread_private<ThreadState>(); }

inline float element(emu_mma::Input type, unsigned long long desc, unsigned r, unsigned k) {
  const unsigned start = unsigned(desc & 0x3fff) << 4;
  const unsigned lbo = unsigned((desc >> 16) & 0x3fff) << 4, sbo = unsigned((desc >> 32) & 0x3fff) << 4;
  if ((desc >> 62) != 0) {
    std::fprintf(stderr, "emulated wgmma: only descriptors without swizzling are modelled\n");
    std::abort();
  }
  const unsigned char* at = state().window + start + (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
  uint16_t bits;
  std::memcpy(&bits, at, 2);
  return emu_mma::decode(type, bits, 0);
}

// The operands this thread's accumulators depend on, in the order the product reads them: its 2 rows of A, then
// its 2 columns of B in each of the n / 8 column tiles.
inline std::vector<float> read_operands(emu_mma::Input type, unsigned long long a_desc, unsigned long long b_desc,
                                        unsigned n) {
  const unsigned warp = (emu::current().linear_tid / 32) % 4, group = emu::lane() / 4, tig = emu::lane() % 4;
  std::vector<float> v;
  v.reserve((2 + n / 4) * 16);
  for (unsigned h = 0; h < 2; ++h)
    for (unsigned k = 0; k < 16; ++k) v.push_back(element(type, a_desc, 16 * warp + group + 8 * h, k));
  for (unsigned j = 0; j < n / 8; ++j)
    for (unsigned e = 0; e < 2; ++e)
      for (unsigned k = 0; k < 16; ++k) v.push_back(element(type, b_desc, 8 * j + 2 * tig + e, k));
  return v;
}

// D (+)= A B for m64nNk16: this thread's N / 2 accumulators, each an f32 sum in K order.
template <int N>
inline void mma_m64k16(emu_mma::Input type, float (&d)[N / 2], unsigned long long a_desc, unsigned long long b_desc) {
  Issued issued{type, a_desc, b_desc, N, state().committed, read_operands(type, a_desc, b_desc, N)};
  const float* a = issued.operands.data();
  const float* b = a + 2 * 16;
  for (unsigned j = 0; j < N / 8; ++j)
    for (unsigned i = 0; i < 4; ++i) {
      const float* row = a + 16 * (i >> 1);
      const float* col = b + 16 * (2 * j + (i & 1));
      float acc = d[4 * j + i];
      for (unsigned k = 0; k < 16; ++k) acc += row[k] * col[k];
      d[4 * j + i] = acc;
    }
  state().in_flight.push_back(std::move(issued));
}

inline void commit() { ++state().committed; }

// Products of all but the `pending` most recent groups have finished: their operands must be unchanged since issue.
inline void wait(unsigned pending) {
  ThreadState& s = state();
  std::vector<Issued> still;
  for (auto& op : s.in_flight) {
    if (op.group + pending >= s.committed) {  // a group among the `pending` newest, or not yet committed
      still.push_back(std::move(op));
      continue;
    }
    if (read_operands(op.type, op.a_desc, op.b_desc, op.n) != op.operands) {
      std::fprintf(stderr, "emulated wgmma: an operand in shared memory changed before the product finished\n");
      std::abort();
    }
  }
  s.in_flight = std::move(still);
}

}  // namespace emu_wgmma
#endif

// A descriptor of the operand at `byte_offset` from the __shared__ object `smem`, without swizzling, with the
// given LBO and SBO in bytes (multiples of 16, below 256 KiB). Offsets added later to the descriptor's low bits
// (in units of 16 bytes) move its start address.
__device__ __forceinline__ unsigned long long wgmma_descriptor(const void* smem, unsigned byte_offset, unsigned lbo,
                                                               unsigned sbo) {
#ifdef MMENGINE_EMU
  emu_wgmma::state().window = static_cast<const unsigned char*>(smem);
  const unsigned address = byte_offset;
#else
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(smem)) + byte_offset;
#endif
  return (unsigned long long)((address >> 4) & 0x3fff) | (unsigned long long)((lbo >> 4) & 0x3fff) << 16 |
         (unsigned long long)((sbo >> 4) & 0x3fff) << 32;
}

// `desc` with its start address moved by `cells` 16-byte cells, added in 32 bits: the start field never carries
// into LBO's (our offsets stay inside shared memory), so the high word (SBO) stays the compile-time constant it is,
// where a 64-bit add cost a carry chain and register moves per product.
__device__ __forceinline__ unsigned long long wgmma_descriptor_moved(unsigned long long desc, unsigned cells) {
  return (desc & ~0xffffffffull) | (unsigned(desc) + cells);
}

// The warpgroup index (threadIdx.x / 128) as a value the compiler knows to be the same in every lane of a warp (a
// shuffle from lane 0): descriptors derived from it then live in uniform registers, which wgmma reads directly,
// instead of being moved there (R2UR) before each product.
__device__ __forceinline__ int warpgroup_index() { return __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0); }

// Makes this thread's earlier shared-memory writes (stores, completed cp.async) visible to wgmma's operand reads;
// a barrier must follow before another thread's wgmma relies on them.
__device__ __forceinline__ void wgmma_fence_shared_writes() {
#ifndef MMENGINE_EMU
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Orders earlier register accesses (the accumulators) before the wgmma that follow. Warpgroup-collective.
__device__ __forceinline__ void wgmma_fence() {
#ifndef MMENGINE_EMU
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// Closes the group of wgmma issued since the last commit. Warpgroup-collective.
__device__ __forceinline__ void wgmma_commit() {
#ifdef MMENGINE_EMU
  emu_wgmma::commit();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most `Pending` committed groups are still running. Warpgroup-collective.
template <int Pending, int R>
__device__ __forceinline__ void wgmma_wait(float (&acc)[R]) {
#ifdef MMENGINE_EMU
  (void)acc;
  emu_wgmma::wait(Pending);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
  // The accumulators count as written here, so the compiler reads them only after the wait.
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(acc[i])::"memory");
#endif
}

#ifndef MMENGINE_EMU
#define WGMMA_M64N32K16_ASM(TYPE)                                                                                      \
  asm volatile(                                                                                                        \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE " {"                                                 \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"                                           \
      "}, %16, %17, 1, 1, 1, 0, 0;\n"                                                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])           \
      : "l"(a_desc), "l"(b_desc))

#define WGMMA_M64N64K16_ASM(TYPE)                                                                                      \
  asm volatile(                                                                                                        \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {"                                                 \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                         \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"                                 \
      "}, %32, %33, 1, 1, 1, 0, 0;\n"                                                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),          \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),        \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])         \
      : "l"(a_desc), "l"(b_desc))

#define WGMMA_M64N128K16_ASM(TYPE)                                                                                     \
  asm volatile(                                                                                                        \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {"                                                \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                         \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                               \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                               \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                                 \
      "}, %64, %65, 1, 1, 1, 0, 0;\n"                                                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),          \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),        \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),        \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),        \
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),        \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),        \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])         \
      : "l"(a_desc), "l"(b_desc))

#define WGMMA_M64N144K16_ASM(TYPE)                                                                                     \
  asm volatile(                                                                                                        \
      "wgmma.mma_async.sync.aligned.m64n144k16.f32." TYPE "." TYPE " {"                                                \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                         \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                               \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                               \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                               \
      "%64, %65, %66, %67, %68, %69, %70, %71"                                                                         \
      "}, %72, %73, 1, 1, 1, 0, 0;\n"                                                                                  \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),                \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),          \
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),        \
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),        \
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),        \
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),        \
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),        \
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),        \
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71])         \
      : "l"(a_desc), "l"(b_desc))
#endif

// D += A B, m64nNk16 with N = 32, 64, 128 or 144: A (64 x 16) and B (N x 16) in shared memory, K-major, f16 (or
// bf16 with BF16); D f32 in the accumulators. Asynchronous and warpgroup-collective: see the ordering notes above.
template <int N, bool BF16>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[N / 2], unsigned long long a_desc,
                                             unsigned long long b_desc) {
  static_assert(N == 32 || N == 64 || N == 128 || N == 144, "the shapes our kernels use");
#ifdef MMENGINE_EMU
  emu_wgmma::mma_m64k16<N>(BF16 ? emu_mma::Input::Bf16 : emu_mma::Input::F16, d, a_desc, b_desc);
#else
#define WGMMA_PICK(N_, ASM)      \
  if constexpr (N == N_) {       \
    if constexpr (BF16) {        \
      ASM("bf16");               \
    } else {                     \
      ASM("f16");                \
    }                            \
  }
  WGMMA_PICK(32, WGMMA_M64N32K16_ASM)
  WGMMA_PICK(64, WGMMA_M64N64K16_ASM)
  WGMMA_PICK(128, WGMMA_M64N128K16_ASM)
  WGMMA_PICK(144, WGMMA_M64N144K16_ASM)
#undef WGMMA_PICK
#endif
}
