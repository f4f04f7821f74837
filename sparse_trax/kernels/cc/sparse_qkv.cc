// sparse_qkv: sparse QKV's multiplicative layer and its three convolutions
// over (length, module) in 'predict' mode, in one call: a few decoded positions (XLA
// runs them as four small matrix products and about six operations that cut and stack
// patches), or with int8 weights and VNNI a whole prefill, kPositionsPerChunk positions
// at a time (XLA widens each int8 kernel in tiles for float32 products).
//   m[r, s, c]    = sum_i x[r, i] D[i, s] E[i, c] + mb[s, c]        (r: a row's position)
//   seq           = the carried history [K - 1 positions] then m, per batch row
//   out_j[r, s, o] = b_j[o] + sum_{t < K, w < ks_j, c} seq[r + t, s + w - (ks_j - 1) / 2, c]
//                                                  W_j[t, w, c, o]   (modules outside are 0)
// Both are products of a few rows with a [k, n] matrix: Gemm below.

#include <type_traits>

#include "simd.h"
#include "handlers.h"

namespace sparse_trax_kernels {
namespace {

// out[g, col:col + 16 V] = bias + col_scale * sum_i a[g, i] b[i, col:col + 16 V] for G rows
// of a, whose element (g, i) is at a[g * a_row + i * a_col]: G x V accumulators stay in
// registers while b's stored rows stream by, converted in registers. bias and
// col_scale may be nullptr (0 and 1).
template <typename W, int G, int V>
void GemmPanel(const float* a, int64_t a_row, int64_t a_col, const typename W::Type* b,
               int64_t k, int64_t n, int64_t col, const float* bias, const float* col_scale,
               float* out, int64_t ldo) {
  Lanes16 acc[G][V];
  for (int g = 0; g < G; ++g) {
    for (int v = 0; v < V; ++v) acc[g][v] = Lanes16{};
  }
  // b's rows are read down a panel, one step of G x V multiply-adds (~16 cycles) each: the
  // prefetch runs 48 rows ahead (about DRAM's latency; 8, 24, 96 and 160 measured slower),
  // or kPrefetchBytes ahead where rows are short. (One row ahead, as it was for rows of
  // 2 KB or more, left a 17B-width SparseQKV's float32 products waiting on memory.)
  const int64_t row_bytes = n * static_cast<int64_t>(sizeof(typename W::Type));
  const int64_t ahead = std::max<int64_t>(48, kPrefetchBytes / row_bytes);
  for (int64_t i = 0; i < k; ++i) {
    Prefetch(b + (i + ahead) * n + col, 16 * V * sizeof(typename W::Type));
    Lanes16 row[V];
    for (int v = 0; v < V; ++v) row[v] = WeightLanes<W>(b + i * n + col + 16 * v);
    for (int g = 0; g < G; ++g) {
      const float coefficient = a[g * a_row + i * a_col];
      for (int v = 0; v < V; ++v) acc[g][v] += coefficient * row[v];
    }
  }
  for (int v = 0; v < V; ++v) {
    const Lanes16 scale = col_scale == nullptr ? Lanes16{} + 1.0f : Load16(col_scale + col + 16 * v);
    const Lanes16 shift = bias == nullptr ? Lanes16{} : Load16(bias + col + 16 * v);
    for (int g = 0; g < G; ++g) Store16(out + g * ldo + col + 16 * v, acc[g][v] * scale + shift);
  }
}

// Columns [first_col, end_col) of G rows: panels of 32 columns (G x 2 accumulators), then
// 16, then one column at a time.
template <typename W, int G>
void GemmRows(const float* a, int64_t a_row, int64_t a_col, const typename W::Type* b,
              int64_t k, int64_t n, int64_t first_col, int64_t end_col, const float* bias,
              const float* col_scale, float* out, int64_t ldo) {
  int64_t col = first_col;
  if constexpr (G <= 8) {             // (16 rows: one vector of columns fills the registers)
    for (; col + 32 <= end_col; col += 32) {
      GemmPanel<W, G, 2>(a, a_row, a_col, b, k, n, col, bias, col_scale, out, ldo);
    }
  }
  for (; col + 16 <= end_col; col += 16) {
    GemmPanel<W, G, 1>(a, a_row, a_col, b, k, n, col, bias, col_scale, out, ldo);
  }
  for (; col < end_col; ++col) {
    for (int g = 0; g < G; ++g) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) sum += a[g * a_row + i * a_col] * W::Scalar(b[i * n + col]);
      out[g * ldo + col] = (bias == nullptr ? 0.0f : bias[col]) +
                           (col_scale == nullptr ? 1.0f : col_scale[col]) * sum;
    }
  }
}

// out[r, c] = bias[c] + col_scale[c] * sum_i a[r, i] b[i, c] for every row r < rows and the
// columns [first_col, end_col): a [rows, k] with element (r, i) at a[r * a_row + i * a_col],
// b [k, n] stored as W, out [rows, n] (row stride ldo). With AVX-512 sixteen rows at a
// time (a decoded token's 16 modules: b read once), then eight: each load of b's row
// serves them all.
template <typename W>
void Gemm(const float* a, int64_t a_row, int64_t a_col, const typename W::Type* b, int64_t k,
          int64_t n, const float* bias, const float* col_scale, float* out, int64_t ldo,
          int64_t rows, int64_t first_col, int64_t end_col) {
  int64_t r = 0;
#ifdef SPARSE_TRAX_AVX512
  for (; r + 16 <= rows; r += 16) {
    GemmRows<W, 16>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, col_scale,
                    out + r * ldo, ldo);
  }
#endif
  for (; r + 8 <= rows; r += 8) {
    GemmRows<W, 8>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, col_scale,
                   out + r * ldo, ldo);
  }
  for (; r + 4 <= rows; r += 4) {
    GemmRows<W, 4>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, col_scale,
                   out + r * ldo, ldo);
  }
  for (; r < rows; ++r) {
    GemmRows<W, 1>(a + r * a_row, a_row, a_col, b, k, n, first_col, end_col, bias, col_scale,
                   out + r * ldo, ldo);
  }
}

// ------------------------------------------------ int8 weights, integer activations (VNNI)
// Where the CPU has AVX-512 VNNI (checked when the kernel runs), int8 products take
// activations rounded to 15-bit integers (simd.h), one scale per row of a, and sum
// pairs of k in int32 lanes: vpdpwssd does 32 multiply-adds in one instruction where
// float32 needs a conversion per 16 weights and two multiply-adds. The products here
// reuse each weight for 16 rows (modules): arithmetic, not bytes, bounds them.

#ifdef SPARSE_TRAX_AVX512
// Rows of k per int32 sum before it is added to float32: a lane gains at most
// 2 * 128 * 16383 per pair of rows, so 256 pairs stay under 2^31.
constexpr int64_t kIntegerChunk = 512;

// Rows of a, rounded to integers for IntegerGemm, in groups of 16 rows stored pair-major:
// group q's pair j (k = 2j, 2j + 1) of its 16 rows is one 64-byte line, 16 int32 pairs,
// so that a panel's broadcasts of every row's pair come from one line at fixed offsets
// (zeros past the rows and past k), and a scale per row.
// (Row-major rows of d = 6144 int16 lay 16 rows a panel reads at once 12 KB apart, in
// one L1 set; and 16 row pointers do not fit the registers beside the accumulators.)
struct IntegerRows {
  std::vector<int32_t> pairs;          // [groups, pairs_per_row, 16] of two int16 each
  std::vector<float> scales;
  int64_t pairs_per_row;
  IntegerRows(int64_t rows, int64_t k)
      : pairs(((rows + 15) / 16) * ((k + 1) / 2) * 16, 0), scales(rows),
        pairs_per_row((k + 1) / 2) {}
  // The int16 a row takes in PlaceGroup's `rows` (k rounded up to whole pairs).
  int64_t Stride() const { return 2 * pairs_per_row; }
  // Rows [16 q, 16 q + count) of group q from their integers, row g at rows + g * Stride()
  // (its k values; where k is odd the slot past them must hold 0), and their scales.
  // Sixteen pairs of the group's rows at a time are turned into sixteen of its lines in
  // registers, so that each line is written whole, once (a row's pairs, stored one by
  // one 64 bytes apart, wrote every line sixteen times: with the multiplicative rows
  // built a module at a time, 22% of the samples of 24 stacked 800M-width int8 attention
  // layers went to forming rows, 7% after this and SetModuleGroup; per layer 0.57x-0.91x
  // the time, three process pairs).
  void PlaceGroup(int64_t q, int count, const int16_t* rows, const float* row_scales) {
    const int64_t stride = Stride();
    for (int g = 0; g < count; ++g) scales[16 * q + g] = row_scales[g];
    int32_t* lines = Group(q);
    for (int64_t j0 = 0; j0 < pairs_per_row; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, pairs_per_row - j0);
      const __mmask16 present = static_cast<__mmask16>((1u << n) - 1);
      __m512i block[16];
      for (int g = 0; g < 16; ++g) {
        block[g] = g < count ? _mm512_maskz_loadu_epi32(present, rows + g * stride + 2 * j0)
                             : _mm512_setzero_si512();
      }
      Transpose16(block);
      for (int64_t t = 0; t < n; ++t) _mm512_storeu_si512(lines + 16 * (j0 + t), block[t]);
    }
  }
  // The first pair of 16-row group q.
  int32_t* Group(int64_t q) { return pairs.data() + q * pairs_per_row * 16; }
  const int32_t* Group(int64_t q) const { return pairs.data() + q * pairs_per_row * 16; }
};

// Group q of `rows` (a position's 16 modules where n_modules is 16): a[s, i] = x[i] D[i, s]
// for s < 16, rounded to integers per row as QuantizeActivations does (the same integers
// and scales), one module per lane: D's row i is 16 contiguous int8, so each pass reads
// D once in order, where building the rows one module at a time read it 16 bytes apart.
inline void SetModuleGroup(IntegerRows& rows, int64_t q, const float* x, const int8_t* modules,
                           int64_t d) {
  auto products = [&](int64_t i) {           // lane s: x[i] D[i, s]
    return _mm512_mul_ps(_mm512_set1_ps(x[i]), Int8Weights::Load16(modules + 16 * i));
  };
  __m512 largest = _mm512_setzero_ps();
  __mmask16 non_finite = 0;
  for (int64_t i = 0; i < d; ++i) {
    const __m512 v = products(i);
    non_finite |= _mm512_fpclass_ps_mask(v, 0x99);        // nan, +inf, -inf
    largest = _mm512_max_ps(largest, _mm512_abs_ps(v));
  }
  alignas(64) float largest_of[16], factor_of[16];
  _mm512_store_ps(largest_of, largest);
  __mmask16 rounded = 0;                    // rows with integers (finite, not all zero)
  for (int s = 0; s < 16; ++s) {
    const bool finite = ((non_finite >> s) & 1) == 0;
    rows.scales[16 * q + s] = ActivationScale(largest_of[s], finite);
    factor_of[s] = finite && largest_of[s] != 0.0f ? kActivationLevels / largest_of[s] : 0.0f;
    if (finite && largest_of[s] != 0.0f) rounded |= static_cast<__mmask16>(1u << s);
  }
  const __m512 factor = _mm512_load_ps(factor_of);
  const __m512i low_half = _mm512_set1_epi32(0xffff);
  int32_t* lines = rows.Group(q);
  for (int64_t j = 0; j < rows.pairs_per_row; ++j) {
    // (vcvtps2dq rounds to nearest even, as RoundActivations; |values| <= 16383)
    const __m512i first = _mm512_cvtps_epi32(_mm512_mul_ps(products(2 * j), factor));
    const __m512i second = 2 * j + 1 < d
        ? _mm512_cvtps_epi32(_mm512_mul_ps(products(2 * j + 1), factor))
        : _mm512_setzero_si512();
    const __m512i pair = _mm512_or_si512(_mm512_and_si512(first, low_half),
                                         _mm512_slli_epi32(second, 16));
    _mm512_storeu_si512(lines + 16 * j, _mm512_maskz_mov_epi32(rounded, pair));
  }
}

// total[g, 0:16] += sum_{i in [2 j0, 2 j1)} qa[g, i] b[i, col:col + 16] for G rows of one
// group of IntegerRows (`group`: its first pair), int8 b [k, n]: each pair of b's rows,
// 16 columns interleaved into 32 int16 lanes, meets each row's pair broadcast from the
// group's line, folded into vpdpwssd's memory operand.
// (The accumulators are named variables and the product is written in assembly: with
// an array of them and the intrinsic, GCC 12 kept the sums in memory, or copied each
// to another register every step and broadcast each pair into a register first; the
// multiplicative product and convolutions of a 17B-width layer ran at ~55% of VNNI's
// rate.)
template <int G>
SPARSE_TRAX_VNNI_TARGET void IntegerPanel(const int32_t* group, const int8_t* b, int64_t k,
                                          int64_t n, int64_t col, int64_t j0, int64_t j1,
                                          float* total, int64_t ldt) {
  static_assert(G >= 1 && G <= 16, "a panel holds 1 to 16 rows");
  // Rows of b about 8 kPrefetchBytes (16 KB) ahead of the pair being read: 44 rows at
  // n = 384 (a decoded 17B-width layer: 0.99x of 4 KB ahead in an A/B, within noise).
  const int64_t row_ahead = (8 * kPrefetchBytes + n - 1) / n + 1;
#define SPARSE_TRAX_DECLARE(g) __m512i acc##g = _mm512_setzero_si512();
  SPARSE_TRAX_FOR_16(SPARSE_TRAX_DECLARE)
#undef SPARSE_TRAX_DECLARE
  const int64_t full_end = std::min(j1, k / 2);       // pairs with both rows in b
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* row = b + 2 * j * n + col;
    PrefetchLine(row + row_ahead * n);
    PrefetchLine(row + (row_ahead + 1) * n);
    const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    const __m128i second = j < full_end ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + n))
                                        : _mm_setzero_si128();     // k odd: the last row alone
    const __m512i pairs = _mm512_cvtepi8_epi16(_mm256_set_m128i(
        _mm_unpackhi_epi8(first, second), _mm_unpacklo_epi8(first, second)));
    const int32_t* line = group + 16 * j;
#define SPARSE_TRAX_PRODUCT(g)                                                            \
    if constexpr (g < G) {                                                                \
      __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc##g) : "v"(pairs), "m"(line[g])); \
    }
    SPARSE_TRAX_FOR_16(SPARSE_TRAX_PRODUCT)
#undef SPARSE_TRAX_PRODUCT
  }
#define SPARSE_TRAX_ADD(g)                                                                \
  if constexpr (g < G) {                                                                  \
    float* t = total + g * ldt;                                                           \
    _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), _mm512_cvtepi32_ps(acc##g)));   \
  }
  SPARSE_TRAX_FOR_16(SPARSE_TRAX_ADD)
#undef SPARSE_TRAX_ADD
}

// out[r, c] = bias[c] + col_scale[c] * a_scale[r] * sum_i qa[r, i] b[i, c] for rows r <
// rows of `a` and columns [first_col, end_col): as Gemm, for int8 b [k, n].
SPARSE_TRAX_VNNI_TARGET void IntegerGemm(const IntegerRows& a, int64_t rows, const int8_t* b,
                                         int64_t k, int64_t n, const float* bias,
                                         const float* col_scale, float* out, int64_t ldo,
                                         int64_t first_col, int64_t end_col) {
  // Sums for 16 rows and every column of the range; b's rows are read a chunk at a time
  // across all columns (a chunk of b, kIntegerChunk x the range, stays in L2 while each
  // 16-column panel reads its strip).
  const int64_t width = end_col - first_col, panels_end = first_col + width / 16 * 16;
  const int64_t chunk_pairs = kIntegerChunk / 2;
  std::vector<float> total(16 * width);
  for (int64_t r = 0; r < rows; r += 16) {
    const int count = rows - r < 16 ? static_cast<int>(rows - r) : 16;
    const int32_t* group = a.Group(r / 16);
    std::fill(total.begin(), total.end(), 0.0f);
    for (int64_t j0 = 0; j0 < a.pairs_per_row; j0 += chunk_pairs) {
      const int64_t j1 = std::min(a.pairs_per_row, j0 + chunk_pairs);
      for (int64_t col = first_col; col < panels_end; col += 16) {
        float* t = total.data() + (col - first_col);
        // (rows past `rows` are zeros in the group)
        switch (count > 8 ? 16 : count > 4 ? 8 : count > 1 ? 4 : 1) {
          case 16: IntegerPanel<16>(group, b, k, n, col, j0, j1, t, width); break;
          case 8: IntegerPanel<8>(group, b, k, n, col, j0, j1, t, width); break;
          case 4: IntegerPanel<4>(group, b, k, n, col, j0, j1, t, width); break;
          default: IntegerPanel<1>(group, b, k, n, col, j0, j1, t, width); break;
        }
      }
    }
    for (int64_t col = panels_end; col < end_col; ++col) {   // the last columns, one at a time
      for (int g = 0; g < count; ++g) {
        int64_t sum = 0;
        for (int64_t i = 0; i < k; ++i) {
          int16_t pair[2];
          std::memcpy(pair, group + 16 * (i / 2) + g, 4);
          sum += static_cast<int64_t>(pair[i % 2]) * b[i * n + col];
        }
        total[g * width + col - first_col] = static_cast<float>(sum);
      }
    }
    for (int g = 0; g < count; ++g) {
      for (int64_t col = first_col; col < end_col; ++col) {
        out[(r + g) * ldo + col] = (bias == nullptr ? 0.0f : bias[col]) +
            (col_scale == nullptr ? 1.0f : col_scale[col]) * a.scales[r + g] *
            total[g * width + col - first_col];
      }
    }
  }
}
#endif  // SPARSE_TRAX_AVX512

// The stored matrices of sparse QKV: D and E with per-row scales (int8), the three
// convolution kernels [K, size, C, O] with per-output-channel scales.
template <typename W>
struct SparseQKVMatrices {
  const typename W::Type* modules;
  const float* modules_scale;
  const typename W::Type* units;
  const float* units_scale;
  const typename W::Type* kernels[3];
  const float* kernel_scales[3];
};

// Positions per chunk of the kernel's work: a prompt's prefill (or any many positions) is
// run chunk after chunk, so that the rows of activations it forms (a chunk's rows of the
// multiplicative product and its convolutions' patches) stay a few MB.
constexpr int64_t kPositionsPerChunk = 16;

// Below this many bytes of weights (and few products) a call runs in one part.
constexpr int64_t kSplitWeightBytes = 1 << 20;

// A patch of convolution j: the vectors of (window positions) x (size modules), each c_in
// values, that row (r, s) of the output reads; null where a module lies outside.
struct PatchSources {
  const float* history;   // [batch, carried, S, C]
  const float* m;         // [batch, length, S, C]
  int64_t length, carried, n_modules, c_in;
  // The vector at (tau, w_) of row r's patch for module s, kernel size `size`.
  const float* At(int64_t r, int64_t s, int64_t tau, int64_t w_, int64_t size) const {
    const int64_t source = s + w_ - (size - 1) / 2;
    if (source < 0 || source >= n_modules) return nullptr;
    const int64_t b = r / length, u = r % length + tau;     // u: in history, then m
    return u < carried ? history + ((b * carried + u) * n_modules + source) * c_in
                       : m + ((b * length + u - carried) * n_modules + source) * c_in;
  }
};

template <typename W>
void SparseQKV(ffi::ThreadPool& pool, const SparseQKVMatrices<W>& w, const float* x,
               const float* history, const float* mult_bias, const float* const biases[3],
               const int64_t sizes[3], int64_t batch, int64_t length, int64_t d,
               int64_t carried, int64_t n_modules, int64_t c_in, int64_t c_out,
               float* const outs[3], float* m) {
  const int64_t rows = batch * length;
  const int64_t window = carried + 1;                 // K, the length kernel size
  // Parts split the output columns (multiples of 16), so that each reads its share of
  // every weight row once: the products read far more weights than activations. A part
  // handed to the pool costs a few microseconds: a decoded position takes one part where
  // the layer's weights are small and its products few (at 800M width, d 1024, S 16,
  // C 64, 3 x 3 kernels: 166 KB in int8, 332 KB in bfloat16, 664 KB in float32; the
  // attention block of 24 such layers took 0.86x / 0.92x the time in one part with int8
  // storage, 0.92x with bfloat16, 0.98x with float32; in-process A/Bs, 12-20 rounds; this
  // rule against the former one, 16 rounds: int8 0.92x, bfloat16 0.91x, float32 0.96x,
  // and a 17B-width int8 block, still in two parts, 0.97x).
  int64_t weight_values = d * n_modules + d * c_in;
  for (int j = 0; j < 3; ++j) weight_values += window * sizes[j] * c_in * c_out;
  const int64_t weight_bytes = weight_values * static_cast<int64_t>(sizeof(typename W::Type));
  const int64_t products = std::min(rows, kPositionsPerChunk) * d * n_modules * c_in;
  const int n_parts = (pool.num_threads() > 1 && c_in >= 32 && c_out >= 32 &&
                       products >= (1 << 18) &&
                       WorthSplitting(weight_bytes, products, kSplitWeightBytes))
                          ? 2 : 1;
#ifdef SPARSE_TRAX_AVX512
  const bool integer = std::is_same_v<W, Int8Weights> && HasVnni();
#endif
  // The multiplicative layer's rows a[(r, s), i] = x[r, i] D[i, s] (times D's and E's row
  // scales), one product with E for all of them.
  std::vector<float> multiplier(d);
  for (int64_t i = 0; i < d; ++i) {
    multiplier[i] = (w.modules_scale == nullptr ? 1.0f : w.modules_scale[i]) *
                    (w.units_scale == nullptr ? 1.0f : w.units_scale[i]);
  }
  const PatchSources sources{history, m, length, carried, n_modules, c_in};
  int64_t widths[3];
  for (int j = 0; j < 3; ++j) widths[j] = window * sizes[j] * c_in;

  for (int64_t r0 = 0; r0 < rows; r0 += kPositionsPerChunk) {
    const int64_t r1 = std::min(rows, r0 + kPositionsPerChunk);
    const int64_t chunk_rows = (r1 - r0) * n_modules;      // rows (r, s) of this chunk
    float* m_chunk = m + r0 * n_modules * c_in;
    // x times D's and E's row scales, once per position (each module's row reuses it).
    std::vector<float> scaled_x((r1 - r0) * d);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < d; ++i) scaled_x[(r - r0) * d + i] = x[r * d + i] * multiplier[i];
    }
    auto add_bias = [&](int64_t first, int64_t end) {   // per module and unit
      for (int64_t row = 0; row < chunk_rows; ++row) {
        const float* bias = mult_bias + (row % n_modules) * c_in;
        for (int64_t c = first; c < end; ++c) m_chunk[row * c_in + c] += bias[c];
      }
    };
#ifdef SPARSE_TRAX_AVX512
    if constexpr (std::is_same_v<W, Int8Weights>) {
      if (integer) {
        // The multiplicative rows, rounded to integers (parts take whole groups of 16; a
        // decoded token's 16 rows are one group, rounded here without a hand-off): with
        // 16 modules straight into their group, else row by row, then placed a group at
        // a time.
        const int row_parts = chunk_rows > 16 ? n_parts : 1;
        IntegerRows mult_rows(chunk_rows, d);
        RunSplit(pool, row_parts, [&](int part) {
          int64_t first, end;
          PartRange(chunk_rows, part, row_parts, 16, &first, &end);
          if (n_modules == 16) {        // one position a group, one module a lane
            for (int64_t k = first; k < end; k += 16) {
              SetModuleGroup(mult_rows, k / 16, scaled_x.data() + (k / 16) * d, w.modules, d);
            }
            return;
          }
          std::vector<float> row(d);
          std::vector<int16_t> group(16 * mult_rows.Stride(), 0);
          float group_scales[16];
          for (int64_t k0 = first; k0 < end; k0 += 16) {
            const int count = static_cast<int>(std::min<int64_t>(16, end - k0));
            for (int g = 0; g < count; ++g) {
              const int64_t k = k0 + g, r = r0 + k / n_modules, s = k % n_modules;
              for (int64_t i = 0; i < d; ++i) {
                row[i] = scaled_x[(r - r0) * d + i] * W::Scalar(w.modules[i * n_modules + s]);
              }
              group_scales[g] = QuantizeActivations(row.data(), d,
                                                    group.data() + g * mult_rows.Stride());
            }
            mult_rows.PlaceGroup(k0 / 16, count, group.data(), group_scales);
          }
        });
        RunSplit(pool, n_parts, [&](int part) {
          int64_t first, end;
          PartRange(c_in, part, n_parts, 16, &first, &end);
          IntegerGemm(mult_rows, chunk_rows, w.units, d, c_in, nullptr, nullptr, m_chunk, c_in,
                      first, end);
          add_bias(first, end);
        });
        // Each convolution's patches, rounded to integers straight from their vectors
        // (the largest magnitude over the patch's vectors first, then each vector).
        std::vector<IntegerRows> patches;
        for (int j = 0; j < 3; ++j) patches.emplace_back(chunk_rows, widths[j]);
        RunSplit(pool, row_parts, [&](int part) {
          int64_t first, end;
          PartRange(chunk_rows, part, row_parts, 16, &first, &end);
          std::vector<int16_t> group(16 * (*std::max_element(widths, widths + 3) + 1));
          std::vector<const float*> vectors(window * *std::max_element(sizes, sizes + 3));
          float group_scales[16];
          for (int j = 0; j < 3; ++j) {
            const int64_t pieces = window * sizes[j], stride = patches[j].Stride();
            for (int64_t k0 = first; k0 < end; k0 += 16) {
              const int count = static_cast<int>(std::min<int64_t>(16, end - k0));
              for (int g = 0; g < count; ++g) {
                const int64_t k = k0 + g, r = r0 + k / n_modules, s = k % n_modules;
                float largest = 0.0f;
                bool finite = true;
                for (int64_t p = 0; p < pieces; ++p) {
                  vectors[p] = sources.At(r, s, p / sizes[j], p % sizes[j], sizes[j]);
                  if (vectors[p] == nullptr) continue;
                  bool piece_finite;
                  largest = std::max(largest, LargestMagnitude(vectors[p], c_in, &piece_finite));
                  finite = finite && piece_finite;
                }
                int16_t* row = group.data() + g * stride;
                for (int64_t p = 0; p < pieces; ++p) {
                  int16_t* q = row + p * c_in;
                  if (vectors[p] == nullptr || !finite || largest == 0.0f) {
                    std::memset(q, 0, c_in * sizeof(int16_t));
                  } else {
                    RoundActivations(vectors[p], c_in, kActivationLevels / largest, q);
                  }
                }
                if (stride > widths[j]) row[widths[j]] = 0;     // an odd width's last pair
                group_scales[g] = ActivationScale(largest, finite);
              }
              patches[j].PlaceGroup(k0 / 16, count, group.data(), group_scales);
            }
          }
        });
        RunSplit(pool, n_parts, [&](int part) {
          int64_t first, end;
          PartRange(c_out, part, n_parts, 16, &first, &end);
          for (int j = 0; j < 3; ++j) {
            IntegerGemm(patches[j], chunk_rows, w.kernels[j], widths[j], c_out, biases[j],
                        w.kernel_scales[j], outs[j] + r0 * n_modules * c_out, c_out, first, end);
          }
        });
        continue;
      }
    }
#endif
    // float32 activations. The multiplicative rows stored as [r, i, s] (D's layout, so
    // written in order).
    std::vector<float> scaled((r1 - r0) * d * n_modules);
    for (int64_t r = r0; r < r1; ++r) {
      float* out = scaled.data() + (r - r0) * d * n_modules;
      for (int64_t i = 0; i < d; ++i) {
        const float xi = scaled_x[(r - r0) * d + i];
        const typename W::Type* di = w.modules + i * n_modules;
        for (int64_t s = 0; s < n_modules; ++s) out[i * n_modules + s] = xi * W::Scalar(di[s]);
      }
    }
    RunSplit(pool, n_parts, [&](int part) {
      int64_t first, end;
      PartRange(c_in, part, n_parts, 16, &first, &end);
      for (int64_t r = r0; r < r1; ++r) {
        Gemm<W>(scaled.data() + (r - r0) * d * n_modules, 1, n_modules, w.units, d, c_in,
                nullptr, nullptr, m + r * n_modules * c_in, c_in, n_modules, first, end);
      }
      add_bias(first, end);
    });
    // The convolutions: patches [chunk rows, K * size * C] per kernel (cut once every
    // module of the chunk's m exists), times the kernel [K * size * C, O].
    std::vector<float> patches[3];
    for (int j = 0; j < 3; ++j) {
      patches[j].resize(chunk_rows * widths[j]);
      const int64_t pieces = window * sizes[j];
      for (int64_t k = 0; k < chunk_rows; ++k) {
        const int64_t r = r0 + k / n_modules, s = k % n_modules;
        for (int64_t p = 0; p < pieces; ++p) {
          const float* vector = sources.At(r, s, p / sizes[j], p % sizes[j], sizes[j]);
          float* dst = patches[j].data() + k * widths[j] + p * c_in;
          if (vector == nullptr) {
            std::memset(dst, 0, c_in * sizeof(float));
          } else {
            std::memcpy(dst, vector, c_in * sizeof(float));
          }
        }
      }
    }
    RunSplit(pool, n_parts, [&](int part) {
      int64_t first, end;
      PartRange(c_out, part, n_parts, 16, &first, &end);
      for (int j = 0; j < 3; ++j) {
        Gemm<W>(patches[j].data(), widths[j], 1, w.kernels[j], widths[j], c_out, biases[j],
                w.kernel_scales[j], outs[j] + r0 * n_modules * c_out, c_out, chunk_rows, first,
                end);
      }
    });
  }
}


ffi::Error SparseQKVImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> history, ffi::AnyBuffer modules,
                         ffi::AnyBuffer modules_scale, ffi::AnyBuffer units,
                         ffi::AnyBuffer units_scale, ffi::Buffer<ffi::F32> mult_bias,
                         ffi::AnyBuffer q_kernel, ffi::AnyBuffer q_scale,
                         ffi::Buffer<ffi::F32> q_bias, ffi::AnyBuffer k_kernel,
                         ffi::AnyBuffer k_scale, ffi::Buffer<ffi::F32> k_bias,
                         ffi::AnyBuffer v_kernel, ffi::AnyBuffer v_scale,
                         ffi::Buffer<ffi::F32> v_bias, ffi::ResultBuffer<ffi::F32> q,
                         ffi::ResultBuffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> v,
                         ffi::ResultBuffer<ffi::F32> m) {
  auto x_dims = x.dimensions();
  auto h_dims = history.dimensions();
  auto d_dims = modules.dimensions();
  auto e_dims = units.dimensions();
  if (x_dims.size() != 3 || h_dims.size() != 4 || d_dims.size() != 2 || e_dims.size() != 2) {
    return ffi::Error::InvalidArgument(
        "sparse_qkv: x [b, l, d], history [b, K - 1, S, C], D [d, S], E [d, C]");
  }
  const int64_t batch = x_dims[0], length = x_dims[1], d = x_dims[2];
  const int64_t carried = h_dims[1], n_modules = h_dims[2], c_in = h_dims[3];
  if (h_dims[0] != batch || d_dims[0] != d || d_dims[1] != n_modules || e_dims[0] != d ||
      e_dims[1] != c_in || static_cast<int64_t>(mult_bias.element_count()) != n_modules * c_in ||
      !ScalesFit(modules_scale, d) || !ScalesFit(units_scale, d)) {
    return ffi::Error::InvalidArgument("sparse_qkv: inconsistent shapes");
  }
  const ffi::AnyBuffer* kernels[3] = {&q_kernel, &k_kernel, &v_kernel};
  const ffi::AnyBuffer* scales[3] = {&q_scale, &k_scale, &v_scale};
  const float* biases[3] = {q_bias.typed_data(), k_bias.typed_data(), v_bias.typed_data()};
  const int64_t bias_counts[3] = {static_cast<int64_t>(q_bias.element_count()),
                                  static_cast<int64_t>(k_bias.element_count()),
                                  static_cast<int64_t>(v_bias.element_count())};
  float* const outs[3] = {q->typed_data(), k->typed_data(), v->typed_data()};
  const int64_t window = carried + 1;
  int64_t c_out = 0, sizes[3];
  const ffi::DataType storage = units.element_type();
  for (int j = 0; j < 3; ++j) {
    auto dims = kernels[j]->dimensions();
    if (dims.size() != 4 || dims[0] != window || dims[2] != c_in ||
        (j > 0 && dims[3] != c_out) || bias_counts[j] != dims[3] ||
        !ScalesFit(*scales[j], dims[3])) {
      return ffi::Error::InvalidArgument(
          "sparse_qkv: kernels [K, size, C, O] with K = history + 1, biases and scales [O]");
    }
    if (kernels[j]->element_type() != storage) {
      return ffi::Error::InvalidArgument("sparse_qkv: all matrices must share one storage");
    }
    c_out = dims[3];
    sizes[j] = dims[1];
  }
  if (modules.element_type() != storage) {
    return ffi::Error::InvalidArgument("sparse_qkv: all matrices must share one storage");
  }
  auto run = [&](auto storage_type) {
    using W = decltype(storage_type);
    typedef const typename W::Type* Pointer;
    SparseQKVMatrices<W> w{static_cast<Pointer>(modules.untyped_data()), ScalesOrNull(modules_scale),
                           static_cast<Pointer>(units.untyped_data()), ScalesOrNull(units_scale),
                           {static_cast<Pointer>(q_kernel.untyped_data()),
                            static_cast<Pointer>(k_kernel.untyped_data()),
                            static_cast<Pointer>(v_kernel.untyped_data())},
                           {ScalesOrNull(q_scale), ScalesOrNull(k_scale), ScalesOrNull(v_scale)}};
    SparseQKV<W>(pool, w, x.typed_data(), history.typed_data(), mult_bias.typed_data(), biases,
                 sizes, batch, length, d, carried, n_modules, c_in, c_out, outs, m->typed_data());
    return ffi::Error::Success();
  };
  return ForStorage(storage, "sparse_qkv", run);
}

}  // namespace
}  // namespace sparse_trax_kernels

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxSparseQKV, sparse_trax_kernels::SparseQKVImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // x [b, l, d]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // history [b, K - 1, S, C]
                                  .Arg<xla::ffi::AnyBuffer>()   // modules D [d, S]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its row scales [d] or [0]
                                  .Arg<xla::ffi::AnyBuffer>()   // units E [d, C]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its row scales [d] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // multiplicative bias [S * C]
                                  .Arg<xla::ffi::AnyBuffer>()   // q kernel [K, 3, C, O]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its channel scales [O] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // q bias [O]
                                  .Arg<xla::ffi::AnyBuffer>()   // k kernel [K, 3, C, O]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its channel scales [O] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // k bias [O]
                                  .Arg<xla::ffi::AnyBuffer>()   // v kernel [K, 1, C, O]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its channel scales [O] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // v bias [O]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // q [b, l, S * O]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // k [b, l, S * O]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // v [b, l, S * O]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // m [b, l, S * C]
