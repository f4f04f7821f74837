// cached_attention: one query per row against a predict-mode KV cache, over the
// visible slots [first, position]: softmax(q . k) v per head, in one pass over
// the keys and one over the values. XLA runs it as a switch over window sizes
// with a handful of operations inside, which cost more than the arithmetic.

#include "simd.h"
#include "handlers.h"

namespace sparse_trax_kernels {
namespace {

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

}  // namespace
}  // namespace sparse_trax_kernels

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxCachedAttention, sparse_trax_kernels::CachedAttentionImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // q [b, h, d], scaled
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // keys [b, slots, h, d]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // values [b, slots, h, d]
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()   // bounds: first, position
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // out [b, h, d]
