// Runtime of the SIMT emulator (see cuda_emu.h for what it does and does not emulate):
// fibers and their context switch, the per-block scheduler, barrier and warp-collective
// semantics, shared-memory poisoning, fault capture, the watchdog, guarded allocations, the
// emulated device's queries, and the C entry points Python uses (fn_emu_*).
//
// Single-threaded by design: one emulated thread runs at a time on the calling OS thread.
// Concurrent entry from several OS threads is serialized by capi.cpp's mutex.
#include <cassert>
#include <csetjmp>
#include <csignal>
#include <cstdarg>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <cxxabi.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define FN_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include "cuda_emu.h"

// Dynamic shared memory: defined with its aliases by the assembly file build.py generates.
extern "C" thread_local unsigned char fn_emu_dyn_smem[];
extern "C" const unsigned long long fn_emu_dyn_smem_bytes;

namespace fn_emu {

Thread* g_thread = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

struct WarpState {
  int arrived = 0;        // lanes waiting in a warp collective
  unsigned exited = 0;    // lanes that have exited
};

// One block's emulated threads and their scheduling state.
struct Block {
  std::vector<Thread> threads;
  std::vector<WarpState> warps;
  std::vector<unsigned> warp_order;                // greedy_warps: warps in schedule order
  std::vector<std::vector<unsigned>> warp_lanes;   // and each one's lanes in schedule order
  std::vector<unsigned> order;
  uint3 idx{0, 0, 0};
  long long linear = -1;
  int nthreads = 0;
  int live = 0;
  int exited = 0;
  int at_barrier = 0;
  bool active = false;
  std::vector<unsigned char> smem_image;  // resident_blocks > 1: this block's shared memory
};

namespace {

constexpr size_t kPage = 4096;
constexpr int kDefaultSmem = 48 * 1024;
constexpr int kOptinSmem = 227 * 1024;
constexpr size_t kCanary = 4096;           // checked bytes after the dynamic shared memory
constexpr unsigned char kCanaryByte = 0xA5;
constexpr unsigned char kPoison = 0xFF;
constexpr long long kSpinLimit = 1LL << 24;  // yields in a row without any other progress

Config g_config;

// --------------------------------------------------------------------- error state
cudaError_t g_last = cudaSuccess;    // non-sticky: cleared by cudaGetLastError
cudaError_t g_sticky = cudaSuccess;  // a kernel fault: every later launch fails until reset
std::string g_fault;                 // the detailed message of the sticky error
std::string g_lint;                  // launches not followed by a launch-error check
std::string g_unchecked;             // the last launch, until cudaGetLastError/Peek
std::string g_launch_log;
std::map<const void*, int> g_func_max_dyn;
// Registers and static shared memory per kernel name, as ptxas reports them: occupancy queries
// answer with them instead of assuming 32 registers (fn_emu_set_kernel_resources).
std::map<std::string, std::pair<int, int>> g_kernel_resources;
long long g_stats[6];  // launches, blocks, threads, switches, barriers, warp ops
enum { kStatLaunches, kStatBlocks, kStatThreads, kStatSwitches, kStatBarriers, kStatWarpOps };
long long g_clock = 0;

std::string vformat(const char* fmt, va_list ap) {
  char buf[2048];
  vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

std::string short_file(const char* f) {
  if (f == nullptr) return "?";
  std::string s(f);
  for (const char* key : {"/csrc/", "/tests/"}) {
    const size_t p = s.rfind(key);
    if (p != std::string::npos) return s.substr(p + 1);
  }
  return s;
}
std::string loc_str(Loc l) { return short_file(l.file) + ":" + std::to_string(l.line); }

std::string func_name(const void* f) {
  static std::map<const void*, std::string> cache;
  auto it = cache.find(f);
  if (it != cache.end()) return it->second;
  std::string name;
  Dl_info info;
  if (f && dladdr(f, &info) && info.dli_sname) {
    int st = 0;
    char* d = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &st);
    name = (st == 0 && d) ? d : info.dli_sname;
    free(d);
  }
  return cache[f] = name;
}

// --------------------------------------------------------------------- context switch
#if defined(__x86_64__) && !defined(FN_EMU_UCONTEXT)
extern "C" void fn_emu_switch(void** save_sp, void* new_sp);
// Saves the callee-saved registers and the FP control words on the current stack, stores the
// stack pointer, loads the other one and pops its registers.  No signal mask save (that is
// the syscall that makes swapcontext slow); the mask never changes inside kernels.
asm(R"(
  .text
  .globl fn_emu_switch
  .hidden fn_emu_switch
  .type fn_emu_switch,@function
fn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fn_emu_switch, .-fn_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
void* g_sched_sp = nullptr;
void fiber_entry();
void ctx_init(Thread* t) {
  auto* top = reinterpret_cast<uintptr_t*>((uintptr_t(t->stack_lo) + t->stack_size) & ~uintptr_t(15));
  uintptr_t* sp = top;
  *--sp = 0;                                        // fiber_entry's return address: never used
  *--sp = reinterpret_cast<uintptr_t>(&fiber_entry);  // where fn_emu_switch's ret goes
  for (int i = 0; i < 6; ++i) *--sp = 0;            // rbp rbx r12 r13 r14 r15
  sp -= 2;
  unsigned mxcsr;
  unsigned short fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp), &fcw, 2);
  t->sp = sp;
}
inline void switch_into(Thread* t) { fn_emu_switch(&g_sched_sp, t->sp); }
inline void switch_out(Thread* t) { fn_emu_switch(&t->sp, g_sched_sp); }
#else
// Portable fallback: ucontext (slower: each switch saves the signal mask with a syscall).
ucontext_t g_sched_uc;
std::map<Thread*, ucontext_t> g_ucs;
void fiber_entry();
void ctx_init(Thread* t) {
  ucontext_t& uc = g_ucs[t];
  getcontext(&uc);
  uc.uc_stack.ss_sp = t->stack_lo;
  uc.uc_stack.ss_size = t->stack_size;
  uc.uc_link = nullptr;
  makecontext(&uc, fiber_entry, 0);
}
inline void switch_into(Thread* t) { swapcontext(&g_sched_uc, &g_ucs[t]); }
inline void switch_out(Thread* t) { swapcontext(&g_ucs[t], &g_sched_uc); }
#endif

#if defined(FN_EMU_ASAN)
const void* g_sched_stack_bottom = nullptr;
size_t g_sched_stack_size = 0;
void* g_sched_fake = nullptr;
#endif

// ------------------------------------------------------------------------ fiber stacks
// A frame larger than the guard can step over it (a function's writes may be more than a
// page apart: the return-address push at the top of a frame, a local array at its bottom), so
// the guard is 64 KB of reserved, never-committed address space, not one page.
constexpr size_t kStackGuard = 16 * kPage;
struct StackPool {
  std::vector<std::pair<unsigned char*, size_t>> stacks;  // mapping, length (guard page first)
  size_t stack_bytes = 0;
  unsigned char* get(size_t i, size_t bytes) {
    if (bytes != stack_bytes) {
      for (auto& s : stacks) munmap(s.first, s.second);
      stacks.clear();
      stack_bytes = bytes;
    }
    while (stacks.size() <= i) {
      const size_t len = bytes + kStackGuard;
      void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      mprotect(m, kStackGuard, PROT_NONE);  // overflow lands here and is reported
      stacks.emplace_back(static_cast<unsigned char*>(m), len);
    }
    return stacks[i].first + kStackGuard;
  }
  bool in_guard(const void* a, size_t* which) const {
    for (size_t i = 0; i < stacks.size(); ++i) {
      const auto* p = static_cast<const unsigned char*>(a);
      if (p >= stacks[i].first && p < stacks[i].first + kStackGuard) { *which = i; return true; }
    }
    return false;
  }
} g_stacks;

size_t stack_bytes() {
  if (g_config.stack_bytes) return (g_config.stack_bytes + kPage - 1) / kPage * kPage;
#if defined(FN_EMU_ASAN)
  return 256 * 1024;
#else
  return 64 * 1024;
#endif
}

// ------------------------------------------------------------------ shared memory (TLS)
struct SmemInfo {
  unsigned char* tls = nullptr;  // this OS thread's TLS block of the emulator module
  size_t tls_size = 0;
  unsigned char* dyn = nullptr;  // fn_emu_dyn_smem in it
  size_t dyn_size = 0;
};
SmemInfo smem_info() {
  SmemInfo s;
  s.dyn = fn_emu_dyn_smem;  // touching it allocates the block for this thread
  s.dyn_size = size_t(fn_emu_dyn_smem_bytes);
  s.dyn[0] = kPoison;
  struct Q {
    SmemInfo* s;
  } q{&s};
  dl_iterate_phdr([](dl_phdr_info* info, size_t, void* data) -> int {
    auto* q = static_cast<Q*>(data);
    if (info->dlpi_tls_data == nullptr) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
      if (info->dlpi_phdr[i].p_type != PT_TLS) continue;
      auto* lo = static_cast<unsigned char*>(info->dlpi_tls_data);
      const size_t n = info->dlpi_phdr[i].p_memsz;
      if (q->s->dyn >= lo && q->s->dyn < lo + n) {
        q->s->tls = lo;
        q->s->tls_size = n;
        return 1;
      }
    }
    return 0;
  }, &q);
  if (s.tls == nullptr) {  // should not happen; fall back to the dynamic buffer alone
    s.tls = s.dyn;
    s.tls_size = s.dyn_size;
  }
  return s;
}

// Static shared memory = the TLS block minus the dynamic buffer; the dynamic part in use is
// [dyn, dyn + req); the canary follows it.
struct SmemRanges {
  unsigned char* a_lo; size_t a_len;  // TLS before the dynamic buffer
  unsigned char* b_lo; size_t b_len;  // TLS after it
};
SmemRanges static_ranges(const SmemInfo& s) {
  SmemRanges r;
  r.a_lo = s.tls;
  r.a_len = size_t(s.dyn - s.tls);
  r.b_lo = s.dyn + s.dyn_size;
  r.b_len = size_t(s.tls + s.tls_size - r.b_lo);
  return r;
}

// -------------------------------------------------------------------- guarded buffers
struct Alloc {
  unsigned char* map;
  size_t map_len;
  unsigned char* lo;  // accessible [lo, hi); the buffer is [p, p + n) inside, the rest guard
  unsigned char* hi;
  unsigned char* p;
  size_t n;
  std::string name;
  bool readonly;
};
std::map<uintptr_t, Alloc> g_allocs;  // keyed by p

// Under ASan the guard bytes are also poisoned for ASan: any access to them, read or write, is
// reported with a stack trace (the byte pattern alone only shows writes).
void asan_guard(const Alloc& a, bool poison) {
#if defined(FN_EMU_ASAN)
  auto f = poison ? __asan_poison_memory_region : __asan_unpoison_memory_region;
  f(a.lo, size_t(a.p - a.lo));
  f(a.p + a.n, size_t(a.hi - (a.p + a.n)));
#else
  (void)a;
  (void)poison;
#endif
}

const Alloc* alloc_near(const void* a) {
  const auto x = uintptr_t(a);
  for (auto& kv : g_allocs) {
    const Alloc& al = kv.second;
    if (x >= uintptr_t(al.map) && x < uintptr_t(al.map) + al.map_len) return &al;
  }
  return nullptr;
}

// ----------------------------------------------------------------------- the scheduler

struct Launch {
  const LaunchSpec* spec;
  Entry entry;
  void* closure;
  std::string name;
  size_t dyn;
  SmemInfo smem;
  bool abort = false;
  cudaError_t code = cudaSuccess;
  std::string msg;
  long long no_progress = 0;
  bool progress = false;
  Block* running_block = nullptr;
};
Launch* g_launch = nullptr;

std::string thread_str(const Thread* t) {
  return format("thread (%u,%u,%u) [linear %u, warp %u, lane %u]", t->thread_idx.x, t->thread_idx.y,
                t->thread_idx.z, t->linear, t->warp, t->lane);
}
std::string block_str(const Block* b) {
  return format("block (%u,%u,%u)", b->idx.x, b->idx.y, b->idx.z);
}

// Record the first error of the launch; the scheduler stops after the current step.
void launch_error(cudaError_t code, const std::string& msg) {
  Launch* L = g_launch;
  if (L == nullptr || L->abort) return;
  L->abort = true;
  L->code = code;
  L->msg = msg;
}

const char* op_name(Op k) {
  switch (k) {
    case Op::Shfl: return "__shfl_sync";
    case Op::ShflUp: return "__shfl_up_sync";
    case Op::ShflDown: return "__shfl_down_sync";
    case Op::ShflXor: return "__shfl_xor_sync";
    case Op::SyncWarp: return "__syncwarp";
    case Op::Ballot: return "__ballot_sync";
    case Op::Any: return "__any_sync";
    case Op::All: return "__all_sync";
    case Op::RedAdd: return "__reduce_add_sync";
    case Op::RedMin: return "__reduce_min_sync";
    case Op::RedMax: return "__reduce_max_sync";
    case Op::RedAnd: return "__reduce_and_sync";
    case Op::RedOr: return "__reduce_or_sync";
    case Op::RedXor: return "__reduce_xor_sync";
    case Op::MatchAny: return "__match_any_sync";
    default: return "?";
  }
}
const char* bar_name(int kind) {
  static const char* n[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and", "__syncthreads_or"};
  return n[kind & 3];
}

// Compact list of ids: "0-31,64,66-70".
std::string ranges(const std::vector<unsigned>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ",";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

// Every non-exited thread's wait state, grouped (deadlock and mismatch reports).
std::string describe_waits(const Block* b) {
  std::map<std::string, std::vector<unsigned>> groups;
  for (const Thread& t : b->threads) {
    std::string k;
    switch (t.state) {
      case St::Exited: k = "exited"; break;
      case St::Runnable: k = "runnable"; break;
      case St::Barrier: k = std::string("wait at ") + bar_name(t.bar_kind) + "() " + loc_str(t.loc); break;
      case St::Warp:
        k = format("wait at %s(mask=0x%08x) %s", op_name(t.op.kind), t.op.mask, loc_str(t.op.loc).c_str());
        break;
    }
    groups[k].push_back(t.linear);
  }
  std::string s;
  for (auto& g : groups) s += format("\n    threads %s: %s", ranges(g.second).c_str(), g.first.c_str());
  return s;
}

void release_barrier(Block* b) {
  // All live threads are here.  Check they agree before letting them go.
  const Thread* first = nullptr;
  for (const Thread& t : b->threads) {
    if (t.state != St::Barrier) continue;
    if (first == nullptr) { first = &t; continue; }
    if (t.bar_kind != first->bar_kind ||
        (g_config.strict_call_sites &&
         (t.loc.line != first->loc.line || std::strcmp(t.loc.file, first->loc.file) != 0))) {
      launch_error(cudaErrorLaunchFailure,
                   format("%s: threads wait at different barriers (divergent __syncthreads; undefined "
                          "in CUDA, hangs or misbehaves on a GPU):%s",
                          block_str(b).c_str(), describe_waits(b).c_str()));
      return;
    }
  }
  if (b->exited > 0 && !g_config.allow_exit_before_barrier) {
    launch_error(cudaErrorLaunchFailure,
                 format("%s: %s() at %s is reached by %d threads while %d threads of the block have "
                        "exited (PTX releases the barrier; CUDA C++ requires every thread of the block "
                        "to reach it):%s",
                        block_str(b).c_str(), bar_name(first->bar_kind), loc_str(first->loc).c_str(),
                        b->at_barrier, b->exited, describe_waits(b).c_str()));
    return;
  }
  int count = 0;
  for (const Thread& t : b->threads)
    if (t.state == St::Barrier && t.bar_pred) ++count;
  const int n = b->at_barrier;
  const int kind = first->bar_kind;
  const int res = kind == 1 ? count : kind == 2 ? (count == n) : kind == 3 ? (count > 0) : 0;
  for (Thread& t : b->threads) {
    if (t.state == St::Barrier) {
      t.state = St::Runnable;
      t.bar_result = res;
    }
  }
  b->at_barrier = 0;
  ++g_stats[kStatBarriers];
  g_launch->progress = true;
}

int lanes_in_warp(const Block* b, unsigned warp) {
  return std::min(32, b->nthreads - int(warp) * 32);
}

// Try to complete the warp collective `t` waits in.  Errors for misuse; returns quietly when
// some lane named in the mask has not arrived yet.
void try_warp(Block* b, Thread* t) {
  const unsigned m = t->op.mask;
  const int nl = lanes_in_warp(b, t->warp);
  Thread* lanes = &b->threads[t->warp * 32];
  WarpState& ws = b->warps[t->warp];
  ++ws.arrived;
  auto where = [&] {
    return format("%s: %s in %s(mask=0x%08x) at %s", block_str(b).c_str(), thread_str(t).c_str(),
                  op_name(t->op.kind), m, loc_str(t->op.loc).c_str());
  };
  if (!((m >> t->lane) & 1u)) {
    launch_error(cudaErrorLaunchFailure, where() + ": the calling lane is not in the mask (undefined)");
    return;
  }
  const unsigned exists = nl == 32 ? 0xffffffffu : ((1u << nl) - 1u);
  if (m & ~exists) {
    launch_error(cudaErrorLaunchFailure,
                 format("%s: the mask names lane %d, which does not exist (warp %u has %d lanes: the "
                        "block has %d threads, not a multiple of 32)",
                        where().c_str(), __builtin_ctz(m & ~exists), t->warp, nl, b->nthreads));
    return;
  }
  if (m & ws.exited) {
    launch_error(cudaErrorLaunchFailure,
                 format("%s: the mask names lane %d, which has exited (a shuffle from or a sync with "
                        "an exited lane is undefined)",
                        where().c_str(), __builtin_ctz(m & ws.exited)));
    return;
  }
  if (ws.arrived < __builtin_popcount(m)) return;  // cannot be complete yet
  for (int l = 0; l < 32; ++l) {
    if (!((m >> l) & 1u)) continue;
    if (lanes[l].state != St::Warp || lanes[l].op.mask != m) return;  // not here (yet)
  }
  // Every lane of the mask waits in a collective with this mask: they must be the same one.
  for (int l = 0; l < nl; ++l) {
    if (!((m >> l) & 1u)) continue;
    const WarpOp& o = lanes[l].op;
    const bool site_ok = !g_config.strict_warp_sites ||
                         (o.loc.line == t->op.loc.line && std::strcmp(o.loc.file, t->op.loc.file) == 0);
    if (o.kind != t->op.kind || o.width != t->op.width || o.size != t->op.size || !site_ok) {
      launch_error(cudaErrorLaunchFailure,
                   format("%s: lanes of mask 0x%08x are in different warp collectives (lane %d: %s width "
                          "%d, %d bytes at %s; lane %u: %s width %d, %d bytes at %s)",
                          block_str(b).c_str(), m, l, op_name(o.kind), o.width, o.size, loc_str(o.loc).c_str(),
                          t->lane, op_name(t->op.kind), t->op.width, t->op.size, loc_str(t->op.loc).c_str()));
      return;
    }
  }
  const Op kind = t->op.kind;
  const int w = t->op.width;
  if (kind == Op::Shfl || kind == Op::ShflUp || kind == Op::ShflDown || kind == Op::ShflXor) {
    if (w < 1 || w > 32 || (w & (w - 1)) != 0) {
      launch_error(cudaErrorLaunchFailure, format("%s: width %d is not a power of two in [1, 32]", where().c_str(), w));
      return;
    }
  }
  // Compute every lane's result first (they read each other's inputs).
  unsigned char res[32][16];
  unsigned ballot = 0;
  unsigned long long acc_u = 0;
  long long acc_s = 0;
  bool first = true;
  for (int l = 0; l < nl; ++l) {
    if (!((m >> l) & 1u)) continue;
    int pred;
    std::memcpy(&pred, lanes[l].op.val, 4);
    if (pred) ballot |= 1u << l;
  }
  if (kind >= Op::RedAdd && kind <= Op::RedXor) {
    for (int l = 0; l < nl; ++l) {
      if (!((m >> l) & 1u)) continue;
      unsigned u;
      std::memcpy(&u, lanes[l].op.val, 4);
      const int s = int(u);
      if (first) { acc_u = u; acc_s = s; first = false; continue; }
      switch (kind) {
        case Op::RedAdd: acc_u = unsigned(acc_u + u); break;
        case Op::RedMin: acc_s = std::min<long long>(acc_s, s); acc_u = std::min<unsigned long long>(acc_u, u); break;
        case Op::RedMax: acc_s = std::max<long long>(acc_s, s); acc_u = std::max<unsigned long long>(acc_u, u); break;
        case Op::RedAnd: acc_u &= u; break;
        case Op::RedOr: acc_u |= u; break;
        case Op::RedXor: acc_u ^= u; break;
        default: break;
      }
    }
  }
  for (int l = 0; l < nl; ++l) {
    if (!((m >> l) & 1u)) continue;
    const WarpOp& o = lanes[l].op;
    std::memset(res[l], 0, 16);
    int src = l;
    bool read = false;
    const int seg_lo = l & ~(w - 1), seg_hi = seg_lo + w - 1;
    switch (kind) {
      case Op::Shfl: src = seg_lo + (o.arg & (w - 1)); read = true; break;
      case Op::ShflUp: src = l - o.arg; read = src >= seg_lo; break;
      case Op::ShflDown: src = l + o.arg; read = src <= seg_hi; break;
      case Op::ShflXor: src = l ^ (o.arg & 31); read = src <= seg_hi; break;
      default: break;
    }
    if (read) {
      if (src < 0 || src >= nl || !((m >> src) & 1u)) {
        launch_error(cudaErrorLaunchFailure,
                     format("%s: lane %d reads lane %d, which is not in the mask (undefined result)",
                            where().c_str(), l, src));
        return;
      }
      std::memcpy(res[l], lanes[src].op.val, 16);
      continue;
    }
    switch (kind) {
      case Op::Shfl: case Op::ShflUp: case Op::ShflDown: case Op::ShflXor:
        std::memcpy(res[l], o.val, 16);  // out of its segment: its own value
        break;
      case Op::SyncWarp: break;
      case Op::Ballot: std::memcpy(res[l], &ballot, 4); break;
      case Op::Any: { int r = ballot != 0; std::memcpy(res[l], &r, 4); break; }
      case Op::All: {
        const int r = ballot == m;  // m names existing lanes only (checked above)
        std::memcpy(res[l], &r, 4);
        break;
      }
      case Op::RedMin: case Op::RedMax: {
        const unsigned r = o.is_signed ? unsigned(int(acc_s)) : unsigned(acc_u);
        std::memcpy(res[l], &r, 4);
        break;
      }
      case Op::RedAdd: case Op::RedAnd: case Op::RedOr: case Op::RedXor: {
        const unsigned r = unsigned(acc_u);
        std::memcpy(res[l], &r, 4);
        break;
      }
      case Op::MatchAny: {
        unsigned r = 0;
        for (int k = 0; k < nl; ++k)
          if (((m >> k) & 1u) && std::memcmp(lanes[k].op.val, o.val, size_t(o.size)) == 0) r |= 1u << k;
        std::memcpy(res[l], &r, 4);
        break;
      }
      default: break;
    }
  }
  for (int l = 0; l < nl; ++l) {
    if (!((m >> l) & 1u)) continue;
    std::memcpy(lanes[l].op.res, res[l], 16);
    lanes[l].state = St::Runnable;
  }
  ws.arrived -= __builtin_popcount(m);
  ++g_stats[kStatWarpOps];
  g_launch->progress = true;
}

void on_exit(Block* b, Thread* t) {
  b->warps[t->warp].exited |= 1u << t->lane;
  ++b->exited;
  --b->live;
  g_launch->progress = true;
  // A collective that names this lane can no longer complete.
  Thread* lanes = &b->threads[t->warp * 32];
  const int nl = lanes_in_warp(b, t->warp);
  for (int l = 0; l < nl; ++l) {
    if (lanes[l].state == St::Warp && ((lanes[l].op.mask >> t->lane) & 1u)) {
      launch_error(cudaErrorLaunchFailure,
                   format("%s: %s exited while lane %d waits for it in %s(mask=0x%08x) at %s (undefined)",
                          block_str(b).c_str(), thread_str(t).c_str(), l, op_name(lanes[l].op.kind),
                          lanes[l].op.mask, loc_str(lanes[l].op.loc).c_str()));
      return;
    }
  }
  if (b->at_barrier > 0 && b->at_barrier == b->live) release_barrier(b);
}

// Resume `t` until it blocks, yields or exits, then account for where it stopped.  False when
// the launch must stop (an error was recorded).  *yielded: it stopped at an atomic / fence only.
bool step(Block* b, Thread* t, bool* yielded = nullptr) {
  g_launch->progress = false;
  g_thread = t;
#if defined(FN_EMU_ASAN)
  __sanitizer_start_switch_fiber(&g_sched_fake, t->stack_lo, t->stack_size);
#endif
  switch_into(t);
#if defined(FN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
  g_thread = nullptr;
  ++g_stats[kStatSwitches];
  if (g_launch->abort) return false;
  if (yielded) *yielded = t->state == St::Runnable;
  switch (t->state) {
    case St::Runnable: break;  // yielded at an atomic / fence
    case St::Barrier:
      ++b->at_barrier;
      if (b->at_barrier == b->live) release_barrier(b);
      break;
    case St::Warp: try_warp(b, t); break;
    case St::Exited: on_exit(b, t); break;
  }
  if (g_launch->abort) return false;
  if (g_launch->progress || t->state != St::Runnable) {
    g_launch->no_progress = 0;
  } else if (++g_launch->no_progress > kSpinLimit) {
    launch_error(cudaErrorLaunchTimeout,
                 format("%s: %lld atomics/fences in a row without any thread passing a barrier, "
                        "a warp collective or exiting: a spin-wait that cannot finish%s.  Last: %s",
                        block_str(b).c_str(), kSpinLimit,
                        g_config.resident_blocks <= 1
                            ? " (blocks run one at a time here; a wait for another block needs "
                              "Config::resident_blocks >= the number of blocks involved)"
                            : "",
                        thread_str(t).c_str()));
    return false;
  }
  return true;
}

// One scheduling round of `b`; returns whether any thread ran.
//  round robin:  each runnable thread once, in the block's thread order -- threads stay within one
//                synchronization point of each other;
//  greedy warps: each warp in turn runs as far as it can (its own collectives complete) before
//                the next one starts -- warps get as far apart as the barriers allow, which exposes
//                races that need one warp to be a step or more ahead (e.g. a missing trailing
//                barrier before shared memory is reused).  A warp whose lane only yielded (a spin
//                on an atomic) hands over so the others can make the progress it waits for.
bool round(Block* b) {
  bool ran = false;
  if (!g_config.greedy_warps) {
    for (unsigned i : b->order) {
      Thread* t = &b->threads[i];
      if (t->state != St::Runnable) continue;
      ran = true;
      if (!step(b, t)) return ran;
    }
    return ran;
  }
  for (unsigned w : b->warp_order) {
    for (;;) {
      bool any = false, yielded = false;
      for (unsigned i : b->warp_lanes[w]) {
        Thread* t = &b->threads[i];
        if (t->state != St::Runnable) continue;
        any = ran = true;
        bool y = false;
        if (!step(b, t, &y)) return ran;
        yielded = yielded || y;
      }
      if (!any || yielded) break;
    }
  }
  return ran;
}

void init_block(Block* b, long long linear, size_t slot_base) {
  const dim3 g = g_grid_dim, bd = g_block_dim;
  b->linear = linear;
  b->idx = uint3{unsigned(linear % g.x), unsigned((linear / g.x) % g.y), unsigned(linear / (g.x * (long long)g.y))};
  b->nthreads = int(bd.x * bd.y * bd.z);
  b->threads.assign(size_t(b->nthreads), Thread{});
  b->warps.assign(size_t((b->nthreads + 31) / 32), WarpState{});
  const size_t sb = stack_bytes();
  for (int i = 0; i < b->nthreads; ++i) {
    Thread& t = b->threads[size_t(i)];
    t.linear = unsigned(i);
    t.lane = unsigned(i) & 31u;
    t.warp = unsigned(i) >> 5;
    t.thread_idx = uint3{unsigned(i) % bd.x, (unsigned(i) / bd.x) % bd.y, unsigned(i) / (bd.x * bd.y)};
    t.block = b;
    t.stack_lo = g_stacks.get(slot_base + size_t(i), sb);
    t.stack_size = sb;
#if defined(FN_EMU_ASAN)
    __asan_unpoison_memory_region(t.stack_lo, t.stack_size);
#endif
    ctx_init(&t);
  }
  b->order.resize(size_t(b->nthreads));
  for (int i = 0; i < b->nthreads; ++i) b->order[size_t(i)] = unsigned(i);
  if (g_config.schedule == kReverse) {
    std::reverse(b->order.begin(), b->order.end());
  } else if (g_config.schedule == kShuffled) {
    std::mt19937 rng(g_config.seed * 2654435761u + unsigned(linear));
    std::shuffle(b->order.begin(), b->order.end(), rng);
  }
  const size_t nwarps = size_t((b->nthreads + 31) / 32);
  b->warp_lanes.assign(nwarps, {});
  b->warp_order.clear();
  for (unsigned i : b->order) {
    if (b->warp_lanes[i >> 5].empty()) b->warp_order.push_back(i >> 5);
    b->warp_lanes[i >> 5].push_back(i);
  }
  b->live = b->nthreads;
  b->exited = 0;
  b->at_barrier = 0;
  b->active = true;
  ++g_stats[kStatBlocks];
  g_stats[kStatThreads] += b->nthreads;
}

void poison_smem(const Launch& L) {
  const SmemRanges r = static_ranges(L.smem);
  if (g_config.poison_shared) {
    std::memset(r.a_lo, kPoison, r.a_len);
    std::memset(r.b_lo, kPoison, r.b_len);
    std::memset(L.smem.dyn, kPoison, L.dyn);
  }
  std::memset(L.smem.dyn + L.dyn, kCanaryByte, std::min(kCanary, L.smem.dyn_size - L.dyn));
}

void check_canary(const Launch& L, const Block* b) {
  const unsigned char* c = L.smem.dyn + L.dyn;
  const size_t n = std::min(kCanary, L.smem.dyn_size - L.dyn);
  for (size_t i = 0; i < n; ++i) {
    if (c[i] != kCanaryByte) {
      launch_error(cudaErrorIllegalAddress,
                   format("%s: dynamic shared memory written out of bounds: byte %zu past the %zu bytes "
                          "the launch requested",
                          block_str(b).c_str(), i, L.dyn));
      return;
    }
  }
}

// Shared memory image of a block (resident_blocks > 1 swaps blocks' copies in and out).
size_t image_bytes(const Launch& L) {
  const SmemRanges r = static_ranges(L.smem);
  return r.a_len + r.b_len + L.dyn + std::min(kCanary, L.smem.dyn_size - L.dyn);
}
void save_smem(const Launch& L, Block* b) {
  const SmemRanges r = static_ranges(L.smem);
  b->smem_image.resize(image_bytes(L));
  unsigned char* o = b->smem_image.data();
  std::memcpy(o, r.a_lo, r.a_len); o += r.a_len;
  std::memcpy(o, r.b_lo, r.b_len); o += r.b_len;
  std::memcpy(o, L.smem.dyn, image_bytes(L) - r.a_len - r.b_len);
}
void load_smem(const Launch& L, const Block* b) {
  const SmemRanges r = static_ranges(L.smem);
  const unsigned char* o = b->smem_image.data();
  std::memcpy(r.a_lo, o, r.a_len); o += r.a_len;
  std::memcpy(r.b_lo, o, r.b_len); o += r.b_len;
  std::memcpy(L.smem.dyn, o, image_bytes(L) - r.a_len - r.b_len);
}

// ------------------------------------------------------------------ faults and watchdog
sigjmp_buf g_escape;
volatile sig_atomic_t g_sig = 0;
void* volatile g_sig_addr = nullptr;
volatile long g_sig_err = 0;
Thread* volatile g_sig_thread = nullptr;
std::atomic<bool> g_timed_out{false};
pthread_t g_emu_thread;  // the OS thread running the current launch (signals from others are not ours)
struct sigaction g_old_usr2;
constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
struct sigaction g_old_actions[4];
stack_t g_old_altstack;
std::vector<unsigned char> g_altstack;

void fault_handler(int sig, siginfo_t* si, void* uctx) {
  if (g_thread != nullptr && g_launch != nullptr && pthread_equal(pthread_self(), g_emu_thread)) {
    g_sig = sig;
    g_sig_addr = si->si_addr;
#if defined(__x86_64__)
    g_sig_err = static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR];
#else
    (void)uctx;
#endif
    g_sig_thread = g_thread;
    siglongjmp(g_escape, 1);
  }
  // Not ours: restore the previous handler and let the fault happen again under it.
  for (size_t i = 0; i < 4; ++i)
    if (kSignals[i] == sig) sigaction(sig, &g_old_actions[i], nullptr);
}

void watchdog_handler(int sig, siginfo_t* si, void* uctx) {
  // Only escapes when an emulated thread is running (an endless loop in kernel code); in the
  // scheduler the flag is polled instead.
  if (g_timed_out.load() && pthread_equal(pthread_self(), g_emu_thread)) {
    if (g_thread != nullptr && g_launch != nullptr) {
      g_sig = SIGUSR2;
      g_sig_thread = g_thread;
      siglongjmp(g_escape, 1);
    }
    return;
  }
  // Someone else's SIGUSR2: pass it on to the handler that was there before.
  if (g_old_usr2.sa_flags & SA_SIGINFO) {
    if (g_old_usr2.sa_sigaction) g_old_usr2.sa_sigaction(sig, si, uctx);
  } else if (g_old_usr2.sa_handler == SIG_DFL) {
    sigaction(SIGUSR2, &g_old_usr2, nullptr);
    raise(SIGUSR2);
  } else if (g_old_usr2.sa_handler != SIG_IGN) {
    g_old_usr2.sa_handler(sig);
  }
}

struct Watchdog {
  std::mutex mu;
  std::condition_variable cv;
  bool armed = false;
  long long id = 0;
  std::chrono::steady_clock::time_point deadline;
  pthread_t target;
  bool started = false;
  void start() {
    if (started) return;
    started = true;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = watchdog_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, &g_old_usr2);  // stays installed (chaining): a late signal must not kill us
    std::thread([this] {
      std::unique_lock<std::mutex> lk(mu);
      for (;;) {
        if (!armed) { cv.wait(lk); continue; }
        const long long my = id;
        if (cv.wait_until(lk, deadline) == std::cv_status::timeout && armed && id == my) {
          g_timed_out = true;
          pthread_kill(target, SIGUSR2);
          armed = false;
        }
      }
    }).detach();
  }
  void arm(double seconds) {
    start();
    std::lock_guard<std::mutex> lk(mu);
    armed = seconds > 0;
    ++id;
    g_timed_out = false;
    target = pthread_self();
    deadline = std::chrono::steady_clock::now() +
               std::chrono::microseconds(static_cast<long long>(seconds * 1e6));
    cv.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lk(mu);
    armed = false;
    ++id;
    cv.notify_all();
  }
};
// Never destroyed: its thread waits on the condition variable until the process ends.
Watchdog& g_watchdog = *new Watchdog;

void install_fault_handlers() {
  if (g_altstack.empty()) g_altstack.resize(64 * 1024);
  stack_t ss;
  ss.ss_sp = g_altstack.data();
  ss.ss_size = g_altstack.size();
  ss.ss_flags = 0;
  sigaltstack(&ss, &g_old_altstack);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fault_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < 4; ++i) sigaction(kSignals[i], &sa, &g_old_actions[i]);
}
void remove_fault_handlers() {
  for (size_t i = 0; i < 4; ++i) sigaction(kSignals[i], &g_old_actions[i], nullptr);
  sigaltstack(&g_old_altstack, nullptr);
}

std::string describe_signal() {
  const void* a = g_sig_addr;
  const Thread* t = g_sig_thread;
  const Block* rb = g_launch ? g_launch->running_block : nullptr;
  std::string who = t ? block_str(t->block) + ", " + thread_str(t) : rb ? block_str(rb) : std::string("?");
  if (g_sig == SIGUSR2)
    return format("%s: the kernel ran longer than the watchdog's %.0f s (an endless loop or a "
                  "spin-wait on plain or volatile loads: only atomics, fences and __nanosleep let other "
                  "emulated threads run)", who.c_str(), g_config.timeout_s);
  if (g_sig == SIGFPE) return who + ": arithmetic exception (integer division by zero?)";
  if (g_sig == SIGILL) return who + ": illegal instruction";
  const bool write = (g_sig_err & 2) != 0;
  const char* acc = write ? "write to" : "access to";
  size_t which = 0;
  if (g_stacks.in_guard(a, &which)) return who + ": stack overflow of the emulated thread (raise Config::stack_bytes?)";
  if (uintptr_t(a) < 65536) return format("%s: %s address %p (null pointer)", who.c_str(), acc, a);
  if (const Alloc* al = alloc_near(a)) {
    const long long off = (long long)(uintptr_t(a) - uintptr_t(al->p));
    if (al->readonly && a >= al->p && uintptr_t(a) < uintptr_t(al->p) + al->n)
      return format("%s: write to read-only buffer '%s' at byte %lld of %zu", who.c_str(), al->name.c_str(), off,
                    al->n);
    if (off < 0)
      return format("%s: out-of-bounds %s buffer '%s': %lld bytes before its start (%zu bytes at %p)",
                    who.c_str(), acc, al->name.c_str(), -off, al->n, (void*)al->p);
    return format("%s: out-of-bounds %s buffer '%s': byte %lld of a %zu-byte buffer at %p", who.c_str(), acc,
                  al->name.c_str(), off, al->n, (void*)al->p);
  }
  return format("%s: illegal %s address %p", who.c_str(), write ? "write to" : "access to", a);
}

// ---------------------------------------------------------------------- launch checks
cudaError_t validate(const LaunchSpec& s, std::string* why) {
  const dim3 g = s.grid, b = s.block;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0) {
    *why = format("zero-sized launch grid (%u,%u,%u) block (%u,%u,%u)", g.x, g.y, g.z, b.x, b.y, b.z);
    return cudaErrorInvalidConfiguration;
  }
  if (b.x > 1024 || b.y > 1024 || b.z > 64 || (unsigned long long)b.x * b.y * b.z > 1024) {
    *why = format("block (%u,%u,%u) exceeds 1024 threads / (1024,1024,64)", b.x, b.y, b.z);
    return cudaErrorInvalidConfiguration;
  }
  if (g.x > 2147483647u || g.y > 65535u || g.z > 65535u) {
    *why = format("grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", g.x, g.y, g.z);
    return cudaErrorInvalidConfiguration;
  }
  auto it = g_func_max_dyn.find(s.func);
  const size_t limit = it == g_func_max_dyn.end() ? size_t(kDefaultSmem) : size_t(it->second);
  if (s.smem > limit) {
    *why = format("%zu bytes of dynamic shared memory exceed the kernel's limit of %zu (48 KB unless "
                  "raised with cudaFuncSetAttribute(MaxDynamicSharedMemorySize), at most 227 KB)",
                  s.smem, limit);
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

}  // namespace

// ------------------------------------------------------------- fiber-side entry points
namespace {
void fiber_exit_to_scheduler(Thread* t) {
#if defined(FN_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, g_sched_stack_bottom, g_sched_stack_size);
#endif
  switch_out(t);
  // never resumed
  std::abort();
}

void to_scheduler(Thread* t) {
#if defined(FN_EMU_ASAN)
  __sanitizer_start_switch_fiber(&t->asan_fake, g_sched_stack_bottom, g_sched_stack_size);
#endif
  switch_out(t);
#if defined(FN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(t->asan_fake, nullptr, nullptr);
#endif
}

void fiber_entry() {
#if defined(FN_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  Thread* t = g_thread;
  try {
    g_launch->entry(g_launch->closure);
  } catch (const std::exception& e) {
    launch_error(cudaErrorLaunchFailure, format("%s, %s: C++ exception escaped the kernel: %s",
                                                block_str(t->block).c_str(), thread_str(t).c_str(), e.what()));
  } catch (...) {
    launch_error(cudaErrorLaunchFailure, format("%s, %s: C++ exception escaped the kernel",
                                                block_str(t->block).c_str(), thread_str(t).c_str()));
  }
  t->state = St::Exited;
  fiber_exit_to_scheduler(t);
}
}  // namespace

void yield() {
  Thread* t = g_thread;
  if (t == nullptr) return;  // host code
  t->state = St::Runnable;
  to_scheduler(t);
}

void wait_warp(Loc loc) {
  Thread* t = cur(loc);
  t->state = St::Warp;
  to_scheduler(t);
}

int wait_barrier(int kind, int pred, Loc loc) {
  Thread* t = cur(loc);
  t->state = St::Barrier;
  t->loc = loc;
  t->bar_kind = kind;
  t->bar_pred = pred;
  to_scheduler(t);
  return t->bar_result;
}

void fault(cudaError_t code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  Thread* t = g_thread;
  if (t == nullptr || g_launch == nullptr) {
    std::fprintf(stderr, "fn_emu: %s (outside a kernel)\n", msg.c_str());
    std::abort();
  }
  launch_error(code, block_str(t->block) + ", " + thread_str(t) + ": " + msg);
  t->state = St::Exited;
  fiber_exit_to_scheduler(t);
  std::abort();
}

void check_atomic_address(const void* p, size_t align, Loc loc) {
  if (p == nullptr) fault(cudaErrorIllegalAddress, "atomic on a null pointer at %s", loc_str(loc).c_str());
  if (uintptr_t(p) % align != 0)
    fault(cudaErrorMisalignedAddress, "misaligned %zu-byte atomic at %p (%s)", align, p, loc_str(loc).c_str());
}

unsigned active_mask(Loc loc) {
  Thread* t = cur(loc);
  Block* b = t->block;
  const int nl = lanes_in_warp(b, t->warp);
  unsigned m = 0;
  for (int l = 0; l < nl; ++l)
    if (b->threads[t->warp * 32 + unsigned(l)].state != St::Exited) m |= 1u << l;
  return m;
}

float approx(float r, float arg, int ulps) {
  if (!g_config.approx_math || ulps <= 0 || !std::isfinite(r) || r == 0.f) return r;
  unsigned h = f32_bits(arg) * 2654435761u;
  h ^= h >> 15;
  const float toward = (h & 1u) ? INFINITY : -INFINITY;
  float v = r;
  for (int i = 0; i < ulps; ++i) {
    const float n = std::nextafter(v, toward);
    if (!std::isfinite(n) || (n == 0.f) || std::signbit(n) != std::signbit(r)) break;
    v = n;
  }
  return v;
}

Config& config() { return g_config; }

// --------------------------------------------------------------------------- run_grid
void run_grid(const LaunchSpec& spec, Entry entry, void* closure) {
  ++g_stats[kStatLaunches];
  const std::string name = func_name(spec.func).empty() ? spec.text : func_name(spec.func);
  if (!g_unchecked.empty() && g_config.require_launch_check)
    g_lint += "launch of " + g_unchecked + " was not followed by a launch-error check (cudaGetLastError)\n";
  g_unchecked = format("%s at %s:%d", name.c_str(), short_file(spec.file).c_str(), spec.line);
  g_launch_log += format("%s|%u,%u,%u|%u,%u,%u|%zu\n", name.c_str(), spec.grid.x, spec.grid.y, spec.grid.z,
                         spec.block.x, spec.block.y, spec.block.z, spec.smem);
  if (g_sticky != cudaSuccess) {
    g_last = g_sticky;
    return;
  }
  std::string why;
  const cudaError_t v = validate(spec, &why);
  if (v != cudaSuccess) {
    g_last = v;
    g_fault = "launch of " + name + " refused: " + why;
    return;
  }
  if (g_launch != nullptr) {
    g_last = g_sticky = cudaErrorNotSupported;
    g_fault = "kernel launched from inside a kernel (dynamic parallelism is not emulated)";
    return;
  }

  if (g_config.dry_run) return;  // the launch is logged and validated, not run (launch plans)

  Launch L;
  L.spec = &spec;
  L.entry = entry;
  L.closure = closure;
  L.name = name;
  L.dyn = spec.smem;
  L.smem = smem_info();
  g_launch = &L;
  g_grid_dim = spec.grid;
  g_block_dim = spec.block;

  const long long nblocks = (long long)spec.grid.x * spec.grid.y * spec.grid.z;
  std::vector<long long> order;
  auto block_at = [&](long long i) -> long long {
    if (!order.empty()) return order[size_t(i)];
    return g_config.schedule == kForward ? i : nblocks - 1 - i;
  };
  if (g_config.schedule == kShuffled && nblocks <= (1LL << 20)) {
    order.resize(size_t(nblocks));
    for (long long i = 0; i < nblocks; ++i) order[size_t(i)] = i;
    std::mt19937 rng(g_config.seed);
    std::shuffle(order.begin(), order.end(), rng);
  }
  const int resident = int(std::max<long long>(1, std::min<long long>(g_config.resident_blocks, nblocks)));
  std::vector<Block> slots(static_cast<size_t>(resident));
  const size_t per_slot = size_t(spec.block.x) * spec.block.y * spec.block.z;

  g_emu_thread = pthread_self();
  install_fault_handlers();
  g_watchdog.arm(g_config.timeout_s);
  g_sig = 0;
  if (sigsetjmp(g_escape, 1) != 0) {
    // Arrived from a signal handler: an emulated thread faulted or ran too long.
    g_thread = nullptr;
    launch_error(g_sig == SIGUSR2 ? cudaErrorLaunchTimeout : cudaErrorIllegalAddress, describe_signal());
  } else {
    long long next = 0;
    int active = 0;
    Block* loaded = nullptr;  // whose shared memory is in the TLS block now
    auto admit = [&](Block* b, size_t slot) {
      init_block(b, block_at(next++), slot * per_slot);
      if (resident > 1 && loaded != nullptr) save_smem(L, loaded);
      poison_smem(L);
      loaded = b;
      if (resident > 1) save_smem(L, b);
      ++active;
    };
    for (int s = 0; s < resident && next < nblocks; ++s) admit(&slots[size_t(s)], size_t(s));
    while (active > 0 && !L.abort) {
      for (int s = 0; s < resident && !L.abort; ++s) {
        Block* b = &slots[size_t(s)];
        if (!b->active) continue;
        if (resident > 1 && loaded != b) {
          save_smem(L, loaded);
          load_smem(L, b);
          loaded = b;
        }
        g_block_idx = b->idx;
        L.running_block = b;
        // One block at a time: run it to completion.  Interleaved: one round each.
        do {
          const bool ran = round(b);
          if (L.abort) break;
          if (b->live == 0) {
            check_canary(L, b);
            b->active = false;
            --active;
            L.progress = true;
            break;
          }
          if (!ran) {
            launch_error(cudaErrorLaunchFailure,
                         format("%s: deadlock: no thread can proceed (a barrier or warp collective that some "
                                "threads never reach):%s",
                                block_str(b).c_str(), describe_waits(b).c_str()));
            break;
          }
          if (g_timed_out.load()) {
            g_sig = SIGUSR2;
            g_sig_thread = nullptr;
            launch_error(cudaErrorLaunchTimeout, describe_signal());
            break;
          }
        } while (resident == 1);
        if (!b->active && !L.abort && next < nblocks) admit(b, size_t(s));
      }
    }
  }
  g_watchdog.disarm();
  remove_fault_handlers();
  g_thread = nullptr;
  g_launch = nullptr;
  if (L.abort) {
    g_last = g_sticky = L.code;
    g_fault = "kernel " + name + " (launched at " + short_file(spec.file) + ":" + std::to_string(spec.line) +
              ", grid (" + std::to_string(spec.grid.x) + "," + std::to_string(spec.grid.y) + "," +
              std::to_string(spec.grid.z) + "), block (" + std::to_string(spec.block.x) + "," +
              std::to_string(spec.block.y) + "," + std::to_string(spec.block.z) + ")): " + L.msg;
  }
}

void set_func_attribute(const void* func, int attr, int value, cudaError_t* err) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > kOptinSmem) {
      *err = g_last = cudaErrorInvalidValue;
      return;
    }
    g_func_max_dyn[func] = value;
  } else if (attr != cudaFuncAttributePreferredSharedMemoryCarveout) {
    *err = g_last = cudaErrorInvalidValue;
  }
}

cudaError_t occupancy(int* blocks, const void* func, int block_size, size_t dyn) {
  if (blocks == nullptr || block_size <= 0 || block_size > 1024) return g_last = cudaErrorInvalidValue;
  auto it = g_func_max_dyn.find(func);
  const size_t limit = it == g_func_max_dyn.end() ? size_t(kDefaultSmem) : size_t(it->second);
  if (dyn > limit) { *blocks = 0; return cudaSuccess; }
  const int warps = (block_size + 31) / 32;
  int regs = 32, static_smem = 0;  // assumed unless fn_emu_set_kernel_resources said otherwise
  auto res = g_kernel_resources.find(func_name(func));
  if (res != g_kernel_resources.end()) {
    regs = res->second.first;
    static_smem = res->second.second;
  }
  const int regs_per_warp = (regs * 32 + 255) / 256 * 256;  // allocated per warp, 256 at a time
  int n = std::min(32, 2048 / (warps * 32));
  n = std::min(n, 65536 / (warps * regs_per_warp));
  n = std::min(n, int((228 * 1024) / (dyn + size_t(static_smem) + 1024)));
  *blocks = n;
  return cudaSuccess;
}

cudaError_t func_attributes(cudaFuncAttributes* a, const void* func) {
  if (a == nullptr) return g_last = cudaErrorInvalidValue;
  std::memset(a, 0, sizeof *a);
  auto it = g_func_max_dyn.find(func);
  a->maxThreadsPerBlock = 1024;
  a->numRegs = 32;
  a->ptxVersion = a->binaryVersion = 90;
  a->maxDynamicSharedSizeBytes = it == g_func_max_dyn.end() ? kDefaultSmem : it->second;
  a->preferredShmemCarveout = -1;
  return cudaSuccess;
}

// Host-call bracketing for capi.cpp: reset per-call state / collect what the call left.
void begin_call() {
  g_unchecked.clear();
  g_lint.clear();
  g_launch_log.clear();
}
std::string end_call_lint() {
  if (!g_unchecked.empty() && g_config.require_launch_check)
    g_lint += "launch of " + g_unchecked + " was not followed by a launch-error check (cudaGetLastError)\n";
  g_unchecked.clear();
  return g_lint;
}
cudaError_t sticky_error() { return g_sticky; }
const std::string& fault_message() { return g_fault; }
const std::string& launch_log() { return g_launch_log; }
void reset() {
  g_last = g_sticky = cudaSuccess;
  g_fault.clear();
  g_lint.clear();
  g_unchecked.clear();
  g_launch_log.clear();
  // Function attributes persist, as they do for a CUDA context (launchers often set them once).
}

}  // namespace fn_emu

using namespace fn_emu;

long long fn_emu_clock64() { return g_clock += 1000; }

// ----------------------------------------------------------------- CUDA runtime API
cudaError_t cudaGetLastError() {
  g_unchecked.clear();
  const cudaError_t e = g_last;
  g_last = g_sticky;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  g_unchecked.clear();
  return g_last;
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
    case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotSupported: return "operation not supported";
    default: return cudaGetErrorName(e);
  }
}
cudaError_t cudaGetDevice(int* dev) {
  if (dev == nullptr) return g_last = cudaErrorInvalidValue;
  *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) { return dev == 0 ? cudaSuccess : (g_last = cudaErrorInvalidDevice); }
cudaError_t cudaGetDeviceCount(int* n) {
  if (n == nullptr) return g_last = cudaErrorInvalidValue;
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (value == nullptr) return g_last = cudaErrorInvalidValue;
  if (dev != 0) return g_last = cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kDefaultSmem; break;
    case cudaDevAttrTotalConstantMemory: *value = 65536; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrClockRate: *value = 1980000; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrMemoryClockRate: *value = 2619000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = 5120; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kOptinSmem; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = 32; break;
    case cudaDevAttrReservedSharedMemoryPerBlock: *value = 1024; break;
    default: return g_last = cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (p == nullptr) return g_last = cudaErrorInvalidValue;
  if (dev != 0) return g_last = cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "fn_emu (H100-like, emulated on the CPU)");
  p->totalGlobalMem = 80ull << 30;
  p->sharedMemPerBlock = kDefaultSmem;
  p->sharedMemPerBlockOptin = kOptinSmem;
  p->sharedMemPerMultiprocessor = 228 * 1024;
  p->totalConstMem = 65536;
  p->regsPerBlock = p->regsPerMultiprocessor = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->clockRate = 1980000;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->maxThreadsPerMultiProcessor = 2048;
  p->maxBlocksPerMultiProcessor = 32;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->cooperativeLaunch = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return g_sticky; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return g_sticky; }
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  static long long next = 0x100;
  if (s == nullptr) return g_last = cudaErrorInvalidValue;
  *s = reinterpret_cast<cudaStream_t>(next++);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  if (n == 0) return cudaSuccess;
  if (p == nullptr) return g_last = cudaErrorInvalidValue;
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t n) { return cudaMemsetAsync(p, value, n, nullptr); }
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return g_last = cudaErrorInvalidValue;
  const auto d = uintptr_t(dst), s = uintptr_t(src);
  if ((d < s + n) && (s < d + n)) return g_last = cudaErrorInvalidValue;  // overlapping: undefined on a GPU
  std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
  return cudaMemcpyAsync(dst, src, n, k, nullptr);
}

extern "C" void* fn_emu_alloc(unsigned long long n, unsigned offset, const char* name);
extern "C" void fn_emu_free(void* p);
cudaError_t cudaMalloc(void** p, size_t n) {
  if (p == nullptr) return g_last = cudaErrorInvalidValue;
  *p = fn_emu_alloc(n, 0, "cudaMalloc");
  return *p ? cudaSuccess : (g_last = cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) {
  if (p) fn_emu_free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) { return cudaMalloc(p, n); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }

// assert() in device code: a device-side assert error instead of aborting the process.
extern "C" __attribute__((visibility("hidden"))) void __assert_fail(const char* expr, const char* file,
                                                                    unsigned int line, const char* fn) noexcept {
  if (g_thread != nullptr)
    fault(cudaErrorAssert, "assert(%s) failed at %s:%u in %s", expr, short_file(file).c_str(), line, fn);
  std::fprintf(stderr, "%s:%u: %s: Assertion `%s' failed.\n", file, line, fn, expr);
  std::abort();
}

// ------------------------------------------------------------------------- C entry points
extern "C" {

void* fn_emu_alloc(unsigned long long n, unsigned offset, const char* name) {
  offset %= 256;
  const size_t inner = (256 + size_t(n) + 256 + offset + kPage - 1) / kPage * kPage;
  const size_t len = inner + 2 * kPage;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  auto* map = static_cast<unsigned char*>(m);
  mprotect(map, kPage, PROT_NONE);
  mprotect(map + kPage + inner, kPage, PROT_NONE);
  Alloc a;
  a.map = map;
  a.map_len = len;
  a.lo = map + kPage;
  a.hi = a.lo + inner;
  // As late as possible (overruns reach the guard page soon) with p % 256 == offset.
  uintptr_t p = uintptr_t(a.hi) - size_t(n);
  p -= (p - offset) & 255u;
  a.p = reinterpret_cast<unsigned char*>(p);
  a.n = size_t(n);
  a.name = name ? name : "";
  a.readonly = false;
  std::memset(a.lo, kPoison, inner);
  asan_guard(a, true);
  g_allocs[p] = a;
  return a.p;
}

void fn_emu_free(void* p) {
  auto it = g_allocs.find(uintptr_t(p));
  if (it == g_allocs.end()) return;
  asan_guard(it->second, false);
  munmap(it->second.map, it->second.map_len);
  g_allocs.erase(it);
}

// Read-only inputs: a kernel write to them faults and is reported with the buffer's name.
int fn_emu_protect(void* p, int readonly) {
  auto it = g_allocs.find(uintptr_t(p));
  if (it == g_allocs.end()) return -1;
  it->second.readonly = readonly != 0;
  return mprotect(it->second.lo, size_t(it->second.hi - it->second.lo), readonly ? PROT_READ : PROT_READ | PROT_WRITE);
}

// Number of buffers whose guard bytes changed; a description in msg.
int fn_emu_check_guards(char* msg, unsigned long long cap) {
  int bad = 0;
  std::string s;
  for (auto& kv : g_allocs) {
    const Alloc& a = kv.second;
    asan_guard(a, false);
    long long first = -1, last = -1;
    for (const unsigned char* q = a.lo; q < a.p; ++q)
      if (*q != kPoison) { if (first < 0) first = q - a.p; last = q - a.p; }
    for (const unsigned char* q = a.p + a.n; q < a.hi; ++q)
      if (*q != kPoison) { if (first < 0) first = q - a.p; last = q - a.p; }
    asan_guard(a, true);
    if (first >= 0 || last >= 0) {
      ++bad;
      s += format("buffer '%s' (%zu bytes): guard bytes changed at offsets [%lld, %lld] relative to its start\n",
                  a.name.c_str(), a.n, first, last);
    }
  }
  if (msg && cap) {
    std::snprintf(msg, size_t(cap), "%s", s.c_str());
  }
  return bad;
}

// Refill every buffer's guard bytes (after a test that overran one on purpose).
void fn_emu_reset_guards() {
  for (auto& kv : g_allocs) {
    Alloc& a = kv.second;
    if (a.readonly) mprotect(a.lo, size_t(a.hi - a.lo), PROT_READ | PROT_WRITE);
    asan_guard(a, false);
    std::memset(a.lo, kPoison, size_t(a.p - a.lo));
    std::memset(a.p + a.n, kPoison, size_t(a.hi - (a.p + a.n)));
    asan_guard(a, true);
    if (a.readonly) mprotect(a.lo, size_t(a.hi - a.lo), PROT_READ);
  }
}

int fn_emu_set_config(const char* key, double v) {
  Config& c = g_config;
  const std::string k(key);
  if (k == "schedule") c.schedule = int(v);
  else if (k == "seed") c.seed = unsigned(v);
  else if (k == "resident_blocks") c.resident_blocks = int(v);
  else if (k == "approx_math") c.approx_math = int(v);
  else if (k == "poison_shared") c.poison_shared = int(v);
  else if (k == "allow_exit_before_barrier") c.allow_exit_before_barrier = int(v);
  else if (k == "strict_call_sites") c.strict_call_sites = int(v);
  else if (k == "strict_warp_sites") c.strict_warp_sites = int(v);
  else if (k == "greedy_warps") c.greedy_warps = int(v);
  else if (k == "require_launch_check") c.require_launch_check = int(v);
  else if (k == "timeout_s") c.timeout_s = v;
  else if (k == "stack_bytes") c.stack_bytes = size_t(v);
  else if (k == "dry_run") c.dry_run = int(v);
  else return -1;
  return 0;
}

long long fn_emu_stat(const char* key) {
  static const char* names[] = {"launches", "blocks", "threads", "switches", "barriers", "warp_ops"};
  for (int i = 0; i < 6; ++i)
    if (std::strcmp(key, names[i]) == 0) return g_stats[i];
  return -1;
}

void fn_emu_reset() { reset(); }
// The resources ptxas gave a kernel (its name as the launch log writes it), for occupancy queries.
void fn_emu_set_kernel_resources(const char* name, int regs, int static_smem) {
  g_kernel_resources[name] = {regs, static_smem};
}
int fn_emu_sticky_error() { return int(g_sticky); }
const char* fn_emu_error_message() { return g_fault.c_str(); }
const char* fn_emu_launch_log() { return g_launch_log.c_str(); }

// Float conversions, for the bit-exactness tests.
void fn_emu_f32_to_f16(const float* in, unsigned short* out, unsigned long long n, int rz) {
  for (unsigned long long i = 0; i < n; ++i) out[i] = rz ? f32_to_f16_rz(in[i]) : f32_to_f16_rn(in[i]);
}
void fn_emu_f16_to_f32(const unsigned short* in, float* out, unsigned long long n) {
  for (unsigned long long i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
}
void fn_emu_f32_to_bf16(const float* in, unsigned short* out, unsigned long long n, int rz) {
  for (unsigned long long i = 0; i < n; ++i) out[i] = rz ? f32_to_bf16_rz(in[i]) : f32_to_bf16_rn(in[i]);
}
void fn_emu_f64_to_f16(const double* in, unsigned short* out, unsigned long long n) {
  for (unsigned long long i = 0; i < n; ++i) out[i] = __half(in[i]).__x;
}
void fn_emu_f64_to_bf16(const double* in, unsigned short* out, unsigned long long n) {
  for (unsigned long long i = 0; i < n; ++i) out[i] = __nv_bfloat16(in[i]).__x;
}

int fn_emu_device_attribute(int attr) {
  int v = -1;
  if (cudaDeviceGetAttribute(&v, cudaDeviceAttr(attr), 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return v;
}

}  // extern "C"
