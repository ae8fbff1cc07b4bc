// The scheduler of nabla's CPU emulator of CUDA: runs a launch's blocks one after another, the
// threads of a block as fibers on the calling host thread, switched at __syncthreads() and warp
// shuffles (see cuda_emu.h for the model, driver.cpp for the driver around it).
#include "emulator.h"

#include <sys/mman.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// NABLA_EMULATOR_ORDER=reverse runs blocks, and the threads of a block between barriers, last
// to first. A kernel whose result depends on that order has a race (a missing __syncthreads,
// two blocks writing one element), which running the tests in both orders exposes.
bool reverse_order() {
    static const bool reverse = [] {
        const char* order = getenv("NABLA_EMULATOR_ORDER");
        return order && std::strcmp(order, "reverse") == 0;
    }();
    return reverse;
}

// ---------------------------------------------------------------------------------------------
// Fibers: one per thread of the running block.

namespace {

constexpr size_t kStackBytes = 256 * 1024;

enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, Done };

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;  // saved stack pointer; the callee-saved registers sit on the stack
#else
    ucontext_t context;
#endif
    char* stack = nullptr;
    State state = State::Done;
};

struct Launch {
    EmulatedKernel* kernel = nullptr;
    void** params = nullptr;
    int threads = 0;
    int alive = 0;
    int at_block_barrier = 0;
    int warp_alive[kMaxThreads / 32] = {};
    int at_warp_barrier[kMaxThreads / 32] = {};
    unsigned char exchange[kMaxThreads / 32][32][8] = {};
    unsigned char gathered[kMaxThreads / 32][32][emu::kMaxGatherBytes] = {};
    // The block's dynamic shared memory, refilled with a pattern before each block (on a GPU
    // it starts undefined; a NaN-like pattern makes a read before a write show).
    std::vector<unsigned char> dynamic_shared;
    std::string failure;
};

std::mutex launch_mutex;  // one launch at a time: __shared__ statics and the globals are shared
Fiber fibers[kMaxThreads];
Launch launch;
int current = -1;

void fiber_entry();

// Switching fibers. On x86-64 a switch saves the callee-saved registers on the old stack and
// swaps stack pointers (no system call); elsewhere ucontext does it, with a sigprocmask call
// per switch, about ten times slower.
#if defined(__x86_64__)
extern "C" void nabla_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl nabla_emu_switch
    .hidden nabla_emu_switch
    .type nabla_emu_switch, @function
nabla_emu_switch:
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
    .size nabla_emu_switch, .-nabla_emu_switch
)");

void* scheduler_sp;

// A fresh stack whose first switch "returns" into fiber_entry with the alignment of a call:
// six zeroed register slots, then fiber_entry's address at a 16-byte boundary.
void prepare(Fiber& f) {
    void** top = (void**)(((uintptr_t)(f.stack + kStackBytes)) & ~(uintptr_t)15);
    top[-1] = nullptr;
    top[-2] = (void*)&fiber_entry;
    for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
    f.sp = &top[-8];
}
void resume(Fiber& f) { nabla_emu_switch(&scheduler_sp, f.sp); }
void suspend(Fiber& f) { nabla_emu_switch(&f.sp, scheduler_sp); }
#else
ucontext_t scheduler_context;

void prepare(Fiber& f) {
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
}
void resume(Fiber& f) { swapcontext(&scheduler_context, &f.context); }
void suspend(Fiber& f) { swapcontext(&f.context, &scheduler_context); }
#endif

void set_thread_index(int t) {
    current = t;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

void release(State waiting, int warp) {
    for (int t = 0; t < launch.threads; ++t) {
        if (fibers[t].state == waiting && (warp < 0 || t / 32 == warp)) fibers[t].state = State::Runnable;
    }
}

// Releases barriers that every live thread has now reached (after a thread exits).
void release_complete_barriers(int warp) {
    if (launch.at_block_barrier > 0 && launch.at_block_barrier == launch.alive) {
        launch.at_block_barrier = 0;
        release(State::AtBlockBarrier, -1);
    }
    if (launch.at_warp_barrier[warp] > 0 && launch.at_warp_barrier[warp] == launch.warp_alive[warp]) {
        launch.at_warp_barrier[warp] = 0;
        release(State::AtWarpBarrier, warp);
    }
}

void fiber_entry() {
    const int t = current;
    launch.kernel->run(launch.params);
    fibers[t].state = State::Done;
    launch.alive -= 1;
    launch.warp_alive[t / 32] -= 1;
    release_complete_barriers(t / 32);
    suspend(fibers[t]);  // never resumed: the scheduler skips finished fibers
    __builtin_unreachable();
}

void wait_at(State barrier) {
    const int t = current;
    fibers[t].state = barrier;
    suspend(fibers[t]);
}

// Runs one block; false (with launch.failure set) when its threads deadlock at a barrier.
bool run_block() {
    launch.alive = launch.threads;
    launch.at_block_barrier = 0;
    for (int w = 0; w < kMaxThreads / 32; ++w) {
        launch.warp_alive[w] = std::max(0, std::min(32, launch.threads - 32 * w));
        launch.at_warp_barrier[w] = 0;
    }
    for (int t = 0; t < launch.threads; ++t) {
        Fiber& f = fibers[t];
        if (!f.stack) {  // the lowest page stays unmapped, so a stack overflow faults
            const size_t page = (size_t)sysconf(_SC_PAGESIZE);
            void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (base == MAP_FAILED) {
                launch.failure = "cannot map a fiber stack";
                return false;
            }
            mprotect(base, page, PROT_NONE);
            f.stack = (char*)base + page;
        }
        prepare(f);
        f.state = State::Runnable;
    }
    const bool reverse = reverse_order();
    while (launch.alive > 0) {
        bool ran = false;
        for (int i = 0; i < launch.threads; ++i) {
            const int t = reverse ? launch.threads - 1 - i : i;
            if (fibers[t].state != State::Runnable) continue;
            ran = true;
            set_thread_index(t);
            resume(fibers[t]);
        }
        if (!ran) {
            char text[256];
            std::snprintf(text, sizeof text,
                          "block (%u,%u,%u): %d live threads wait at barriers that not all of them reach "
                          "(%d at __syncthreads)",
                          blockIdx.x, blockIdx.y, blockIdx.z, launch.alive, launch.at_block_barrier);
            launch.failure = text;
            return false;
        }
    }
    return true;
}

// A fault inside a launch (a read or write past a buffer's end) names the kernel.
void on_fault(int sig, siginfo_t* info, void*) {
    if (launch.kernel) {
        char text[512];
        const int n = std::snprintf(
            text, sizeof text,
            "nabla CUDA emulator: kernel `%s` (grid %u,%u,%u block %u,%u,%u) touched unmapped memory at %p "
            "from block (%u,%u,%u) thread (%u,%u,%u): an out-of-bounds access\n",
            launch.kernel->name.c_str(), gridDim.x, gridDim.y, gridDim.z, blockDim.x, blockDim.y, blockDim.z,
            info->si_addr, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
        if (n > 0) (void)!write(2, text, (size_t)std::min(n, (int)sizeof text - 1));
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void install_fault_handler() {
    static bool installed = false;
    if (installed) return;
    installed = true;
    static char alt_stack[64 * 1024];
    stack_t ss = {};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof alt_stack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace

namespace emu {
void block_barrier() {
    launch.at_block_barrier += 1;
    if (launch.at_block_barrier == launch.alive) {
        launch.at_block_barrier = 0;
        release(State::AtBlockBarrier, -1);
        return;
    }
    wait_at(State::AtBlockBarrier);
}

static void warp_barrier() {
    const int warp = current / 32;
    launch.at_warp_barrier[warp] += 1;
    if (launch.at_warp_barrier[warp] == launch.warp_alive[warp]) {
        launch.at_warp_barrier[warp] = 0;
        release(State::AtWarpBarrier, warp);
        return;
    }
    wait_at(State::AtWarpBarrier);
}

int lane_id() { return current % 32; }

void warp_gather(const void* value, int bytes, void* all) {
    if (bytes > kMaxGatherBytes) std::abort();
    const int warp = current / 32, lane = current % 32;
    std::memcpy(launch.gathered[warp][lane], value, (size_t)bytes);
    warp_barrier();
    for (int src = 0; src < 32; ++src) {
        std::memcpy((unsigned char*)all + src * bytes, launch.gathered[warp][src], (size_t)bytes);
    }
    warp_barrier();
}

void* dynamic_shared() {
    const uintptr_t at = (uintptr_t)launch.dynamic_shared.data();
    return (void*)((at + 15) & ~(uintptr_t)15);
}

void warp_exchange(const void* value, void* out, int bytes, int src_lane) {
    if (bytes > 8) std::abort();
    const int warp = current / 32, lane = current % 32;
    std::memcpy(launch.exchange[warp][lane], value, (size_t)bytes);
    warp_barrier();
    std::memcpy(out, launch.exchange[warp][src_lane], (size_t)bytes);
    warp_barrier();
}
}  // namespace emu

bool run_launch(EmulatedKernel* kernel, void** params, dim3 grid, dim3 block, unsigned shared_bytes,
                std::string* failure) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    install_fault_handler();
    launch.kernel = kernel;
    launch.params = params;
    launch.threads = (int)(block.x * block.y * block.z);
    launch.failure.clear();
    gridDim = grid;
    blockDim = block;
    bool ok = true;
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    for (unsigned long long i = 0; ok && i < blocks; ++i) {
        const unsigned long long b = reverse_order() ? blocks - 1 - i : i;
        blockIdx = uint3{(unsigned int)(b % grid.x), (unsigned int)(b / grid.x % grid.y),
                         (unsigned int)(b / ((unsigned long long)grid.x * grid.y))};
        launch.dynamic_shared.assign(shared_bytes + 16, 0xff);
        ok = run_block();
    }
    launch.kernel = nullptr;
    if (!ok) *failure = launch.failure;
    return ok;
}
