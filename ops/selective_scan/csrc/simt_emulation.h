// SIMT emulation: the host C++ compiler builds the unchanged CUDA kernels of
// this directory, and they run on the CPU with CUDA's execution model.
//
// Included (through simt.h) instead of <cuda_runtime.h> when
// MMVIM_SIMT_EMULATION is defined; never seen by nvcc. What it provides:
// - threadIdx / blockIdx / blockDim / gridDim / warpSize per emulated thread;
// - every thread of a block is a fiber (its own stack, switched in user
//   space) on one host thread, so __syncthreads and the warp collectives are
//   real barriers; the blocks of a grid run on several host threads;
// - __shared__ memory per block (a thread_local of the host thread that runs
//   the block) and dynamic shared memory (MMVIM_DYNAMIC_SHARED in simt.h),
//   filled with 0xff bytes (NaN) when a block starts;
// - warp shuffles, votes and __syncwarp; float / int atomics through
//   std::atomic_ref (blocks do run concurrently); the math intrinsics the
//   kernels use, computed exactly (no device approximations);
// - launches through mmvim_simt::launch (simt.h's launch_kernel), which
//   checks the configuration like the driver does and records the geometry.
//
// A collective that not every lane of its mask reaches, lanes of one warp
// (or threads of one block) at different collectives, a shuffle reading a
// lane outside the mask, and a deadlock all stop the launch with an error
// naming the collective, its source location and the lanes. What it cannot
// catch: device math approximations, register pressure and spills,
// memory-ordering races between blocks or between threads of a block that
// skip a barrier (fibers only switch at collectives), and speed.
#pragma once

#if defined(__CUDACC__)
#error "simt_emulation.h is for the host compiler; nvcc uses cuda_runtime.h"
#endif

#include <dlfcn.h>
#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <source_location>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define MMVIM_SIMT_ASAN 1
#else
#define MMVIM_SIMT_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// ---------------------------------------------------------------- CUDA types
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1,
                 unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid argument";
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// one copy per host thread, and a host thread runs one block at a time
#define __shared__ static thread_local
constexpr int warpSize = 32;

namespace mmvim_simt {

constexpr int kWarp = 32;
constexpr unsigned int kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // without opt-in
constexpr size_t kMaxDynamicSmem = 227 * 1024;     // sm_90 opt-in limit

using Site = std::source_location;

inline std::string where(const char* what, const Site& s) {
  std::ostringstream os;
  os << what << " at " << s.file_name() << ":" << s.line();
  return os.str();
}

inline std::string lane_list(uint64_t bits) {
  std::ostringstream os;
  bool first = true;
  for (int i = 0; i < 64; ++i)
    if (bits >> i & 1) {
      os << (first ? "" : ",") << i;
      first = false;
    }
  return os.str();
}

// ------------------------------------------------------- context switching
// A saved context is a stack pointer: the callee-saved registers and the
// floating-point control words sit on the stack below it (x86-64 SysV).
// Elsewhere ucontext does the same, slower.
#if defined(__x86_64__)
extern "C" void mmvim_simt_swap(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .weak mmvim_simt_swap
  .hidden mmvim_simt_swap
  .type mmvim_simt_swap,@function
mmvim_simt_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size mmvim_simt_swap, .-mmvim_simt_swap
  .popsection
)");
#endif

struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  // the stack this context runs on (for AddressSanitizer)
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

inline void switch_context(Context& from, Context& to, bool from_dies) {
#if MMVIM_SIMT_ASAN
  __sanitizer_start_switch_fiber(from_dies ? nullptr : &from.fake_stack,
                                 to.stack_bottom, to.stack_size);
#else
  (void)from_dies;
#endif
#if defined(__x86_64__)
  mmvim_simt_swap(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if MMVIM_SIMT_ASAN
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
}

// ------------------------------------------------------------ block state
struct Fiber;

// A barrier of a group of threads: a warp collective (one per distinct
// mask of a warp) or the block's __syncthreads.
struct Barrier {
  uint64_t gen = 0;     // completed episodes
  int arrived = 0;      // threads waiting in the current episode
  int expected = 0;
  uint32_t mask = 0;    // warp collectives: the lanes taking part
  const char* what = nullptr;
  Site site;            // where the first arrival of this episode is
  int first_thread = -1;
  uint64_t values[2][kWarp];  // shuffle / vote data, by episode parity
};

struct Warp {
  int lanes = 0;                   // threads of the block in this warp
  uint32_t exited = 0;             // lanes that returned from the kernel
  int used = 0;                    // barriers[0, used) carry a mask
  Barrier barriers[kWarp];
};

enum class FiberState { kReady, kWaiting, kDone };

struct Fiber {
  Context ctx;
  uint3 tid{0, 0, 0};
  int linear = 0;
  FiberState state = FiberState::kReady;
  const Barrier* waiting_on = nullptr;
  uint64_t wait_gen = 0;
};

struct Stack {
  char* base = nullptr;  // lowest address (the guard page)
  size_t size = 0;
};

struct Block {
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  unsigned char* dynamic_smem = nullptr;
  size_t dynamic_smem_size = 0;
  int threads = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier sync;        // __syncthreads
  int exited = 0;
  Context scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;
  std::vector<Stack> stacks;
  std::vector<unsigned char> smem;

  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    for (const Stack& s : stacks) munmap(s.base, s.size);
  }
};

inline thread_local Block* tls_block = nullptr;

inline Block& block() { return *tls_block; }
inline Fiber& fiber() { return *tls_block->current; }

[[noreturn]] inline void fail_and_leave(const std::string& message);

inline size_t stack_bytes() {
  // deep enough for the kernels' local arrays, and for ASan's redzones
  return MMVIM_SIMT_ASAN ? (1u << 20) : (256u << 10);
}

inline Stack make_stack() {
  const size_t page = 4096, size = stack_bytes();
  void* p = mmap(nullptr, size + page, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("SIMT emulation: mmap failed");
  mprotect(p, page, PROT_NONE);  // overflow faults instead of corrupting
  return Stack{static_cast<char*>(p), size + page};
}

// ----------------------------------------------------------- the scheduler
[[noreturn]] inline void fiber_main();

#if !defined(__x86_64__)
inline void fiber_trampoline() { fiber_main(); }
#endif

inline void prepare_fiber(Fiber& f, const Stack& s) {
  const size_t page = 4096;
  f.ctx.stack_bottom = s.base + page;
  f.ctx.stack_size = s.size - page;
  f.ctx.fake_stack = nullptr;
#if defined(__x86_64__)
  // the frame mmvim_simt_swap pops: control words, six registers, then it
  // "returns" into fiber_main with the stack aligned as after a call
  uintptr_t top = reinterpret_cast<uintptr_t>(s.base + s.size) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;  // fiber_main's (never used) return address
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  const uint32_t mxcsr = 0x1f80, fcw = 0x037f;  // the ABI defaults
  *--sp = (static_cast<uint64_t>(fcw) << 32) | mxcsr;
  f.ctx.sp = sp;
#else
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = s.base + page;
  f.ctx.uc.uc_stack.ss_size = s.size - page;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, fiber_trampoline, 0);
#endif
}

// Suspends the running fiber until b completes the episode it joined.
inline void wait_for(const Barrier& b, uint64_t gen) {
  Block& blk = block();
  Fiber& f = fiber();
  f.state = FiberState::kWaiting;
  f.waiting_on = &b;
  f.wait_gen = gen;
  switch_context(f.ctx, blk.scheduler, false);
}

[[noreturn]] inline void fail_and_leave(const std::string& message) {
  Block& blk = block();
  if (blk.error.empty()) blk.error = message;
  Fiber& f = fiber();
  f.state = FiberState::kDone;
  switch_context(f.ctx, blk.scheduler, true);
  __builtin_unreachable();
}

inline void check_exit(Block& blk, Fiber& f);

[[noreturn]] inline void fiber_main() {
  Block& blk = block();
#if MMVIM_SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &blk.scheduler.stack_bottom,
                                  &blk.scheduler.stack_size);
#endif
  Fiber& f = fiber();
  try {
    (*blk.body)();
  } catch (const std::exception& e) {
    if (blk.error.empty()) blk.error = e.what();
  } catch (...) {
    if (blk.error.empty()) blk.error = "unknown exception in a kernel";
  }
  check_exit(blk, f);
  f.state = FiberState::kDone;
  switch_context(f.ctx, blk.scheduler, true);
  __builtin_unreachable();
}

inline std::string thread_name(const Block& blk, int linear) {
  const Fiber& f = blk.fibers[linear];
  std::ostringstream os;
  os << "thread (" << f.tid.x << "," << f.tid.y << "," << f.tid.z
     << ") of block (" << blk.block_idx.x << "," << blk.block_idx.y << ","
     << blk.block_idx.z << ")";
  return os.str();
}

// A thread returns from the kernel: no barrier it belongs to may be waiting.
inline void check_exit(Block& blk, Fiber& f) {
  if (!blk.error.empty()) return;
  const int w = f.linear / kWarp, lane = f.linear % kWarp;
  Warp& warp = blk.warps[w];
  warp.exited |= 1u << lane;
  ++blk.exited;
  for (int i = 0; i < warp.used; ++i) {
    const Barrier& b = warp.barriers[i];
    if (b.arrived > 0 && (b.mask >> lane & 1)) {
      std::ostringstream os;
      os << "SIMT emulation: lane " << lane << " of warp " << w << " ("
         << thread_name(blk, f.linear) << ") returned from the kernel while "
         << "lanes of mask 0x" << std::hex << b.mask << std::dec << " wait at "
         << where(b.what, b.site) << ": every lane of the mask must reach it";
      blk.error = os.str();
      return;
    }
  }
  if (blk.sync.arrived > 0) {
    blk.error = "SIMT emulation: " + thread_name(blk, f.linear) +
                " returned from the kernel while other threads wait at " +
                where(blk.sync.what, blk.sync.site) +
                ": every thread of the block must reach __syncthreads";
  }
}

inline std::string deadlock_report(const Block& blk) {
  std::ostringstream os;
  os << "SIMT emulation: deadlock in block (" << blk.block_idx.x << ","
     << blk.block_idx.y << "," << blk.block_idx.z << "):";
  for (const Fiber& f : blk.fibers) {
    if (f.state != FiberState::kWaiting) continue;
    os << "\n  " << thread_name(blk, f.linear) << " waits at "
       << where(f.waiting_on->what, f.waiting_on->site);
  }
  return os.str();
}

inline void run_block(Block& blk) {
  const int n = blk.threads;
  const int nwarps = (n + kWarp - 1) / kWarp;
  blk.fibers.assign(n, Fiber{});
  blk.warps.assign(nwarps, Warp{});
  for (int w = 0; w < nwarps; ++w)
    blk.warps[w].lanes = std::min(kWarp, n - w * kWarp);
  blk.sync = Barrier{};
  blk.sync.expected = n;
  blk.exited = 0;
  blk.error.clear();
  while (static_cast<int>(blk.stacks.size()) < n)
    blk.stacks.push_back(make_stack());
  for (int i = 0; i < n; ++i) {
    Fiber& f = blk.fibers[i];
    f.linear = i;
    f.tid = uint3{i % blk.block_dim.x, (i / blk.block_dim.x) % blk.block_dim.y,
                  i / (blk.block_dim.x * blk.block_dim.y)};
    prepare_fiber(f, blk.stacks[i]);
  }
  if (blk.dynamic_smem_size) {
    blk.smem.assign(blk.dynamic_smem_size, 0xff);
    blk.dynamic_smem = blk.smem.data();
  }
  int live = n;
  while (live > 0) {
    bool progressed = false;
    for (Fiber& f : blk.fibers) {
      if (f.state == FiberState::kDone) continue;
      if (f.state == FiberState::kWaiting && f.waiting_on->gen == f.wait_gen)
        continue;
      f.state = FiberState::kReady;
      blk.current = &f;
      switch_context(blk.scheduler, f.ctx, false);
      blk.current = nullptr;
      progressed = true;
      if (!blk.error.empty()) throw std::runtime_error(blk.error);
      if (f.state == FiberState::kDone) --live;
    }
    if (!progressed) throw std::runtime_error(deadlock_report(blk));
  }
}

// --------------------------------------------------------- the collectives
inline bool same_site(const char* what_a, const Site& a, const char* what_b,
                      const Site& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (what_a == what_b || std::strcmp(what_a, what_b) == 0) &&
         (a.file_name() == b.file_name() ||
          std::strcmp(a.file_name(), b.file_name()) == 0);
}

// Stops the launch: "<collective> at <file:line>, lane L of warp W
// (<thread>): <problem>". Out of line: only a broken kernel gets here.
[[noreturn]] __attribute__((noinline, cold)) inline void collective_error(
    const char* what, const Site& site, const std::string& problem) {
  Block& blk = block();
  const int linear = fiber().linear;
  std::ostringstream os;
  os << "SIMT emulation: " << where(what, site) << ", lane " << linear % kWarp
     << " of warp " << linear / kWarp << " (" << thread_name(blk, linear)
     << "): " << problem;
  fail_and_leave(os.str());
}

inline std::string hex(uint32_t mask) {
  std::ostringstream os;
  os << "0x" << std::hex << mask;
  return os.str();
}

// The barrier of the running lane's warp for `mask`, after the checks
// that make a mismatched collective an error.
inline Barrier& warp_barrier(uint32_t mask, const char* what,
                             const Site& site) {
  Block& blk = block();
  Fiber& f = fiber();
  const int lane = f.linear % kWarp;
  Warp& warp = blk.warps[f.linear / kWarp];
  const uint32_t present =
      warp.lanes == kWarp ? 0xffffffffu : ((1u << warp.lanes) - 1);
  if (!(mask >> lane & 1))
    collective_error(what, site, "the mask " + hex(mask) +
                                     " does not include the calling lane");
  if (mask & ~present)
    collective_error(what, site, "the mask " + hex(mask) + " names lanes " +
                                     lane_list(mask & ~present) +
                                     " that this warp of " +
                                     std::to_string(warp.lanes) +
                                     " threads does not have");
  if (mask & warp.exited)
    collective_error(what, site, "lanes " + lane_list(mask & warp.exited) +
                                     " of the mask have returned from the "
                                     "kernel and will never reach it");
  Barrier* found = nullptr;
  for (int i = 0; i < warp.used; ++i) {
    Barrier& b = warp.barriers[i];
    if (b.mask == mask) {
      found = &b;
    } else if (b.arrived > 0 && (b.mask & mask)) {
      collective_error(what, site, "its mask " + hex(mask) +
                                       " overlaps mask " + hex(b.mask) +
                                       " of lanes waiting at " +
                                       where(b.what, b.site));
    }
  }
  if (!found) {
    if (warp.used == kWarp)
      collective_error(what, site, "more than 32 distinct masks in one "
                                   "block: the emulator keeps a barrier per "
                                   "mask and warp");
    found = &warp.barriers[warp.used++];
    found->mask = mask;
    found->expected = __builtin_popcount(mask);
  }
  if (found->arrived > 0 && !same_site(found->what, found->site, what, site))
    collective_error(what, site,
                     "lane " + std::to_string(found->first_thread % kWarp) +
                         " waits at " + where(found->what, found->site) +
                         ": the lanes of a mask must reach the same "
                         "collective");
  return *found;
}

// Joins the barrier with `value`; returns the parity whose values hold
// every participant's contribution once all have arrived.
inline int arrive(Barrier& b, uint64_t value, int slot, const char* what,
                  const Site& site) {
  Fiber& f = fiber();
  const uint64_t gen = b.gen;
  const int parity = static_cast<int>(gen & 1);
  if (b.arrived == 0) {
    b.what = what;
    b.site = site;
    b.first_thread = f.linear;
  }
  b.values[parity][slot] = value;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.gen;
  } else {
    wait_for(b, gen);
  }
  return parity;
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "SIMT emulation: shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

enum class ShflMode { kIdx, kUp, kDown, kXor };

template <typename T>
inline T shuffle(ShflMode mode, uint32_t mask, T var, int arg, int width,
                 const char* what, const Site& site) {
  const int lane = fiber().linear % kWarp;
  if (width <= 0 || width > kWarp || (width & (width - 1)))
    collective_error(what, site, "width must be a power of two up to 32");
  Barrier& b = warp_barrier(mask, what, site);
  const int parity = arrive(b, to_bits(var), lane, what, site);
  const int seg = lane & ~(width - 1);
  int src = lane;
  switch (mode) {
    case ShflMode::kIdx: src = seg + (arg & (width - 1)); break;
    case ShflMode::kUp: src = lane - arg >= seg ? lane - arg : lane; break;
    case ShflMode::kDown: src = lane + arg < seg + width ? lane + arg : lane; break;
    case ShflMode::kXor: src = lane ^ arg; if (src >= seg + width) src = lane; break;
  }
  if (src < 0 || src >= kWarp || !(mask >> src & 1))
    collective_error(what, site, "reads lane " + std::to_string(src) +
                                     ", which is not in the mask " + hex(mask));
  return from_bits<T>(b.values[parity][src]);
}

inline uint32_t vote(uint32_t mask, bool pred, const char* what,
                     const Site& site) {
  const int lane = fiber().linear % kWarp;
  Barrier& b = warp_barrier(mask, what, site);
  const int parity = arrive(b, pred ? 1 : 0, lane, what, site);
  uint32_t ballot = 0;
  for (int i = 0; i < kWarp; ++i)
    if ((mask >> i & 1) && b.values[parity][i]) ballot |= 1u << i;
  return ballot;
}

// __syncthreads and its counting variants: returns how many threads of
// the block passed a true predicate.
inline int block_sync(bool pred, const char* what, const Site& site) {
  Block& blk = block();
  Fiber& f = fiber();
  Barrier& b = blk.sync;
  if (blk.exited > 0) {
    fail_and_leave("SIMT emulation: " + where(what, site) + ", " +
                   thread_name(blk, f.linear) + ": " +
                   std::to_string(blk.exited) + " threads of the block have "
                   "returned from the kernel and will never reach it");
  }
  if (b.arrived > 0 && !same_site(b.what, b.site, what, site)) {
    fail_and_leave("SIMT emulation: " + where(what, site) + ", " +
                   thread_name(blk, f.linear) + ": " +
                   thread_name(blk, b.first_thread) + " waits at " +
                   where(b.what, b.site) +
                   ": every thread of the block must reach the same barrier");
  }
  // the count travels in a per-block counter; values[][] holds 32 slots
  static thread_local int counts[2];
  const int parity = static_cast<int>(b.gen & 1);
  if (b.arrived == 0) counts[parity] = 0;
  counts[parity] += pred ? 1 : 0;
  arrive(b, 0, 0, what, site);
  return counts[parity];
}

// ---------------------------------------------------------------- launches
struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  size_t dynamic_smem;
};

inline std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
inline std::vector<LaunchRecord>& launch_records() {
  static std::vector<LaunchRecord> records;
  return records;
}
// Dry run: launches are checked and recorded but run no block (tests read
// the geometry of shapes too large to emulate).
inline std::atomic<bool>& dry_run() {
  static std::atomic<bool> flag{false};
  return flag;
}
inline std::map<const void*, size_t>& max_dynamic_smem() {
  static std::map<const void*, size_t> limits;
  return limits;
}

inline std::string kernel_name(const void* fn) {
  Dl_info info;
  // exported symbols only: for a local one dladdr names the nearest
  // exported symbol before it, which is another function
  if (dladdr(fn, &info) && info.dli_sname && info.dli_saddr == fn) {
    int status = 0;
    char* demangled =
        abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 && demangled ? demangled : info.dli_sname;
    std::free(demangled);
    return name;
  }
  std::ostringstream os;
  os << "kernel@" << fn;
  return os.str();
}

inline int host_threads() {
  if (const char* env = std::getenv("MMVIM_SIMT_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// Host threads that run the blocks of a launch, kept across launches so
// that their fiber stacks are made once. Never destroyed (joining at exit
// could hang an interpreter shutting down); a forked child makes its own.
class WorkerPool {
 public:
  static WorkerPool& get() {
    static std::mutex m;
    static WorkerPool* pool = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(m);
    if (pool == nullptr || owner != getpid()) {
      pool = new WorkerPool();
      owner = getpid();
    }
    return *pool;
  }

  // Runs fn on n threads, the calling one included, and waits for all.
  void run(int n, const std::function<void()>& fn) {
    std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex_);
    {
      std::lock_guard<std::mutex> lock(m_);
      while (spawned_ < n - 1) std::thread(&WorkerPool::loop, this, spawned_++).detach();
      job_ = &fn;
      active_ = n - 1;
      pending_ = n - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn();
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex launch_mutex_, m_;
  std::condition_variable wake_, done_;
  const std::function<void()>* job_ = nullptr;
  uint64_t generation_ = 0;
  int spawned_ = 0, active_ = 0, pending_ = 0;
};

// Runs kernel body over grid x block like a CUDA launch.
inline void launch(const void* fn, dim3 grid, dim3 blk_dim, size_t smem,
                   const std::function<void()>& body) {
  const std::string name = kernel_name(fn);
  const uint64_t threads =
      uint64_t(blk_dim.x) * blk_dim.y * blk_dim.z;
  size_t smem_limit = kDefaultDynamicSmem;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = max_dynamic_smem().find(fn);
    if (it != max_dynamic_smem().end()) smem_limit = it->second;
    auto& records = launch_records();
    if (records.size() >= 4096)  // nobody reads them: keep the latest
      records.erase(records.begin(), records.begin() + 2048);
    records.push_back(LaunchRecord{name, grid, blk_dim, smem});
  }
  std::ostringstream bad;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || grid.x > 2147483647u)
    bad << "grid (" << grid.x << "," << grid.y << "," << grid.z << ")";
  else if (threads == 0 || threads > kMaxThreadsPerBlock || blk_dim.x > 1024 ||
           blk_dim.y > 1024 || blk_dim.z > 64)
    bad << "block (" << blk_dim.x << "," << blk_dim.y << "," << blk_dim.z
        << ")";
  else if (smem > smem_limit)
    bad << smem << " bytes of dynamic shared memory (limit " << smem_limit
        << "; raise it with cudaFuncSetAttribute up to " << kMaxDynamicSmem
        << ")";
  if (!bad.str().empty())
    throw std::runtime_error("SIMT emulation: invalid configuration "
                             "argument launching " + name + ": " + bad.str());

  if (dry_run()) return;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mutex;
  const std::function<void()> worker = [&] {
    thread_local Block blk;  // its fiber stacks serve every launch
    Block* saved = tls_block;
    tls_block = &blk;
    for (;;) {
      const uint64_t i = next.fetch_add(1);
      if (i >= nblocks || failed.load()) break;
      blk.block_idx = uint3{static_cast<unsigned>(i % grid.x),
                            static_cast<unsigned>(i / grid.x % grid.y),
                            static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
      blk.block_dim = blk_dim;
      blk.grid_dim = grid;
      blk.threads = static_cast<int>(threads);
      blk.dynamic_smem_size = smem;
      blk.body = &body;
      try {
        run_block(blk);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) error = e.what();
      }
    }
    tls_block = saved;
  };
  WorkerPool::get().run(
      static_cast<int>(std::min<uint64_t>(host_threads(), nblocks)), worker);
  if (failed.load())
    throw std::runtime_error(error + " (launching " + name + ")");
}

}  // namespace mmvim_simt

// --------------------------------------------------- the CUDA spellings
#define threadIdx (::mmvim_simt::fiber().tid)
#define blockIdx (::mmvim_simt::block().block_idx)
#define blockDim (::mmvim_simt::block().block_dim)
#define gridDim (::mmvim_simt::block().grid_dim)

template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr,
                                        int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > mmvim_simt::kMaxDynamicSmem)
    return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(mmvim_simt::registry_mutex());
  mmvim_simt::max_dynamic_smem()[reinterpret_cast<const void*>(fn)] = value;
  return cudaSuccess;
}

inline void __syncthreads(mmvim_simt::Site s = mmvim_simt::Site::current()) {
  mmvim_simt::block_sync(false, "__syncthreads", s);
}
inline int __syncthreads_count(int pred,
                               mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::block_sync(pred != 0, "__syncthreads_count", s);
}
inline int __syncthreads_and(int pred,
                             mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::block_sync(pred != 0, "__syncthreads_and", s) ==
         mmvim_simt::block().threads;
}
inline int __syncthreads_or(int pred,
                            mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::block_sync(pred != 0, "__syncthreads_or", s) > 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       mmvim_simt::Site s = mmvim_simt::Site::current()) {
  mmvim_simt::vote(mask, false, "__syncwarp", s);
}
inline unsigned __ballot_sync(unsigned mask, int pred,
                              mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::vote(mask, pred != 0, "__ballot_sync", s);
}
inline int __all_sync(unsigned mask, int pred,
                      mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::vote(mask, pred != 0, "__all_sync", s) == mask;
}
inline int __any_sync(unsigned mask, int pred,
                      mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::vote(mask, pred != 0, "__any_sync", s) != 0;
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src, int width = warpSize,
                     mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::shuffle(mmvim_simt::ShflMode::kIdx, mask, var, src,
                             width, "__shfl_sync", s);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta,
                        int width = warpSize,
                        mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::shuffle(mmvim_simt::ShflMode::kUp, mask, var,
                             static_cast<int>(delta), width,
                             "__shfl_up_sync", s);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta,
                          int width = warpSize,
                          mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::shuffle(mmvim_simt::ShflMode::kDown, mask, var,
                             static_cast<int>(delta), width,
                             "__shfl_down_sync", s);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask,
                         int width = warpSize,
                         mmvim_simt::Site s = mmvim_simt::Site::current()) {
  return mmvim_simt::shuffle(mmvim_simt::ShflMode::kXor, mask, var, lane_mask,
                             width, "__shfl_xor_sync", s);
}
inline unsigned __activemask() {
  // lanes that have not returned; the emulator cannot know divergence
  const mmvim_simt::Warp& w =
      mmvim_simt::block().warps[mmvim_simt::fiber().linear / mmvim_simt::kWarp];
  const unsigned present = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1);
  return present & ~w.exited;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// atomics: blocks run on several host threads, so these are real atomics
template <typename T>
inline T atomicAdd(T* address, std::type_identity_t<T> val) {
  return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
}
template <typename T>
inline T atomicSub(T* address, std::type_identity_t<T> val) {
  return std::atomic_ref<T>(*address).fetch_sub(val, std::memory_order_relaxed);
}
template <typename T>
inline T atomicExch(T* address, std::type_identity_t<T> val) {
  return std::atomic_ref<T>(*address).exchange(val, std::memory_order_relaxed);
}
template <typename T>
inline T atomicCAS(T* address, std::type_identity_t<T> compare,
                   std::type_identity_t<T> val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(
      compare, val, std::memory_order_relaxed);
  return compare;
}
template <typename T>
inline T atomicMax(T* address, std::type_identity_t<T> val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (old < val && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* address, std::type_identity_t<T> val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (val < old && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}

// math intrinsics, exact on the host
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return std::min(1.f, std::max(0.f, x)); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float_as_int(float x) { return mmvim_simt::from_bits<int>(mmvim_simt::to_bits(x)); }
inline float __int_as_float(int x) { return mmvim_simt::from_bits<float>(mmvim_simt::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return mmvim_simt::from_bits<unsigned>(mmvim_simt::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return mmvim_simt::from_bits<float>(mmvim_simt::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
