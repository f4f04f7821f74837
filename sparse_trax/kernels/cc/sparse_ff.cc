// sparse_ff: SparseFF for a few or many positions (a decoded token, a prompt's
// prefill) in one call, its matrices read from their storage (int8 with per-row
// scales, bfloat16 or float32) and converted in registers. XLA runs the same
// computation as about a dozen operations (two controller products, an argmax,
// three gathers, two products), converting each stored matrix whole first.
//   low    = c_in x                              [r]
//   logit  = c_out low + c_bias                  [d_ff], read block by block
//   u_b    = b * N + argmax of block b's N logits
//   y      = sum_b relu(w1[u_b] . x + b1[u_b]) w2[u_b] + b2
// All matrices are out-major ([d_out, d_in]), as in sparse_trax. Blocks are the
// outer loop and positions the inner one: a block's N controller rows and its
// candidate rows of W1 and W2 come from memory once and serve every position.

#include "simd.h"
#include "handlers.h"

namespace sparse_trax_kernels {
namespace {

template <typename W>
struct SparseFFMatrices {
  StoredRows<W> c_in, c_out, w1, w2;
  const float* c_bias;
  const float* b1;
};

// Blocks [first_block, end_block) for every position: choose each block's unit,
// add its contribution to y_part[p] (zeroed here), write the choice to chosen[p, b].
template <typename W>
void SparseFFBlocks(const SparseFFMatrices<W>& w, const float* x, const float* low,
                    int64_t positions, int64_t d_model, int64_t rank, int64_t n_per_block,
                    int64_t n_blocks, int64_t first_block, int64_t end_block, float* y_part,
                    int32_t* chosen) {
  std::memset(y_part, 0, positions * d_model * sizeof(float));
  std::vector<int64_t> best(positions);
  std::vector<float> best_logit(positions);
  float logits[4];
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * n_per_block, end = first + n_per_block;
    for (int64_t u = first; u < end; u += 4) {
      const int count = end - u < 4 ? static_cast<int>(end - u) : 4;
      Prefetch(reinterpret_cast<const char*>(w.c_out.Row(u)) + kPrefetchBytes,
               4 * rank * sizeof(typename W::Type));
      for (int64_t p = 0; p < positions; ++p) {
        DotRows<W>(w.c_out.Row(u), count, low + p * rank, rank, logits);
        for (int r = 0; r < count; ++r) {
          const float logit = logits[r] * w.c_out.Scale(u + r) + w.c_bias[u + r];
          if (u + r == first || logit > best_logit[p]) {   // the first of equal maxima, as argmax
            best_logit[p] = logit;
            best[p] = u + r;
          }
        }
      }
    }
    for (int64_t p = 0; p < positions; ++p) {
      const int64_t unit = best[p];
      chosen[p * n_blocks + b] = static_cast<int32_t>(unit - first);
      // The chosen rows are far apart in memory: ask for all of both at once.
      Prefetch(w.w1.Row(unit), d_model * sizeof(typename W::Type));
      Prefetch(w.w2.Row(unit), d_model * sizeof(typename W::Type));
      float dot;
      DotRows<W>(w.w1.Row(unit), 1, x + p * d_model, d_model, &dot);
      const float hidden = dot * w.w1.Scale(unit) + w.b1[unit];
      if (hidden > 0.0f) {
        AxpyRow<W>(hidden * w.w2.Scale(unit), w.w2.Row(unit), y_part + p * d_model, d_model);
      }
    }
  }
}

template <typename W>
void SparseFF(ffi::ThreadPool& pool, const SparseFFMatrices<W>& w, const float* x,
              const float* b2, int64_t positions, int64_t d_model, int64_t rank, int64_t d_ff,
              int64_t n_per_block, float* y, int32_t* units) {
  const int64_t n_blocks = d_ff / n_per_block;
  // Two parts where the pool has threads (reading the controller is bound by one
  // core's memory bandwidth); one where the work is too small to pay for a hand-off.
  const int n_parts = (pool.num_threads() > 1 && d_ff * rank >= (1 << 16)) ? 2 : 1;
  std::vector<float> low(positions * rank), y_parts(n_parts * positions * d_model);
  // low = c_in x for every position, c_in's rows split over the parts (groups of four,
  // each read once for all positions).
  auto low_rows = [&](int part) {
    int64_t first, end;
    PartRange(rank, part, n_parts, 4, &first, &end);
    float out[4];
    for (int64_t k = first; k < end; k += 4) {
      const int count = end - k < 4 ? static_cast<int>(end - k) : 4;
      for (int64_t p = 0; p < positions; ++p) {
        DotRows<W>(w.c_in.Row(k), count, x + p * d_model, d_model, out);
        for (int r = 0; r < count; ++r) low[p * rank + k + r] = out[r] * w.c_in.Scale(k + r);
      }
    }
  };
  auto blocks = [&](int part) {
    const int64_t first = n_blocks * part / n_parts, end = n_blocks * (part + 1) / n_parts;
    SparseFFBlocks<W>(w, x, low.data(), positions, d_model, rank, n_per_block, n_blocks, first,
                      end, &y_parts[part * positions * d_model], units);
  };
  RunSplit(pool, n_parts, low_rows);
  RunSplit(pool, n_parts, blocks);
  for (int64_t p = 0; p < positions; ++p) {
    float* yp = y + p * d_model;
    for (int64_t i = 0; i < d_model; ++i) {
      float sum = b2[i];
      for (int part = 0; part < n_parts; ++part) sum += y_parts[(part * positions + p) * d_model + i];
      yp[i] = sum;
    }
  }
}

bool IsMatrix(const ffi::AnyBuffer& b, int64_t rows, int64_t cols) {
  auto dims = b.dimensions();
  return dims.size() == 2 && dims[0] == rows && dims[1] == cols;
}


ffi::Error SparseFFImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer c_in,
                        ffi::AnyBuffer c_in_scale, ffi::AnyBuffer c_out,
                        ffi::AnyBuffer c_out_scale, ffi::Buffer<ffi::F32> c_bias,
                        ffi::AnyBuffer w1, ffi::AnyBuffer w1_scale, ffi::Buffer<ffi::F32> b1,
                        ffi::AnyBuffer w2, ffi::AnyBuffer w2_scale, ffi::Buffer<ffi::F32> b2,
                        ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S32> units,
                        int64_t n_per_block) {
  auto x_dims = x.dimensions();
  if (x_dims.size() != 2 || c_in.dimensions().size() != 2 || w1.dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("sparse_ff: x, controller_in and w1 must be matrices");
  }
  const int64_t positions = x_dims[0], d_model = x_dims[1];
  const int64_t rank = c_in.dimensions()[0], d_ff = w1.dimensions()[0];
  if (!IsMatrix(c_in, rank, d_model) || !IsMatrix(c_out, d_ff, rank) ||
      !IsMatrix(w1, d_ff, d_model) || !IsMatrix(w2, d_ff, d_model) ||
      c_bias.element_count() != static_cast<size_t>(d_ff) ||
      b1.element_count() != static_cast<size_t>(d_ff) ||
      b2.element_count() != static_cast<size_t>(d_model) || !ScalesFit(c_in_scale, rank) ||
      !ScalesFit(c_out_scale, d_ff) || !ScalesFit(w1_scale, d_ff) ||
      !ScalesFit(w2_scale, d_ff) || n_per_block <= 0 || d_ff % n_per_block != 0) {
    return ffi::Error::InvalidArgument("sparse_ff: inconsistent shapes");
  }
  const ffi::DataType storage = w1.element_type();
  if (c_in.element_type() != storage || c_out.element_type() != storage ||
      w2.element_type() != storage) {
    return ffi::Error::InvalidArgument("sparse_ff: all four matrices must share one storage");
  }
  auto run = [&](auto storage_type) {
    using W = decltype(storage_type);
    auto rows = [](const ffi::AnyBuffer& values, const ffi::AnyBuffer& scale) {
      return StoredRows<W>{static_cast<const typename W::Type*>(values.untyped_data()),
                           ScalesOrNull(scale), values.dimensions()[1]};
    };
    SparseFFMatrices<W> w{rows(c_in, c_in_scale), rows(c_out, c_out_scale), rows(w1, w1_scale),
                          rows(w2, w2_scale), c_bias.typed_data(), b1.typed_data()};
    SparseFF<W>(pool, w, x.typed_data(), b2.typed_data(), positions, d_model, rank, d_ff,
                n_per_block, y->typed_data(), units->typed_data());
    return ffi::Error::Success();
  };
  return ForStorage(storage, "sparse_ff", run);
}

}  // namespace
}  // namespace sparse_trax_kernels

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxSparseFF, sparse_trax_kernels::SparseFFImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // x [positions, d]
                                  .Arg<xla::ffi::AnyBuffer>()   // controller_in [r, d]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its scales [r] or [0]
                                  .Arg<xla::ffi::AnyBuffer>()   // controller_out [d_ff, r]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its scales [d_ff] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // controller_bias [d_ff]
                                  .Arg<xla::ffi::AnyBuffer>()   // w1 [d_ff, d]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its scales [d_ff] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // b1 [d_ff]
                                  .Arg<xla::ffi::AnyBuffer>()   // w2 [d_ff, d]
                                  .Arg<xla::ffi::AnyBuffer>()   //   its scales [d_ff] or [0]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // b2 [d]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // y [positions, d]
                                  .Ret<xla::ffi::Buffer<xla::ffi::S32>>()   // units [positions, B]
                                  .Attr<int64_t>("n_per_block"));
