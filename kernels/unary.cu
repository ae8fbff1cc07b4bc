// Elementwise unary ops: out[i] = f(in[strided i]).
//
// A grid-stride loop; the input may be any strided view, the output is contiguous. A dense input
// from a 16-byte aligned element goes eight elements a thread as Pack8 accesses (as the dense
// casts of copy.cu, which reached 2.5-3.4 TB/s on an H200), anything else one element a
// thread. Memory bound: one read and one write per element, so the goal is the card's DRAM
// bandwidth on contiguous inputs. Math runs in Acc<T> (float for f16/bf16).
#include "nabla.cuh"

struct Neg { template <typename A> __device__ A operator()(A x) const { return -x; } };
struct Abs { template <typename A> __device__ A operator()(A x) const { return m_abs(x); } };
struct Exp { template <typename A> __device__ A operator()(A x) const { return m_exp(x); } };
struct Log { template <typename A> __device__ A operator()(A x) const { return m_log(x); } };
struct Sqrt { template <typename A> __device__ A operator()(A x) const { return m_sqrt(x); } };
struct Tanh { template <typename A> __device__ A operator()(A x) const { return m_tanh(x); } };
struct Sigmoid {
    template <typename A> __device__ A operator()(A x) const { return A(1) / (A(1) + m_exp(-x)); }
};
// NaN stays NaN, as in PyTorch.
struct Relu { template <typename A> __device__ A operator()(A x) const { return x < A(0) ? A(0) : x; } };
// The exact GELU, 0.5 x (1 + erf(x / sqrt 2)), PyTorch's default.
struct Gelu {
    template <typename A> __device__ A operator()(A x) const {
        return A(0.5) * x * (A(1) + m_erf(x * A(0.70710678118654752440)));
    }
};

// sign(x) in {-1, 0, 1}; NaN stays NaN.
struct Sign {
    template <typename A> __device__ A operator()(A x) const { return x > A(0) ? A(1) : (x < A(0) ? A(-1) : x); }
};
// The Heaviside step 1[x > 0]: ReLU's derivative.
struct Step { template <typename A> __device__ A operator()(A x) const { return x > A(0) ? A(1) : A(0); } };
// d/dx GELU = Φ(x) + x φ(x).
struct GeluGrad {
    template <typename A> __device__ A operator()(A x) const {
        const A cdf = A(0.5) * (A(1) + m_erf(x * A(0.70710678118654752440)));
        const A pdf = m_exp(A(-0.5) * x * x) * A(0.39894228040143267794);
        return cdf + x * pdf;
    }
};

template <typename T, typename Op>
__device__ void unary(const T* in, T* out, i64 n, StridedLayout l) {
    Op op;
    if (packable(in, l) && aligned16(out)) {
        dense_map(out, n, [&](typename Acc<T>::type x) { return op(x); }, in + l.offset);
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = down<T>(op(up(in[strided_offset(l, i)]))); }
}

#define UNARY(name, Op, T, tname) \
    extern "C" __global__ void unary_##name##_##tname(const T* in, T* out, i64 n, StridedLayout l) { \
        unary<T, Op>(in, out, n, l); \
    }

#define UNARY_FLOAT(name, Op) \
    UNARY(name, Op, float, f32) UNARY(name, Op, double, f64) UNARY(name, Op, f16, f16) UNARY(name, Op, bf16, bf16)

UNARY_FLOAT(neg, Neg) UNARY(neg, Neg, i64, i64)
UNARY_FLOAT(abs, Abs) UNARY(abs, Abs, i64, i64)
UNARY_FLOAT(relu, Relu) UNARY(relu, Relu, i64, i64)
UNARY_FLOAT(exp, Exp)
UNARY_FLOAT(log, Log)
UNARY_FLOAT(sqrt, Sqrt)
UNARY_FLOAT(tanh, Tanh)
UNARY_FLOAT(sigmoid, Sigmoid)
UNARY_FLOAT(gelu, Gelu)
UNARY_FLOAT(sign, Sign) UNARY(sign, Sign, i64, i64)
UNARY_FLOAT(step, Step) UNARY(step, Step, i64, i64)
UNARY_FLOAT(gelu_grad, GeluGrad)

// ReLU's and GELU's input gradients in one pass, g · step(x) and g · GELU'(x), for the backward
// pass (instead of the derivative's kernel, a temporary and a multiply). Memory bound: two
// reads, one write.
template <typename T, typename Grad>
__device__ void activation_backward(const T* g, const T* x, T* out, i64 n, StridedLayout lg, StridedLayout lx) {
    Grad grad;
    if (packable(g, lg) && packable(x, lx) && aligned16(out)) {
        typedef typename Acc<T>::type A;
        dense_map(out, n, [&](A gv, A xv) { return gv * grad(xv); }, g + lg.offset, x + lx.offset);
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = down<T>(up(g[strided_offset(lg, i)]) * grad(up(x[strided_offset(lx, i)]))); }
}

#define ACTIVATION_BACKWARD(name, Grad, T, tname) \
    extern "C" __global__ void name##_backward_##tname(const T* g, const T* x, T* out, i64 n, StridedLayout lg, \
                                                       StridedLayout lx) { \
        activation_backward<T, Grad>(g, x, out, n, lg, lx); \
    }
#define ACTIVATION_BACKWARD_FLOAT(name, Grad) \
    ACTIVATION_BACKWARD(name, Grad, float, f32) ACTIVATION_BACKWARD(name, Grad, double, f64) \
    ACTIVATION_BACKWARD(name, Grad, f16, f16) ACTIVATION_BACKWARD(name, Grad, bf16, bf16)
ACTIVATION_BACKWARD_FLOAT(relu, Step)
ACTIVATION_BACKWARD_FLOAT(gelu, GeluGrad)
