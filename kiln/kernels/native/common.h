/* What kiln's AVX-512 kernels share: the processor check the loader calls, 2^t, and SiLU. */
#include <immintrin.h>

int kiln_native_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* 2^t = 2^round(t) * p(t - round(t)), p a degree-6 minimax polynomial on [-1/2, 1/2]
 * (relative error under 2e-7), scaled by vscalefps. t is clamped to [-160, 160]: beyond,
 * the result is 0 or overflows float32 anyway. min/max with the constant first keep a
 * NaN t (the second operand), so NaN stays NaN. */
static inline __m512 exp2_clamped(__m512 t) {
    t = _mm512_min_ps(_mm512_set1_ps(160.0f), _mm512_max_ps(_mm512_set1_ps(-160.0f), t));
    __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, r);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, r);
}

/* SiLU, x / (1 + e^-x): e^-x = 2^(-x log2 e) by the polynomial above, and one division;
 * NaN stays NaN. */
static inline __m512 silu_ps(__m512 x) {
    __m512 e = exp2_clamped(_mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
