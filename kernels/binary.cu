// Elementwise binary ops with NumPy broadcasting, their scalar forms, and `where`.
//
// The host broadcasts both operands to the output shape (stride 0 along broadcast dims), so a
// kernel only maps output element i to each operand through its StridedLayout, in a grid-stride
// loop; the output is contiguous. Dense operands from 16-byte aligned elements go eight
// elements a thread as Pack8 accesses (see unary.cu). Memory bound (two reads, one write).
// Comparisons write 1 or 0 in the operands' dtype.
#include "nabla.cuh"

struct Add { template <typename A> __device__ A operator()(A a, A b) const { return a + b; } };
struct Sub { template <typename A> __device__ A operator()(A a, A b) const { return a - b; } };
struct Mul { template <typename A> __device__ A operator()(A a, A b) const { return a * b; } };
struct Div {
    __device__ float operator()(float a, float b) const { return a / b; }
    __device__ double operator()(double a, double b) const { return a / b; }
    // Integer division truncates; division by zero gives 0 (the CPU reference agrees).
    __device__ i64 operator()(i64 a, i64 b) const { return b == 0 ? 0 : a / b; }
};
struct Pow { template <typename A> __device__ A operator()(A a, A b) const { return m_pow(a, b); } };
// NaN-propagating, as torch.maximum / torch.minimum.
struct Maximum {
    template <typename A> __device__ A operator()(A a, A b) const { return (is_nan(a) || a > b) ? a : b; }
};
struct Minimum {
    template <typename A> __device__ A operator()(A a, A b) const { return (is_nan(a) || a < b) ? a : b; }
};
struct Eq { template <typename A> __device__ A operator()(A a, A b) const { return a == b ? A(1) : A(0); } };
struct Ne { template <typename A> __device__ A operator()(A a, A b) const { return a != b ? A(1) : A(0); } };
struct Lt { template <typename A> __device__ A operator()(A a, A b) const { return a < b ? A(1) : A(0); } };
struct Le { template <typename A> __device__ A operator()(A a, A b) const { return a <= b ? A(1) : A(0); } };
struct Gt { template <typename A> __device__ A operator()(A a, A b) const { return a > b ? A(1) : A(0); } };
struct Ge { template <typename A> __device__ A operator()(A a, A b) const { return a >= b ? A(1) : A(0); } };

template <typename T, typename Op>
__device__ void binary(const T* a, const T* b, T* out, i64 n, const StridedLayout& la, const StridedLayout& lb) {
    Op op;
    if (packable(a, la) && packable(b, lb) && aligned16(out)) {
        typedef typename Acc<T>::type A;
        dense_map(out, n, [&](A x, A y) { return op(x, y); }, a + la.offset, b + lb.offset);
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = down<T>(op(up(a[strided_offset(la, i)]), up(b[strided_offset(lb, i)]))); }
}

// The scalar arrives as a double and is rounded once to the op's accumulation type.
template <typename T, typename Op>
__device__ void binary_scalar(const T* a, T* out, i64 n, const StridedLayout& la, double scalar) {
    Op op;
    typedef typename Acc<T>::type A;
    const A s = (A)scalar;
    if (packable(a, la) && aligned16(out)) {
        dense_map(out, n, [&](A x) { return op(x, s); }, a + la.offset);
        return;
    }
    GRID_STRIDE_LOOP(i, n) { out[i] = down<T>(op(up(a[strided_offset(la, i)]), s)); }
}

#define BINARY(name, Op, T, tname) \
    extern "C" __global__ void binary_##name##_##tname(const T* a, const T* b, T* out, i64 n, \
                                                      StridedLayout la, StridedLayout lb) { \
        binary<T, Op>(a, b, out, n, la, lb); \
    } \
    extern "C" __global__ void scalar_##name##_##tname(const T* a, T* out, i64 n, StridedLayout la, \
                                                      double scalar) { \
        binary_scalar<T, Op>(a, out, n, la, scalar); \
    }

#define BINARY_FLOAT(name, Op) \
    BINARY(name, Op, float, f32) BINARY(name, Op, double, f64) BINARY(name, Op, f16, f16) BINARY(name, Op, bf16, bf16)
#define BINARY_ALL(name, Op) BINARY_FLOAT(name, Op) BINARY(name, Op, i64, i64)

BINARY_ALL(add, Add)
BINARY_ALL(sub, Sub)
BINARY_ALL(mul, Mul)
BINARY_ALL(div, Div)
BINARY_FLOAT(pow, Pow)
BINARY_ALL(maximum, Maximum)
BINARY_ALL(minimum, Minimum)
BINARY_ALL(eq, Eq)
BINARY_ALL(ne, Ne)
BINARY_ALL(lt, Lt)
BINARY_ALL(le, Le)
BINARY_ALL(gt, Gt)
BINARY_ALL(ge, Ge)

// out[i] = cond[i] != 0 ? a[i] : b[i], with all three broadcast to the output shape.
template <typename T>
__device__ void where_select(const T* cond, const T* a, const T* b, T* out, i64 n, const StridedLayout& lc,
                             const StridedLayout& la, const StridedLayout& lb) {
    typedef typename Acc<T>::type A;
    GRID_STRIDE_LOOP(i, n) {
        const bool take_a = up(cond[strided_offset(lc, i)]) != A(0);
        out[i] = take_a ? a[strided_offset(la, i)] : b[strided_offset(lb, i)];
    }
}

#define WHERE(T, tname) \
    extern "C" __global__ void where_##tname(const T* cond, const T* a, const T* b, T* out, i64 n, \
                                             StridedLayout lc, StridedLayout la, StridedLayout lb) { \
        where_select<T>(cond, a, b, out, n, lc, la, lb); \
    }
WHERE(float, f32) WHERE(double, f64) WHERE(f16, f16) WHERE(bf16, bf16) WHERE(i64, i64)
