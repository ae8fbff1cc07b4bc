// The host side of nabla's CPU emulator of CUDA: a stand-in for libcuda with the driver entry
// points cudarc calls, over host memory; scheduler.cpp runs the launches.
//
// The test harness (tests/all/common/emulator.rs) compiles these files and every kernel module
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
#include "emulator.h"

#include <sys/mman.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

// ---------------------------------------------------------------------------------------------
// Kernel registry: every generated kernel module registers its `extern "C"` entry points.

static std::map<std::string, EmulatedKernel*>& registry() {
    static std::map<std::string, EmulatedKernel*> kernels;
    return kernels;
}

namespace emu {
void register_kernel(const char* name, std::function<void(void**)> run, std::function<SavedArgs*(void**)> save) {
    registry()[name] = new EmulatedKernel{name, std::move(run), std::move(save)};
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

static int context_token, module_token, pool_token;

// The CUDA version this driver claims: 13.0, or NABLA_EMULATOR_DRIVER_VERSION (12040 for a 12.4
// driver), so tests can see how the library treats images too new for an older driver.
static int driver_version() {
    const char* text = std::getenv("NABLA_EMULATOR_DRIVER_VERSION");
    int version = text ? std::atoi(text) : 0;
    return version >= 9000 ? version : 13000;
}

// The newest PTX ISA a driver of CUDA `version` can JIT (from the PTX ISA's release notes).
static int newest_ptx_isa(int version) {
    static const int table[][2] = {{12000, 80}, {12010, 81}, {12020, 82}, {12030, 83}, {12040, 84}, {12050, 85},
                                   {12060, 85}, {12080, 87}, {12090, 88}, {13000, 90}};
    int isa = 78;  // CUDA 11.8
    for (const auto& row : table)
        if (version >= row[0]) isa = row[1];
    return isa;
}

EXPORT CUresult cuInit(unsigned int) { return CUDA_SUCCESS; }
EXPORT CUresult cuDriverGetVersion(int* version) {
    *version = driver_version();
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
    *stream = graph::new_stream();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
    graph::destroy_stream(stream);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(CUstream stream) {
    return graph::capturing(stream) ? graph::refuse(stream, "cuStreamSynchronize") : CUDA_SUCCESS;
}
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

// A capture records memsets and device copies; a stream-ordered allocation or free would be a
// graph memory node, which nabla never makes (its graphs allocate from their own pool), and a
// copy to or from host memory cannot be captured at all: each of those invalidates the capture.
EXPORT CUresult cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, CUstream stream) {
    if (graph::capturing(stream)) return graph::refuse(stream, "cuMemAllocAsync");
    return allocate(ptr, bytes);
}
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) { return allocate(ptr, bytes); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr ptr, CUstream stream) {
    if (graph::capturing(stream)) return graph::refuse(stream, "cuMemFreeAsync");
    return release_memory(ptr);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr ptr) { return release_memory(ptr); }
EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream stream) {
    if (graph::capturing(stream)) {
        graph::record_memset(stream, dst, value, n);
        return CUDA_SUCCESS;
    }
    std::memset((void*)dst, value, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n) {
    std::memset((void*)dst, value, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream stream) {
    if (graph::capturing(stream)) return graph::refuse(stream, "cuMemcpyHtoDAsync");
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy((void*)dst, src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream stream) {
    if (graph::capturing(stream)) return graph::refuse(stream, "cuMemcpyDtoHAsync");
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream stream) {
    if (graph::capturing(stream)) {
        graph::record_copy(stream, dst, src, n);
        return CUDA_SUCCESS;
    }
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove((void*)dst, (const void*)src, n);
    return CUDA_SUCCESS;
}

// Every registered kernel is reachable from every module, so any image loads, except PTX whose
// `.version` is newer than this driver's JIT knows: that one is refused as a real driver refuses
// it (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    const char* text = (const char*)image;
    const char* version = std::strstr(text, "\n.version ");
    const bool is_ptx = std::strncmp(text, "//", 2) == 0 && version != nullptr;
    if (is_ptx) {
        int major = 0, minor = 0;
        if (std::sscanf(version, "\n.version %d.%d", &major, &minor) != 2) return CUDA_ERROR_INVALID_PTX;
        if (major * 10 + minor > newest_ptx_isa(driver_version())) return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    *module = &module_token;
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
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (8) is kept and checked at launch; others are
// accepted and ignored.
EXPORT CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    if (!f) return CUDA_ERROR_INVALID_VALUE;
    if (attribute == 8) {
        if (value < 0 || value > kMaxOptInShared) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_shared = value;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream stream, void** params,
                               void** extra) {
    if (!f || extra || !params) return CUDA_ERROR_INVALID_VALUE;
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > kMaxThreads || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535 ||
        shared_bytes > (unsigned)f->max_dynamic_shared)
        return CUDA_ERROR_INVALID_VALUE;
    if (graph::capturing(stream)) {
        graph::record_launch(stream, f, params, dim3{gx, gy, gz}, dim3{bx, by, bz}, shared_bytes);
        return CUDA_SUCCESS;
    }
    std::string failure;
    if (!run_launch(f, params, dim3{gx, gy, gz}, dim3{bx, by, bz}, shared_bytes, &failure)) {
        std::fprintf(stderr, "nabla CUDA emulator: kernel `%s` failed: %s\n", f->name.c_str(), failure.c_str());
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
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain."},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the operation is not permitted in this state"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure (emulator: see stderr)"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
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
