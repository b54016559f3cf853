/* A depthwise stride-1 convolution over row-major planes (kernels/native/conv_depthwise.py).
 *
 * oneDNN's depthwise primitive costs 22-30 us a call to set up whatever its size, where
 * fsmn-vad's 128-channel 20-tap layers over 117 steps need about 250 thousand
 * multiply-adds. Here each plane's output row is computed sixteen columns at a time: for
 * each tap, one masked load of the input row (lanes outside the row, the padding, read as
 * zero; masked lanes are not accessed) and one FMA. */
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

/* x [planes, h, w], taps [channels, kh, kw] (plane p uses channel p % channels), bias
 * [channels] or NULL; y [planes, oh, ow]. The load masks depend on the column block and
 * the tap's column alone, so they are made once for all planes and rows. */
void kiln_depthwise(const float *x, const float *taps, const float *bias, float *y,
                    int64_t planes, int64_t channels, int64_t h, int64_t w, int64_t kh,
                    int64_t kw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t oh,
                    int64_t ow) {
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int64_t blocks = (ow + 15) / 16;
    __mmask16 *inside = malloc(sizeof(__mmask16) * (size_t)(blocks * (kw + 1)));
    if (!inside)
        return;
    __mmask16 *live = inside + blocks * kw;
    for (int64_t q = 0; q < blocks; q++) {
        __m512i column = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(16 * q)), lanes);
        live[q] = _mm512_cmplt_epi32_mask(column, _mm512_set1_epi32((int32_t)ow));
        for (int64_t b = 0; b < kw; b++) {
            __m512i source = _mm512_add_epi32(column, _mm512_set1_epi32((int32_t)(b * dw - pw)));
            inside[q * kw + b] = live[q]
                & _mm512_cmpge_epi32_mask(source, _mm512_setzero_si512())
                & _mm512_cmplt_epi32_mask(source, _mm512_set1_epi32((int32_t)w));
        }
    }
    for (int64_t p = 0; p < planes; p++) {
        const float *plane = x + p * h * w, *tap = taps + (p % channels) * kh * kw;
        __m512 start = _mm512_set1_ps(bias ? bias[p % channels] : 0.0f);
        for (int64_t i = 0; i < oh; i++) {
            float *out = y + (p * oh + i) * ow;
            for (int64_t q = 0; q < blocks; q++) {
                __m512 acc = start;
                for (int64_t a = 0; a < kh; a++) {
                    int64_t row = i + a * dh - ph;
                    if (row < 0 || row >= h)
                        continue;
                    const float *source = plane + row * w + 16 * q - pw;
                    const float *weights = tap + a * kw;
                    const __mmask16 *masks = inside + q * kw;
                    for (int64_t b = 0; b < kw; b++)
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(weights[b]),
                                              _mm512_maskz_loadu_ps(masks[b], source + b * dw), acc);
                }
                _mm512_mask_storeu_ps(out + 16 * q, live[q], acc);
            }
        }
    }
    free(inside);
}
