// The emulated launch. Each CUDA thread of a block is a fiber: a stack of its own, switched to and from in user
// space, so a barrier costs a few function calls instead of a thousand OS threads' wake-ups through the kernel. A
// pool of OS threads, one per core, takes the launch's blocks in turn and runs each block's fibers in phases: every
// fiber that can go on runs until it waits at a barrier or finishes; then the barriers at which every thread they
// concern waits open. The sanitizers are told of every switch, and the thread sanitizer of every barrier (a
// release as a thread arrives, an acquire as it goes on), so fibers race in its eyes as OS threads would.
#include "cuda_emu.h"

#include <sys/mman.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

#if !defined(__x86_64__)
#error "the emulation's fiber switch (switch_stack below) is written for x86-64"
#endif

namespace emu {

thread_local std::atomic<ThreadState*> current_thread{nullptr};

unsigned next_private_slot() {
  static std::atomic<unsigned> slots{0};
  return slots.fetch_add(1);
}

namespace {

// Saves the callee-saved registers on the running stack, stores its pointer in *from, and resumes the stack `to`
// (the System V x86-64 ABI: rbx, rbp and r12-r15 survive a call; the kernels never change the floating-point
// control state, so it needs no saving).
extern "C" void mmengine_emu_switch_stack(void** from, void* to);
asm(R"(
  .text
  .globl mmengine_emu_switch_stack
  .type mmengine_emu_switch_stack, @function
mmengine_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mmengine_emu_switch_stack, .-mmengine_emu_switch_stack
)");

#if defined(__SANITIZE_ADDRESS__)
const unsigned kBlocksAtATime = 1;  // its static __shared__ is one per process (cuda_emu.h)
#else
const unsigned kBlocksAtATime = std::max(1u, std::thread::hardware_concurrency());
#endif
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxWarps = kMaxThreads / 32;
constexpr size_t kStackBytes = 256 << 10;  // sanitized builds need several times a plain build's frames
constexpr size_t kGuardBytes = 4096;       // an overflow faults here instead of corrupting the next stack

// This thread's cp.async copies not yet waited for (copy16_async: always 16 bytes).
struct PendingCopy {
  void* dst;
  unsigned group;  // the commit group it joins: copy_groups_committed at its issue
  alignas(16) unsigned char data[16];
};

// Where a fiber stands. Written by the fiber, read by its worker between phases: relaxed atomics, so the thread
// sanitizer sees no race and, as it must not, no ordering between the block's threads either.
enum class Wait : unsigned char { Runnable, Block, Warp, Done };

struct Fiber : ThreadState {
  void* sp = nullptr;              // the saved stack pointer while it is switched out
  unsigned char* stack = nullptr;  // its lowest usable address
  std::atomic<Wait> wait{Wait::Done};
  std::vector<PendingCopy> pending_copies;
  unsigned copy_groups_committed = 0;
#if defined(__SANITIZE_THREAD__)
  void* tsan_fiber = nullptr;
#endif
#if defined(__SANITIZE_ADDRESS__)
  void* asan_fake_stack = nullptr;
#endif
};

Fiber& running() { return static_cast<Fiber&>(current()); }

struct Launch {
  void (*entry)(const void*) = nullptr;
  const void* params = nullptr;
  dim3 grid, block;
  unsigned threads = 0;
  size_t shared_bytes = 0;
  unsigned long long blocks = 0;
  std::atomic<unsigned long long> next_block{0};
};

dim3 unflatten(unsigned long long i, dim3 d) {
  return dim3(unsigned(i % d.x), unsigned(i / d.x % d.y), unsigned(i / (unsigned long long)(d.x) / d.y));
}

struct alignas(16) WarpExchange {
  unsigned char lanes[32][256];
};

// One pool thread's fibers and the state of the block it runs. The counters are written by the fibers and read
// by the scheduler between phases (relaxed atomics, as Fiber::wait).
class Worker {
 public:
  Worker() {
    void* p = mmap(nullptr, kMaxThreads * (kStackBytes + kGuardBytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("emulation: fiber stacks");
      std::abort();
    }
    stacks_ = static_cast<unsigned char*>(p);
    for (unsigned t = 0; t < kMaxThreads; ++t) {
      unsigned char* guard = stacks_ + t * (kStackBytes + kGuardBytes);
      mprotect(guard, kGuardBytes, PROT_NONE);
      fibers_[t].stack = guard + kGuardBytes;
    }
#if defined(__SANITIZE_THREAD__)
    tsan_self_ = __tsan_get_current_fiber();
#endif
  }

  void run(Launch& l) {
    for (unsigned long long b = l.next_block++; b < l.blocks; b = l.next_block++) run_block(l, b);
  }

  // The running fiber waits until every thread of its block (warp = false) or of its warp that has not finished
  // waits too. `orders` when the barrier orders memory accesses (__syncthreads, __syncwarp), not when it only
  // lines the lanes up for a shuffle, which moves registers and orders nothing.
  void wait(bool warp, bool orders) {
    Fiber& f = running();
    if (warp) {
      std::atomic<unsigned>& waiting = warp_waiting_[f.linear_tid / 32];
      waiting.store(waiting.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    } else {
      block_waiting_.store(block_waiting_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    f.wait.store(warp ? Wait::Warp : Wait::Block, std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    char* barrier = warp ? &warp_barrier_[f.linear_tid / 32] : &block_barrier_;
    if (orders) __tsan_release(barrier);
    to_scheduler(f, false);
    if (orders) __tsan_acquire(barrier);
#else
    (void)orders;
    to_scheduler(f, false);
#endif
  }

  WarpExchange& exchange(unsigned warp) { return exchange_[warp]; }

 private:
  void run_block(const Launch& l, unsigned long long b) {
    launch_ = &l;
    const unsigned n = l.threads, warps = (n + 31) / 32;
    // Uninitialised shared memory reads as NaN, so a kernel that relies on it fails its test.
    dynamic_shared_.assign(l.shared_bytes + 16, 0xff);
    std::memset(exchange_, 0, warps * sizeof(WarpExchange));
    block_waiting_.store(0, std::memory_order_relaxed);
    live_.store(n, std::memory_order_relaxed);
    for (unsigned w = 0; w < warps; ++w) {
      warp_waiting_[w].store(0, std::memory_order_relaxed);
      warp_live_[w].store(std::min(32u, n - 32 * w), std::memory_order_relaxed);
    }
    for (unsigned t = 0; t < n; ++t) {
      Fiber& f = fibers_[t];
      f.thread_idx = unflatten(t, l.block);
      f.block_idx = unflatten(b, l.grid);
      f.block_dim = l.block;
      f.grid_dim = l.grid;
      f.linear_tid = t;
      f.dynamic_shared = dynamic_shared_.data();
      f.wait.store(Wait::Runnable, std::memory_order_relaxed);
      // A fresh frame at the stack's top, 16-byte aligned: the six registers the switch pops (zero, so a frame
      // pointer chain ends here), the address it returns to (fiber_main), and a zero return address above.
      void** top = reinterpret_cast<void**>(f.stack + kStackBytes) - 2;
      top[0] = reinterpret_cast<void*>(&fiber_main);
      top[1] = nullptr;
      f.sp = top - 6;
      std::fill(top - 6, top, nullptr);
#if defined(__SANITIZE_ADDRESS__)
      f.asan_fake_stack = nullptr;
#endif
#if defined(__SANITIZE_THREAD__)
      if (f.tsan_fiber == nullptr) f.tsan_fiber = __tsan_create_fiber(0);
#endif
    }
    // Odd blocks start in reverse order, so that even a kernel's first phase runs both ways round.
    // The first switch into each fiber orders the set-up above before it, and each fiber's release of
    // block_done_ as it finishes orders its work before the next block's set-up; nothing else orders one thread
    // after another but the barriers.
    for (bool forward = b % 2 == 0, first = true;; forward = !forward, first = false) {
      for (unsigned i = 0; i < n; ++i) {
        Fiber& f = fibers_[forward ? i : n - 1 - i];
        if (f.wait.load(std::memory_order_relaxed) == Wait::Runnable) to_fiber(f, first);
      }
      if (live_.load(std::memory_order_relaxed) == 0) break;
      if (!open_barriers(n, warps)) deadlock(b);
    }
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(&block_done_);
#endif
  }

  // Lets the threads of every barrier at which all it concerns wait go on; false if none could.
  bool open_barriers(unsigned n, unsigned warps) {
    bool opened = false;
    const unsigned live = live_.load(std::memory_order_relaxed);
    if (block_waiting_.load(std::memory_order_relaxed) == live) {
      for (unsigned t = 0; t < n; ++t)
        if (fibers_[t].wait.load(std::memory_order_relaxed) == Wait::Block)
          fibers_[t].wait.store(Wait::Runnable, std::memory_order_relaxed);
      block_waiting_.store(0, std::memory_order_relaxed);
      opened = true;
    }
    for (unsigned w = 0; w < warps; ++w) {
      const unsigned waiting = warp_waiting_[w].load(std::memory_order_relaxed);
      if (waiting == 0 || waiting != warp_live_[w].load(std::memory_order_relaxed)) continue;
      for (unsigned t = 32 * w; t < std::min(n, 32 * w + 32); ++t)
        if (fibers_[t].wait.load(std::memory_order_relaxed) == Wait::Warp)
          fibers_[t].wait.store(Wait::Runnable, std::memory_order_relaxed);
      warp_waiting_[w].store(0, std::memory_order_relaxed);
      opened = true;
    }
    return opened;
  }

  [[noreturn]] void deadlock(unsigned long long b) const {
    const dim3 at = unflatten(b, launch_->grid);
    std::fprintf(stderr,
                 "emulation: block (%u, %u, %u) deadlocked: its threads wait at barriers that the others never "
                 "reach (a __syncthreads or warp operation in divergent code)\n",
                 at.x, at.y, at.z);
    std::abort();
  }

  // The fiber's whole life in one block: the kernel, then a last switch back that never returns.
  [[noreturn]] static void fiber_main();

  void to_fiber(Fiber& f, bool first) {
    current_thread.store(&f, std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(f.tsan_fiber, first ? 0 : __tsan_switch_to_fiber_no_sync);
#else
    (void)first;
#endif
#if defined(__SANITIZE_ADDRESS__)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack, kStackBytes);
#endif
    mmengine_emu_switch_stack(&scheduler_sp_, f.sp);
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  }

  // Back to this worker's scheduler; `last` when the fiber has finished its block (its next start is a fresh one).
  void to_scheduler(Fiber& f, bool last) {
#if defined(__SANITIZE_THREAD__)
    __tsan_switch_to_fiber(tsan_self_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_start_switch_fiber(last ? nullptr : &f.asan_fake_stack, own_stack_bottom_, own_stack_size_);
#else
    (void)last;
#endif
    mmengine_emu_switch_stack(&f.sp, scheduler_sp_);
    arrived(f);
  }

  // What a fiber does as it comes back to life (after its first switch, or a later one).
  void arrived(Fiber& f) {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(f.asan_fake_stack, &own_stack_bottom_, &own_stack_size_);
#else
    (void)f;
#endif
  }

  unsigned char* stacks_ = nullptr;
  Fiber fibers_[kMaxThreads];
  void* scheduler_sp_ = nullptr;
  const Launch* launch_ = nullptr;
  std::vector<unsigned char> dynamic_shared_;
  WarpExchange exchange_[kMaxWarps];
  std::atomic<unsigned> live_{0}, block_waiting_{0};
  std::atomic<unsigned> warp_live_[kMaxWarps], warp_waiting_[kMaxWarps];
#if defined(__SANITIZE_THREAD__)
  void* tsan_self_ = nullptr;
  char block_barrier_ = 0, warp_barrier_[kMaxWarps] = {}, block_done_ = 0;  // the barriers' sync objects
#endif
#if defined(__SANITIZE_ADDRESS__)
  const void* own_stack_bottom_ = nullptr;
  size_t own_stack_size_ = 0;
#endif
};

// Each pool thread's worker, made on its first launch and never destroyed (the pool's threads live until exit).
Worker& worker() {
  static thread_local Worker* w = new Worker;
  return *w;
}

void Worker::fiber_main() {
  Worker& w = worker();
  Fiber& f = running();
  w.arrived(f);
  w.launch_->entry(w.launch_->params);
  f.pending_copies.clear();  // copies a block never waited for land in shared memory that is gone with it
  f.copy_groups_committed = 0;
  const unsigned warp = f.linear_tid / 32;
  w.warp_live_[warp].store(w.warp_live_[warp].load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  w.live_.store(w.live_.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  f.wait.store(Wait::Done, std::memory_order_relaxed);
#if defined(__SANITIZE_THREAD__)
  __tsan_release(&w.block_done_);
#endif
  w.to_scheduler(f, true);
  std::abort();  // a finished fiber is never switched back to
}

// kBlocksAtATime threads, each running blocks of the launch in hand until none is left.
class Pool {
 public:
  Pool() : size_(kBlocksAtATime) {
    for (unsigned i = 0; i < size_; ++i) std::thread([this] { work(); }).detach();
  }

  void run(Launch& l) {
    std::unique_lock lock(mutex_);
    launch_ = &l;
    remaining_ = size_;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    launch_ = nullptr;
  }

 private:
  void work() {
    unsigned long long seen = 0;
    for (;;) {
      Launch* l;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        l = launch_;
      }
      worker().run(*l);
      std::lock_guard lock(mutex_);
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  const unsigned size_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Launch* launch_ = nullptr;
  unsigned remaining_ = 0;
  unsigned long long generation_ = 0;
};

Pool& pool() {
  // Never destroyed: its threads block forever in wait, and a static destructor would have to join them at exit.
  static Pool* p = new Pool;
  return *p;
}

}  // namespace

void sync_block() { worker().wait(false, true); }

void sync_warp() { worker().wait(true, true); }

namespace {

// warp_exchange's copies through its buffer. The thread sanitizer must not see them: a shuffle orders nothing
// between lanes, so its barriers tell the sanitizer nothing (Worker::wait), and the buffer would then look raced.
#if defined(__SANITIZE_THREAD__)
__attribute__((no_sanitize_thread)) void copy_unseen(void* dst, const void* src, size_t bytes) {
  // Volatile, so the compiler makes no memcpy call of it, which the sanitizer's interceptor would check.
  volatile unsigned char* d = static_cast<unsigned char*>(dst);
  const volatile unsigned char* s = static_cast<const unsigned char*>(src);
  for (size_t i = 0; i < bytes; ++i) d[i] = s[i];
}
#else
void copy_unseen(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
#endif

}  // namespace

void async_copy16_issue(void* dst, const void* src) {
  Fiber& f = running();
  PendingCopy c{dst, f.copy_groups_committed, {}};
  std::memcpy(c.data, src, sizeof c.data);
  std::memset(dst, 0xff, sizeof c.data);
  f.pending_copies.push_back(c);
}

void async_copy_commit() { ++running().copy_groups_committed; }

void async_copy_wait_groups(unsigned pending) {
  Fiber& f = running();
  std::vector<PendingCopy> still;
  for (const PendingCopy& c : f.pending_copies) {
    if (c.group + pending >= f.copy_groups_committed)  // among the `pending` newest groups, or not committed
      still.push_back(c);
    else
      std::memcpy(c.dst, c.data, sizeof c.data);
  }
  f.pending_copies = std::move(still);
}

void async_copy_wait() {
  async_copy_commit();
  async_copy_wait_groups(0);
}

void warp_exchange(const void* mine, void* all, size_t bytes) {
  Worker& w = worker();
  WarpExchange& x = w.exchange(current().linear_tid / 32);
  copy_unseen(x.lanes[lane()], mine, bytes);
  w.wait(true, false);
  for (unsigned i = 0; i < 32; ++i) copy_unseen(static_cast<unsigned char*>(all) + i * bytes, x.lanes[i], bytes);
  w.wait(true, false);  // nobody overwrites its slot before every lane has read it
}

}  // namespace emu

// Runs one kernel launch. Returns 0, or a nonzero code for an invalid configuration (the caller reports it).
extern "C" int mmengine_emu_launch(void (*entry)(const void*), const void* params, unsigned gx, unsigned gy,
                                   unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t shared_bytes) {
  using namespace emu;
  const unsigned long long threads = (unsigned long long)bx * by * bz;
  const unsigned long long blocks = (unsigned long long)gx * gy * gz;
  if (threads == 0 || threads > kMaxThreads || blocks == 0) return 1;
  if (shared_bytes > 228 * 1024) return 2;
  // One launch at a time: the pool serves one, and a kernel's static __shared__ is one per pool thread.
  static std::mutex launch_mutex;
  std::lock_guard guard(launch_mutex);
  Launch l;
  l.entry = entry;
  l.params = params;
  l.grid = dim3(gx, gy, gz);
  l.block = dim3(bx, by, bz);
  l.threads = unsigned(threads);
  l.shared_bytes = shared_bytes;
  l.blocks = blocks;
  pool().run(l);
  return 0;
}
