// Tensor-core instructions (mma.sync, sm_80+), one small device function each, plus the conversions that produce
// their input registers. Under nvcc each is one inline PTX instruction. In the host emulation each has a twin that
// follows the PTX ISA's fragment layouts ("Matrix Fragments for mma.m16n8k8" and "... mma.m16n8k16 with floating
// point type"): it gathers the 32 lanes' registers, rebuilds A, B and C, and hands every lane its own D fragment,
// so a kernel that puts a value in the wrong lane or register gets a wrong result in the emulation too.
//
// Registers, with groupID = lane / 4 and tig = lane % 4 (threadID_in_group):
//   m16n8k8 .tf32:  a[r] holds A(groupID + 8 * (r & 1), tig + 4 * (r >> 1)); b[r] holds B(tig + 4 * r, groupID).
//   m16n8k16 .f16/.bf16: each register packs two elements, the lower-numbered one in the low 16 bits.
//                   a[r] holds A(groupID + 8 * (r & 1), 2 * tig + 8 * (r >> 1) + {0, 1});
//                   b[r] holds B(2 * tig + 8 * r + {0, 1}, groupID).
//   C and D (f32, both shapes): c[i] is C(groupID + 8 * (i >> 1), 2 * tig + (i & 1)).
// Counting a tf32 element or a packed pair along K as one 32-bit "word", both shapes read A as a 16x8 and B as an
// 8x8 matrix of words with the same lane mapping, which lets one GEMM kernel serve every mode.
// The products of tf32, f16 and bf16 inputs are exact in f32; the twin adds them to C in K order in f32. The
// hardware's internal summation order and precision are not documented, so results may differ in the last bits.
#pragma once

// float -> tf32 (cvt.rna.tf32.f32: round to nearest, ties away from zero), as a .b32 with the low 13 bits zero.
__device__ __forceinline__ unsigned float_to_tf32(float x) {
#ifdef MMENGINE_EMU
  unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;  // NaN: the canonical NaN
  return (u + 0x1000u) & 0xffffe000u;  // adding half an ulp to the magnitude rounds ties away; may reach inf
#else
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#endif
}

// Two floats -> one f16x2 register (round to nearest even), `lo` in the low half as mma's fragments expect.
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
#ifdef MMENGINE_EMU
  return unsigned(__float2half_rn(lo).bits) | (unsigned(__float2half_rn(hi).bits) << 16);
#else
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));  // the first source goes to the high half
  return r;
#endif
}

// Two floats -> one bf16x2 register (round to nearest even), `lo` in the low half.
__device__ __forceinline__ unsigned pack_bfloat162(float lo, float hi) {
#ifdef MMENGINE_EMU
  return unsigned(__float2bfloat16_rn(lo).bits) | (unsigned(__float2bfloat16_rn(hi).bits) << 16);
#else
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}

#ifdef MMENGINE_EMU
namespace emu_mma {

enum class Input { Tf32, F16, Bf16 };

// The value of the `half`-th element (0 or 1) of an input register.
inline float decode(Input type, unsigned reg, unsigned half) {
  switch (type) {
    case Input::Tf32:
      return __uint_as_float(reg & 0xffffe000u);  // the tensor core ignores the low 13 mantissa bits
    case Input::F16: {
      __half h;
      h.bits = uint16_t(reg >> (16 * half));
      return __half2float(h);
    }
    case Input::Bf16: {
      __nv_bfloat16 b;
      b.bits = uint16_t(reg >> (16 * half));
      return __bfloat162float(b);
    }
  }
  return 0.0f;
}

struct LaneFragments {
  unsigned a[4];
  unsigned b[2];
  float c[4];
};

// The warp-collective m16n8kK multiply-accumulate (K = 8 for tf32, 16 for f16/bf16): D = A B + C.
inline void mma_m16n8(Input type, float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
  LaneFragments mine, all[32];
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(mine.c, c, sizeof mine.c);
  emu::warp_exchange(&mine, all, sizeof(LaneFragments));

  const bool packed = type != Input::Tf32;
  const unsigned k_dim = packed ? 16 : 8;
  float A[16][16], B[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned group = lane >> 2, tig = lane & 3;
    for (unsigned r = 0; r < 4; ++r) {
      const unsigned row = group + 8 * (r & 1);
      if (packed) {
        const unsigned col = 2 * tig + 8 * (r >> 1);
        A[row][col] = decode(type, all[lane].a[r], 0);
        A[row][col + 1] = decode(type, all[lane].a[r], 1);
      } else {
        A[row][tig + 4 * (r >> 1)] = decode(type, all[lane].a[r], 0);
      }
    }
    for (unsigned r = 0; r < 2; ++r) {
      if (packed) {
        const unsigned row = 2 * tig + 8 * r;
        B[row][group] = decode(type, all[lane].b[r], 0);
        B[row + 1][group] = decode(type, all[lane].b[r], 1);
      } else {
        B[tig + 4 * r][group] = decode(type, all[lane].b[r], 0);
      }
    }
  }
  // This lane's D elements; its C registers hold the matching C elements (C and D share one layout).
  const unsigned group = emu::lane() >> 2, tig = emu::lane() & 3;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = group + 8 * (i >> 1), col = 2 * tig + (i & 1);
    float acc = mine.c[i];
    for (unsigned k = 0; k < k_dim; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc;
  }
}

}  // namespace emu_mma
#endif

// D = A B + C, m16n8k8, A and B tf32 (registers from float_to_tf32), C and D f32. Warp-collective: all 32 lanes.
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                                                 const float c[4]) {
#ifdef MMENGINE_EMU
  emu_mma::mma_m16n8(emu_mma::Input::Tf32, d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}

// D = A B + C, m16n8k16, A and B f16 (registers from pack_half2), C and D f32. Warp-collective.
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                                 const float c[4]) {
#ifdef MMENGINE_EMU
  emu_mma::mma_m16n8(emu_mma::Input::F16, d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}

// D = A B + C, m16n8k16, A and B bf16 (registers from pack_bfloat162), C and D f32. Warp-collective.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                  const float c[4]) {
#ifdef MMENGINE_EMU
  emu_mma::mma_m16n8(emu_mma::Input::Bf16, d, a, b, c);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}

// N (2 or 4) 8x8 matrices of 16-bit elements from shared memory, warp-collective (ldmatrix.x2 / .x4, sm_75+): lane
// l gives the address of row l % 8 of matrix l / 8 (16 contiguous bytes, 16-byte aligned; .x2 reads the addresses
// of lanes 0-15 only), and receives in r[j] the 32-bit word at byte 4 (l % 4) of row l / 4 of matrix j. Counting
// words as mma.cuh's layout notes do, each matrix is 8 rows x 4 words and a lane gets word (groupID, tig) of each:
// so an A fragment is one x4 of the 8 x 4-word quarters (rows 0-7 | 8-15) x (words 0-3 | 4-7) in that order, and
// two B fragments are one x4 when B is stored n-major (a row per column n, its K words contiguous).
template <int N>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[N], const unsigned* row) {
  static_assert(N == 2 || N == 4, "ldmatrix.x2 or .x4");
#ifdef MMENGINE_EMU
  const unsigned* rows[32];
  emu::warp_exchange(&row, rows, sizeof(row));
  const unsigned lane = emu::lane();
  for (unsigned j = 0; j < N; ++j) r[j] = rows[8 * j + lane / 4][lane % 4];
#else
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(address));
  }
#endif
}
