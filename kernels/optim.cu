// Fused optimizer steps over a list of parameters: one launch updates up to NABLA_MAX_TENSORS
// parameters (a TensorList), reading each element's parameter, gradient and state once and
// writing the new parameter and state in the same pass (in place), as PyTorch's fused Adam.
//
// Block b finds its tensor t by scanning first_block (at most NABLA_MAX_TENSORS entries) and
// updates `chunk` consecutive elements of it, so a step of many small tensors is one launch
// and large tensors still spread over many blocks. Memory bound (SGD with momentum moves 4
// values per element, Adam 6). Arithmetic in double for f64 parameters, float otherwise.
#include "nabla.cuh"

// Calls update(t, i) for every element i of every tensor t of the list.
template <typename Update>
__device__ void for_each_element(const TensorList& l, Update update) {
    const i64 blocks = l.first_block[l.count];
    for (i64 b = blockIdx.x; b < blocks; b += gridDim.x) {
        int t = 0;
        while (b >= l.first_block[t + 1]) ++t;
        const i64 begin = (b - l.first_block[t]) * l.chunk;
        const i64 end = begin + l.chunk < l.numel[t] ? begin + l.chunk : l.numel[t];
        for (i64 i = begin + threadIdx.x; i < end; i += blockDim.x) update(t, i);
    }
}

template <typename T>
__device__ void sgd_step(const TensorList& l, const SgdParams& s) {
    typedef typename Acc<T>::type A;
    for_each_element(l, [&](int t, i64 i) {
        T* p = (T*)l.param[t];
        T* buf = (T*)l.state0[t];
        A grad = up(((const T*)l.grad[t])[i]);
        const A param = up(p[i]);
        if (s.weight_decay != 0.0) grad += (A)s.weight_decay * param;
        if (s.momentum != 0.0) {
            const A b = l.first_step[t] ? grad : (A)s.momentum * up(buf[i]) + (A)(1.0 - s.dampening) * grad;
            buf[i] = down<T>(b);
            grad = s.nesterov ? grad + (A)s.momentum * b : b;
        }
        p[i] = down<T>(param - (A)s.lr * grad);
    });
}

template <typename T>
__device__ void adam_step(const TensorList& l, const AdamParams& s) {
    typedef typename Acc<T>::type A;
    for_each_element(l, [&](int t, i64 i) {
        T* p = (T*)l.param[t];
        T* m = (T*)l.state0[t];
        T* v = (T*)l.state1[t];
        A grad = up(((const T*)l.grad[t])[i]);
        A param = up(p[i]);
        if (s.weight_decay != 0.0) {
            if (s.decoupled) param *= (A)(1.0 - s.lr * s.weight_decay);
            else grad += (A)s.weight_decay * param;
        }
        const A mi = (A)s.beta1 * up(m[i]) + (A)(1.0 - s.beta1) * grad;
        const A vi = (A)s.beta2 * up(v[i]) + (A)(1.0 - s.beta2) * grad * grad;
        m[i] = down<T>(mi);
        v[i] = down<T>(vi);
        const A denom = m_sqrt(vi / (A)l.bias_correction2[t]) + (A)s.eps;
        p[i] = down<T>(param - (A)s.lr * (mi / (A)l.bias_correction1[t]) / denom);
    });
}

#define OPTIM(T, tname) \
    extern "C" __global__ void sgd_step_##tname(const __grid_constant__ TensorList l, SgdParams s) { \
        sgd_step<T>(l, s); \
    } \
    extern "C" __global__ void adam_step_##tname(const __grid_constant__ TensorList l, AdamParams s) { \
        adam_step<T>(l, s); \
    }
OPTIM(float, f32) OPTIM(double, f64) OPTIM(f16, f16) OPTIM(bf16, bf16)
