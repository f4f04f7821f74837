// The helper thread behind RunSplit (split.h).

#include "split.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace sparse_trax_kernels {
namespace {

inline void SpinPause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// One thread that runs the parts callers offer it. `offered` counts offers, so that the
// helper polls one atomic while it spins; the job itself passes under the mutex.
class Helper {
 public:
  Helper() : thread_([this] { Loop(); }) { thread_.detach(); }

  // Hands the parts 1.. of `job` to the helper; returns at once.
  void Offer(std::shared_ptr<SplitJob> job) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_ = std::move(job);
      offered_.fetch_add(1, std::memory_order_release);
      wake = asleep_;
    }
    if (wake) awake_.notify_one();
  }

 private:
  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() +
                         std::chrono::microseconds(kHelperLingerMicros);
      bool offered = false;
      for (int polls = 0;; ++polls) {
        if (offered_.load(std::memory_order_acquire) != seen) {
          offered = true;
          break;
        }
        SpinPause();
        if ((polls & 255) == 255 && std::chrono::steady_clock::now() > until) break;
      }
      std::shared_ptr<SplitJob> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!offered) {
          asleep_ = true;
          awake_.wait(lock, [&] { return offered_.load(std::memory_order_relaxed) != seen; });
          asleep_ = false;
        }
        seen = offered_.load(std::memory_order_relaxed);
        job = std::move(pending_);
      }
      if (job) {
        for (int part = 1; part < job->n_parts; ++part) job->RunIfUnclaimed(part);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable awake_;
  std::atomic<uint64_t> offered_{0};
  std::shared_ptr<SplitJob> pending_;   // guarded by mutex_
  bool asleep_ = false;                 // guarded by mutex_
  std::thread thread_;
};

// The process's helper, started on first use and never destroyed (a detached thread
// must not outlive the object it runs on). A forked child has no helper thread: it
// starts its own on its first split.
std::atomic<Helper*> helper{nullptr};
std::mutex helper_start;

Helper& TheHelper() {
  Helper* current = helper.load(std::memory_order_acquire);
  if (current != nullptr) return *current;
  std::lock_guard<std::mutex> lock(helper_start);
  current = helper.load(std::memory_order_relaxed);
  if (current == nullptr) {
#if defined(__unix__) || defined(__APPLE__)
    static const int registered = pthread_atfork(nullptr, nullptr, [] {
      helper.store(nullptr, std::memory_order_relaxed);
    });
    (void)registered;
#endif
    current = new Helper();
    helper.store(current, std::memory_order_release);
  }
  return *current;
}

}  // namespace

void RunSplit(int n_parts, std::function<void(int)> work) {
  if (n_parts == 1) {               // nothing to hand off
    work(0);
    return;
  }
  auto job = std::make_shared<SplitJob>(n_parts);
  job->work = std::move(work);
  TheHelper().Offer(job);
  job->RunIfUnclaimed(0);
  for (int part = 1; part < n_parts; ++part) {
    job->RunIfUnclaimed(part);
    while (!job->done[part].load(std::memory_order_acquire)) SpinPause();
  }
}

}  // namespace sparse_trax_kernels
