// Fused optimizer steps: each kernel reads a parameter, its gradient and its state once and
// writes the new parameter and state in the same pass (in place).
//
// One thread per element in a grid-stride loop; memory bound (SGD with momentum moves 4 values
// per element, Adam 6). Arithmetic in double for f64 parameters, float otherwise.
#include "nabla.cuh"

template <typename T>
__device__ void sgd_step(T* p, const T* g, T* buf, i64 n, const SgdParams& s) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(i, n) {
        A grad = up(g[i]);
        const A param = up(p[i]);
        if (s.weight_decay != 0.0) grad += (A)s.weight_decay * param;
        if (s.momentum != 0.0) {
            const A b = s.first_step ? grad : (A)s.momentum * up(buf[i]) + (A)(1.0 - s.dampening) * grad;
            buf[i] = down<T>(b);
            grad = s.nesterov ? grad + (A)s.momentum * b : b;
        }
        p[i] = down<T>(param - (A)s.lr * grad);
    }
}

template <typename T>
__device__ void adam_step(T* p, const T* g, T* m, T* v, i64 n, const AdamParams& s) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(i, n) {
        A grad = up(g[i]);
        A param = up(p[i]);
        if (s.weight_decay != 0.0) {
            if (s.decoupled) param *= (A)(1.0 - s.lr * s.weight_decay);
            else grad += (A)s.weight_decay * param;
        }
        const A mi = (A)s.beta1 * up(m[i]) + (A)(1.0 - s.beta1) * grad;
        const A vi = (A)s.beta2 * up(v[i]) + (A)(1.0 - s.beta2) * grad * grad;
        m[i] = down<T>(mi);
        v[i] = down<T>(vi);
        const A denom = m_sqrt(vi / (A)s.bias_correction2) + (A)s.eps;
        p[i] = down<T>(param - (A)s.lr * (mi / (A)s.bias_correction1) / denom);
    }
}

#define OPTIM(T, tname) \
    extern "C" __global__ void sgd_step_##tname(T* p, const T* g, T* buf, i64 n, SgdParams s) { sgd_step<T>(p, g, buf, n, s); } \
    extern "C" __global__ void adam_step_##tname(T* p, const T* g, T* m, T* v, i64 n, AdamParams s) { \
        adam_step<T>(p, g, m, v, n, s); \
    }
OPTIM(float, f32) OPTIM(double, f64) OPTIM(f16, f16) OPTIM(bf16, bf16)
