// work_sharing.cpp — share_work: items from a shared counter on torch's threads (see the header).
#include "cpu/work_sharing.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>

namespace pdcr {
namespace cpu {

void share_work(int64_t items, int64_t max_threads, const std::function<void(int64_t)>& fn) {
  const int64_t threads = std::min(max_threads, items);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception, under `mutex`
  std::mutex mutex;
  // A range of `threads` with grain 1: one part per thread, each part a loop that claims items
  // until none is left. at::parallel_for returns once every thread has left its loop.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace pdcr
