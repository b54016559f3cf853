/* A float32 GEMM whose rows are gathered as it goes: out[i, j] = act(bias[j] + sum_t
 * sum_k a[rowoff[i] + tapoff[t] + k * kstride] * B[t*c + k, j]). With one tap and
 * rowoff[i] = i * lda it is a plain GEMM over any row stride; with a tap per kernel
 * position and the rows at each output pixel's window origin it is a convolution over a
 * channels-last input (implicit im2col: the window rows are never copied). A padded
 * convolution gives instead a table of offsets per row and tap, -1 where the tap falls in
 * the padding: that tap reads `zero`, and the input needs no padded copy.
 *
 * B is packed once, per layer, into panels of 32 columns: bp[panel][t*c + k][32], zero
 * beyond n. A column-major operand (kstride > 1: an elementwise op that kept a transposed
 * layout) is read in place too. A tile of up to 8 rows x 32 columns keeps its 16
 * accumulators in registers; per k it loads two vectors of B and broadcasts 8 values of
 * a: 16 FMAs against 10 loads, 107-114 GFLOP/s on one core of the AMD EPYC machines kiln
 * is measured on (peak 117; MKL's sgemm behind torch 85-100 at the same shapes). The
 * tile's rows stay in L1 while the panels stream from L2. Tiles are generated per row
 * count and width by a macro: with the counts as variables the accumulators went to the
 * stack (half the speed). */
#include <stdint.h>

#include "common.h"

#define NR 32

/* act: 0 none, 1 ReLU, 2 SiLU, 3 HardSwish, 4 Clip [p0, p1], 5 HardSigmoid (p0 x + p1
 * clamped to [0, 1]), 6 LeakyRelu (slope p0) */
static inline __m512 activate(__m512 y, int64_t act, float p0, float p1) {
    if (act == 1) return _mm512_max_ps(y, _mm512_setzero_ps());
    if (act == 2) return silu_ps(y);
    if (act == 3 || act == 5) {
        __m512 gate = act == 3
            ? _mm512_fmadd_ps(y, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f))
            : _mm512_fmadd_ps(y, _mm512_set1_ps(p0), _mm512_set1_ps(p1));
        gate = _mm512_min_ps(_mm512_max_ps(gate, _mm512_setzero_ps()), _mm512_set1_ps(1.0f));
        return act == 3 ? _mm512_mul_ps(y, gate) : gate;
    }
    if (act == 4) return _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(p0)), _mm512_set1_ps(p1));
    if (act == 6) {
        __mmask16 negative = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
        return _mm512_mask_mul_ps(y, negative, y, _mm512_set1_ps(p0));
    }
    return y;
}

#define DEFINE_TILE(MR, NV)                                                                \
    static void tile_##MR##_##NV(const float *a, const int64_t *rowoff,                    \
                                 const int64_t *tapoff, const int64_t *table,              \
                                 const float *zero, int64_t taps, int64_t c,               \
                                 int64_t kstride,                                          \
                                 const float *bp, const float *bias, float *out,           \
                                 int64_t ldo, __mmask16 last, int64_t act, float p0,       \
                                 float p1) {                                               \
        __m512 acc[MR][NV];                                                                \
        _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) {                             \
            __m512 b = bias ? _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xffff,           \
                                                    bias + 16 * v)                         \
                            : _mm512_setzero_ps();                                         \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) acc[i][v] = b;            \
        }                                                                                  \
        for (int64_t t = 0; t < taps; t++) {                                               \
            const float *ap[MR];                                                           \
            _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                         \
                const int64_t at = table ? table[i * taps + t] : rowoff[i] + tapoff[t];    \
                ap[i] = at >= 0 ? a + at : zero;                                           \
            }                                                                              \
            const float *b = bp + t * c * NR;                                              \
            for (int64_t k = 0; k < c; k++, b += NR) {                                     \
                __m512 bv[NV];                                                             \
                _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++)                       \
                    bv[v] = _mm512_loadu_ps(b + 16 * v);                                   \
                _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++) {                     \
                    __m512 av = _mm512_set1_ps(ap[i][k * kstride]);                        \
                    _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++)                   \
                        acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);                 \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        _Pragma("GCC unroll 8") for (int i = 0; i < MR; i++)                               \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++)                           \
                _mm512_mask_storeu_ps(out + i * ldo + 16 * v, v == NV - 1 ? last : 0xffff, \
                                      activate(acc[i][v], act, p0, p1));                   \
    }

DEFINE_TILE(1, 1) DEFINE_TILE(2, 1) DEFINE_TILE(3, 1) DEFINE_TILE(4, 1)
DEFINE_TILE(5, 1) DEFINE_TILE(6, 1) DEFINE_TILE(7, 1) DEFINE_TILE(8, 1)
DEFINE_TILE(1, 2) DEFINE_TILE(2, 2) DEFINE_TILE(3, 2) DEFINE_TILE(4, 2)
DEFINE_TILE(5, 2) DEFINE_TILE(6, 2) DEFINE_TILE(7, 2) DEFINE_TILE(8, 2)

typedef void (*tile_fn)(const float *, const int64_t *, const int64_t *, const int64_t *,
                        const float *, int64_t, int64_t, int64_t, const float *, const float *,
                        float *, int64_t, __mmask16, int64_t, float, float);

static const tile_fn TILES[2][9] = {
    {0, tile_1_1, tile_2_1, tile_3_1, tile_4_1, tile_5_1, tile_6_1, tile_7_1, tile_8_1},
    {0, tile_1_2, tile_2_2, tile_3_2, tile_4_2, tile_5_2, tile_6_2, tile_7_2, tile_8_2},
};

/* Blocks of 8 rows are shared out over `threads` threads (the engine's thread count, given
 * by the caller, so an OpenMP runtime other than torch's does not pick its own), each
 * writing its own output rows; without -fopenmp the pragma is ignored and one thread runs. */
void kiln_gemm(const float *a, const int64_t *rowoff, int64_t m, const int64_t *tapoff,
               const int64_t *table, const float *zero, int64_t taps, int64_t c,
               int64_t kstride, const float *bpacked, const float *bias, int64_t n,
               float *out, int64_t ldo, int64_t act, float p0, float p1, int64_t threads) {
    const int64_t depth = taps * c;
    const int64_t blocks = (m + 7) / 8;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks >= 8)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t i0 = block * 8;
        const int64_t rows = m - i0 < 8 ? m - i0 : 8;
        for (int64_t j0 = 0; j0 < n; j0 += NR) {
            const int64_t width = n - j0 < NR ? n - j0 : NR;
            const int wide = width > 16;
            const int64_t tail = width - 16 * wide; /* 1..16 columns in the last vector */
            const __mmask16 last = (__mmask16)(tail == 16 ? 0xffff : (1u << tail) - 1);
            TILES[wide][rows](a, rowoff ? rowoff + i0 : 0, tapoff, table ? table + i0 * taps : 0,
                              zero, taps, c, kstride, bpacked + j0 * depth,
                              bias ? bias + j0 : 0, out + i0 * ldo + j0, ldo, last, act, p0,
                              p1);
        }
    }
}
