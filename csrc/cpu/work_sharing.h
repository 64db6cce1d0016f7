// work_sharing.h — the dragsaw loss's CPU threads: work sharing without a join barrier.
//
// at::parallel_for (OpenMP in torch's CPU builds) splits a range into one fixed part per thread
// and returns when every thread of the team has finished its part. On a machine whose cores are
// shared with other processes (data-loading workers, a second job) one of those threads is often
// waiting for a core: the call then lasts as long as that thread's part at half speed or worse,
// plus the time-slices it waits, while the calling thread spins at the barrier. Measured on the
// 2-core machine with a busy process pinned to one core, the paper-size loss had a median close to
// the one-thread time and a tail of several milliseconds (benchmarks/bench_contention.py).
//
// share_work instead hands items out one at a time from a shared counter. The calling thread
// works through them itself and helper threads join in when they get a core; the call ends when
// every item is done, never waiting for a helper that has not started (a late helper finds no item
// left and goes back to sleep). Helpers sleep on a condition variable between calls instead of
// spinning, so they do not burn the core they share while idle. On a quiet machine this is as
// fast as the fixed split; on a busy one the threads that have a core do the work.
#pragma once

#include <cstdint>
#include <functional>

namespace pdcr {
namespace cpu {

// Runs fn(i) once for every i in [0, items) on the calling thread and on up to max_threads - 1
// helper threads, and returns when all are done. Items are claimed in increasing order. An
// exception thrown by fn is rethrown here (the first one; items not yet claimed are skipped).
// Runs everything on the calling thread when max_threads <= 1, items <= 1 or inside an
// at::parallel_for region.
void share_work(int64_t items, int64_t max_threads, const std::function<void(int64_t)>& fn);

}  // namespace cpu
}  // namespace pdcr
