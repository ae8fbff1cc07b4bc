// The device side of nabla's CPU emulator of CUDA: what `kernels/*.cu` expect from the CUDA
// compiler, made of plain C++ so g++ compiles the unchanged kernel sources for the host.
//
// Model: a launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on one host thread, switched only where CUDA threads must meet — __syncthreads()
// and warp shuffles. So `__shared__` is a function-level `static` (one block lives at a time),
// atomics are plain read-modify-writes (nothing runs in between), and threadIdx is a global the
// scheduler sets before it resumes a fiber. It checks the logic of a kernel (indexing, tiling,
// barriers, reductions); it says nothing about speed, and nothing about races between blocks.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
// A kernel's dynamic shared memory as `type* name` (nabla.cuh: `extern __shared__` on a GPU).
#define NABLA_DYNAMIC_SHARED(type, name) type* name = (type*)emu::dynamic_shared()

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

// Set by the scheduler (driver.cpp) for the fiber that runs.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace emu {
// Block-wide barrier; every live thread of the block must reach it.
void block_barrier();
// Swaps `bytes` bytes of this lane's value through the warp: all live lanes of the warp call it,
// and `out` gets the value of lane `src_lane` (its own when that lane is out of range).
void warp_exchange(const void* value, void* out, int bytes, int src_lane);
// Every live lane of the warp passes `bytes` (at most kMaxGatherBytes) bytes; `all` gets lane
// 0's, then lane 1's, ... (warp-collective, like the exchange, for the tensor-core intrinsics).
constexpr int kMaxGatherBytes = 32;
void warp_gather(const void* value, int bytes, void* all);
int lane_id();
// The running block's dynamic shared memory (the launch's shared byte count), 16-byte aligned.
void* dynamic_shared();

// A launch's arguments copied by value, for a CUDA graph's kernel node that runs them later
// (graph.cpp): `pointers` has one entry per argument, into the copies, as cuLaunchKernel's array.
struct SavedArgs {
    virtual ~SavedArgs() = default;
    std::vector<void*> pointers;
};
template <typename... Args>
struct SavedArgsOf final : SavedArgs {
    std::tuple<std::remove_cv_t<std::remove_reference_t<Args>>...> values;
    template <std::size_t... I>
    SavedArgsOf(void** params, std::index_sequence<I...>)
        : values(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...) {
        pointers = {static_cast<void*>(&std::get<I>(values))...};
    }
};

// Registration of an `extern "C"` kernel under its name: the launch passes `void** params`, one
// pointer per argument, as cuLaunchKernel does; `run` unpacks them by the kernel's own types and
// `save` copies them for a graph node.
void register_kernel(const char* name, std::function<void(void**)> run,
                     std::function<SavedArgs*(void**)> save);
template <typename... Args, std::size_t... I>
void call_kernel(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}
template <typename... Args>
bool add_kernel(const char* name, void (*kernel)(Args...)) {
    register_kernel(
        name, [kernel](void** params) { call_kernel(kernel, params, std::index_sequence_for<Args...>{}); },
        [](void** params) -> SavedArgs* { return new SavedArgsOf<Args...>(params, std::index_sequence_for<Args...>{}); });
    return true;
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }

template <typename T>
inline T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = emu::lane_id();
    const int src = lane % width + (int)delta < width ? lane + (int)delta : lane;
    T out;
    emu::warp_exchange(&v, &out, (int)sizeof(T), src);
    return out;
}

// Lane `src_lane` of each `width`-lane segment broadcasts its value.
template <typename T>
inline T __shfl_sync(unsigned int, T v, int src_lane, int width = 32) {
    const int lane = emu::lane_id();
    const int src = lane / width * width + (src_lane % width + width) % width;
    T out;
    emu::warp_exchange(&v, &out, (int)sizeof(T), src);
    return out;
}

// Each lane reads the value of lane ^ mask (within its `width`-lane segment).
template <typename T>
inline T __shfl_xor_sync(unsigned int, T v, int mask, int width = 32) {
    const int lane = emu::lane_id();
    const int src = lane / width * width + ((lane % width) ^ mask) % width;
    T out;
    emu::warp_exchange(&v, &out, (int)sizeof(T), src);
    return out;
}

// Whether any lane of the warp passes a nonzero predicate (a butterfly of exchanges: every lane
// ends with the OR of all 32).
inline int __any_sync(unsigned int mask, int predicate) {
    int any = predicate != 0;
    for (int offset = 16; offset > 0; offset /= 2) any |= __shfl_xor_sync(mask, any, offset);
    return any;
}

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned int __float_as_uint(float f) { unsigned int i; std::memcpy(&i, &f, 4); return i; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

// Fibers never run between these reads and writes, so plain arithmetic is atomic here.
template <typename T> inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }

// nabla.cuh converts f16 with PTX `cvt`; here the host's _Float16 (IEEE binary16, round to
// nearest even) stands in for it.
#define NABLA_HOST_F16 1

// The tensor-core intrinsics of nabla.cuh, as the warp-wide operations they are: each lane
// gathers every lane's fragments (through the same exchange as the shuffles), rebuilds A and B
// by the PTX ISA's layout for mma.m16n8k16 (groupID = lane >> 2, threadID_in_group = lane % 4;
// A element i at row groupID + 8 ((i / 2) % 2), column 2 tid + (i & 1) + 8 (i / 4); B element i
// at row 2 tid + (i & 1) + 8 (i / 2), column groupID; C/D element i at row groupID + 8 (i / 2),
// column 2 tid + (i & 1)), and computes its own four elements of D in f32, depth in order.
#define NABLA_EMULATED_INTRINSICS 1
namespace emu {
inline float bf16_bits_to_float(unsigned short bits) {
    const unsigned int u = (unsigned int)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float f16_bits_to_float(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return (float)h;
}
template <float (*Widen)(unsigned short)>
inline void mma_m16n8k16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    float A[16][16], B[16][8];
    unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]}, all[32][6];
    warp_gather(mine, (int)sizeof mine, all);
    for (int src = 0; src < 32; ++src) {
        const unsigned* ra = all[src];
        const unsigned* rb = all[src] + 4;
        const int group = src >> 2, tig = src & 3;
        for (int i = 0; i < 8; ++i) {
            const unsigned short h = (unsigned short)(ra[i / 2] >> (16 * (i & 1)));
            A[group + 8 * ((i / 2) % 2)][2 * tig + (i & 1) + 8 * (i / 4)] = Widen(h);
        }
        for (int i = 0; i < 4; ++i) {
            const unsigned short h = (unsigned short)(rb[i / 2] >> (16 * (i & 1)));
            B[2 * tig + (i & 1) + 8 * (i / 2)][group] = Widen(h);
        }
    }
    const int lane = lane_id(), group = lane >> 2, tig = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = group + 8 * (i / 2), col = 2 * tig + (i & 1);
        float sum = c[i];
        for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
        out[i] = sum;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
}  // namespace emu

inline void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    emu::mma_m16n8k16<emu::bf16_bits_to_float>(d, a, b, c);
}
inline void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    emu::mma_m16n8k16<emu::f16_bits_to_float>(d, a, b, c);
}

// m16n8k8 with TF32 operands: A element at row groupID + 8 (i % 2), column tid + 4 (i / 2); B
// element i at row tid + 4 i, column groupID (the PTX ISA's layout for mma.m16n8k8 .tf32). As
// the tensor cores do, the product reads only an operand's TF32 bits (sign, exponent and the
// top 10 mantissa bits): f32 bits passed without rounding lose their low 13 bits, so a kernel
// that forgets f32_to_tf32 (or 3xTF32's small parts) fails here as it would on a GPU.
inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    float A[16][8], B[8][8];
    unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]}, all[32][6];
    for (unsigned& bits : mine) bits &= 0xffffe000u;
    emu::warp_gather(mine, (int)sizeof mine, all);
    for (int src = 0; src < 32; ++src) {
        const int group = src >> 2, tig = src & 3;
        for (int i = 0; i < 4; ++i) std::memcpy(&A[group + 8 * (i % 2)][tig + 4 * (i / 2)], &all[src][i], 4);
        for (int i = 0; i < 2; ++i) std::memcpy(&B[tig + 4 * i][group], &all[src][4 + i], 4);
    }
    const int lane = emu::lane_id(), group = lane >> 2, tig = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = group + 8 * (i / 2), col = 2 * tig + (i & 1);
        float sum = c[i];
        for (int k = 0; k < 8; ++k) sum += A[row][k] * B[k][col];
        out[i] = sum;
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// cvt.rna.tf32.f32: add half of the 13 dropped bits' weight to the magnitude and clear them
// (ties round away from zero); infinities and NaN are left alone.
inline unsigned f32_to_tf32(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}

// ldmatrix.x4 (and .trans): each lane gathers the 32 row addresses and reads its own register of
// each of the four 8 x 8 matrices by the layout in nabla.cuh. A row address that is not 16-byte
// aligned faults on a GPU; here it stops the test process with a message.
namespace emu {
inline void require_aligned16(const void* p, const char* what) {
    if ((std::uintptr_t)p % 16 != 0) {
        std::fprintf(stderr, "nabla CUDA emulator: %s at %p is not 16-byte aligned (a GPU faults)\n", what, p);
        std::abort();
    }
}
inline void ldmatrix(unsigned r[4], const void* row, bool trans) {
    require_aligned16(row, "an ldmatrix row address");
    const void* rows[32];
    warp_gather(&row, (int)sizeof row, rows);
    const int t = lane_id();
    for (int j = 0; j < 4; ++j) {
        unsigned short lo, hi;
        if (trans) {
            lo = ((const unsigned short*)rows[8 * j + 2 * (t % 4)])[t / 4];
            hi = ((const unsigned short*)rows[8 * j + 2 * (t % 4) + 1])[t / 4];
        } else {
            lo = ((const unsigned short*)rows[8 * j + t / 4])[2 * (t % 4)];
            hi = ((const unsigned short*)rows[8 * j + t / 4])[2 * (t % 4) + 1];
        }
        r[j] = (unsigned)lo | ((unsigned)hi << 16);
    }
}

// cp.async as the asynchronous copy it is: each thread's copies wait in its queue, tagged with
// the group they will belong to, and land in shared memory only when a cp_async_wait lets them
// (oldest first). A kernel that reads a tile before waiting for it, or that overwrites a stage
// still being copied, reads stale values here as it could on a GPU.
struct PendingCopy {
    void* shared;
    const void* global;
    bool valid;
    int group;
};
constexpr int kMaxCopyThreads = 1024;
inline std::vector<PendingCopy> pending_copies[kMaxCopyThreads];
inline int committed_groups[kMaxCopyThreads];
inline int thread_linear() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }
inline void land_copies_older_than(int group) {
    std::vector<PendingCopy>& queue = pending_copies[thread_linear()];
    std::size_t kept = 0;
    for (const PendingCopy& c : queue) {
        if (c.group < group) {
            if (c.valid) std::memcpy(c.shared, c.global, 16);
            else std::memset(c.shared, 0, 16);
        } else {
            queue[kept++] = c;
        }
    }
    queue.resize(kept);
}
}  // namespace emu

inline void ldmatrix_x4(unsigned r[4], const void* row) { emu::ldmatrix(r, row, false); }
inline void ldmatrix_x4_trans(unsigned r[4], const void* row) { emu::ldmatrix(r, row, true); }
inline void cp_async_16(void* shared, const void* global, bool valid) {
    emu::require_aligned16(shared, "a cp.async shared address");
    if (valid) emu::require_aligned16(global, "a cp.async global address");
    const int t = emu::thread_linear();
    emu::pending_copies[t].push_back(emu::PendingCopy{shared, global, valid, emu::committed_groups[t]});
}
inline void cp_async_commit() { ++emu::committed_groups[emu::thread_linear()]; }
// fresh: the value itself (on a GPU, only the compiler's view of it changes).
inline float fresh(float x) { return x; }
// ex2.approx.ftz.f32: 2^x with results below the smallest normal flushed to zero.
inline float fast_exp2(float x) {
    const float y = std::exp2(x);
    return y < std::numeric_limits<float>::min() ? 0.0f : y;
}
template <int N> inline void cp_async_wait() {
    emu::land_copies_older_than(emu::committed_groups[emu::thread_linear()] - N);
}
