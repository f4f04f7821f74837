// sparse_qkv: sparse QKV's multiplicative layer and its three convolutions
// over (length, module) for a few decoded positions, in one call. XLA runs them as
// four small matrix products and about six operations that cut and stack patches.
//   m[r, s, c]    = sum_i x[r, i] D[i, s] E[i, c] + mb[s, c]        (r: a row's position)
//   seq           = the carried history [K - 1 positions] then m, per batch row
//   out_j[r, s, o] = b_j[o] + sum_{t < K, w < ks_j, c} seq[r + t, s + w - (ks_j - 1) / 2, c]
//                                                  W_j[t, w, c, o]   (modules outside are 0)
// Both are products of a few rows with a [k, n] matrix: Gemm below.

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
  // The multiplicative layer as one product per position r of rows a[s, i] = x[r, i] D[i, s]
  // (times E's row scale), stored as [r, i, s] (D's layout, so written in order).
  std::vector<float> scaled(rows * d * n_modules);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* out = scaled.data() + r * d * n_modules;
    for (int64_t i = 0; i < d; ++i) {
      const float xi = xr[i] * (w.modules_scale == nullptr ? 1.0f : w.modules_scale[i]) *
                       (w.units_scale == nullptr ? 1.0f : w.units_scale[i]);
      const typename W::Type* di = w.modules + i * n_modules;
      for (int64_t s = 0; s < n_modules; ++s) out[i * n_modules + s] = xi * W::Scalar(di[s]);
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
      float* out = m + r * n_modules * c_in;
      Gemm<W>(scaled.data() + r * d * n_modules, 1, n_modules, w.units, d, c_in, nullptr,
              nullptr, out, c_in, n_modules, first, end);
      for (int64_t s = 0; s < n_modules; ++s) {      // the bias is per module and unit
        const float* bias = mult_bias + s * c_in;
        for (int64_t c = first; c < end; ++c) out[s * c_in + c] += bias[c];
      }
    }
  };
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
  auto convolve = [&](int part) {
    int64_t first, end;
    PartRange(c_out, part, n_parts, 16, &first, &end);
    for (int j = 0; j < 3; ++j) {
      const int64_t width = window * sizes[j] * c_in;
      Gemm<W>(patches[j].data(), width, 1, w.kernels[j], width, c_out, biases[j],
              w.kernel_scales[j], outs[j], c_out, m_rows, first, end);
    }
  };
  RunSplit(pool, n_parts, multiplicative);
  for (int j = 0; j < 3; ++j) cut_patches(j);
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
