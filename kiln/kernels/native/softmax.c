/* Softmax along the rows of a float32 matrix, in place (kernels/native/softmax.py).
 *
 * torch's exp costs about 0.8 ns a float on the AMD EPYC machines kiln is measured on,
 * where ONNX Runtime's polynomial takes 0.3. Here e^(x - max) = 2^((x - max) * log2 e),
 * by the polynomial of common.h. Sixteen lanes a step; the row's tail under a mask.
 * -inf scores (masks) give 0; a row whose every score is -inf gives NaN, and NaN spreads
 * over its row, as torch's softmax does. */
#include <math.h>
#include <stdint.h>

#include "common.h"

static inline __m512 shifted_exp(__m512 x, __m512 max) {
    return exp2_clamped(_mm512_mul_ps(_mm512_sub_ps(x, max),
                                      _mm512_set1_ps(1.44269504088896341f)));
}

/* src's row (plus the additive mask row, where there is one) into row (the same row, in
 * place) */
static inline __m512 scores(const float *src, const float *mask, int64_t j) {
    __m512 v = _mm512_loadu_ps(src + j);
    return mask ? _mm512_add_ps(v, _mm512_loadu_ps(mask + j)) : v;
}

static inline __m512 tail_scores(const float *src, const float *mask, int64_t j,
                                 __mmask16 tail) {
    __m512 v = _mm512_maskz_loadu_ps(tail, src + j);
    return mask ? _mm512_add_ps(v, _mm512_maskz_loadu_ps(tail, mask + j)) : v;
}

static void softmax_row(const float *src, float *row, int64_t n, const float *mask) {
    int64_t whole = n / 16 * 16;
    __mmask16 tail = (__mmask16)((1u << (n - whole)) - 1u);
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < whole; j += 16)
        vm = _mm512_max_ps(vm, scores(src, mask, j));
    if (tail)
        vm = _mm512_mask_max_ps(vm, tail, vm, tail_scores(src, mask, whole, tail));
    float m = _mm512_reduce_max_ps(vm);
    if (m == -INFINITY) {
        for (int64_t j = 0; j < n; j++)
            row[j] = NAN;
        return;
    }
    __m512 max = _mm512_set1_ps(m), sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < whole; j += 16) {
        __m512 e = shifted_exp(scores(src, mask, j), max);
        _mm512_storeu_ps(row + j, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (tail) {
        __m512 e = shifted_exp(tail_scores(src, mask, whole, tail), max);
        _mm512_mask_storeu_ps(row + whole, tail, e);
        sum = _mm512_mask_add_ps(sum, tail, sum, e);
    }
    __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t j = 0; j < whole; j += 16)
        _mm512_storeu_ps(row + j, _mm512_mul_ps(_mm512_loadu_ps(row + j), inverse));
    if (tail)
        _mm512_mask_storeu_ps(row + whole, tail,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, row + whole), inverse));
}

void kiln_softmax_rows(float *x, int64_t rows, int64_t n) {
    for (int64_t i = 0; i < rows; i++)
        softmax_row(x + i * n, x + i * n, n, 0);
}

/* In place, after adding a mask row: row i takes mask row i / rows_per_mask (an attention
 * mask that broadcasts over the query rows), without a pass of its own over the scores. */
void kiln_softmax_rows_masked(float *x, int64_t rows, int64_t n, const float *mask,
                              int64_t rows_per_mask) {
    for (int64_t i = 0; i < rows; i++)
        softmax_row(x + i * n, x + i * n, n, mask + i / rows_per_mask * n);
}

/* The same from x into y (a Softmax layer: its input may have other readers). */
void kiln_softmax_rows_to(const float *x, float *y, int64_t rows, int64_t n) {
    for (int64_t i = 0; i < rows; i++)
        softmax_row(x + i * n, y + i * n, n, 0);
}
