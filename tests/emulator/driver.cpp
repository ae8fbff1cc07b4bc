// The host side of nabla's CPU emulator of CUDA: a stand-in for libcuda with the driver entry
// points cudarc calls, over host memory, plus the fiber scheduler that runs a launch.
//
// The test harness (tests/all/common/emulator.rs) compiles this file and every kernel module
// into one shared library whose soname is `libcuda.so`, and loads it before cudarc looks for a
// driver; cudarc's dlopen("libcuda.so") then finds it. Only for machines without a GPU.
//
// What it checks beyond the kernels' arithmetic:
// - device memory is filled with 0xff bytes (NaN for floats) when allocated, so a kernel that
//   reads what nobody wrote shows up as NaN in the comparison with the CPU reference;
// - each buffer ends at an unmapped page (starts after one, in reverse order), so a read or
//   write past its end (before its start) stops the process with the kernel's name instead of
//   passing silently;
// - a barrier that not every live thread reaches (divergent __syncthreads or shuffle) fails the
//   launch with CUDA_ERROR_LAUNCH_FAILED and a message, where a GPU would hang or misbehave;
// - NABLA_EMULATOR_ORDER=reverse schedules blocks and threads last to first, so a result that
//   depends on the order (a race) differs between two test runs.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUmemoryPool;
typedef struct EmulatedKernel* CUfunction;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
};

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// ---------------------------------------------------------------------------------------------
// Kernel registry: every generated kernel module registers its `extern "C"` entry points.

struct EmulatedKernel {
    std::string name;
    std::function<void(void**)> run;
};

static std::map<std::string, EmulatedKernel*>& registry() {
    static std::map<std::string, EmulatedKernel*> kernels;
    return kernels;
}

namespace emu {
void register_kernel(const char* name, std::function<void(void**)> run) {
    registry()[name] = new EmulatedKernel{name, std::move(run)};
}
}  // namespace emu

// ---------------------------------------------------------------------------------------------
// Fibers: one per thread of the running block.

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;

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

void warp_exchange(const void* value, void* out, int bytes, int src_lane) {
    if (bytes > 8) std::abort();
    const int warp = current / 32, lane = current % 32;
    std::memcpy(launch.exchange[warp][lane], value, (size_t)bytes);
    warp_barrier();
    std::memcpy(out, launch.exchange[warp][src_lane], (size_t)bytes);
    warp_barrier();
}
}  // namespace emu

// ---------------------------------------------------------------------------------------------
// Memory: each allocation ends at a PROT_NONE page.

namespace {
struct Mapping {
    void* base;
    size_t bytes;
};
std::mutex memory_mutex;
std::map<CUdeviceptr, Mapping> allocations;
size_t page_size() { return (size_t)sysconf(_SC_PAGESIZE); }

// Each allocation touches an unmapped page: after its end, or (in reverse order, so that CI's
// second run checks the other side) before its start.
CUresult allocate(CUdeviceptr* out, size_t bytes) {
    const size_t page = page_size();
    const size_t rounded = std::max<size_t>(16, (bytes + 15) / 16 * 16);
    const size_t data_pages = (rounded + page - 1) / page;
    const size_t total = (data_pages + 1) * page;
    void* base = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* data;
    if (reverse_order()) {
        mprotect(base, page, PROT_NONE);
        data = (char*)base + page;
    } else {
        char* guard = (char*)base + data_pages * page;
        mprotect(guard, page, PROT_NONE);
        data = guard - rounded;
    }
    std::memset(data, 0xff, rounded);
    std::lock_guard<std::mutex> lock(memory_mutex);
    allocations[(CUdeviceptr)data] = Mapping{base, total};
    *out = (CUdeviceptr)data;
    return CUDA_SUCCESS;
}

CUresult release_memory(CUdeviceptr ptr) {
    std::lock_guard<std::mutex> lock(memory_mutex);
    auto it = allocations.find(ptr);
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    munmap(it->second.base, it->second.bytes);
    allocations.erase(it);
    return CUDA_SUCCESS;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Driver entry points (the subset cudarc and nabla call).

static int context_token, module_token, pool_token, stream_token;

EXPORT CUresult cuInit(unsigned int) { return CUDA_SUCCESS; }
EXPORT CUresult cuDriverGetVersion(int* version) {
    *version = 13000;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetCount(int* count) {
    *count = 1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, (size_t)len, "nabla CPU emulator of CUDA (no GPU)");
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = (size_t)8 << 30;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *value = 1024; break;                       // max threads per block
        case 2: case 3: *value = 1024; break;               // max block dim x, y
        case 4: *value = 64; break;                         // max block dim z
        case 5: *value = 2147483647; break;                 // max grid dim x
        case 6: case 7: *value = 65535; break;              // max grid dim y, z
        case 8: *value = 48 * 1024; break;                  // shared memory per block
        case 10: *value = 32; break;                        // warp size
        case 16: *value = 132; break;                       // multiprocessors
        case 75: *value = 9; break;                         // compute capability major
        case 76: *value = 0; break;                         // compute capability minor
        case 97: *value = 227 * 1024; break;                // opt-in shared memory per block
        case 115: *value = 1; break;                        // memory pools supported
        default: *value = 0;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
    *ctx = &context_token;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetDevice(CUdevice* device) {
    *device = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSynchronize() { return CUDA_SUCCESS; }
EXPORT CUresult cuStreamCreate(CUstream* stream, unsigned int) {
    *stream = &stream_token;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamDestroy_v2(CUstream) { return CUDA_SUCCESS; }
EXPORT CUresult cuStreamSynchronize(CUstream) { return CUDA_SUCCESS; }
EXPORT CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) { return CUDA_SUCCESS; }
EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
    *pool = &pool_token;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool, int, void*) { return CUDA_SUCCESS; }
EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *free_bytes = (size_t)8 << 30;
    *total = (size_t)8 << 30;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, CUstream) { return allocate(ptr, bytes); }
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) { return allocate(ptr, bytes); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr ptr, CUstream) { return release_memory(ptr); }
EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) { return release_memory(ptr); }
EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream) {
    std::memset((void*)dst, value, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    std::memset((void*)dst, value, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream) {
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream) {
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) {
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleLoadData(CUmodule* module, const void*) {
    *module = &module_token;  // every registered kernel is reachable from every module
    return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleUnload(CUmodule) { return CUDA_SUCCESS; }
EXPORT CUresult cuModuleGetFunction(CUfunction* function, CUmodule, const char* name) {
    auto it = registry().find(name);
    if (it == registry().end()) return CUDA_ERROR_NOT_FOUND;
    *function = it->second;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncGetAttribute(int* value, int, CUfunction) {
    *value = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncSetAttribute(CUfunction, int, int) { return CUDA_SUCCESS; }

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream, void** params,
                               void** extra) {
    if (!f || extra || !params) return CUDA_ERROR_INVALID_VALUE;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > kMaxThreads || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 ||
        shared_bytes > 48 * 1024)
        return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(launch_mutex);
    install_fault_handler();
    launch.kernel = f;
    launch.params = params;
    launch.threads = (int)threads;
    launch.failure.clear();
    gridDim = dim3{gx, gy, gz};
    blockDim = dim3{bx, by, bz};
    bool ok = true;
    const unsigned long long blocks = (unsigned long long)gx * gy * gz;
    for (unsigned long long i = 0; ok && i < blocks; ++i) {
        const unsigned long long b = reverse_order() ? blocks - 1 - i : i;
        blockIdx = uint3{(unsigned int)(b % gx), (unsigned int)(b / gx % gy), (unsigned int)(b / ((unsigned long long)gx * gy))};
        ok = run_block();
    }
    launch.kernel = nullptr;
    if (!ok) {
        std::fprintf(stderr, "nabla CUDA emulator: kernel `%s` failed: %s\n", f->name.c_str(), launch.failure.c_str());
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    return CUDA_SUCCESS;
}

// Events time on the host clock; the emulator runs synchronously.
struct Event {
    std::chrono::steady_clock::time_point at;
};
EXPORT CUresult cuEventCreate(CUevent* event, unsigned int) {
    *event = new Event{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(CUevent event) {
    delete (Event*)event;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(CUevent event, CUstream) {
    ((Event*)event)->at = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventSynchronize(CUevent) { return CUDA_SUCCESS; }
EXPORT CUresult cuEventQuery(CUevent) { return CUDA_SUCCESS; }
EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    *ms = std::chrono::duration<float, std::milli>(((Event*)end)->at - ((Event*)start)->at).count();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) { return cuEventElapsedTime_v2(ms, start, end); }

// The errors this driver returns: code, name, description.
struct ErrorText {
    CUresult code;
    const char* name;
    const char* text;
};
static const ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure (emulator: see stderr)"},
};
static const ErrorText& error_text(CUresult code) {
    static const ErrorText unknown = {-1, "CUDA_ERROR_UNKNOWN", "unknown error"};
    for (const ErrorText& e : kErrors)
        if (e.code == code) return e;
    return unknown;
}
EXPORT CUresult cuGetErrorString(CUresult error, const char** text) {
    *text = error_text(error).text;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult error, const char** text) {
    *text = error_text(error).name;
    return CUDA_SUCCESS;
}
