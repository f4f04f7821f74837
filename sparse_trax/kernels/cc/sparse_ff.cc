// sparse_ff: SparseFF for a few or many positions (a decoded token, a prompt's
// prefill) in one call, its matrices read from their storage (int8 with per-row
// scales, bfloat16 or float32) and converted in registers. XLA runs the same
// computation as about a dozen operations (two controller products, an argmax,
// three gathers, two products), converting each stored matrix whole first.
//   low    = c_in x                              [r]
//   logit  = c_out low + c_bias                  [d_ff], read block by block
//   u_b    = b * N + argmax of block b's N logits
//   y      = sum_b relu(w1[u_b] . x + b1[u_b]) w2[u_b] + b2
// All matrices are out-major ([d_out, d_in]), as in sparse_trax. For int8 storage the
// activations x and low are rounded to 15-bit integers first (simd.h: integer products,
// exact sums; at most 2^-15 of max|x| per unit of weight away from float32).
//
// Three passes over each thread's blocks, each one stream of reads: (1) the controller
// rows, block after block, each block's N rows serving every position, choosing the
// units; (2) the chosen rows of W1; (3) the rows of W2 whose hidden value is positive.
// The chosen rows lie far apart, where the hardware prefetcher cannot follow; deciding
// every block first lets each row's read prefetch the next rows as one sequence. At
// 17B width (int8, d 6144, d_ff 49152, N 64; 4 stacked layers, 20 interleaved rounds
// in one process) a layer took 2.27 ms reading each block's chosen rows right after its
// controller rows (float32 activations), 1.87 ms in passes, 1.49 ms in passes with
// integer activations (bandwidth 56 GB/s in that run: its floor, 51.9 MB, is 0.93 ms).
// For four positions or more (a prefill) with int8 rows and VNNI, the controller's rows
// meet four positions at a time (DotRowsQuantizedTile: each row widened once for four,
// the same floats): a 64-position prefill of that layer 66.8 -> 54.1 ms (median of 7).

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

// Rows read one after another as if they were one array (the chosen rows of W1 or W2):
// a read at byte `offset` of row k prefetches the line kPrefetchBytes further on in
// the sequence, in row k or a row after it.
class RowSequence {
 public:
  RowSequence(const std::vector<const char*>& rows, int64_t count, int64_t row_bytes)
      : rows_(rows.data()), count_(count), row_bytes_(row_bytes) {
    for (int64_t offset = 0; offset < kPrefetchBytes; offset += 64) Prefetch(0, offset);
  }

  // The prefetch of a read of row k (as AheadInMatrix: ahead(r, offset), r unused).
  struct Ahead {
    const RowSequence* sequence;
    int64_t k;
    void operator()(int, int64_t offset) const { sequence->Prefetch(k, offset + kPrefetchBytes); }
  };
  Ahead From(int64_t k) const { return Ahead{this, k}; }

 private:
  // Prefetches the line `offset` bytes into the sequence from row k's start.
  void Prefetch(int64_t k, int64_t offset) const {
    while (offset >= row_bytes_) {
      offset -= row_bytes_;
      if (++k >= count_) return;
    }
    PrefetchLineToL1(rows_[k] + offset);   // (L2 hints here and in pass 1: see there)
  }

  const char* const* rows_;
  int64_t count_, row_bytes_;
};

// Pass 1 for one block where PositionVectors::HasDot16 (short int8 rows, positions one
// by one): each position's logits of the block's rows, sixteen rows at a time (Dot16:
// the same floats as four at a time), then their argmax (the first of equal maxima).
// Four at a time, each group's four reductions and scalar argmax steps waited on one
// another: a third of an 800M-width layer's samples went to this pass (rank 96).
// logits: [positions, n_per_block] scratch; best[p]: the unit chosen for position p.
template <typename W>
void ChooseBySixteens(const SparseFFMatrices<W>& w, const PositionVectors<W>& low,
                      int64_t positions, int64_t rank, int64_t first, int64_t n_per_block,
                      float* logits, int64_t* best) {
  for (int64_t u = first; u < first + n_per_block; u += 16) {
    PrefetchToL1(reinterpret_cast<const char*>(w.c_out.Row(u)) + kPrefetchBytes,
                 16 * rank * sizeof(typename W::Type));
    for (int64_t p = 0; p < positions; ++p) {
      float* logit = logits + p * n_per_block + (u - first);
      low.Dot16(w.c_out.Row(u), p, logit);
      for (int r = 0; r < 16; ++r) {
        logit[r] = logit[r] * w.c_out.Scale(u + r) + w.c_bias[u + r];   // as `choose`
      }
    }
  }
  for (int64_t p = 0; p < positions; ++p) {
    const float* logit = logits + p * n_per_block;
    int64_t r_best = 0;
    for (int64_t r = 1; r < n_per_block; ++r) {
      if (logit[r] > logit[r_best]) r_best = r;
    }
    best[p] = first + r_best;
  }
}

// The largest group of four controller rows (bytes) that pass 1 prefetches as a whole
// into L1, beside each row's own prefetch. Longer groups flood the core's outstanding
// misses with prefetches the rows' own and the hardware's already cover: at 17B width
// in float32 (rank 768, 12 KB a group) a layer took 0.91x and 0.89x the time without it
// (three and two stacked layers, in-process A/Bs of 16 rounds; 7.45 -> 6.69 ms), in
// bfloat16 (6 KB) 1.01x, where at 800M width in float32 (rank 96, 1.5 KB) it took 1.12x
// and int8 at 17B width (3 KB) 1.7x (see pass 1).
constexpr int64_t kGroupPrefetchMostBytes = 8 << 10;

// Blocks [first_block, end_block) for every position, in the three passes: writes each
// block's choice to chosen[p, b] and adds the chosen units' sum to y_part[p].
template <typename W>
void SparseFFBlocks(const SparseFFMatrices<W>& w, const PositionVectors<W>& x,
                    const PositionVectors<W>& low, int64_t positions, int64_t d_model,
                    int64_t rank, int64_t n_per_block, int64_t n_blocks, int64_t first_block,
                    int64_t end_block, float* y_part, int32_t* chosen) {
  typedef typename W::Type T;
  // 1. The controller: each block's rows, four at a time, for every position. (Eight
  // int8 rows at a time, for positions one by one, measured 0.86x / 0.91x the time of
  // four for a 17B-width int8 layer's decoded token in one hour and 1.45x in another,
  // when the machine's bandwidth read 54 GB/s: not kept.)
  const bool tile = positions >= 4 && PositionVectors<W>::HasTile();
  const bool group_prefetch = 4 * rank * static_cast<int64_t>(sizeof(T)) <= kGroupPrefetchMostBytes;
  std::vector<int64_t> best(positions);
  std::vector<float> best_logit(positions);
  float logits[4];
  // (Short int8 rows, positions one by one: sixteen at a time, ChooseBySixteens.)
  const bool sixteen = !tile && low.HasDot16() && n_per_block % 16 == 0;
  std::vector<float> block_logits(sixteen ? positions * n_per_block : 0);
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t first = b * n_per_block, end = first + n_per_block;
    if (sixteen) {
      ChooseBySixteens(w, low, positions, rank, first, n_per_block, block_logits.data(),
                       best.data());
    } else {
      for (int64_t u = first; u < end; u += 4) {
        const int count = end - u < 4 ? static_cast<int>(end - u) : 4;
        // (Measured: without this group prefetch, beside each row's own, a 17B-width
        // layer took 2.7 ms against 1.6. Into L1: with this one and RowSequence's asking
        // for L2 only, the 17B-width int8 layer took 1.22x the time, 2.26 against 1.85 ms
        // in an A/B, though the rows' own prefetches gain from L2. Past
        // kGroupPrefetchMostBytes it is left to the rows' own: see there.)
        if (group_prefetch) {
          PrefetchToL1(reinterpret_cast<const char*>(w.c_out.Row(u)) + kPrefetchBytes,
                       4 * rank * sizeof(T));
        }
        auto choose = [&](int64_t p, const float* raw) {
          for (int r = 0; r < count; ++r) {
            const float logit = raw[r] * w.c_out.Scale(u + r) + w.c_bias[u + r];
            // (the first of equal maxima, as argmax)
            if (u + r == first || logit > best_logit[p]) {
              best_logit[p] = logit;
              best[p] = u + r;
            }
          }
        };
        int64_t p = 0;
        if (count == 4 && tile) {          // many positions: four at a time
          float raw[16];
          for (; p + 4 <= positions; p += 4) {
            low.Tile(w.c_out.Row(u), p, raw);
            for (int q = 0; q < 4; ++q) choose(p + q, raw + 4 * q);
          }
        }
        for (; p < positions; ++p) {
          if (sizeof(T) >= 2) {
            // float32 / bfloat16 rows one after another: one sequential stream through
            // the group, where four rows side by side read four streams 4 x rank bytes
            // apart (the same sums, bit for bit). A 17B-width layer's decoded token,
            // float32: 0.90 / 0.89x the time, bfloat16 0.95x; 800M width 0.95x / 0.99x
            // (in-process A/Bs). int8 rows keep the integer product of the whole group.
            for (int r = 0; r < count; ++r) low.Dot(w.c_out.Row(u + r), 1, p, logits + r);
          } else {
            low.Dot(w.c_out.Row(u), count, p, logits);
          }
          choose(p, logits);
        }
      }
    }
    for (int64_t p = 0; p < positions; ++p) {
      chosen[p * n_blocks + b] = static_cast<int32_t>(best[p] - first);
    }
  }
  // 2. hidden[k] = relu(w1[unit] . x[p] + b1[unit]) for k = (b, p), block-major.
  const int64_t n_rows = (end_block - first_block) * positions;
  const int64_t row_bytes = d_model * sizeof(T);
  std::vector<int64_t> unit(n_rows), position(n_rows);
  std::vector<const char*> rows(n_rows);
  for (int64_t b = first_block, k = 0; b < end_block; ++b) {
    for (int64_t p = 0; p < positions; ++p, ++k) {
      unit[k] = b * n_per_block + chosen[p * n_blocks + b];
      position[k] = p;
      rows[k] = reinterpret_cast<const char*>(w.w1.Row(unit[k]));
    }
  }
  std::vector<float> coefficient(n_rows);
  int64_t n_active = 0;
  {
    const RowSequence w1_rows(rows, n_rows, row_bytes);
    for (int64_t k = 0; k < n_rows; ++k) {
      const float hidden = x.DotOne(w.w1.Row(unit[k]), position[k], w1_rows.From(k)) *
                           w.w1.Scale(unit[k]) + w.b1[unit[k]];
      if (hidden > 0.0f) {      // kept, in order: k >= n_active, so nothing unread is overwritten
        coefficient[n_active] = hidden * w.w2.Scale(unit[k]);
        position[n_active] = position[k];
        unit[n_active] = unit[k];
        ++n_active;
      }
    }
  }
  // 3. y_part[p] += hidden * w2[unit] for the positive ones.
  for (int64_t k = 0; k < n_active; ++k) rows[k] = reinterpret_cast<const char*>(w.w2.Row(unit[k]));
  const RowSequence w2_rows(rows, n_active, row_bytes);
  for (int64_t k = 0; k < n_active; ++k) {
    AxpyRow<W>(coefficient[k], w.w2.Row(unit[k]), y_part + position[k] * d_model, d_model,
               w2_rows.From(k));
  }
}

// How many blocks a chunk of SparseFF's work holds: about kChunkBytes of weights read
// (the controller's share and each position's chosen rows), in 2 to 16 chunks. Each
// chunk costs a few microseconds of its own (its buffer and its share of the final sum,
// restarting the row streams, a claim both threads contend for). At 800M width (d 1024,
// d_ff 6144, 96 blocks, one position; 24 stacked layers, in-process A/Bs against the
// former 16 chunks) int8 storage (0.8 MB read, now 2 chunks) took 0.90x and 0.89x the
// time (12 and 30 rounds; fixed at 2 chunks, 0.70x), float32 (3.4 MB, 2 chunks) 0.93x,
// 1.11x and 0.98x: no change. A 17B-width layer (52 MB in int8) keeps 16 chunks (there
// 16, 8 and 4 measured alike).
constexpr int64_t kChunkBytes = 2 << 20;

inline int64_t BlocksPerChunk(int64_t n_blocks, int64_t positions, int64_t d_model,
                              int64_t rank, int64_t d_ff, int64_t weight_bytes) {
  const int64_t bytes = weight_bytes * (rank * d_model + d_ff * rank +
                                        2 * positions * n_blocks * d_model);
  const int64_t by_bytes = std::min<int64_t>(16, (bytes + kChunkBytes - 1) / kChunkBytes);
  const int64_t n_chunks =
      std::max<int64_t>(1, std::min<int64_t>(n_blocks, std::max<int64_t>(2, by_bytes)));
  return (n_blocks + n_chunks - 1) / n_chunks;
}

// Bytes of c_in from which its product is split over two threads (see SparseFF).
constexpr int64_t kSplitControllerBytes = 128 << 10;

template <typename W>
void SparseFF(ffi::ThreadPool& pool, const SparseFFMatrices<W>& w, const float* x,
              const float* b2, int64_t positions, int64_t d_model, int64_t rank, int64_t d_ff,
              int64_t n_per_block, float* y, int32_t* units) {
  const int64_t n_blocks = d_ff / n_per_block;
  // Two parts where the pool has threads (reading the controller is bound by one
  // core's memory bandwidth); one where the work is too small to pay for a hand-off.
  const int n_parts = (pool.num_threads() > 1 && d_ff * rank >= (1 << 16)) ? 2 : 1;
  std::vector<float> low(positions * rank);
  const PositionVectors<W> x_vectors(x, positions, d_model);
  // low = c_in x for every position, c_in's rows split over the parts (groups of four,
  // each read once for all positions; eight long int8 rows at a time where positions
  // come one by one: at 17B width, d 6144, the layer's decoded token 0.83x the time of
  // four at a slow hour, 1.00x at a fast one; at 800M width, d 1024, 1.04-1.07x, so
  // there it keeps four).
  const bool tile = positions >= 4 && PositionVectors<W>::HasTile();
  const int64_t group = (tile || d_model < 4096) ? 4 : PositionVectors<W>::kMostRows;
  // (Split from kSplitControllerBytes of c_in: at 800M width, c_in 96 x 1024, one part
  // took 0.91x / 0.88x the time of two for an int8 layer (98 KB), but 1.07x / 1.08x /
  // 1.07x for float32 (393 KB) and 1.06x for bfloat16 (197 KB); 24 stacked layers,
  // in-process A/Bs of 30-40 rounds. At 17B width, 768 x 6144, every storage splits.)
  const int64_t c_in_bytes = rank * d_model * static_cast<int64_t>(sizeof(typename W::Type));
  const int low_parts =
      WorthSplitting(c_in_bytes, positions * rank * d_model, kSplitControllerBytes) ? n_parts
                                                                                      : 1;
  auto low_rows = [&](int part) {
    int64_t first, end;
    PartRange(rank, part, low_parts, group, &first, &end);
    float out[16];
    for (int64_t k = first; k < end; k += group) {
      const int count = end - k < group ? static_cast<int>(end - k) : static_cast<int>(group);
      int64_t p = 0;
      if (count == 4 && tile) {        // many positions: four at a time
        for (; p + 4 <= positions; p += 4) {
          x_vectors.Tile(w.c_in.Row(k), p, out);
          for (int q = 0; q < 4; ++q) {
            for (int r = 0; r < 4; ++r) low[(p + q) * rank + k + r] = out[q * 4 + r] * w.c_in.Scale(k + r);
          }
        }
      }
      for (; p < positions; ++p) {
        x_vectors.Dot(w.c_in.Row(k), count, p, out);
        for (int r = 0; r < count; ++r) low[p * rank + k + r] = out[r] * w.c_in.Scale(k + r);
      }
    }
  };
  RunSplit(pool, low_parts, low_rows);
  const PositionVectors<W> low_vectors(low.data(), positions, rank);
  // The parts claim chunks of blocks as they go, so that a thread slowed by another
  // process on its core does not hold the other one waiting at the end. Each chunk
  // sums into its own buffer and the buffers are added in chunk order: which thread
  // ran a chunk never changes the result (with one buffer per thread the order of
  // the float additions, and so the last bits, followed the timing, and an argmax
  // downstream could flip between two runs of the same call). The number of chunks
  // follows the shapes alone (never the number of parts), so one thread or two give
  // the same bits.
  const int64_t chunk = BlocksPerChunk(n_blocks, positions, d_model, rank, d_ff,
                                      sizeof(typename W::Type));
  const int64_t n_chunks = (n_blocks + chunk - 1) / chunk;
  std::vector<float> y_chunks(n_chunks * positions * d_model);
  std::atomic<int64_t> next_block{0};
  auto blocks = [&](int part) {
    for (;;) {
      const int64_t first = next_block.fetch_add(chunk);
      if (first >= n_blocks) break;
      float* y_chunk = &y_chunks[(first / chunk) * positions * d_model];
      std::memset(y_chunk, 0, positions * d_model * sizeof(float));
      SparseFFBlocks<W>(w, x_vectors, low_vectors, positions, d_model, rank, n_per_block,
                        n_blocks, first, std::min(n_blocks, first + chunk), y_chunk, units);
    }
  };
  RunSplit(pool, n_parts, blocks);
  for (int64_t p = 0; p < positions; ++p) {
    float* yp = y + p * d_model;
    for (int64_t i = 0; i < d_model; ++i) yp[i] = b2[i];
    for (int64_t c = 0; c < n_chunks; ++c) {
      const float* part = &y_chunks[(c * positions + p) * d_model];
      for (int64_t i = 0; i < d_model; ++i) yp[i] += part[i];
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
