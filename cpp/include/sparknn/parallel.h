// A minimal parallel-for: threads are started per call and joined before it
// returns, so no pool outlives an index and fork() (as Spark's Python workers
// do) never inherits running threads. Work is handed out in chunks from an
// atomic counter, so uneven work (graph search) balances itself.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace sparknn {

// Cores this process may run on (affinity mask, so taskset/cgroups are honoured).
int available_cores();

// The machine's physical memory in bytes, 0 when unknown: a request beyond it is refused before
// it is made, as some allocators (sanitizers, overcommitting kernels) abort or kill rather than
// fail it.
double physical_memory_bytes();

// 0 means all available cores; negative is rejected by callers before this. A larger count than
// the machine's cores computes nothing faster, and some callers size per-thread buffers by it
// (ivf search: threads x queries heaps; threads=10**6 asked for tens of GB): it is capped there.
inline int resolve_threads(int threads) {
    static const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return threads > 0 ? std::min(threads, cores) : available_cores();
}

// Calls fn(begin, end, worker) over [0, n) in chunks of `chunk`, on up to
// `threads` threads. The first exception thrown by any worker is rethrown here
// after all workers stop.
template <class Fn>
void parallel_for(size_t n, size_t chunk, int threads, Fn&& fn) {
    if (n == 0) return;
    chunk = std::max<size_t>(chunk, 1);
    const size_t chunks = (n + chunk - 1) / chunk;
    const int workers = static_cast<int>(std::min<size_t>(chunks, static_cast<size_t>(resolve_threads(threads))));
    if (workers <= 1) {
        for (size_t begin = 0; begin < n; begin += chunk) fn(begin, std::min(n, begin + chunk), 0);
        return;
    }
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&](int worker) {
        try {
            while (!failed.load(std::memory_order_relaxed)) {
                const size_t begin = next.fetch_add(chunk, std::memory_order_relaxed);
                if (begin >= n) break;
                fn(begin, std::min(n, begin + chunk), worker);
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            failed.store(true);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(workers - 1));
    for (int w = 1; w < workers; ++w) {
        // Work is handed out dynamically, so if the OS refuses a thread the
        // ones already running (and this one) finish the job.
        try {
            pool.emplace_back(work, w);
        } catch (const std::system_error&) {
            break;
        }
    }
    work(0);
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace sparknn
