// Splitting a kernel's work in two: the calling thread and one helper thread.
//
// A kernel call splits its work into parts (at most two today), each run once by
// whichever thread claims it first: the caller runs part 0, then claims the rest
// itself or waits for the helper that took them. Claiming keeps a split correct
// when no helper comes (busy, asleep, or absent after a fork).
//
// Why a helper of our own and not XLA's intra-op pool: on this project's 2-vCPU
// machines a pool thread woken by Schedule started its part ~110 us later (mean over
// 4.7k calls; the caller had claimed and run part 1 itself in 95% of them), so every
// product under ~2 ms ran on one core: the 800M model's int8 matrices (1-4 MB each)
// streamed at ~15 GB/s, one core's rate. The helper spins for a short while after each
// part (kHelperLingerMicros), so the next kernel of the same decoding step finds it
// awake; past that it sleeps until a kernel offers work again.

#ifndef SPARSE_TRAX_KERNELS_SPLIT_H_
#define SPARSE_TRAX_KERNELS_SPLIT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace sparse_trax_kernels {

// How long the helper keeps polling for the next part after finishing one, before it
// sleeps. Between two kernels of a decoding step XLA runs a few small operations: with
// 50 us the helper of the 800M dense int8 model slept 575 times in 15k parts, with
// 300 us 54 times (and the step was 10% faster); spinning longer only burns the core
// while nothing comes.
constexpr int64_t kHelperLingerMicros = 500;

// The parts of one split call, each claimed once.
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

// Runs work(0) .. work(n_parts - 1), each once, on this thread and the helper; returns
// when all are done. Call sites pass n_parts 2 only where XLA's intra-op pool has more
// than one thread (the user's thread setting), else 1 (no hand-off at all).
void RunSplit(int n_parts, std::function<void(int)> work);

}  // namespace sparse_trax_kernels

#endif  // SPARSE_TRAX_KERNELS_SPLIT_H_
