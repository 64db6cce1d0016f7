// work_sharing.h — the dragsaw loss's CPU threads: items claimed from a shared counter, on torch's
// own intra-op threads.
//
// at::parallel_for alone splits a range into one fixed part per thread. On a machine whose cores
// are shared with other processes (data-loading workers, a second job) one of those threads is
// often waiting for a core, and the call then lasts as long as that thread's part at half speed
// or worse (benchmarks/bench_contention.py). share_work keeps torch's threads but hands the items
// out one at a time from a shared counter: a thread that has a core keeps claiming, a thread that
// starts late finds few or no items left, so the slow part is at most one item.
//
// Why torch's threads and not a pool of our own (tried, and measured): after every parallel torch
// op, OpenMP's workers keep spinning on their cores for a while (libgomp's GOMP_SPINCOUNT) before
// they sleep. A second set of helper threads then finds the other core taken, and the calling
// thread does nearly every item itself: at the paper's sizes on the 2-core machine the forward +
// backward was slower than on one thread (6.2 vs 5.3 ms at N = 128), against 2.8 ms on torch's
// threads. The threads that are already spinning are the ones that can start at once.
#pragma once

#include <cstdint>
#include <functional>

namespace pdcr {
namespace cpu {

// Runs fn(i) once for every i in [0, items) on up to max_threads of torch's intra-op threads (the
// calling thread among them) and returns when all are done. Items are claimed in increasing
// order. An exception thrown by fn is rethrown here (the first one; items not yet claimed are
// skipped). Runs everything on the calling thread when max_threads <= 1, items <= 1 or inside an
// at::parallel_for region.
void share_work(int64_t items, int64_t max_threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace pdcr
