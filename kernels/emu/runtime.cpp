// The emulated launch: a pool of OS threads, one per CUDA thread of a block, running the blocks of a grid in order.
#include "cuda_emu.h"

#include <barrier>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {

thread_local ThreadState current;

namespace {

using Barrier = std::barrier<>;

// This thread's cp.async copies not yet waited for (copy16_async: always 16 bytes).
struct PendingCopy {
  void* dst;
  unsigned group;  // the commit group it joins: copy_groups_committed at its issue
  alignas(16) unsigned char data[16];
};
thread_local std::vector<PendingCopy> pending_copies;
thread_local unsigned copy_groups_committed = 0;

struct Warp {
  std::unique_ptr<Barrier> barrier;
  alignas(16) unsigned char exchange[32][256];
};

struct Launch;
void reset_block_sync(Launch& l);

// Runs between two blocks, while every thread waits at the end-of-block barrier.
struct ResetBlockSync {
  Launch* launch;
  void operator()() noexcept { reset_block_sync(*launch); }
};

struct Launch {
  void (*entry)(const void*) = nullptr;
  const void* params = nullptr;
  dim3 grid, block;
  unsigned threads = 0;
  std::vector<unsigned char> dynamic_shared;
  // Recreated before every block: threads that return early drop out of these for the rest of their block only.
  std::unique_ptr<Barrier> block_barrier;
  std::vector<Warp> warps;
  std::unique_ptr<std::barrier<ResetBlockSync>> block_done;
  unsigned long long next_block = 0, blocks = 0;
};

Launch* g_launch = nullptr;
thread_local unsigned g_warp_threads = 0;

void reset_block_sync(Launch& l) {
  l.block_barrier = std::make_unique<Barrier>(l.threads);
  for (size_t w = 0; w < l.warps.size(); ++w) {
    unsigned lanes = std::min(32u, l.threads - unsigned(w) * 32u);
    l.warps[w].barrier = std::make_unique<Barrier>(lanes);
    std::memset(l.warps[w].exchange, 0, sizeof(l.warps[w].exchange));
  }
  // Uninitialised shared memory reads as NaN, so a kernel that relies on it fails its test.
  std::fill(l.dynamic_shared.begin(), l.dynamic_shared.end(), 0xff);
}

class Pool {
 public:
  // Runs `body(tid)` on `threads` workers and returns when all have finished.
  void run(unsigned threads, const std::function<void(unsigned)>& body) {
    {
      std::unique_lock lock(mutex_);
      while (workers_.size() < threads) {
        unsigned id = unsigned(workers_.size());
        workers_.emplace_back([this, id] { work(id); });
      }
      body_ = &body;
      active_ = threads;
      remaining_ = threads;
      ++generation_;
    }
    wake_.notify_all();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return remaining_ == 0; });
    body_ = nullptr;
  }

 private:
  void work(unsigned id) {
    unsigned long long seen = 0;
    for (;;) {
      const std::function<void(unsigned)>* body;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen && id < active_; });
        seen = generation_;
        body = body_;
      }
      (*body)(id);
      std::lock_guard lock(mutex_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(unsigned)>* body_ = nullptr;
  unsigned active_ = 0, remaining_ = 0;
  unsigned long long generation_ = 0;
};

Pool& pool() {
  // Never destroyed: its workers block forever in wait, and a static destructor would have to join them at exit.
  static Pool* p = new Pool;
  return *p;
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

dim3 unflatten(unsigned long long i, dim3 d) {
  return dim3(unsigned(i % d.x), unsigned(i / d.x % d.y), unsigned(i / (unsigned long long)(d.x) / d.y));
}

void run_thread(Launch& l, unsigned tid) {
  current.thread_idx = unflatten(tid, l.block);
  current.block_dim = l.block;
  current.grid_dim = l.grid;
  current.linear_tid = tid;
  current.dynamic_shared = l.dynamic_shared.data();
  for (unsigned long long b = 0; b < l.blocks; ++b) {
    current.block_idx = unflatten(b, l.grid);
    l.entry(l.params);
    pending_copies.clear();  // copies a block never waited for land in shared memory that is gone with it
    copy_groups_committed = 0;
    // A thread that has finished (or returned early) must not hold up the barriers of the rest of its block.
    l.block_barrier->arrive_and_drop();
    l.warps[tid / 32].barrier->arrive_and_drop();
    l.block_done->arrive_and_wait();
  }
}

}  // namespace

void sync_block() { g_launch->block_barrier->arrive_and_wait(); }

void async_copy16_issue(void* dst, const void* src) {
  PendingCopy c{dst, copy_groups_committed, {}};
  std::memcpy(c.data, src, sizeof c.data);
  std::memset(dst, 0xff, sizeof c.data);
  pending_copies.push_back(c);
}

void async_copy_commit() { ++copy_groups_committed; }

void async_copy_wait_groups(unsigned pending) {
  std::vector<PendingCopy> still;
  for (const PendingCopy& c : pending_copies) {
    if (c.group + pending >= copy_groups_committed)  // among the `pending` newest groups, or not committed
      still.push_back(c);
    else
      std::memcpy(c.dst, c.data, sizeof c.data);
  }
  pending_copies = std::move(still);
}

void async_copy_wait() {
  async_copy_commit();
  async_copy_wait_groups(0);
}

void sync_warp() { g_launch->warps[current.linear_tid / 32].barrier->arrive_and_wait(); }

void warp_exchange(const void* mine, void* all, size_t bytes) {
  Warp& w = g_launch->warps[current.linear_tid / 32];
  unsigned lane = current.linear_tid & 31u;
  std::memcpy(w.exchange[lane], mine, bytes);
  w.barrier->arrive_and_wait();
  for (unsigned i = 0; i < 32; ++i) std::memcpy(static_cast<unsigned char*>(all) + i * bytes, w.exchange[i], bytes);
  w.barrier->arrive_and_wait();  // nobody overwrites its slot before every lane has read it
}

}  // namespace emu

// Runs one kernel launch. Returns 0, or a nonzero code for an invalid configuration (the caller reports it).
extern "C" int mmengine_emu_launch(void (*entry)(const void*), const void* params, unsigned gx, unsigned gy,
                                   unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t shared_bytes) {
  using namespace emu;
  unsigned long long threads = (unsigned long long)bx * by * bz;
  unsigned long long blocks = (unsigned long long)gx * gy * gz;
  if (threads == 0 || threads > 1024 || blocks == 0) return 1;
  if (shared_bytes > 228 * 1024) return 2;
  std::lock_guard guard(launch_mutex());
  Launch l;
  l.entry = entry;
  l.params = params;
  l.grid = dim3(gx, gy, gz);
  l.block = dim3(bx, by, bz);
  l.threads = unsigned(threads);
  l.blocks = blocks;
  l.dynamic_shared.assign(shared_bytes + 16, 0xff);
  l.warps = std::vector<Warp>((l.threads + 31) / 32);
  reset_block_sync(l);
  l.block_done = std::make_unique<std::barrier<ResetBlockSync>>(l.threads, ResetBlockSync{&l});
  g_launch = &l;
  pool().run(l.threads, [&l](unsigned tid) { run_thread(l, tid); });
  g_launch = nullptr;
  return 0;
}
