// sparse_qkv: sparse QKV's multiplicative layer and its three convolutions
// over (length, module) for a few decoded positions, in one call. XLA runs them as
// four small matrix products and about six operations that cut and stack patches.
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
  // b's rows are read down a panel: prefetch the row about kPrefetchBytes ahead.
  const int64_t row_bytes = n * static_cast<int64_t>(sizeof(typename W::Type));
  const int64_t ahead = row_bytes >= kPrefetchBytes ? 1 : kPrefetchBytes / row_bytes;
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
  for (; col + 32 <= end_col; col += 32) {
    GemmPanel<W, G, 2>(a, a_row, a_col, b, k, n, col, bias, col_scale, out, ldo);
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
// b [k, n] stored as W, out [rows, n] (row stride ldo). Eight rows at a time: each load of
// b's row serves eight rows.
template <typename W>
void Gemm(const float* a, int64_t a_row, int64_t a_col, const typename W::Type* b, int64_t k,
          int64_t n, const float* bias, const float* col_scale, float* out, int64_t ldo,
          int64_t rows, int64_t first_col, int64_t end_col) {
  int64_t r = 0;
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
#define SPARSE_TRAX_VNNI_TARGET __attribute__((target("avx512vnni")))

// Whether this CPU runs vpdpwssd.
inline bool HasVnni() {
  static const bool has = __builtin_cpu_supports("avx512vnni");
  return has;
}

// Rows of k per int32 sum before it is added to float32: a lane gains at most
// 2 * 128 * 16383 per pair of rows, so 256 pairs stay under 2^31.
constexpr int64_t kIntegerChunk = 512;

// total[g, 0:16] += sum_{i in chunk} qa[g, i] b[i, col:col + 16] for G rows of qa (row
// stride lda, padded to an even length with zeros), int8 b [k, n]: k in pairs, each
// pair's 16 columns interleaved into 32 int16 lanes and met by qa's pair broadcast.
template <int G>
SPARSE_TRAX_VNNI_TARGET void IntegerPanel(const int16_t* qa, int64_t lda, const int8_t* b,
                                          int64_t k, int64_t n, int64_t col, int64_t i0,
                                          int64_t i1, float* total, int64_t ldt) {
  const int64_t row_ahead = n >= kPrefetchBytes ? 2 : 2 * kPrefetchBytes / n + 2;
  __m512i acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_si512();
  for (int64_t i = i0; i < i1; i += 2) {
    const int8_t* row = b + i * n + col;
    __builtin_prefetch(row + row_ahead * n);
    __builtin_prefetch(row + (row_ahead + 1) * n);
    const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
    const __m128i second = i + 1 < k ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + n))
                                     : _mm_setzero_si128();
    const __m512i pairs = _mm512_cvtepi8_epi16(_mm256_set_m128i(
        _mm_unpackhi_epi8(first, second), _mm_unpacklo_epi8(first, second)));
    for (int g = 0; g < G; ++g) {
      int32_t pair;
      std::memcpy(&pair, qa + g * lda + i, sizeof(pair));
      acc[g] = _mm512_dpwssd_epi32(acc[g], pairs, _mm512_set1_epi32(pair));
    }
  }
  for (int g = 0; g < G; ++g) {
    float* t = total + g * ldt;
    _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), _mm512_cvtepi32_ps(acc[g])));
  }
}

// out[r, c] = bias[c] + col_scale[c] * a_scale[r] * sum_i qa[r, i] b[i, c] for rows r <
// rows and columns [first_col, end_col): as Gemm, for int8 b and integer rows of a.
SPARSE_TRAX_VNNI_TARGET void IntegerGemm(const int16_t* qa, int64_t lda, const float* a_scale,
                                         const int8_t* b, int64_t k, int64_t n,
                                         const float* bias, const float* col_scale, float* out,
                                         int64_t ldo, int64_t rows, int64_t first_col,
                                         int64_t end_col) {
  // Sums for 16 rows and every column of the range; b's rows are read a chunk at a time
  // across all columns (a chunk of b, kIntegerChunk x the range, stays in L2 while each
  // 16-column panel reads its strip).
  const int64_t width = end_col - first_col, panels_end = first_col + width / 16 * 16;
  std::vector<float> total(16 * width);
  for (int64_t r = 0; r < rows; r += 16) {
    const int count = rows - r < 16 ? static_cast<int>(rows - r) : 16;
    const int16_t* rows_qa = qa + r * lda;
    std::fill(total.begin(), total.end(), 0.0f);
    for (int64_t i0 = 0; i0 < k; i0 += kIntegerChunk) {
      const int64_t i1 = std::min(k, i0 + kIntegerChunk);
      for (int64_t col = first_col; col < panels_end; col += 16) {
        float* t = total.data() + (col - first_col);
        // (rows past `rows` are zeros in qa: IntegerRows holds whole groups of 16)
        switch (count > 8 ? 16 : count > 4 ? 8 : count > 1 ? 4 : 1) {
          case 16: IntegerPanel<16>(rows_qa, lda, b, k, n, col, i0, i1, t, width); break;
          case 8: IntegerPanel<8>(rows_qa, lda, b, k, n, col, i0, i1, t, width); break;
          case 4: IntegerPanel<4>(rows_qa, lda, b, k, n, col, i0, i1, t, width); break;
          default: IntegerPanel<1>(rows_qa, lda, b, k, n, col, i0, i1, t, width); break;
        }
      }
    }
    for (int64_t col = panels_end; col < end_col; ++col) {   // the last columns, one at a time
      for (int g = 0; g < count; ++g) {
        int64_t sum = 0;
        for (int64_t i = 0; i < k; ++i) sum += static_cast<int64_t>(rows_qa[g * lda + i]) * b[i * n + col];
        total[g * width + col - first_col] = static_cast<float>(sum);
      }
    }
    for (int g = 0; g < count; ++g) {
      for (int64_t col = first_col; col < end_col; ++col) {
        out[(r + g) * ldo + col] = (bias == nullptr ? 0.0f : bias[col]) +
            (col_scale == nullptr ? 1.0f : col_scale[col]) * a_scale[r + g] *
            total[g * width + col - first_col];
      }
    }
  }
}

// Rows of a, rounded to integers for IntegerGemm: [rows rounded up to 16, k rounded up to
// 2] int16 (zeros past the ends), a scale per row.
struct IntegerRows {
  std::vector<int16_t> values;
  std::vector<float> scales;
  int64_t lda;
  // (rows are padded by one cache line more: a row length that is a multiple of 4 KB,
  // such as d = 6144 in int16, put the 16 rows a panel reads at once in one L1 set, and
  // the multiplicative product ran at half the convolutions' rate)
  IntegerRows(int64_t rows, int64_t k)
      : values(((rows + 15) / 16 * 16) * ((k + 1) / 2 * 2 + 32), 0), scales(rows),
        lda((k + 1) / 2 * 2 + 32) {}
  // Rounds row r from `row` (k floats).
  void Set(int64_t r, const float* row, int64_t k) {
    scales[r] = QuantizeActivations(row, k, &values[r * lda]);
  }
};
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

template <typename W>
void SparseQKV(ffi::ThreadPool& pool, const SparseQKVMatrices<W>& w, const float* x,
               const float* history, const float* mult_bias, const float* const biases[3],
               const int64_t sizes[3], int64_t batch, int64_t length, int64_t d,
               int64_t carried, int64_t n_modules, int64_t c_in, int64_t c_out,
               float* const outs[3], float* m) {
  const int64_t rows = batch * length;
  const int64_t window = carried + 1;                 // K, the length kernel size
  const int64_t m_rows = rows * n_modules;
  // Parts split the output columns (multiples of 16), so that each reads its share of
  // every weight row once: the products read far more weights than activations.
  const int n_parts = (pool.num_threads() > 1 && c_in >= 32 && c_out >= 32 &&
                       rows * d * n_modules * c_in >= (1 << 18)) ? 2 : 1;
  bool integer = false;
#ifdef SPARSE_TRAX_AVX512
  integer = std::is_same_v<W, Int8Weights> && HasVnni();
#endif
  // The multiplicative layer's rows a[(r, s), i] = x[r, i] D[i, s] (times D's and E's row
  // scales), one product with E for all of them.
  auto multiplier = [&](int64_t i) {
    return (w.modules_scale == nullptr ? 1.0f : w.modules_scale[i]) *
           (w.units_scale == nullptr ? 1.0f : w.units_scale[i]);
  };
  auto add_bias = [&](int64_t first, int64_t end) {   // per module and unit
    for (int64_t row = 0; row < m_rows; ++row) {
      const float* bias = mult_bias + (row % n_modules) * c_in;
      for (int64_t c = first; c < end; ++c) m[row * c_in + c] += bias[c];
    }
  };
  std::function<void(int)> multiplicative;
  std::vector<float> scaled;
#ifdef SPARSE_TRAX_AVX512
  std::unique_ptr<IntegerRows> integer_rows;
  if constexpr (std::is_same_v<W, Int8Weights>) {
    if (integer) {
      integer_rows = std::make_unique<IntegerRows>(m_rows, d);
      std::vector<float> scaled_x(d), row(d);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < d; ++i) scaled_x[i] = x[r * d + i] * multiplier(i);
        // (module by module: rows of one position's [S, d] lie d floats apart, and
        // writing all S at once thrashes one L1 set)
        for (int64_t s = 0; s < n_modules; ++s) {
          for (int64_t i = 0; i < d; ++i) row[i] = scaled_x[i] * W::Scalar(w.modules[i * n_modules + s]);
          integer_rows->Set(r * n_modules + s, row.data(), d);
        }
      }
      multiplicative = [&](int part) {
        int64_t first, end;
        PartRange(c_in, part, n_parts, 16, &first, &end);
        IntegerGemm(integer_rows->values.data(), integer_rows->lda, integer_rows->scales.data(),
                    w.units, d, c_in, nullptr, nullptr, m, c_in, m_rows, first, end);
        add_bias(first, end);
      };
    }
  }
#endif
  if (!integer) {
    // Stored as [r, i, s] (D's layout, so written in order).
    scaled.resize(rows * d * n_modules);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * d;
      float* out = scaled.data() + r * d * n_modules;
      for (int64_t i = 0; i < d; ++i) {
        const float xi = xr[i] * multiplier(i);
        const typename W::Type* di = w.modules + i * n_modules;
        for (int64_t s = 0; s < n_modules; ++s) out[i * n_modules + s] = xi * W::Scalar(di[s]);
      }
    }
    multiplicative = [&](int part) {
      int64_t first, end;
      PartRange(c_in, part, n_parts, 16, &first, &end);
      for (int64_t r = 0; r < rows; ++r) {
        Gemm<W>(scaled.data() + r * d * n_modules, 1, n_modules, w.units, d, c_in, nullptr,
                nullptr, m + r * n_modules * c_in, c_in, n_modules, first, end);
      }
      add_bias(first, end);
    };
  }
  // The convolutions: patches [rows * S, K * size * C] per kernel (cut after every
  // module of m exists), times the kernel [K * size * C, O].
  std::vector<float> patches[3];
  auto cut_patches = [&](int j) {
    const int64_t size = sizes[j], before = (size - 1) / 2;
    const int64_t width = window * size * c_in;
    patches[j].resize(m_rows * width);
    for (int64_t row = 0; row < m_rows; ++row) {
      const int64_t r = row / n_modules, s = row % n_modules;
      const int64_t b = r / length, t = r % length;
      for (int64_t tau = 0; tau < window; ++tau) {
        const int64_t u = t + tau;                // position in history then m
        for (int64_t w_ = 0; w_ < size; ++w_) {
          const int64_t source = s + w_ - before;
          float* dst = patches[j].data() + row * width + (tau * size + w_) * c_in;
          if (source < 0 || source >= n_modules) {
            std::memset(dst, 0, c_in * sizeof(float));
          } else if (u < carried) {
            std::memcpy(dst, history + ((b * carried + u) * n_modules + source) * c_in,
                        c_in * sizeof(float));
          } else {
            std::memcpy(dst, m + ((b * length + u - carried) * n_modules + source) * c_in,
                        c_in * sizeof(float));
          }
        }
      }
    }
  };
#ifdef SPARSE_TRAX_AVX512
  std::vector<IntegerRows> integer_patches;
#endif
  auto convolve = [&](int part) {
    int64_t first, end;
    PartRange(c_out, part, n_parts, 16, &first, &end);
    for (int j = 0; j < 3; ++j) {
      const int64_t width = window * sizes[j] * c_in;
#ifdef SPARSE_TRAX_AVX512
      if constexpr (std::is_same_v<W, Int8Weights>) {
        if (integer) {
          const IntegerRows& a = integer_patches[j];
          IntegerGemm(a.values.data(), a.lda, a.scales.data(), w.kernels[j], width, c_out,
                      biases[j], w.kernel_scales[j], outs[j], c_out, m_rows, first, end);
          continue;
        }
      }
#endif
      Gemm<W>(patches[j].data(), width, 1, w.kernels[j], width, c_out, biases[j],
              w.kernel_scales[j], outs[j], c_out, m_rows, first, end);
    }
  };
  RunSplit(pool, n_parts, multiplicative);
  for (int j = 0; j < 3; ++j) cut_patches(j);
#ifdef SPARSE_TRAX_AVX512
  if (integer) {
    for (int j = 0; j < 3; ++j) {
      const int64_t width = window * sizes[j] * c_in;
      integer_patches.emplace_back(m_rows, width);
      for (int64_t row = 0; row < m_rows; ++row) {
        integer_patches[j].Set(row, patches[j].data() + row * width, width);
      }
    }
  }
#endif
  RunSplit(pool, n_parts, convolve);
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
