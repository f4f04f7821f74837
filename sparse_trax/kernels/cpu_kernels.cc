// Fused CPU kernels for decoding, registered with XLA through the typed FFI.
//
// int8_matvec / bfloat16_matvec: int8 (with float32 scales) or bfloat16 weight rows
// times float32 activations, the weights converted in registers; *_vecmat: the same
// for matrices whose rows are indexed by the contracted axis ([d_in, d_out]).
//
// sparse_ff_decode: one SparseFF step for a few positions in one call. XLA runs
// the same computation as about a dozen small operations (two controller
// products, an argmax, three gathers, two products); on a CPU their fixed
// costs outweigh the few megabytes a token reads. Here it is one pass:
//   low    = c_in x                              [r]
//   logit  = c_out low + c_bias                  [d_ff], read block by block
//   u_b    = b * N + argmax of block b's N logits
//   y      = sum_b relu(w1[u_b] . x + b1[u_b]) w2[u_b] + b2
// All matrices are out-major ([d_out, d_in]) float32, as in sparse_trax.
//
// layer_norm: LayerNorm of a few rows in one call (XLA:CPU: five operations).
//
// cached_attention: one query per row against a predict-mode KV cache, over the
// visible slots [first, position]: softmax(q . k) v per head, in one pass over
// the keys and one over the values. XLA runs it as a switch over window sizes
// with a handful of operations inside, which cost more than the arithmetic.
//
// sparse_qkv_decode: sparse QKV's multiplicative layer and its three convolutions
// over (length, module) for a few decoded positions (see its section below).

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "Python.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// How far ahead of its reads a stream of weights prefetches. On a 2-vCPU Xeon the
// hardware prefetcher alone kept one core reading a matrix tile by tile at 5-11 GB/s
// (standalone C++, cold 33 MB matrices); prefetching 2 KB ahead, 11-13 GB/s, and two
// cores ~22 GB/s, a matrix-vector product's rate. It also made SparseFF's kernel
// 15-25% faster (d 1024, d_ff 6144, N 64: 0.21-0.25 vs 0.24-0.34 ms per layer in
// four interleaved runs); 1 KB ahead gained less, 4 and 8 KB the same.
constexpr int64_t kPrefetchBytes = 2048;

// Prefetches [p, p + bytes) into the cache (a hint; no fault past an array's end).
inline void Prefetch(const void* p, int64_t bytes) {
  const char* first = static_cast<const char*>(p);
  for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(first + line);
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

// The dots of four consecutive rows (row stride n) with b, sharing b's loads.
inline void Dot4(const float* rows, const float* b, int64_t n, float* out) {
  Lanes acc[4] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    Lanes bv = Load(b + i);
    for (int r = 0; r < 4; ++r) acc[r] += Load(rows + r * n + i) * bv;
  }
  for (int r = 0; r < 4; ++r) {
    out[r] = Sum(acc[r]);
    for (int64_t j = i; j < n; ++j) out[r] += rows[r * n + j] * b[j];
  }
}

// y += scale * row over n floats.
inline void Axpy(float scale, const float* row, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += scale * row[i];
}

// Work of one part of the blocks [first_block, end_block) for one position:
// choose each block's unit, and add its contribution to y_part (zeroed here).
void SparseFFBlocks(const float* x, const float* low, const float* c_out, const float* c_bias,
                    const float* w1, const float* b1, const float* w2, int64_t d_model,
                    int64_t rank, int64_t n_per_block, int64_t first_block, int64_t end_block,
                    float* y_part, int32_t* chosen) {
  std::memset(y_part, 0, d_model * sizeof(float));
  float logits[4];
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * n_per_block, end = first + n_per_block;
    int64_t best = first;
    float best_logit = 0.0f;
    for (int64_t u = first; u < end; u += 4) {
      const int64_t n_rows = end - u < 4 ? end - u : 4;
      Prefetch(c_out + u * rank + kPrefetchBytes / sizeof(float), 4 * rank * sizeof(float));
      if (n_rows == 4) {
        Dot4(c_out + u * rank, low, rank, logits);
      } else {
        for (int64_t r = 0; r < n_rows; ++r) logits[r] = Dot(c_out + (u + r) * rank, low, rank);
      }
      for (int64_t r = 0; r < n_rows; ++r) {
        const float logit = logits[r] + c_bias[u + r];
        if (u + r == first || logit > best_logit) {   // the first of equal maxima, as argmax
          best_logit = logit;
          best = u + r;
        }
      }
    }
    chosen[b] = static_cast<int32_t>(best - first);
    // The chosen rows are far apart in memory: ask for all of both at once.
    Prefetch(w1 + best * d_model, d_model * sizeof(float));
    Prefetch(w2 + best * d_model, d_model * sizeof(float));
    const float hidden = Dot(w1 + best * d_model, x, d_model) + b1[best];
    if (hidden > 0.0f) Axpy(hidden, w2 + best * d_model, y_part, d_model);
  }
}

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

void RunSplit(ffi::ThreadPool& pool, int n_parts, std::function<void(int)> work) {
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
    while (!job->done[part].load(std::memory_order_acquire)) {
    }
  }
}

ffi::Error SparseFFDecodeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> c_in, ffi::Buffer<ffi::F32> c_out,
                              ffi::Buffer<ffi::F32> c_bias, ffi::Buffer<ffi::F32> w1,
                              ffi::Buffer<ffi::F32> b1, ffi::Buffer<ffi::F32> w2,
                              ffi::Buffer<ffi::F32> b2, ffi::ResultBuffer<ffi::F32> y,
                              ffi::ResultBuffer<ffi::S32> units, int64_t n_per_block) {
  auto x_dims = x.dimensions();
  auto c_in_dims = c_in.dimensions();
  auto w1_dims = w1.dimensions();
  if (x_dims.size() != 2 || c_in_dims.size() != 2 || w1_dims.size() != 2) {
    return ffi::Error::InvalidArgument("sparse_ff_decode: x, c_in and w1 must be matrices");
  }
  const int64_t positions = x_dims[0], d_model = x_dims[1];
  const int64_t rank = c_in_dims[0], d_ff = w1_dims[0];
  if (c_in_dims[1] != d_model || w1_dims[1] != d_model || n_per_block <= 0 ||
      d_ff % n_per_block != 0) {
    return ffi::Error::InvalidArgument("sparse_ff_decode: inconsistent shapes");
  }
  const int64_t n_blocks = d_ff / n_per_block;
  // Two parts where the pool has threads (reading the controller is bound by one
  // core's memory bandwidth); one where the work is too small to pay for a hand-off.
  const int n_parts = (pool.num_threads() > 1 && d_ff * rank >= (1 << 16)) ? 2 : 1;
  std::vector<float> low(rank), y_parts(n_parts * d_model);
  for (int64_t p = 0; p < positions; ++p) {
    const float* xp = x.typed_data() + p * d_model;
    // low = c_in x, its rows split over the parts (in groups of four).
    auto low_rows = [&](int part) {
      int64_t k, end;
      PartRange(rank, part, n_parts, 4, &k, &end);
      for (; k + 4 <= end; k += 4) {
        Prefetch(c_in.typed_data() + (k + 4) * d_model, 4 * d_model * sizeof(float));
        Dot4(c_in.typed_data() + k * d_model, xp, d_model, &low[k]);
      }
      for (; k < end; ++k) low[k] = Dot(c_in.typed_data() + k * d_model, xp, d_model);
    };
    int32_t* chosen = units->typed_data() + p * n_blocks;
    auto work = [&](int part) {
      const int64_t first = n_blocks * part / n_parts, end = n_blocks * (part + 1) / n_parts;
      SparseFFBlocks(xp, low.data(), c_out.typed_data(), c_bias.typed_data(), w1.typed_data(),
                     b1.typed_data(), w2.typed_data(), d_model, rank, n_per_block, first, end,
                     &y_parts[part * d_model], chosen);
    };
    RunSplit(pool, n_parts, low_rows);
    RunSplit(pool, n_parts, work);
    float* yp = y->typed_data() + p * d_model;
    for (int64_t i = 0; i < d_model; ++i) {
      float sum = b2.typed_data()[i];
      for (int part = 0; part < n_parts; ++part) sum += y_parts[part * d_model + i];
      yp[i] = sum;
    }
  }
  return ffi::Error::Success();
}

// y[p, o] = scale[o] * sum_i values[o, i] x[p, i]: int8 weight rows (out-major) times
// float32 activations, converted in registers (XLA converts the whole matrix
// first). Rows are split over the intra-op thread pool.
// Loading 16 (AVX-512) or 8 (AVX2) stored weights as float32 lanes.
struct Int8Weights {
  typedef int8_t Type;
#if defined(__AVX512F__) && defined(__AVX512BW__)
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
#if defined(__AVX512F__) && defined(__AVX512BW__)
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
#if defined(__AVX512F__) && defined(__AVX512BW__)
  static __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
#endif
  static float Scalar(float v) { return v; }
};

// Sixteen stored weights of type W as float32 lanes.
template <typename W>
inline Lanes16 WeightLanes(const typename W::Type* p) {
  Lanes16 lanes;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512 v = W::Load16(p);
  std::memcpy(&lanes, &v, sizeof(lanes));
#else
  for (int j = 0; j < 16; ++j) lanes[j] = W::Scalar(p[j]);
#endif
  return lanes;
}

// `count` (1..4) stored rows (row stride n) against b at once: b is read once for all.
// Each row prefetches kPrefetchBytes ahead: int8 rows of a 32000 x 1024 matrix then
// ran 1.5x faster (2.4 vs 3.5-3.8 ms, interleaved), bfloat16 ones 6%.
template <typename W>
void DotRows(const typename W::Type* rows, int count, const float* b, int64_t n, float* out) {
  int64_t i = 0;
  float head[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#if defined(__AVX512F__) && defined(__AVX512BW__)
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  for (; i + 16 <= n; i += 16) {
    const __m512 bv = _mm512_loadu_ps(b + i);
    for (int r = 0; r < count; ++r) {
      Prefetch(reinterpret_cast<const char*>(rows + r * n + i) + kPrefetchBytes, 16 * sizeof(*rows));
      acc[r] = _mm512_fmadd_ps(W::Load16(rows + r * n + i), bv, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) head[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  for (; i + 8 <= n; i += 8) {
    const __m256 bv = _mm256_loadu_ps(b + i);
    for (int r = 0; r < count; ++r) {
      Prefetch(reinterpret_cast<const char*>(rows + r * n + i) + kPrefetchBytes, 8 * sizeof(*rows));
      acc[r] = _mm256_fmadd_ps(W::Load8(rows + r * n + i), bv, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) {
    Lanes lanes;
    std::memcpy(&lanes, &acc[r], sizeof(lanes));
    head[r] = Sum(lanes);
  }
#endif
  for (int r = 0; r < count; ++r) {
    float sum = head[r];
    for (int64_t j = i; j < n; ++j) sum += W::Scalar(rows[r * n + j]) * b[j];
    out[r] = sum;
  }
}

// y[p, o] = scale[o] (or 1) * sum_i w[o, i] x[p, i], rows split over the thread pool.
template <typename W>
void StoredMatvec(ffi::ThreadPool& pool, const float* x, const typename W::Type* w,
                  const float* scale, int64_t positions, int64_t d_in, int64_t d_out, float* y) {
  const int n_parts = (pool.num_threads() > 1 && d_out * d_in >= (1 << 18)) ? 2 : 1;
  auto work = [&](int part) {
    const int64_t first = d_out * part / n_parts, end = d_out * (part + 1) / n_parts;
    for (int64_t p = 0; p < positions; ++p) {
      const float* xp = x + p * d_in;
      float* yp = y + p * d_out;
      for (int64_t o = first; o < end; o += 4) {
        const int count = end - o < 4 ? static_cast<int>(end - o) : 4;
        DotRows<W>(w + o * d_in, count, xp, d_in, yp + o);
        if (scale != nullptr) {
          for (int r = 0; r < count; ++r) yp[o + r] *= scale[o + r];
        }
      }
    }
  };
  RunSplit(pool, n_parts, work);
}

// Rows of the contracted axis per block of a vecmat: each tile sums this many weight
// rows in registers before touching y, so that y is read and written once per block.
constexpr int64_t kVecmatRowBlock = 16;

// y[g, col:col + 16 V] += sum_{i in [i0, i1)} coefficient[i - i0][g] w[i, col:col + 16 V]
// for G rows of y (row stride d_out): G x V accumulators in registers while the
// block's weight rows stream by, each read in order.
template <typename W, int G, int V>
void VecmatTile(const float (*coefficient)[8], const typename W::Type* w, int64_t d_out,
                int64_t i0, int64_t i1, int64_t col, float* y) {
  Lanes16 acc[G][V];
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) acc[g][v] = Load16(y + g * d_out + col + 16 * v);
  }
  for (int64_t i = i0; i < i1; ++i) {
    const typename W::Type* row = w + i * d_out + col;
    Prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, 16 * V * sizeof(*row));
    Lanes16 values[V];
    for (int v = 0; v < V; ++v) values[v] = WeightLanes<W>(row + 16 * v);
    for (int g = 0; g < G; ++g) {
      const float c = coefficient[i - i0][g];
      for (int v = 0; v < V; ++v) acc[g][v] += c * values[v];
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) Store16(y + g * d_out + col + 16 * v, acc[g][v]);
  }
}

// Columns [first, end) of G rows of y for weight rows [i0, i1): tiles of 16 V columns,
// then 16, then one column at a time.
template <typename W, int G, int V>
void VecmatBlock(const float (*coefficient)[8], const typename W::Type* w, int64_t d_out,
                 int64_t i0, int64_t i1, int64_t first, int64_t end, float* y) {
  int64_t col = first;
  for (; col + 16 * V <= end; col += 16 * V) VecmatTile<W, G, V>(coefficient, w, d_out, i0, i1, col, y);
  for (; col + 16 <= end; col += 16) VecmatTile<W, G, 1>(coefficient, w, d_out, i0, i1, col, y);
  for (; col < end; ++col) {
    for (int64_t i = i0; i < i1; ++i) {
      const float value = W::Scalar(w[i * d_out + col]);
      for (int g = 0; g < G; ++g) y[g * d_out + col] += coefficient[i - i0][g] * value;
    }
  }
}

// y[p, :] = sum_i a[p, i] * scale[i] (or 1) * w[i, :]: stored rows indexed by the
// contracted axis (an in-major matrix, as MultiplicativeDense's units). Columns
// are split over the thread pool. Each part takes up to 8 rows of a at a time and
// walks the weights in blocks of 16 rows; within a block, tiles of columns keep
// their sums in registers (reading the weights once per group of rows).
// Streaming each weight row across all columns instead, with the sums in y, ran at
// a third of the bandwidth (y's traffic through the cache outweighed the weights).
template <typename W>
void StoredVecmat(ffi::ThreadPool& pool, const float* a, const typename W::Type* w,
                  const float* scale, int64_t positions, int64_t d_in, int64_t d_out, float* y) {
  const int n_parts = (pool.num_threads() > 1 && d_out * d_in >= (1 << 18) && d_out >= 64)
                          ? 2 : 1;
  auto work = [&](int part) {
    int64_t first, end;                // multiples of 16 keep the vector tiles whole
    PartRange(d_out, part, n_parts, 16, &first, &end);
    for (int64_t p = 0; p < positions; ++p) {
      std::memset(y + p * d_out + first, 0, (end - first) * sizeof(float));
    }
    float coefficient[kVecmatRowBlock][8];
    for (int64_t p0 = 0; p0 < positions;) {
      const int64_t rest = positions - p0;
      const int count = rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
      float* yp = y + p0 * d_out;
      for (int64_t i0 = 0; i0 < d_in; i0 += kVecmatRowBlock) {
        const int64_t i1 = d_in - i0 < kVecmatRowBlock ? d_in : i0 + kVecmatRowBlock;
        for (int64_t i = i0; i < i1; ++i) {
          for (int g = 0; g < count; ++g) {
            coefficient[i - i0][g] = a[(p0 + g) * d_in + i] * (scale == nullptr ? 1.0f : scale[i]);
          }
        }
        switch (count) {
          case 8: VecmatBlock<W, 8, 2>(coefficient, w, d_out, i0, i1, first, end, yp); break;
          case 4: VecmatBlock<W, 4, 4>(coefficient, w, d_out, i0, i1, first, end, yp); break;
          case 2: VecmatBlock<W, 2, 4>(coefficient, w, d_out, i0, i1, first, end, yp); break;
          default: VecmatBlock<W, 1, 4>(coefficient, w, d_out, i0, i1, first, end, yp); break;
        }
      }
      p0 += count;
    }
  };
  RunSplit(pool, n_parts, work);
}

ffi::Error CheckMatvec(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> w_dims) {
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1]) {
    return ffi::Error::InvalidArgument("matvec: need x [p, d_in] and weights [d_out, d_in]");
  }
  return ffi::Error::Success();
}

ffi::Error Bfloat16MatvecImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::BF16> values, ffi::ResultBuffer<ffi::F32> y) {
  ffi::Error checked = CheckMatvec(x.dimensions(), values.dimensions());
  if (checked.failure()) return checked;
  StoredMatvec<Bfloat16Weights>(pool, x.typed_data(),
                                reinterpret_cast<const uint16_t*>(values.untyped_data()), nullptr,
                                x.dimensions()[0], x.dimensions()[1], values.dimensions()[0],
                                y->typed_data());
  return ffi::Error::Success();
}

ffi::Error CheckVecmat(ffi::Span<const int64_t> a_dims, ffi::Span<const int64_t> w_dims) {
  if (a_dims.size() != 2 || w_dims.size() != 2 || a_dims[1] != w_dims[0]) {
    return ffi::Error::InvalidArgument("vecmat: need a [p, d_in] and weights [d_in, d_out]");
  }
  return ffi::Error::Success();
}

ffi::Error Int8VecmatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                          ffi::Buffer<ffi::S8> values, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y) {
  ffi::Error checked = CheckVecmat(a.dimensions(), values.dimensions());
  if (checked.failure()) return checked;
  StoredVecmat<Int8Weights>(pool, a.typed_data(), values.typed_data(), scale.typed_data(),
                            a.dimensions()[0], a.dimensions()[1], values.dimensions()[1],
                            y->typed_data());
  return ffi::Error::Success();
}

ffi::Error Bfloat16VecmatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                              ffi::Buffer<ffi::BF16> values, ffi::ResultBuffer<ffi::F32> y) {
  ffi::Error checked = CheckVecmat(a.dimensions(), values.dimensions());
  if (checked.failure()) return checked;
  StoredVecmat<Bfloat16Weights>(pool, a.typed_data(),
                                reinterpret_cast<const uint16_t*>(values.untyped_data()), nullptr,
                                a.dimensions()[0], a.dimensions()[1], values.dimensions()[1],
                                y->typed_data());
  return ffi::Error::Success();
}

ffi::Error Float32VecmatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                             ffi::Buffer<ffi::F32> values, ffi::ResultBuffer<ffi::F32> y) {
  ffi::Error checked = CheckVecmat(a.dimensions(), values.dimensions());
  if (checked.failure()) return checked;
  StoredVecmat<Float32Weights>(pool, a.typed_data(), values.typed_data(), nullptr,
                               a.dimensions()[0], a.dimensions()[1], values.dimensions()[1],
                               y->typed_data());
  return ffi::Error::Success();
}

ffi::Error Int8MatvecImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::S8> values, ffi::Buffer<ffi::F32> scale,
                          ffi::ResultBuffer<ffi::F32> y) {
  ffi::Error checked = CheckMatvec(x.dimensions(), values.dimensions());
  if (checked.failure()) return checked;
  if (scale.dimensions().size() != 1 || scale.dimensions()[0] != values.dimensions()[0]) {
    return ffi::Error::InvalidArgument("int8_matvec: need one scale per row");
  }
  StoredMatvec<Int8Weights>(pool, x.typed_data(), values.typed_data(), scale.typed_data(),
                            x.dimensions()[0], x.dimensions()[1], values.dimensions()[0],
                            y->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseFFDecode, SparseFFDecodeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [positions, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // controller_in [r, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // controller_out [d_ff, r]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // controller_bias [d_ff]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w1 [d_ff, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b1 [d_ff]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // w2 [d_ff, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b2 [d]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y [positions, d]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // units [positions, B]
                                  .Attr<int64_t>("n_per_block"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Int8Matvec, Int8MatvecImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [positions, d_in]
                                  .Arg<ffi::Buffer<ffi::S8>>()    // values [d_out, d_in]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale [d_out]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [positions, d_out]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bfloat16Matvec, Bfloat16MatvecImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [positions, d_in]
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // values [d_out, d_in]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [positions, d_out]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Int8Vecmat, Int8VecmatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // a [positions, d_in]
                                  .Arg<ffi::Buffer<ffi::S8>>()    // values [d_in, d_out]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale [d_in]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [positions, d_out]

XLA_FFI_DEFINE_HANDLER_SYMBOL(Bfloat16Vecmat, Bfloat16VecmatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // a [positions, d_in]
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // values [d_in, d_out]
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(Float32Vecmat, Float32VecmatImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // a [positions, d_in]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [d_in, d_out]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // y [positions, d_out]

// Heads [first_head, end_head) of one row: logits over the visible slots, a
// softmax, the weighted sum of values. keys/values rows are [slots, heads, d].
void AttendHeads(const float* q, const float* keys, const float* values, int64_t heads,
                 int64_t d, int64_t first, int64_t last, int64_t first_head, int64_t end_head,
                 float* out) {
  const int64_t n = last - first + 1, stride = heads * d;
  const int64_t h_count = end_head - first_head;
  std::vector<float> logits(n * h_count), top(h_count), total(h_count, 0.0f);
  for (int64_t k = 0; k < n; ++k) {
    const float* key = keys + (first + k) * stride;
    for (int64_t h = first_head; h < end_head; ++h) {
      const float logit = Dot(q + h * d, key + h * d, d);
      const int64_t j = h - first_head;
      logits[k * h_count + j] = logit;
      if (k == 0 || logit > top[j]) top[j] = logit;
    }
  }
  for (int64_t h = first_head; h < end_head; ++h) std::memset(out + h * d, 0, d * sizeof(float));
  for (int64_t k = 0; k < n; ++k) {
    const float* value = values + (first + k) * stride;
    for (int64_t h = first_head; h < end_head; ++h) {
      const int64_t j = h - first_head;
      const float p = __builtin_expf(logits[k * h_count + j] - top[j]);
      total[j] += p;
      Axpy(p, value + h * d, out + h * d, d);
    }
  }
  for (int64_t h = first_head; h < end_head; ++h) {
    const float inverse = 1.0f / total[h - first_head];
    for (int64_t i = 0; i < d; ++i) out[h * d + i] *= inverse;
  }
}

ffi::Error CachedAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                               ffi::Buffer<ffi::F32> keys, ffi::Buffer<ffi::F32> values,
                               ffi::Buffer<ffi::S32> bounds, ffi::ResultBuffer<ffi::F32> out) {
  auto q_dims = q.dimensions();
  auto k_dims = keys.dimensions();
  auto v_dims = values.dimensions();
  if (q_dims.size() != 3 || k_dims.size() != 4 || v_dims.size() != 4 ||
      k_dims[0] != q_dims[0] || k_dims[2] != q_dims[1] || k_dims[3] != q_dims[2] ||
      v_dims[0] != k_dims[0] || v_dims[1] != k_dims[1] || v_dims[2] != k_dims[2] ||
      v_dims[3] != k_dims[3] || bounds.element_count() != 2) {
    return ffi::Error::InvalidArgument(
        "cached_attention: q [b, h, d], keys and values [b, slots, h, d], bounds [2]");
  }
  const int64_t batch = q_dims[0], heads = q_dims[1], d = q_dims[2], slots = k_dims[1];
  int64_t first = bounds.typed_data()[0], last = bounds.typed_data()[1];
  if (first < 0) first = 0;
  if (last > slots - 1) last = slots - 1;
  for (int64_t b = 0; b < batch; ++b) {
    float* row_out = out->typed_data() + b * heads * d;
    if (last < first) {              // nothing visible: zeros, as the masked softmax gives
      std::memset(row_out, 0, heads * d * sizeof(float));
      continue;
    }
    const float* row_q = q.typed_data() + b * heads * d;
    const float* row_keys = keys.typed_data() + b * slots * heads * d;
    const float* row_values = values.typed_data() + b * slots * heads * d;
    const int64_t work = (last - first + 1) * heads * d;
    const int n_parts = (pool.num_threads() > 1 && heads > 1 && work >= (1 << 17)) ? 2 : 1;
    auto part = [&](int i) {
      AttendHeads(row_q, row_keys, row_values, heads, d, first, last, heads * i / n_parts,
                  heads * (i + 1) / n_parts, row_out);
    };
    RunSplit(pool, n_parts, part);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(CachedAttention, CachedAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q [b, h, d], scaled
                                  .Arg<ffi::Buffer<ffi::F32>>()   // keys [b, slots, h, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [b, slots, h, d]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // bounds: first, position
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [b, h, d]

// LayerNorm of a few rows: two passes over each row (mean, then the centered
// variance), as XLA computes it in five operations.
ffi::Error LayerNormImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                         ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                         float epsilon) {
  auto dims = x.dimensions();
  if (dims.size() != 2 || scale.element_count() != dims[1] ||
      bias.element_count() != dims[1]) {
    return ffi::Error::InvalidArgument("layer_norm: x [rows, d], scale [d], bias [d]");
  }
  const int64_t rows = dims[0], d = dims[1];
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.typed_data() + r * d;
    float* out = y->typed_data() + r * d;
    Lanes acc = {};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) acc += Load(row + i);
    float sum = Sum(acc);
    for (; i < d; ++i) sum += row[i];
    const float mean = sum / static_cast<float>(d);
    Lanes squares = {};
    Lanes means = mean - Lanes{};
    for (i = 0; i + 8 <= d; i += 8) {
      const Lanes centered = Load(row + i) - means;
      squares += centered * centered;
    }
    float square_sum = Sum(squares);
    for (; i < d; ++i) square_sum += (row[i] - mean) * (row[i] - mean);
    const float inverse = 1.0f / __builtin_sqrtf(square_sum / static_cast<float>(d) + epsilon);
    const float* s = scale.typed_data();
    const float* b = bias.typed_data();
    for (i = 0; i < d; ++i) out[i] = (row[i] - mean) * inverse * s[i] + b[i];
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LayerNorm, LayerNormImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [rows, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale [d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias [d]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y [rows, d]
                                  .Attr<float>("epsilon"));

// ---------------------------------------------------------------- sparse QKV
// sparse_qkv_decode: sparse QKV's multiplicative layer and its three convolutions
// over (length, module) for a few decoded positions, in one call. XLA runs them as
// four small matrix products and about six operations that cut and stack patches.
//   m[r, s, c]    = sum_i x[r, i] D[i, s] E[i, c] + mb[s, c]        (r: a row's position)
//   seq           = the carried history [K - 1 positions] then m, per batch row
//   out_j[r, s, o] = b_j[o] + sum_{t < K, w < ks_j, c} seq[r + t, s + w - (ks_j - 1) / 2, c]
//                                                  W_j[t, w, c, o]   (modules outside are 0)
// Both are products of a few rows with a [k, n] matrix: Gemm below.

// out[g, col:col + 16 V] = bias + sum_i a[g, i] b[i, col:col + 16 V] for G rows of a, whose
// element (g, i) is at a[g * a_row + i * a_col]: G x V accumulators stay in registers
// while b's rows stream by.
template <int G, int V>
void GemmPanel(const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t k,
               int64_t n, int64_t col, const float* bias, float* out, int64_t ldo) {
  Lanes16 acc[G][V];
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) acc[g][v] = bias == nullptr ? Lanes16{} : Load16(bias + col + 16 * v);
  }
  // b's rows are read down a panel: prefetch the row about kPrefetchBytes ahead.
  const int64_t ahead = n * 4 >= kPrefetchBytes ? 1 : kPrefetchBytes / (n * 4);
  for (int64_t i = 0; i < k; ++i) {
    Prefetch(b + (i + ahead) * n + col, 16 * V * sizeof(float));
    Lanes16 row[V];
    for (int v = 0; v < V; ++v) row[v] = Load16(b + i * n + col + 16 * v);
    for (int g = 0; g < G; ++g) {
      const float coefficient = a[g * a_row + i * a_col];
      for (int v = 0; v < V; ++v) acc[g][v] += coefficient * row[v];
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) Store16(out + g * ldo + col + 16 * v, acc[g][v]);
  }
}

// Columns [first_col, end_col) of G rows: panels of 32 columns (G x 2 accumulators), then
// 16, then one column at a time.
template <int G>
void GemmRows(const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t k,
              int64_t n, int64_t first_col, int64_t end_col, const float* bias, float* out,
              int64_t ldo) {
  int64_t col = first_col;
  for (; col + 32 <= end_col; col += 32) GemmPanel<G, 2>(a, a_row, a_col, b, k, n, col, bias, out, ldo);
  for (; col + 16 <= end_col; col += 16) GemmPanel<G, 1>(a, a_row, a_col, b, k, n, col, bias, out, ldo);
  for (; col < end_col; ++col) {
    for (int g = 0; g < G; ++g) {
      float sum = bias == nullptr ? 0.0f : bias[col];
      for (int64_t i = 0; i < k; ++i) sum += a[g * a_row + i * a_col] * b[i * n + col];
      out[g * ldo + col] = sum;
    }
  }
}

// out[r, c] = bias[c] (or 0) + sum_i a[r, i] b[i, c] for every row r < rows and the columns
// [first_col, end_col): a [rows, k] with element (r, i) at a[r * a_row + i * a_col],
// b [k, n], out [rows, n] (row stride ldo). Eight rows at a time: each load of b's row
// serves eight rows.
void Gemm(const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t k, int64_t n,
          const float* bias, float* out, int64_t ldo, int64_t rows, int64_t first_col,
          int64_t end_col) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    GemmRows<8>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, out + r * ldo, ldo);
  }
  for (; r + 4 <= rows; r += 4) {
    GemmRows<4>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, out + r * ldo, ldo);
  }
  for (; r < rows; ++r) {
    GemmRows<1>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, out + r * ldo, ldo);
  }
}

ffi::Error SparseQKVDecodeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> history, ffi::Buffer<ffi::F32> modules,
                               ffi::Buffer<ffi::F32> units, ffi::Buffer<ffi::F32> mult_bias,
                               ffi::Buffer<ffi::F32> q_kernel, ffi::Buffer<ffi::F32> q_bias,
                               ffi::Buffer<ffi::F32> k_kernel, ffi::Buffer<ffi::F32> k_bias,
                               ffi::Buffer<ffi::F32> v_kernel, ffi::Buffer<ffi::F32> v_bias,
                               ffi::ResultBuffer<ffi::F32> q, ffi::ResultBuffer<ffi::F32> k,
                               ffi::ResultBuffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> m) {
  auto x_dims = x.dimensions();
  auto h_dims = history.dimensions();
  auto d_dims = modules.dimensions();
  auto e_dims = units.dimensions();
  if (x_dims.size() != 3 || h_dims.size() != 4 || d_dims.size() != 2 || e_dims.size() != 2) {
    return ffi::Error::InvalidArgument(
        "sparse_qkv_decode: x [b, l, d], history [b, K - 1, S, C], D [d, S], E [d, C]");
  }
  const int64_t batch = x_dims[0], length = x_dims[1], d = x_dims[2];
  const int64_t carried = h_dims[1], n_modules = h_dims[2], c_in = h_dims[3];
  if (h_dims[0] != batch || d_dims[0] != d || d_dims[1] != n_modules || e_dims[0] != d ||
      e_dims[1] != c_in || mult_bias.element_count() != n_modules * c_in) {
    return ffi::Error::InvalidArgument("sparse_qkv_decode: inconsistent shapes");
  }
  const ffi::Buffer<ffi::F32>* kernels[3] = {&q_kernel, &k_kernel, &v_kernel};
  const ffi::Buffer<ffi::F32>* biases[3] = {&q_bias, &k_bias, &v_bias};
  float* outs[3] = {q->typed_data(), k->typed_data(), v->typed_data()};
  const int64_t window = carried + 1;                 // K, the length kernel size
  int64_t c_out = 0;
  for (int j = 0; j < 3; ++j) {
    auto dims = kernels[j]->dimensions();
    if (dims.size() != 4 || dims[0] != window || dims[2] != c_in ||
        (j > 0 && dims[3] != c_out) || biases[j]->element_count() != dims[3]) {
      return ffi::Error::InvalidArgument(
          "sparse_qkv_decode: kernels [K, size, C, O] with K = history + 1, biases [O]");
    }
    c_out = dims[3];
  }
  const int64_t rows = batch * length;
  // The multiplicative layer as one product per position r of rows a[s, i] = x[r, i] D[i, s],
  // stored as [r, i, s] (D's layout, so written in order).
  std::vector<float> scaled(rows * d * n_modules);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.typed_data() + r * d;
    const float* di = modules.typed_data();
    float* out = scaled.data() + r * d * n_modules;
    for (int64_t i = 0; i < d; ++i) {
      for (int64_t s = 0; s < n_modules; ++s) out[i * n_modules + s] = xr[i] * di[i * n_modules + s];
    }
  }
  const int64_t m_rows = rows * n_modules;
  // Parts split the output columns (multiples of 16), so that each reads its share of
  // every weight row once: the products read far more weights than activations.
  const int n_parts = (pool.num_threads() > 1 && c_in >= 32 && c_out >= 32 &&
                       rows * d * n_modules * c_in >= (1 << 18)) ? 2 : 1;
  auto multiplicative = [&](int part) {
    int64_t first, end;
    PartRange(c_in, part, n_parts, 16, &first, &end);
    for (int64_t r = 0; r < rows; ++r) {
      float* out = m->typed_data() + r * n_modules * c_in;
      Gemm(scaled.data() + r * d * n_modules, 1, n_modules, units.typed_data(), d, c_in, nullptr,
           out, c_in, n_modules, first, end);
      for (int64_t s = 0; s < n_modules; ++s) {      // the bias is per module and unit
        const float* bias = mult_bias.typed_data() + s * c_in;
        for (int64_t c = first; c < end; ++c) out[s * c_in + c] += bias[c];
      }
    }
  };
  // The convolutions: patches [rows * S, K * size * C] per kernel (cut after every
  // module of m exists), times the kernel [K * size * C, O].
  std::vector<float> patches[3];
  auto cut_patches = [&](int j) {
    const int64_t size = kernels[j]->dimensions()[1], before = (size - 1) / 2;
    const int64_t width = window * size * c_in;
    patches[j].resize(m_rows * width);
    for (int64_t row = 0; row < m_rows; ++row) {
      const int64_t r = row / n_modules, s = row % n_modules;
      const int64_t b = r / length, t = r % length;
      for (int64_t tau = 0; tau < window; ++tau) {
        const int64_t u = t + tau;                // position in history then m
        for (int64_t w = 0; w < size; ++w) {
          const int64_t source = s + w - before;
          float* dst = patches[j].data() + row * width + (tau * size + w) * c_in;
          if (source < 0 || source >= n_modules) {
            std::memset(dst, 0, c_in * sizeof(float));
          } else if (u < carried) {
            std::memcpy(dst, history.typed_data() + ((b * carried + u) * n_modules + source) * c_in,
                        c_in * sizeof(float));
          } else {
            std::memcpy(dst, m->typed_data() + ((b * length + u - carried) * n_modules + source) * c_in,
                        c_in * sizeof(float));
          }
        }
      }
    }
  };
  auto convolve = [&](int part) {
    int64_t first, end;
    PartRange(c_out, part, n_parts, 16, &first, &end);
    for (int j = 0; j < 3; ++j) {
      const int64_t width = window * kernels[j]->dimensions()[1] * c_in;
      Gemm(patches[j].data(), width, 1, kernels[j]->typed_data(), width, c_out,
           biases[j]->typed_data(), outs[j], c_out, m_rows, first, end);
    }
  };
  RunSplit(pool, n_parts, multiplicative);
  for (int j = 0; j < 3; ++j) cut_patches(j);
  RunSplit(pool, n_parts, convolve);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseQKVDecode, SparseQKVDecodeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [b, l, d]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // history [b, K - 1, S, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // modules D [d, S]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // units E [d, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // multiplicative bias [S * C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q kernel [K, 3, C, O]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q bias [O]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k kernel [K, 3, C, O]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k bias [O]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v kernel [K, 1, C, O]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v bias [O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // q [b, l, S * O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // k [b, l, S * O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // v [b, l, S * O]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // m [b, l, S * C]

// A Python module whose one function returns {target name: handler capsule}.
static PyObject* Registrations(PyObject*, PyObject*) {
  static const struct {
    const char* name;
    XLA_FFI_Handler* handler;
  } kTargets[] = {
      {"sparse_trax_sparse_ff_decode", SparseFFDecode},
      {"sparse_trax_int8_matvec", Int8Matvec},
      {"sparse_trax_bfloat16_matvec", Bfloat16Matvec},
      {"sparse_trax_int8_vecmat", Int8Vecmat},
      {"sparse_trax_bfloat16_vecmat", Bfloat16Vecmat},
      {"sparse_trax_float32_vecmat", Float32Vecmat},
      {"sparse_trax_cached_attention", CachedAttention},
      {"sparse_trax_layer_norm", LayerNorm},
      {"sparse_trax_sparse_qkv_decode", SparseQKVDecode},
  };
  PyObject* dict = PyDict_New();
  for (const auto& target : kTargets) {
    PyObject* capsule =
        PyCapsule_New(reinterpret_cast<void*>(target.handler), nullptr, nullptr);
    PyDict_SetItemString(dict, target.name, capsule);
    Py_DECREF(capsule);
  }
  return dict;
}

static PyMethodDef kMethods[] = {
    {"registrations", Registrations, METH_NOARGS, "FFI target name -> handler capsule."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_cpu_kernels",
                                     "sparse_trax's fused CPU kernels (XLA FFI handlers).", -1,
                                     kMethods};

PyMODINIT_FUNC PyInit__cpu_kernels(void) { return PyModule_Create(&kModule); }
