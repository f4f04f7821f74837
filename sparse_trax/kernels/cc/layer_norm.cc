// layer_norm: LayerNorm of a few rows in one call (XLA:CPU: five operations).

#include "simd.h"
#include "handlers.h"

namespace sparse_trax_kernels {
namespace {

// LayerNorm of a few rows: two passes over each row (mean, then the centered
// variance), as XLA computes it in five operations.
ffi::Error LayerNormImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                         ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                         float epsilon) {
  auto dims = x.dimensions();
  if (dims.size() != 2 || static_cast<int64_t>(scale.element_count()) != dims[1] ||
      static_cast<int64_t>(bias.element_count()) != dims[1]) {
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

}  // namespace
}  // namespace sparse_trax_kernels

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxLayerNorm, sparse_trax_kernels::LayerNormImpl,
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // x [rows, d]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // scale [d]
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // bias [d]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()   // y [rows, d]
                                  .Attr<float>("epsilon"));
