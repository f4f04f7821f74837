// The pieces every kernel family shares: vector lanes, stored-weight loaders
// (int8 with per-row scales, bfloat16, float32), dot products and row updates,
// prefetch, and splitting a job over XLA's intra-op thread pool.
//
// Vector code is written with GCC vector extensions and, where the compiler
// targets them, AVX2 / AVX-512 intrinsics; every routine has a plain C++ path,
// so the kernels also build where no x86 intrinsics exist.

#ifndef SPARSE_TRAX_KERNELS_SIMD_H_
#define SPARSE_TRAX_KERNELS_SIMD_H_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace sparse_trax_kernels {

namespace ffi = xla::ffi;

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define SPARSE_TRAX_AVX512 1
#endif

// How far ahead of its reads a stream of weights prefetches. On a 2-vCPU Xeon the
// hardware prefetcher alone kept one core reading a matrix tile by tile at 5-11 GB/s
// (standalone C++, cold 33 MB matrices); prefetching 2 KB ahead, 11-13 GB/s, and two
// cores ~22 GB/s, a matrix-vector product's rate. It also made SparseFF's kernel
// 15-25% faster (d 1024, d_ff 6144, N 64); 1 KB ahead gained less, 4 and 8 KB the same.
constexpr int64_t kPrefetchBytes = 2048;

// Asks for the 64-byte line holding p to come into L2 (prefetcht1; a hint, no fault
// past an array's end). Not into L1 (prefetcht0, `__builtin_prefetch`'s default): on
// the 2-core EPYC (Zen 4) an L1 prefetch holds one of the core's few L1 miss buffers
// until its line arrives, and a kernel reading several rows at once ran out of them.
// int8 rows of 1 KB (standalone C++, 190 cold 1024 x 1024 matrices, two threads):
// 16-18 GB/s with L1 prefetches, 27-29 GB/s with L2 ones, as a plain stream; through
// `stored_matvec`, 4096 x 1024 int8 0.57x the time, 32000 x 1024 0.64x.
inline void PrefetchLine(const void* p) { __builtin_prefetch(p, 0, 2); }

// Asks for the line holding p to come into L1 (prefetcht0), where a kernel measured
// faster that way (see its call sites).
inline void PrefetchLineToL1(const void* p) { __builtin_prefetch(p); }

// Prefetches [p, p + bytes) (PrefetchLine on each line).
inline void Prefetch(const void* p, int64_t bytes) {
  const char* first = static_cast<const char*>(p);
  for (int64_t line = 0; line < bytes; line += 64) PrefetchLine(first + line);
}

// Prefetches [p, p + bytes) into L1 (PrefetchLineToL1 on each line).
inline void PrefetchToL1(const void* p, int64_t bytes) {
  const char* first = static_cast<const char*>(p);
  for (int64_t line = 0; line < bytes; line += 64) PrefetchLineToL1(first + line);
}

// Eight float32 lanes (one AVX register where the compiler targets AVX).
typedef float Lanes __attribute__((vector_size(32)));

inline Lanes Load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Sixteen float32 lanes (one AVX-512 register, or two AVX ones).
typedef float Lanes16 __attribute__((vector_size(64)));

inline Lanes16 Load16(const float* p) {
  Lanes16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store16(float* p, Lanes16 v) { std::memcpy(p, &v, sizeof(v)); }

inline float Sum(Lanes v) {
  float s = 0.0f;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}

// a . b over n floats (two vector accumulators, then the tail).
inline float Dot(const float* a, const float* b, int64_t n) {
  Lanes acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 += Load(a + i) * Load(b + i);
    acc1 += Load(a + i + 8) * Load(b + i + 8);
  }
  for (; i + 8 <= n; i += 8) acc0 += Load(a + i) * Load(b + i);
  float sum = Sum(acc0 + acc1);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += scale * row over n floats.
inline void Axpy(float scale, const float* row, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += scale * row[i];
}

// ------------------------------------------------------------ stored weights
// A storage type W names its element type and loads 16 (AVX-512) or 8 (AVX2)
// stored weights as float32 lanes; Scalar converts one.

struct Int8Weights {
  typedef int8_t Type;
#ifdef SPARSE_TRAX_AVX512
  static __m512 Load16(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
#endif
#ifdef __AVX2__
  static __m256 Load8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
#endif
  static float Scalar(int8_t v) { return static_cast<float>(v); }
};

// bfloat16 is the top half of a float32: widen to 32 bits and shift left by 16.
struct Bfloat16Weights {
  typedef uint16_t Type;
#ifdef SPARSE_TRAX_AVX512
  static __m512 Load16(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
#endif
#ifdef __AVX2__
  static __m256 Load8(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
#endif
  static float Scalar(uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
};

// float32 weights, as stored.
struct Float32Weights {
  typedef float Type;
#ifdef SPARSE_TRAX_AVX512
  static __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
#endif
#ifdef __AVX2__
  static __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
#endif
  static float Scalar(float v) { return v; }
};

// Sixteen stored weights of type W as float32 lanes.
template <typename W>
inline Lanes16 WeightLanes(const typename W::Type* p) {
  Lanes16 lanes;
#ifdef SPARSE_TRAX_AVX512
  const __m512 v = W::Load16(p);
  std::memcpy(&lanes, &v, sizeof(lanes));
#else
  for (int j = 0; j < 16; ++j) lanes[j] = W::Scalar(p[j]);
#endif
  return lanes;
}

// Where a row loop prefetches, once per 64-byte line it reads: the line `bytes`
// (kPrefetchBytes unless the kernel sets it) past byte `offset` of row r, in a matrix
// whose rows follow one another (C rows from `rows`, row stride n). A kernel reading
// rows scattered in memory passes its own.
template <typename T>
struct AheadInMatrix {
  const T* rows;
  int64_t n;
  int64_t bytes = kPrefetchBytes;
  void operator()(int r, int64_t offset) const {
    PrefetchLine(reinterpret_cast<const char*>(rows + r * n) + offset + bytes);
  }
};

// C stored rows (row stride n) against b at once: b is read once for all, and the C
// accumulators stay in registers (C is a template argument so that they do). Each row
// prefetches through `ahead` (kPrefetchBytes on: int8 rows of a 32000 x 1024 matrix
// then ran 1.5x faster, 2.4 vs 3.5-3.8 ms interleaved; bfloat16 ones 6%).
template <typename W, int C, typename Ahead>
inline void DotRowsFixed(const typename W::Type* rows, const float* b, int64_t n, float* out,
                         const Ahead& ahead) {
  constexpr int64_t kSize = sizeof(typename W::Type);   // (unused without AVX2)
  (void)kSize;
  int64_t i = 0;
  float head[C];
  for (int r = 0; r < C; ++r) head[r] = 0.0f;
#ifdef SPARSE_TRAX_AVX512
  __m512 acc[C];
  for (int r = 0; r < C; ++r) acc[r] = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 bv = _mm512_loadu_ps(b + i);
    if (((i * kSize) & 63) == 0) {
      for (int r = 0; r < C; ++r) ahead(r, i * kSize);
    }
    for (int r = 0; r < C; ++r) acc[r] = _mm512_fmadd_ps(W::Load16(rows + r * n + i), bv, acc[r]);
  }
  for (int r = 0; r < C; ++r) head[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[C];
  for (int r = 0; r < C; ++r) acc[r] = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 bv = _mm256_loadu_ps(b + i);
    if (((i * kSize) & 63) == 0) {
      for (int r = 0; r < C; ++r) ahead(r, i * kSize);
    }
    for (int r = 0; r < C; ++r) acc[r] = _mm256_fmadd_ps(W::Load8(rows + r * n + i), bv, acc[r]);
  }
  for (int r = 0; r < C; ++r) {
    Lanes lanes;
    std::memcpy(&lanes, &acc[r], sizeof(lanes));
    head[r] = Sum(lanes);
  }
#endif
  for (int r = 0; r < C; ++r) {
    float sum = head[r];
    for (int64_t j = i; j < n; ++j) sum += W::Scalar(rows[r * n + j]) * b[j];
    out[r] = sum;
  }
}

// `count` (1..4) stored rows against b: DotRowsFixed for that count, each row
// prefetching `ahead_bytes` past what it reads.
template <typename W>
inline void DotRows(const typename W::Type* rows, int count, const float* b, int64_t n,
                    float* out, int64_t ahead_bytes = kPrefetchBytes) {
  const AheadInMatrix<typename W::Type> ahead{rows, n, ahead_bytes};
  switch (count) {
    case 4: DotRowsFixed<W, 4>(rows, b, n, out, ahead); break;
    case 3: DotRowsFixed<W, 3>(rows, b, n, out, ahead); break;
    case 2: DotRowsFixed<W, 2>(rows, b, n, out, ahead); break;
    default: DotRowsFixed<W, 1>(rows, b, n, out, ahead); break;
  }
}

// ------------------------------------------------------------ int8 rows, integer activations
// Where weights are int8, the activations they meet can be integers too: a vector v is
// rounded to 15-bit integers q = round(v / s), s = max|v| / 16383 (one float32 scale),
// and a row's products w q are summed exactly in int32 lanes: 32 int8 weights are
// sign-extended to 16 bits and multiplied in pairs (vpmaddwd), against a sign extension,
// a conversion and a multiply-add per 16 weights in float32. At 17B width the sparse FF
// kernel reads its int8 rows faster than one core converts them to float32; this keeps
// it bound by memory. A lane gains at most 2 * 128 * 16383 per step; lanes are flushed
// to float32 every kExactChunk weights, far from int32's limit. The rounding moves a
// product by at most s / 2 * sum|w|: 2^-15 of max|v| per unit of weight, under int8's
// own rounding of the weights (2^-8 of a row's largest).
constexpr float kActivationLevels = 16383.0f;
constexpr int64_t kExactChunk = 4096;

// max|v| over n values, and whether all are finite.
inline float LargestMagnitude(const float* v, int64_t n, bool* finite) {
  float largest = 0.0f;
  bool all_finite = true;
  int64_t j = 0;
#ifdef SPARSE_TRAX_AVX512
  __m512 largest_lanes = _mm512_setzero_ps();
  __mmask16 non_finite = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 lanes = _mm512_loadu_ps(v + j);
    non_finite |= _mm512_fpclass_ps_mask(lanes, 0x99);     // nan, +inf, -inf
    largest_lanes = _mm512_max_ps(largest_lanes, _mm512_abs_ps(lanes));
  }
  largest = _mm512_reduce_max_ps(largest_lanes);
  all_finite = non_finite == 0;
#endif
  for (; j < n; ++j) {
    all_finite = all_finite && std::isfinite(v[j]);
    largest = std::max(largest, std::abs(v[j]));
  }
  *finite = all_finite;
  return largest;
}

// q = round(v * inverse) over n values (nearest even), saturated to int16.
inline void RoundActivations(const float* v, int64_t n, float inverse, int16_t* q) {
  int64_t i = 0;
#ifdef SPARSE_TRAX_AVX512
  // (vcvtps2dq rounds to nearest even, as nearbyint in the default rounding mode)
  const __m512 factor = _mm512_set1_ps(inverse);
  for (; i + 16 <= n; i += 16) {
    const __m512i rounded = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(v + i), factor));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm512_cvtsepi32_epi16(rounded));
  }
#endif
  for (; i < n; ++i) q[i] = static_cast<int16_t>(std::nearbyint(v[i] * inverse));
}

// The scale s of a vector whose largest magnitude is `largest`: the factor its values
// are multiplied by before rounding is 1 / s = 16383 / largest. 0 for a zero vector,
// nan for one holding inf or nan (then its integers are all 0).
inline float ActivationScale(float largest, bool finite) {
  if (!finite) return std::nanf("");
  return largest == 0.0f ? 0.0f : largest / kActivationLevels;
}

// q = round(v / s) over n values; returns s = max|v| / 16383 (0 for a zero vector).
// A vector holding inf or nan has no integer form: q = 0 and s = nan, so that the
// products show nan as float32 ones would.
inline float QuantizeActivations(const float* v, int64_t n, int16_t* q) {
  bool finite;
  const float largest = LargestMagnitude(v, n, &finite);
  if (!finite || largest == 0.0f) {
    for (int64_t i = 0; i < n; ++i) q[i] = 0;
  } else {
    RoundActivations(v, n, kActivationLevels / largest, q);
  }
  return ActivationScale(largest, finite);
}

// out[r] = sum_i rows[r, i] q[i] for C int8 rows (row stride n), exact in integers within
// each chunk, prefetching through `ahead` (as DotRowsFixed).
template <int C, typename Ahead>
inline void DotRowsQuantizedFixed(const int8_t* rows, const int16_t* q, int64_t n, float* out,
                                  const Ahead& ahead) {
  float sum[C];
  for (int r = 0; r < C; ++r) sum[r] = 0.0f;
  int64_t i = 0;
#ifdef SPARSE_TRAX_AVX512
  while (i + 32 <= n) {
    const int64_t chunk_end = std::min(n, i + kExactChunk);
    __m512i acc[C];
    for (int r = 0; r < C; ++r) acc[r] = _mm512_setzero_si512();
    for (; i + 32 <= chunk_end; i += 32) {
      const __m512i qv = _mm512_loadu_si512(q + i);
      if ((i & 63) == 0) {
        for (int r = 0; r < C; ++r) ahead(r, i);
      }
      for (int r = 0; r < C; ++r) {
        const __m512i w = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * n + i)));
        acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(w, qv));
      }
    }
    for (int r = 0; r < C; ++r) sum[r] += _mm512_reduce_add_ps(_mm512_cvtepi32_ps(acc[r]));
  }
#elif defined(__AVX2__)
  while (i + 16 <= n) {
    const int64_t chunk_end = std::min(n, i + kExactChunk);
    __m256i acc[C];
    for (int r = 0; r < C; ++r) acc[r] = _mm256_setzero_si256();
    for (; i + 16 <= chunk_end; i += 16) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i));
      if ((i & 63) == 0) {
        for (int r = 0; r < C; ++r) ahead(r, i);
      }
      for (int r = 0; r < C; ++r) {
        const __m256i w = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + r * n + i)));
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(w, qv));
      }
    }
    for (int r = 0; r < C; ++r) {
      const __m256 lanes_ps = _mm256_cvtepi32_ps(acc[r]);
      Lanes lanes;
      std::memcpy(&lanes, &lanes_ps, sizeof(lanes));
      sum[r] += Sum(lanes);
    }
  }
#endif
  for (int r = 0; r < C; ++r) {
    int64_t tail = 0;                    // (the whole row where there are no vectors)
    for (int64_t j = i; j < n; ++j) tail += static_cast<int64_t>(rows[r * n + j]) * q[j];
    out[r] = sum[r] + static_cast<float>(tail);
  }
}

#ifdef SPARSE_TRAX_AVX512
// AVX-512 VNNI (vpdpwssd: 32 int16 multiply-adds into int32 lanes in one instruction)
// is not part of x86-64-v4: code using it is compiled for it alone and runs where the
// CPU has it (HasVnni, checked at run time).
#define SPARSE_TRAX_VNNI_TARGET __attribute__((target("avx512vnni")))

// Whether this CPU runs vpdpwssd.
inline bool HasVnni() {
  static const bool has = __builtin_cpu_supports("avx512vnni");
  return has;
}

// out[p * 4 + r] = sum_i rows[r, i] q[p, i] for 4 int8 rows (row stride n) and 4 integer
// activation vectors (stride ldq): the same lane sums and the same float32 reduction as
// DotRowsQuantizedFixed<4> on each vector (so the same floats), each weight vector
// widened once for the four of them. For many positions (a prefill), where the sparse
// FF kernel's controller otherwise widens every row once per position.
// (Named accumulators and vpdpwssd in assembly: GCC 12 keeps an array of them in memory.)
SPARSE_TRAX_VNNI_TARGET inline void DotRowsQuantizedTile(const int8_t* rows, int64_t n,
                                                         const int16_t* q, int64_t ldq,
                                                         float* out) {
  float sum[16] = {};
  int64_t i = 0;
  while (i + 32 <= n) {
    const int64_t chunk_end = std::min(n, i + kExactChunk);
#define SPARSE_TRAX_ZERO4(a) __m512i a##0 = _mm512_setzero_si512(), a##1 = a##0, a##2 = a##0, \
                                     a##3 = a##0;
    SPARSE_TRAX_ZERO4(r0p) SPARSE_TRAX_ZERO4(r1p) SPARSE_TRAX_ZERO4(r2p) SPARSE_TRAX_ZERO4(r3p)
#undef SPARSE_TRAX_ZERO4
    for (; i + 32 <= chunk_end; i += 32) {
      if ((i & 63) == 0) {
        for (int r = 0; r < 4; ++r) PrefetchLine(rows + r * n + i + kPrefetchBytes);
      }
      __m512i w[4], v[4];
      for (int r = 0; r < 4; ++r) {
        w[r] = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * n + i)));
      }
      for (int p = 0; p < 4; ++p) v[p] = _mm512_loadu_si512(q + p * ldq + i);
#define SPARSE_TRAX_DPWSSD(acc, r, p) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(w[r]), "v"(v[p]));
#define SPARSE_TRAX_ROW(R) SPARSE_TRAX_DPWSSD(r##R##p0, R, 0) SPARSE_TRAX_DPWSSD(r##R##p1, R, 1) \
                           SPARSE_TRAX_DPWSSD(r##R##p2, R, 2) SPARSE_TRAX_DPWSSD(r##R##p3, R, 3)
      SPARSE_TRAX_ROW(0) SPARSE_TRAX_ROW(1) SPARSE_TRAX_ROW(2) SPARSE_TRAX_ROW(3)
#undef SPARSE_TRAX_ROW
#undef SPARSE_TRAX_DPWSSD
    }
#define SPARSE_TRAX_SUM(R, P) sum[P * 4 + R] += _mm512_reduce_add_ps(_mm512_cvtepi32_ps(r##R##p##P));
#define SPARSE_TRAX_SUM_ROW(R) SPARSE_TRAX_SUM(R, 0) SPARSE_TRAX_SUM(R, 1) SPARSE_TRAX_SUM(R, 2) \
                               SPARSE_TRAX_SUM(R, 3)
    SPARSE_TRAX_SUM_ROW(0) SPARSE_TRAX_SUM_ROW(1) SPARSE_TRAX_SUM_ROW(2) SPARSE_TRAX_SUM_ROW(3)
#undef SPARSE_TRAX_SUM_ROW
#undef SPARSE_TRAX_SUM
  }
  for (int p = 0; p < 4; ++p) {
    for (int r = 0; r < 4; ++r) {
      int64_t tail = 0;
      for (int64_t j = i; j < n; ++j) tail += static_cast<int64_t>(rows[r * n + j]) * q[p * ldq + j];
      out[p * 4 + r] = sum[p * 4 + r] + static_cast<float>(tail);
    }
  }
}
#endif  // SPARSE_TRAX_AVX512

#ifdef SPARSE_TRAX_AVX512
// DotRowsQuantizedFixed with vpdpwssd, which multiplies the pairs and adds them to the
// lanes in one instruction (vpmaddwd and vpaddd otherwise): the same integer lane sums,
// so the same floats. For CPUs with VNNI (HasVnni).
template <int C, typename Ahead>
SPARSE_TRAX_VNNI_TARGET inline void DotRowsQuantizedVnni(const int8_t* rows, const int16_t* q,
                                                         int64_t n, float* out,
                                                         const Ahead& ahead) {
  float sum[C];
  for (int r = 0; r < C; ++r) sum[r] = 0.0f;
  int64_t i = 0;
  while (i + 32 <= n) {
    const int64_t chunk_end = std::min(n, i + kExactChunk);
    __m512i acc[C];
    for (int r = 0; r < C; ++r) acc[r] = _mm512_setzero_si512();
    for (; i + 32 <= chunk_end; i += 32) {
      const __m512i qv = _mm512_loadu_si512(q + i);
      if ((i & 63) == 0) {
        for (int r = 0; r < C; ++r) ahead(r, i);
      }
      for (int r = 0; r < C; ++r) {
        const __m512i w = _mm512_cvtepi8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * n + i)));
        acc[r] = _mm512_dpwssd_epi32(acc[r], w, qv);
      }
    }
    for (int r = 0; r < C; ++r) sum[r] += _mm512_reduce_add_ps(_mm512_cvtepi32_ps(acc[r]));
  }
  for (int r = 0; r < C; ++r) {
    int64_t tail = 0;
    for (int64_t j = i; j < n; ++j) tail += static_cast<int64_t>(rows[r * n + j]) * q[j];
    out[r] = sum[r] + static_cast<float>(tail);
  }
}
#endif  // SPARSE_TRAX_AVX512

#ifdef SPARSE_TRAX_AVX512
// Applies MACRO(g) for g = 0..15 (named accumulators: sixteen of them in an array, GCC
// 12 kept in memory).
#define SPARSE_TRAX_FOR_16(MACRO) \
  MACRO(0) MACRO(1) MACRO(2) MACRO(3) MACRO(4) MACRO(5) MACRO(6) MACRO(7) \
  MACRO(8) MACRO(9) MACRO(10) MACRO(11) MACRO(12) MACRO(13) MACRO(14) MACRO(15)

// block[g] holds 16 32-bit values of row g; after, block[t] holds value t of the 16 rows.
inline void Transpose16(__m512i block[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {            // pairs of rows, interleaved by 32 bits
    t[i] = _mm512_unpacklo_epi32(block[i], block[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(block[i], block[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {            // then fours, by 64 bits
    block[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    block[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    block[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    block[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8) {            // then 128-bit quarters, twice
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(block[i + j], block[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(block[i + j], block[i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    block[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    block[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// The longest rows Dot16 takes (bytes of int8): past it a row's reduction is a small
// part of its products, and sixteen rows' prefetch asks for too many lines at once (a
// 17B-width layer's controller, rank 768, sixteen rows at a time: 1.48x the time of
// four; 4 stacked layers, in-process A/B, 12 rounds).
constexpr int64_t kDot16MostWidth = 256;

// out[r] = rows[r] . q for 16 consecutive int8 rows (row stride n; n a multiple of 32, at
// most kDot16MostWidth) against integer activations q: the same lane sums as
// DotRowsQuantizedVnni, reduced to float32 in _mm512_reduce_add_ps's order (halves:
// 8, 4, 2, 1 lanes), so the same floats; the sixteen reductions at once (a transpose,
// then four vector adds), where short rows (an 800M-width controller's 96) spent more
// on reducing each row apart than on its products.
SPARSE_TRAX_VNNI_TARGET inline __m512 DotRows16QuantizedVnni(const int8_t* rows,
                                                             const int16_t* q, int64_t n) {
#define SPARSE_TRAX_DECLARE(g) __m512i acc##g = _mm512_setzero_si512();
  SPARSE_TRAX_FOR_16(SPARSE_TRAX_DECLARE)
#undef SPARSE_TRAX_DECLARE
  for (int64_t i = 0; i < n; i += 32) {
    const __m512i qv = _mm512_loadu_si512(q + i);
#define SPARSE_TRAX_PRODUCT(g)                                                            \
    {                                                                                     \
      const __m512i w = _mm512_cvtepi8_epi16(                                             \
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + g * n + i)));        \
      __asm__("vpdpwssd %2, %1, %0" : "+v"(acc##g) : "v"(w), "v"(qv));                   \
    }
    SPARSE_TRAX_FOR_16(SPARSE_TRAX_PRODUCT)
#undef SPARSE_TRAX_PRODUCT
  }
  __m512i lanes[16] = {acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7,
                       acc8, acc9, acc10, acc11, acc12, acc13, acc14, acc15};
  for (int g = 0; g < 16; ++g) lanes[g] = _mm512_castps_si512(_mm512_cvtepi32_ps(lanes[g]));
  Transpose16(lanes);                         // lanes[j]: lane j of every row
  __m512 sum[8];
  for (int j = 0; j < 8; ++j) {
    sum[j] = _mm512_add_ps(_mm512_castsi512_ps(lanes[j + 8]), _mm512_castsi512_ps(lanes[j]));
  }
  for (int j = 0; j < 4; ++j) sum[j] = _mm512_add_ps(sum[j + 4], sum[j]);
  for (int j = 0; j < 2; ++j) sum[j] = _mm512_add_ps(sum[j], sum[j + 2]);
  return _mm512_add_ps(_mm512_setzero_ps(), _mm512_add_ps(sum[0], sum[1]));
}
#endif  // SPARSE_TRAX_AVX512

// C int8 rows against quantized activations q: DotRowsQuantizedVnni where the CPU has
// VNNI, else DotRowsQuantizedFixed (the same floats).
template <int C, typename Ahead>
inline void DotRowsQuantizedAny(const int8_t* rows, const int16_t* q, int64_t n, float* out,
                                const Ahead& ahead) {
#ifdef SPARSE_TRAX_AVX512
  if (HasVnni()) {
    DotRowsQuantizedVnni<C>(rows, q, n, out, ahead);
    return;
  }
#endif
  DotRowsQuantizedFixed<C>(rows, q, n, out, ahead);
}

// `count` (1..8) int8 rows against quantized activations q: DotRowsQuantizedAny,
// each row prefetching `ahead_bytes` past what it reads.
inline void DotRowsQuantized(const int8_t* rows, int count, const int16_t* q, int64_t n,
                             float* out, int64_t ahead_bytes = kPrefetchBytes) {
  const AheadInMatrix<int8_t> ahead{rows, n, ahead_bytes};
  if (count > 4) {
    if (count == 8) {
      DotRowsQuantizedAny<8>(rows, q, n, out, ahead);
    } else {
      DotRowsQuantized(rows, 4, q, n, out, ahead_bytes);
      DotRowsQuantized(rows + 4 * n, count - 4, q, n, out + 4, ahead_bytes);
    }
    return;
  }
  switch (count) {
    case 4: DotRowsQuantizedAny<4>(rows, q, n, out, ahead); break;
    case 3: DotRowsQuantizedAny<3>(rows, q, n, out, ahead); break;
    case 2: DotRowsQuantizedAny<2>(rows, q, n, out, ahead); break;
    default: DotRowsQuantizedAny<1>(rows, q, n, out, ahead); break;
  }
}

// Whether rows of storage W meet integer activations (int8 ones do).
template <typename W>
constexpr bool kIntegerActivations = std::is_same_v<W, Int8Weights>;

// One activation vector per position ([positions, width] float32) as the rows of
// storage W read it: for int8 rows also rounded to 15-bit integers, a scale each.
template <typename W>
class PositionVectors {
 public:
  // The most rows Dot takes at once: eight int8 rows against integers (eight streams
  // of one byte a weight), four rows otherwise.
  static constexpr int kMostRows = kIntegerActivations<W> ? 8 : 4;

  PositionVectors(const float* values, int64_t positions, int64_t width)
      : values_(values), width_(width) {
    if constexpr (kIntegerActivations<W>) {
      quantized_.resize(positions * width);
      scales_.resize(positions);
      for (int64_t p = 0; p < positions; ++p) {
        scales_[p] = QuantizeActivations(values + p * width, width, &quantized_[p * width]);
      }
    }
  }

  // out[r] = rows[r] . v[p] for `count` consecutive rows of a matrix (1..kMostRows), each
  // row prefetching `ahead_bytes` past what it reads.
  void Dot(const typename W::Type* rows, int count, int64_t p, float* out,
           int64_t ahead_bytes = kPrefetchBytes) const {
    if constexpr (kIntegerActivations<W>) {
      DotRowsQuantized(rows, count, &quantized_[p * width_], width_, out, ahead_bytes);
      for (int r = 0; r < count; ++r) out[r] *= scales_[p];
    } else {
      DotRows<W>(rows, count, values_ + p * width_, width_, out, ahead_bytes);
    }
  }

  // Whether Dot16 runs: int8 rows of a multiple of 32 up to kDot16MostWidth, VNNI.
  bool HasDot16() const {
#ifdef SPARSE_TRAX_AVX512
    if constexpr (kIntegerActivations<W>) {
      return width_ % 32 == 0 && width_ <= kDot16MostWidth && HasVnni();
    }
#endif
    return false;
  }

  // out[r] = rows[r] . v[p] for 16 consecutive rows, as Dot gives each (the same
  // floats), the rows reduced together (HasDot16()).
  void Dot16(const typename W::Type* rows, int64_t p, float* out) const {
#ifdef SPARSE_TRAX_AVX512
    if constexpr (kIntegerActivations<W>) {
      _mm512_storeu_ps(out, _mm512_mul_ps(
          DotRows16QuantizedVnni(rows, &quantized_[p * width_], width_),
          _mm512_set1_ps(scales_[p])));
      return;
    }
#endif
    for (int r = 0; r < 16; r += 4) Dot(rows + r * width_, 4, p, out + r);
  }

  // Whether Tile runs: int8 rows, a CPU with VNNI.
  static bool HasTile() {
#ifdef SPARSE_TRAX_AVX512
    if constexpr (kIntegerActivations<W>) return HasVnni();
#endif
    return false;
  }

  // out[q * 4 + r] = rows[r] . v[p + q] for 4 consecutive rows and positions p..p + 3,
  // as Dot gives each (the same floats), each row widened once for the four (HasTile()).
  void Tile(const typename W::Type* rows, int64_t p, float* out) const {
#ifdef SPARSE_TRAX_AVX512
    if constexpr (kIntegerActivations<W>) {
      DotRowsQuantizedTile(rows, width_, &quantized_[p * width_], width_, out);
      for (int q = 0; q < 4; ++q) {
        for (int r = 0; r < 4; ++r) out[q * 4 + r] *= scales_[p + q];
      }
      return;
    }
#endif
    for (int q = 0; q < 4; ++q) Dot(rows, 4, p + q, out + 4 * q);
  }

  // row . v[p] for one row, prefetching through `ahead` (called as ahead(0, byte offset)).
  template <typename Ahead>
  float DotOne(const typename W::Type* row, int64_t p, const Ahead& ahead) const {
    float out;
    if constexpr (kIntegerActivations<W>) {
      DotRowsQuantizedAny<1>(row, &quantized_[p * width_], width_, &out, ahead);
      return out * scales_[p];
    } else {
      DotRowsFixed<W, 1>(row, values_ + p * width_, width_, &out, ahead);
      return out;
    }
  }

 private:
  const float* values_;
  int64_t width_;
  std::vector<int16_t> quantized_;
  std::vector<float> scales_;
};

// y += coefficient * row over n stored weights (converted in registers), prefetching
// through `ahead` (called as ahead(0, byte offset), as DotRowsFixed's).
template <typename W, typename Ahead>
inline void AxpyRow(float coefficient, const typename W::Type* row, float* y, int64_t n,
                    const Ahead& ahead) {
  constexpr int64_t kSize = sizeof(typename W::Type);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (((i * kSize) & 63) == 0) ahead(0, i * kSize);
    Store16(y + i, Load16(y + i) + coefficient * WeightLanes<W>(row + i));
  }
  for (; i < n; ++i) y[i] += coefficient * W::Scalar(row[i]);
}

// A stored matrix as a kernel reads it: row-major values and, for int8, one float32
// scale per row (nullptr when there are none).
template <typename W>
struct StoredRows {
  const typename W::Type* values;
  const float* scale;
  int64_t cols;

  const typename W::Type* Row(int64_t r) const { return values + r * cols; }
  float Scale(int64_t r) const { return scale == nullptr ? 1.0f : scale[r]; }
};

// ------------------------------------------------------------ thread pool
// Parts of a split job, each run once by whichever thread claims it first:
// the caller runs part 0, then claims the rest or waits for the pool threads
// that took them. Claiming makes this safe when no pool thread is free.
struct SplitJob {
  explicit SplitJob(int n) : n_parts(n), claimed(n), done(n) {
    for (int i = 0; i < n; ++i) {
      claimed[i].store(false);
      done[i].store(false);
    }
  }
  int n_parts;
  std::vector<std::atomic<bool>> claimed, done;
  std::function<void(int)> work;

  void RunIfUnclaimed(int part) {
    if (!claimed[part].exchange(true)) {
      work(part);
      done[part].store(true, std::memory_order_release);
    }
  }
};

// Part `part` of n_parts of [0, total), its bounds rounded down to multiples of
// `multiple` (whole vector or register groups); the last part ends at total.
inline void PartRange(int64_t total, int part, int n_parts, int64_t multiple, int64_t* first,
                      int64_t* end) {
  *first = total * part / n_parts / multiple * multiple;
  *end = part + 1 == n_parts ? total : total * (part + 1) / n_parts / multiple * multiple;
}

// Whether a product is worth handing half of to XLA's pool: a part handed off costs a
// few microseconds (scheduling, a pool thread waking and stealing, the caller waiting),
// more than the half of a small product saves. Each kernel gives the bytes of weights
// from which its split paid when measured (`min_bytes`, at its call site); from 4M
// multiply-adds (a prefill's many positions) every split pays.
constexpr int64_t kSplitProducts = 1 << 22;

inline bool WorthSplitting(int64_t weight_bytes, int64_t products, int64_t min_bytes) {
  return weight_bytes >= min_bytes || products >= kSplitProducts;
}

// A pause inside a spin-wait (lets the other hardware thread of a core run).
inline void SpinPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// How many pauses RunSplit's caller spends waiting for a pool thread's part before it
// yields its core (a few tens of microseconds).
constexpr int kSpinsBeforeYield = 2000;

inline void RunSplit(ffi::ThreadPool& pool, int n_parts, std::function<void(int)> work) {
  if (n_parts == 1) {               // nothing to hand off
    work(0);
    return;
  }
  auto job = std::make_shared<SplitJob>(n_parts);
  job->work = std::move(work);
  for (int part = 1; part < n_parts; ++part) {
    pool.Schedule([job, part]() { job->RunIfUnclaimed(part); });
  }
  job->RunIfUnclaimed(0);
  for (int part = 1; part < n_parts; ++part) {
    job->RunIfUnclaimed(part);
    // A pool thread that claimed a part finishes it within microseconds when it has a
    // core; on a machine with more runnable threads than cores (the test suite's
    // workers) it may be waiting for this very core, so past a short spin the caller
    // yields it instead of burning its time slice.
    for (int spins = 0; !job->done[part].load(std::memory_order_acquire); ++spins) {
      if (spins < kSpinsBeforeYield) {
        SpinPause();
      } else {
        std::this_thread::yield();
      }
    }
  }
}

// The float32 scales of an int8 matrix, or nullptr where a buffer holds none (bfloat16
// and float32 storage pass an empty one).
inline const float* ScalesOrNull(const ffi::AnyBuffer& scale) {
  return scale.element_count() == 0 ? nullptr : static_cast<const float*>(scale.untyped_data());
}

// Whether `scale` holds one float32 scale per row of `rows` rows, or none.
inline bool ScalesFit(const ffi::AnyBuffer& scale, int64_t rows) {
  return scale.element_count() == 0 || static_cast<int64_t>(scale.element_count()) == rows;
}

// Runs body(W()) for the storage type W of `values` (Int8Weights, Bfloat16Weights or
// Float32Weights) and returns its error; fails naming `kernel` for any other dtype.
template <typename Body>
ffi::Error ForStorage(ffi::DataType storage, const char* kernel, Body body) {
  switch (storage) {
    case ffi::DataType::S8: return body(Int8Weights());
    case ffi::DataType::BF16: return body(Bfloat16Weights());
    case ffi::DataType::F32: return body(Float32Weights());
    default:
      return ffi::Error::InvalidArgument(std::string(kernel) +
                                         ": weights must be int8, bfloat16 or float32");
  }
}

}  // namespace sparse_trax_kernels

#endif  // SPARSE_TRAX_KERNELS_SIMD_H_
