// Products of float32 activations with stored weight matrices (int8 with per-row
// float32 scales, bfloat16, float32), the weights converted in registers. XLA
// converts a whole stored matrix to float32 before its product: for a prompt's
// prefill that asked for a float32 copy of every matrix of the model at once.
//
// stored_matvec: y[p, o] = scale[o] * sum_i w[o, i] x[p, i], out-major weights
//   [d_out, d_in] (a Dense layer's rows). Any number of positions: each group of
//   four rows is read from memory once and then serves every position from the cache.
//   int8 rows meet each position's x rounded to 15-bit integers (PositionVectors,
//   simd.h: exact integer sums, at most 2^-15 of max|x| per unit of weight from the
//   float32 product), four positions at a time where the CPU has VNNI: a 64-position
//   product with a 4096^2 int8 matrix 20.3 -> 6.5 ms (float32 activations, each row
//   converted once per position, against integers), the 800M dense int8 model's 64-token
//   prefill 456 -> 207 ms; a decoded token the same (one process, alternated rounds).
//   int8 groups are eight rows (eight one-byte streams; two tiles of four for a prompt):
//   a 16384^2 int8 product 0.86x / 0.92x the time of groups of four (XLA's float32
//   product reading 54 / 34 GB/s in those runs), the 800M dense int8 step 0.97-0.99x.
// stored_vecmat: y[p, :] = sum_i a[p, i] * scale[i] * w[i, :], in-major weights
//   [d_in, d_out] (MultiplicativeDense's units, SparseFF's W2 in a masked product).

#include "simd.h"
#include "handlers.h"

namespace sparse_trax_kernels {
namespace {

// Rows of one tile of a prompt's product: four rows meet four positions at once
// (PositionVectors::Tile). A single position reads PositionVectors<W>::kMostRows rows
// at a time (eight int8 rows, four otherwise), all sharing each load of x.
constexpr int64_t kTileRows = 4;

// How far ahead in each row a matvec prefetches. The rows of a matrix follow one
// another, so with rows shorter than this it reads lines of the groups to come: with
// kPrefetchBytes (2 KB) a group of 1 KB rows prefetched only half of the next group.
// The 800M dense model's int8 decoding step (rows of 1 and 4 KB): 8 KB 0.88 of 2 KB's
// time (A/B in one process, 8 rounds of 20 tokens).
constexpr int64_t kMatvecAheadBytes = 8192;

template <typename W>
void StoredMatvec(ffi::ThreadPool& pool, const float* x, StoredRows<W> w, int64_t positions,
                  int64_t d_out, float* y) {
  const int64_t d_in = w.cols;
  const PositionVectors<W> vectors(x, positions, d_in);    // int8 rows: integer activations
  const bool tile = positions >= 4 && PositionVectors<W>::HasTile();
  constexpr int64_t kRows = PositionVectors<W>::kMostRows;   // rows a group reads at once
  const int n_parts = (pool.num_threads() > 1 && d_out * d_in >= (1 << 18)) ? 2 : 1;
  auto work = [&](int part) {
    int64_t first, end;
    PartRange(d_out, part, n_parts, kRows, &first, &end);
    float out[4 * kTileRows];
    for (int64_t o = first; o < end; o += kRows) {
      const int count = end - o < kRows ? static_cast<int>(end - o) : kRows;
      int64_t p = 0;                      // the rows stay in cache across positions
      if (tile && count % kTileRows == 0) {
        for (; p + 4 <= positions; p += 4) {
          for (int r0 = 0; r0 < count; r0 += kTileRows) {
            vectors.Tile(w.Row(o + r0), p, out);
            for (int q = 0; q < 4; ++q) {
              for (int r = 0; r < kTileRows; ++r) {
                y[(p + q) * d_out + o + r0 + r] = out[q * 4 + r] * w.Scale(o + r0 + r);
              }
            }
          }
        }
      }
      for (; p < positions; ++p) {
        vectors.Dot(w.Row(o), count, p, out, kMatvecAheadBytes);
        for (int r = 0; r < count; ++r) y[p * d_out + o + r] = out[r] * w.Scale(o + r);
      }
    }
  };
  RunSplit(pool, n_parts, work);
}

// Rows of the contracted axis per block of a vecmat: each tile sums this many weight
// rows in registers before touching y, so that y is read and written once per block.
constexpr int64_t kVecmatRowBlock = 16;

// The same for four rows of a at a time (the sparse loss's vocabulary: 4 modules). A
// 1024 x 8000 product, six such matrices in turn (out of cache), 64 rows a block took
// 0.87x / 0.93x the time of 16 in float32, 0.89x in bfloat16, 6144 x 8000 int8 0.95x
// (in-process A/Bs, 20 rounds); one, two or eight rows of a gained nothing (1.01-1.25x).
// The sums run in the same order either way (each tile adds its rows one by one).
constexpr int64_t kVecmatRowBlockOfFour = 64;

// How far ahead in each of a block's rows a tile prefetches. The block's rows are as
// many streams at once: 16 of them at kPrefetchBytes (2 KB) ahead each asked for 32 KB
// in flight, all of L1, and evicted each other's lines. The 16B model's vocabulary
// (int8, 6144 x 8000 in two parts of 4000 columns; 16-row blocks then): 256 B ahead
// 0.70-0.79 of 2 KB's time, 128-512 B about the same, 1 KB 0.92 (A/B in one process,
// 9 rounds each). Not measured again with 64-row blocks (kVecmatRowBlockOfFour).
constexpr int64_t kVecmatAheadBytes = 256;

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
    Prefetch(reinterpret_cast<const char*>(row) + kVecmatAheadBytes, 16 * V * sizeof(*row));
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

// Columns are split over the thread pool. Each part takes up to 8 rows of a at a time
// and walks the weights in blocks of 16 rows (64 for four rows of a); within a block,
// tiles of columns keep their sums in registers (reading the weights once per group
// of rows).
// Streaming each weight row across all columns instead, with the sums in y, ran at
// a third of the bandwidth (y's traffic through the cache outweighed the weights).
template <typename W>
void StoredVecmat(ffi::ThreadPool& pool, const float* a, StoredRows<W> w, int64_t positions,
                  int64_t d_in, float* y) {
  const int64_t d_out = w.cols;
  const int n_parts = (pool.num_threads() > 1 && d_out * d_in >= (1 << 18) && d_out >= 64)
                          ? 2 : 1;
  auto work = [&](int part) {
    int64_t first, end;                // multiples of 16 keep the vector tiles whole
    PartRange(d_out, part, n_parts, 16, &first, &end);
    for (int64_t p = 0; p < positions; ++p) {
      std::memset(y + p * d_out + first, 0, (end - first) * sizeof(float));
    }
    float coefficient[kVecmatRowBlockOfFour][8];
    for (int64_t p0 = 0; p0 < positions;) {
      const int64_t rest = positions - p0;
      const int count = rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
      const int64_t row_block = count == 4 ? kVecmatRowBlockOfFour : kVecmatRowBlock;
      float* yp = y + p0 * d_out;
      for (int64_t i0 = 0; i0 < d_in; i0 += row_block) {
        const int64_t i1 = d_in - i0 < row_block ? d_in : i0 + row_block;
        for (int64_t i = i0; i < i1; ++i) {
          for (int g = 0; g < count; ++g) coefficient[i - i0][g] = a[(p0 + g) * d_in + i] * w.Scale(i);
        }
        switch (count) {
          case 8: VecmatBlock<W, 8, 2>(coefficient, w.values, d_out, i0, i1, first, end, yp); break;
          case 4: VecmatBlock<W, 4, 4>(coefficient, w.values, d_out, i0, i1, first, end, yp); break;
          case 2: VecmatBlock<W, 2, 4>(coefficient, w.values, d_out, i0, i1, first, end, yp); break;
          default: VecmatBlock<W, 1, 4>(coefficient, w.values, d_out, i0, i1, first, end, yp); break;
        }
      }
      p0 += count;
    }
  };
  RunSplit(pool, n_parts, work);
}

ffi::Error StoredMatvecImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer values,
                            ffi::AnyBuffer scale, ffi::ResultBuffer<ffi::F32> y) {
  auto x_dims = x.dimensions();
  auto w_dims = values.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[1]) {
    return ffi::Error::InvalidArgument("stored_matvec: need x [p, d_in] and weights [d_out, d_in]");
  }
  if (!ScalesFit(scale, w_dims[0])) {
    return ffi::Error::InvalidArgument("stored_matvec: need one scale per row (or none)");
  }
  return ForStorage(values.element_type(), "stored_matvec", [&](auto storage) {
    using W = decltype(storage);
    StoredRows<W> w{static_cast<const typename W::Type*>(values.untyped_data()),
                    ScalesOrNull(scale), w_dims[1]};
    StoredMatvec<W>(pool, x.typed_data(), w, x_dims[0], w_dims[0], y->typed_data());
    return ffi::Error::Success();
  });
}

ffi::Error StoredVecmatImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::AnyBuffer values,
                            ffi::AnyBuffer scale, ffi::ResultBuffer<ffi::F32> y) {
  auto a_dims = a.dimensions();
  auto w_dims = values.dimensions();
  if (a_dims.size() != 2 || w_dims.size() != 2 || a_dims[1] != w_dims[0]) {
    return ffi::Error::InvalidArgument("stored_vecmat: need a [p, d_in] and weights [d_in, d_out]");
  }
  if (!ScalesFit(scale, w_dims[0])) {
    return ffi::Error::InvalidArgument("stored_vecmat: need one scale per row (or none)");
  }
  return ForStorage(values.element_type(), "stored_vecmat", [&](auto storage) {
    using W = decltype(storage);
    StoredRows<W> w{static_cast<const typename W::Type*>(values.untyped_data()),
                    ScalesOrNull(scale), w_dims[1]};
    StoredVecmat<W>(pool, a.typed_data(), w, a_dims[0], a_dims[1], y->typed_data());
    return ffi::Error::Success();
  });
}

}  // namespace
}  // namespace sparse_trax_kernels

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxStoredMatvec, sparse_trax_kernels::StoredMatvecImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // x [positions, d_in]
                                  .Arg<xla::ffi::AnyBuffer>()  // values [d_out, d_in]
                                  .Arg<xla::ffi::AnyBuffer>()  // scale [d_out] float32, or [0]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // y [positions, d_out]

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseTraxStoredVecmat, sparse_trax_kernels::StoredVecmatImpl,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()   // a [positions, d_in]
                                  .Arg<xla::ffi::AnyBuffer>()  // values [d_in, d_out]
                                  .Arg<xla::ffi::AnyBuffer>()  // scale [d_in] float32, or [0]
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>());  // y [positions, d_out]
