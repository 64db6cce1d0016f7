// work_sharing.cpp — share_work: items from a shared counter, helpers that sleep (see the header).
#include "cpu/work_sharing.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#if !defined(_WIN32)
#include <pthread.h>
#endif

namespace pdcr {
namespace cpu {
namespace {

// One share_work call. Helpers hold it by shared_ptr, so a helper that wakes after the call has
// returned still finds valid counters (and no item); `fn` is the caller's and is called only for
// a claimed item, while the caller is still waiting for that item.
struct Job {
  Job(int64_t items, const std::function<void(int64_t)>& fn) : items(items), fn(fn) {}
  const int64_t items;
  const std::function<void(int64_t)>& fn;
  std::atomic<int64_t> next{0};  // next item to claim
  std::atomic<int64_t> done{0};  // items finished (or skipped after an error)
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception, under mutex
  std::mutex mutex;
  std::condition_variable finished;
};

// Claims and runs items until none is left.
void work_on(Job& job) {
  int64_t ran = 0;
  for (int64_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.items; ++ran) {
    if (job.failed.load(std::memory_order_relaxed)) continue;
    try {
      job.fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.mutex);
      if (!job.error) job.error = std::current_exception();
      job.failed = true;
    }
  }
  if (ran > 0 && job.done.fetch_add(ran, std::memory_order_acq_rel) + ran == job.items) {
    std::lock_guard<std::mutex> lock(job.mutex);  // the caller checks `done` under this lock
    job.finished.notify_all();
  }
}

// Helper threads, started on first need and kept (detached: they sleep on `wake_` between jobs,
// so there is nothing to join at exit). One queue entry per helper asked for.
class Pool {
 public:
  void post(const std::shared_ptr<Job>& job, int64_t helpers) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (; started_ < helpers; ++started_) std::thread([this] { loop(); }).detach();
      for (int64_t h = 0; h < helpers; ++h) queue_.push_back(job);
    }
    for (int64_t h = 0; h < helpers; ++h) wake_.notify_one();
  }

  // Drops the entries of a job whose items are all claimed: no helper needs to wake for it.
  void withdraw(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.erase(std::remove(queue_.begin(), queue_.end(), job), queue_.end());
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      work_on(*job);
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  int64_t started_ = 0;
};

// Never destroyed (detached threads use it until the process ends). A forked child (a DataLoader
// worker) has none of the parent's threads and perhaps a locked mutex: it gets a new pool.
Pool*& pool() {
  static Pool* instance = [] {
#if !defined(_WIN32)
    pthread_atfork(nullptr, nullptr, [] { pool() = new Pool(); });
#endif
    return new Pool();
  }();
  return instance;
}

}  // namespace

void share_work(int64_t items, int64_t max_threads, const std::function<void(int64_t)>& fn) {
  const int64_t helpers = std::min(max_threads, items) - 1;
  if (helpers <= 0 || at::in_parallel_region()) {
    for (int64_t i = 0; i < items; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>(items, fn);
  Pool* helpers_pool = pool();
  helpers_pool->post(job, helpers);
  work_on(*job);
  helpers_pool->withdraw(job);
  {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == items; });
  }
  if (job->error) std::rethrow_exception(job->error);
}

}  // namespace cpu
}  // namespace pdcr
