// Stream capture and CUDA graphs for nabla's CPU emulator of CUDA (the driver entry points that
// cudarc's `begin_capture`, `end_capture` and `CudaGraph` call, and the few nabla adds).
//
// Model: a graph is the list of what its stream queued while capturing (kernel launches with
// their arguments copied by value, memsets, device-to-device copies), in order; one stream
// makes every graph a chain, so a launch of the graph runs the list front to back, each kernel
// through the same scheduler as a direct launch. A node's handle is its address in the captured
// graph; an instantiation copies the list, so changing a kernel node's arguments in the
// instantiation (cuGraphExecKernelNodeSetParams) leaves the graph as captured.
//
// What a capture cannot hold fails it as on a GPU: a copy from or to host memory, a stream
// synchronisation, a capture on the legacy stream. The emulator is stricter than a driver in one
// respect: a stream-ordered allocation or free during capture (a graph memory node on a GPU)
// fails the capture too, since nabla's captures allocate from their own pool and never mean to
// make one.
#include "emulator.h"

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#define EXPORT extern "C" __attribute__((visibility("default")))

typedef struct Node* CUgraphNode;
typedef struct Graph* CUgraph;
typedef struct GraphExec* CUgraphExec;

struct Node {
    enum class Kind { Kernel, Memset, Copy } kind = Kind::Kernel;
    EmulatedKernel* kernel = nullptr;
    std::shared_ptr<emu::SavedArgs> args;
    dim3 grid{1, 1, 1}, block{1, 1, 1};
    unsigned shared_bytes = 0;
    CUdeviceptr dst = 0, src = 0;
    size_t bytes = 0;
    unsigned char value = 0;
};

struct Graph {
    std::vector<std::unique_ptr<Node>> nodes;
};

struct GraphExec {
    std::vector<Node> nodes;
    std::map<const Node*, size_t> index;  // captured node handle -> position in `nodes`
};

namespace {
struct Capture {
    Graph* graph = nullptr;
    bool invalid = false;
    unsigned long long id = 0;
    CUgraphNode last = nullptr;  // the node the next captured work depends on
};
struct Stream {
    std::unique_ptr<Capture> capture;
};

std::mutex streams_mutex;
unsigned long long next_capture_id = 1;

Stream* stream_of(CUstream stream) { return static_cast<Stream*>(stream); }

Capture* capture_of(CUstream stream) {
    Stream* s = stream_of(stream);
    return s && s->capture ? s->capture.get() : nullptr;
}

void append(CUstream stream, Node node) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    Capture* capture = capture_of(stream);
    if (!capture || capture->invalid) return;
    capture->graph->nodes.push_back(std::make_unique<Node>(std::move(node)));
    capture->last = capture->graph->nodes.back().get();
}
}  // namespace

namespace graph {
CUstream new_stream() { return new Stream(); }

void destroy_stream(CUstream stream) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    Stream* s = stream_of(stream);
    if (s && s->capture) delete s->capture->graph;
    delete s;
}

bool capturing(CUstream stream) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    return capture_of(stream) != nullptr;
}

void record_launch(CUstream stream, EmulatedKernel* kernel, void** params, dim3 grid, dim3 block,
                   unsigned shared_bytes) {
    Node node;
    node.kind = Node::Kind::Kernel;
    node.kernel = kernel;
    node.args.reset(kernel->save(params));
    node.grid = grid;
    node.block = block;
    node.shared_bytes = shared_bytes;
    append(stream, std::move(node));
}

void record_memset(CUstream stream, CUdeviceptr dst, unsigned char value, size_t bytes) {
    Node node;
    node.kind = Node::Kind::Memset;
    node.dst = dst;
    node.value = value;
    node.bytes = bytes;
    append(stream, std::move(node));
}

void record_copy(CUstream stream, CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    Node node;
    node.kind = Node::Kind::Copy;
    node.dst = dst;
    node.src = src;
    node.bytes = bytes;
    append(stream, std::move(node));
}

CUresult refuse(CUstream stream, const char* what) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    if (Capture* capture = capture_of(stream)) {
        capture->invalid = true;
        std::fprintf(stderr, "nabla CUDA emulator: %s during stream capture invalidates the capture\n", what);
    }
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}
}  // namespace graph

// ---------------------------------------------------------------------------------------------
// Driver entry points.

enum { CU_STREAM_CAPTURE_STATUS_NONE = 0, CU_STREAM_CAPTURE_STATUS_ACTIVE = 1, CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2 };

// CUDA_KERNEL_NODE_PARAMS_v2, as the driver's header lays it out.
struct KernelNodeParams {
    CUfunction func;
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    void** kernelParams;
    void** extra;
    void* kern;
    CUcontext ctx;
};

EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, int /*mode*/) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    Stream* s = stream_of(stream);
    if (!s) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;  // the legacy stream cannot capture
    if (s->capture) return CUDA_ERROR_ILLEGAL_STATE;
    s->capture = std::make_unique<Capture>();
    s->capture->graph = new Graph();
    s->capture->id = next_capture_id++;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamEndCapture(CUstream stream, CUgraph* graph) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    Stream* s = stream_of(stream);
    if (!s || !s->capture) return CUDA_ERROR_ILLEGAL_STATE;
    std::unique_ptr<Capture> capture = std::move(s->capture);
    if (capture->invalid) {
        delete capture->graph;
        *graph = nullptr;
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = capture->graph;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing(CUstream stream, int* status) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    const Capture* capture = capture_of(stream);
    *status = !capture ? CU_STREAM_CAPTURE_STATUS_NONE
                       : capture->invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

// The capturing stream's status, capture id, graph and the nodes its next work will depend on:
// on one stream, the last node captured (none before the first).
EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream stream, int* status, unsigned long long* id, CUgraph* graph,
                                          const CUgraphNode** dependencies, const void** edge_data,
                                          size_t* count) {
    std::lock_guard<std::mutex> lock(streams_mutex);
    Capture* capture = capture_of(stream);
    if (status)
        *status = !capture ? CU_STREAM_CAPTURE_STATUS_NONE
                           : capture->invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (!capture) return CUDA_SUCCESS;
    if (id) *id = capture->id;
    if (graph) *graph = capture->graph;
    if (dependencies) *dependencies = &capture->last;
    if (edge_data) *edge_data = nullptr;
    if (count) *count = capture->last ? 1 : 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long /*flags*/) {
    if (!graph || !exec) return CUDA_ERROR_INVALID_VALUE;
    auto* instance = new GraphExec();
    for (const auto& node : graph->nodes) {
        instance->index[node.get()] = instance->nodes.size();
        instance->nodes.push_back(*node);
    }
    *exec = instance;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphUpload(CUgraphExec exec, CUstream) { return exec ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    if (graph::capturing(stream)) return graph::refuse(stream, "cuGraphLaunch");
    for (Node& node : exec->nodes) {
        switch (node.kind) {
            case Node::Kind::Kernel: {
                std::string failure;
                if (!run_launch(node.kernel, node.args->pointers.data(), node.grid, node.block, node.shared_bytes,
                                &failure)) {
                    std::fprintf(stderr, "nabla CUDA emulator: kernel `%s` of a graph failed: %s\n",
                                 node.kernel->name.c_str(), failure.c_str());
                    return CUDA_ERROR_LAUNCH_FAILED;
                }
                break;
            }
            case Node::Kind::Memset: std::memset((void*)node.dst, node.value, node.bytes); break;
            case Node::Kind::Copy: std::memmove((void*)node.dst, (const void*)node.src, node.bytes); break;
        }
    }
    return CUDA_SUCCESS;
}

// New arguments (and grid) for one kernel node of an instantiation; the kernel must stay the same.
EXPORT CUresult cuGraphExecKernelNodeSetParams_v2(CUgraphExec exec, CUgraphNode node, const KernelNodeParams* params) {
    if (!exec || !params || !params->kernelParams || params->extra) return CUDA_ERROR_INVALID_VALUE;
    auto found = exec->index.find(node);
    if (found == exec->index.end()) return CUDA_ERROR_INVALID_VALUE;
    Node& target = exec->nodes[found->second];
    if (target.kind != Node::Kind::Kernel || target.kernel != params->func) return CUDA_ERROR_INVALID_VALUE;
    target.args.reset(target.kernel->save(params->kernelParams));
    target.grid = dim3{params->gridDimX, params->gridDimY, params->gridDimZ};
    target.block = dim3{params->blockDimX, params->blockDimY, params->blockDimZ};
    target.shared_bytes = params->sharedMemBytes;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
    delete exec;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph graph) {
    delete graph;
    return CUDA_SUCCESS;
}
