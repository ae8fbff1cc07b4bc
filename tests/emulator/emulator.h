// Shared by the emulator's driver (driver.cpp) and scheduler (scheduler.cpp).
#pragma once
#include "cuda_emu.h"

#include <functional>
#include <string>

// Shared memory a block may use: without opting in, and at most with it (an H100's figures).
constexpr int kDefaultDynamicShared = 48 * 1024;
constexpr int kMaxOptInShared = 227 * 1024;

// A registered kernel: its name and the call that unpacks cuLaunchKernel's parameter array.
struct EmulatedKernel {
    std::string name;
    std::function<void(void**)> run;
    std::function<emu::SavedArgs*(void**)> save;
    // The most dynamic shared memory a launch may ask for: 48 KiB until the host raises it
    // with cuFuncSetAttribute (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), as on a GPU.
    int max_dynamic_shared = kDefaultDynamicShared;
};

// The most threads a block may have.
constexpr int kMaxThreads = 1024;

// Whether NABLA_EMULATOR_ORDER=reverse asks for blocks and threads last to first.
bool reverse_order();

// Runs every block of a launch with `shared_bytes` of dynamic shared memory a block; false, with
// the reason in `failure`, when a block's threads deadlock at a barrier. One launch at a time,
// whatever the calling thread.
bool run_launch(EmulatedKernel* kernel, void** params, dim3 grid, dim3 block, unsigned shared_bytes,
                std::string* failure);

// The driver API's handle types and the error codes the emulator returns.
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
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
};

// Stream capture (graph.cpp). While a stream captures, the work queued on it is recorded as
// graph nodes instead of run; what a capture cannot hold invalidates it.
namespace graph {
// A new stream (cuStreamCreate); the legacy stream is nullptr and cannot capture.
CUstream new_stream();
void destroy_stream(CUstream stream);
// Whether `stream` is capturing.
bool capturing(CUstream stream);
// Records a launch, a memset or a device-to-device copy into the stream's capture.
void record_launch(CUstream stream, EmulatedKernel* kernel, void** params, dim3 grid, dim3 block,
                   unsigned shared_bytes);
void record_memset(CUstream stream, CUdeviceptr dst, unsigned char value, size_t bytes);
void record_copy(CUstream stream, CUdeviceptr dst, CUdeviceptr src, size_t bytes);
// Invalidates the stream's capture because of `what`, which a capture cannot hold (a host copy,
// a synchronisation, a stream-ordered allocation), says so on stderr, and returns the error a
// driver returns for it.
CUresult refuse(CUstream stream, const char* what);
}  // namespace graph
