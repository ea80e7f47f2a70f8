/* y = act(x W^T + b) (+ y) with int8 weights and dynamically quantized activations, on CPU.
 *
 * Weights: one scale per output channel (symmetric, [-127, 127]), packed by model/native.py into
 * panels of 16 output columns x groups of 4 k: (N / 16, K / 4, 16, 4) int8, zero-padded; with each
 * column's sum of its int8 weights. Activations: each row quantized on the fly to 7-bit unsigned
 * values with its own scale and zero point (x ~ s_x (q - z), q in [0, 127], 0 exact), the range
 * fbgemm uses without VNNI ("reduce_range"): a pair of 7-bit x 8-bit products then never saturates
 * AVX2's 16-bit vpmaddubsw (2 x 127 x 127 < 32767), so the AVX2 path and the portable one compute the
 * same integers. Output: y = s_x s_w (sum q w - z colsum(w)) + b, ReLU, + y when accumulating.
 *
 * Threads: as model/gemm.c (torch's OpenMP runtime, handed in with ferry_set_openmp; panels split).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NR 16              /* output columns per panel */
#define KG 4               /* k per group: one 32-bit lane of 4 bytes */
#define PANEL_GROUP (NR * KG) /* bytes of one k-group of one panel */
#define QMAX 127           /* 7-bit activations */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FERRY_X86 1
#endif

/* gemm.c: run(task, p0, p1) over panels, split over torch's OpenMP threads when worth it. */
void ferry_for_panels(void (*run)(const void *, int64_t, int64_t), const void *task, int64_t np, int64_t macs,
                      int64_t threads);

/* Quantize each of M rows of x (K floats, rows ldx apart) into q (rows kp bytes apart, zero past K):
 * scale[r], zero[r]. A row of zeros gets scale 1, zero point 0. */
static void quantize_rows(int64_t M, int64_t K, int64_t kp, const float *x, int64_t ldx, uint8_t *q, float *scale,
                          int32_t *zero) {
    for (int64_t r = 0; r < M; r++) {
        const float *xr = x + r * ldx;
        float lo = 0.0f, hi = 0.0f; /* the range always holds 0, so it is exact */
        for (int64_t k = 0; k < K; k++) {
            lo = xr[k] < lo ? xr[k] : lo;
            hi = xr[k] > hi ? xr[k] : hi;
        }
        float s = (hi - lo) / QMAX;
        if (!(s > 0.0f)) s = 1.0f; /* all zeros (or NaN: garbage in, garbage out, but no UB) */
        float inv = 1.0f / s;
        int32_t z = (int32_t)(-lo * inv + 0.5f);
        z = z < 0 ? 0 : z > QMAX ? QMAX : z;
        uint8_t *qr = q + r * kp;
        for (int64_t k = 0; k < K; k++) {
            float v = xr[k] * inv + (float)z + 0.5f;
            v = v < 0.0f ? 0.0f : v > (float)QMAX + 0.49f ? (float)QMAX + 0.49f : v;
            qr[k] = (uint8_t)(int32_t)v; /* v >= 0: truncation rounds half up */
        }
        for (int64_t k = K; k < kp; k++) qr[k] = 0;
        scale[r] = s;
        zero[r] = z;
    }
}

typedef struct {
    const float *wscale, *bias; /* per output channel; bias may be NULL */
    const int32_t *colsum;
    int relu, acc;
} epilogue;

/* One row's ``nc`` results of a panel from its int32 sums. */
static inline __attribute__((always_inline)) void finish_row(const int32_t *sums, float sx, int32_t zx, const float *wscale, const int32_t *colsum,
                              const float *bias, float *y, int64_t nc, const epilogue *e) {
    for (int64_t j = 0; j < nc; j++) {
        float v = (float)(sums[j] - zx * colsum[j]) * (sx * wscale[j]);
        if (bias) v += bias[j];
        if (e->relu && v < 0.0f) v = 0.0f;
        y[j] = e->acc ? y[j] + v : v;
    }
}

/* Portable block: R rows x one panel, exact int32 sums. */
static void block_portable(int R, int64_t groups, const uint8_t *q, int64_t kp, const int8_t *w, int32_t *sums) {
    for (int r = 0; r < R; r++) {
        int32_t acc[NR] = {0};
        const uint8_t *qr = q + r * kp;
        for (int64_t g = 0; g < groups; g++) {
            const int8_t *wg = w + g * PANEL_GROUP;
            for (int j = 0; j < NR; j++)
                for (int t = 0; t < KG; t++) acc[j] += (int32_t)qr[g * KG + t] * (int32_t)wg[j * KG + t];
        }
        memcpy(sums + r * NR, acc, sizeof acc);
    }
}

#ifdef FERRY_X86
/* AVX2 block: R (<= 4, a constant) rows x one panel. Per k-group and row: one 4-byte broadcast of the
 * row's activations, vpmaddubsw against the 16 columns' 4 weights (pairs summed to 16 bits, never
 * saturating), vpmaddwd with ones (to 32 bits), added to two accumulators of 8 columns. */
static inline __attribute__((always_inline, target("avx2"))) void block_avx2(const int R, int64_t groups,
                                                                          const uint8_t *q, int64_t kp,
                                                                          const int8_t *w, int32_t *sums) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00,
            c31 = c00;
    const uint8_t *q0 = q, *q1 = q + kp, *q2 = q + 2 * kp, *q3 = q + 3 * kp;
    for (int64_t g = 0; g < groups; g++) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + g * PANEL_GROUP));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + g * PANEL_GROUP + 32));
#define QROW(r)                                                                                                    \
    if (r < R) {                                                                                                   \
        int32_t four;                                                                                              \
        memcpy(&four, q##r + g * KG, 4);                                                                           \
        const __m256i a = _mm256_set1_epi32(four);                                                                 \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w0), ones));                 \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(a, w1), ones));                 \
    }
        QROW(0) QROW(1) QROW(2) QROW(3)
#undef QROW
    }
#define QSTORE(r)                                                                                                  \
    if (r < R) {                                                                                                   \
        _mm256_storeu_si256((__m256i *)(sums + (r) * NR), c##r##0);                                                \
        _mm256_storeu_si256((__m256i *)(sums + (r) * NR + 8), c##r##1);                                            \
    }
    QSTORE(0) QSTORE(1) QSTORE(2) QSTORE(3)
#undef QSTORE
}


static inline __attribute__((target("avx2"))) void block_x86(int R, int64_t groups, const uint8_t *q, int64_t kp,
                                                             const int8_t *w, int32_t *sums) {
    switch (R) {
    case 1: block_avx2(1, groups, q, kp, w, sums); break;
    case 2: block_avx2(2, groups, q, kp, w, sums); break;
    case 3: block_avx2(3, groups, q, kp, w, sums); break;
    default: block_avx2(4, groups, q, kp, w, sums); break;
    }
}
#endif

typedef void (*block_fn)(int R, int64_t groups, const uint8_t *q, int64_t kp, const int8_t *w, int32_t *sums);

typedef struct {
    int64_t M, N, kp;
    const uint8_t *q;
    const float *sx;
    const int32_t *zx;
    const int8_t *w;
    float *y;
    int64_t ldy;
    const epilogue *e;
    int avx2;
} qtask;

/* Panels [p0, p1) for every row, four rows at a time (inlined into an AVX2 and a portable copy, so
 * the epilogue is vectorised for the CPU too). */
static inline __attribute__((always_inline)) void qpanels_body(const qtask *t, int64_t p0, int64_t p1, block_fn block) {
    const int64_t groups = t->kp / KG, panel = groups * PANEL_GROUP;
    int32_t sums[4 * NR];
    for (int64_t p = p0; p < p1; p++) {
        const int8_t *wp = t->w + p * panel;
        const int64_t n0 = p * NR, nc = t->N - n0 < NR ? t->N - n0 : NR;
        for (int64_t i = 0; i < t->M; i += 4) {
            int R = t->M - i < 4 ? (int)(t->M - i) : 4;
            block(R, groups, t->q + i * t->kp, t->kp, wp, sums);
            for (int r = 0; r < R; r++)
                finish_row(sums + r * NR, t->sx[i + r], t->zx[i + r], t->e->wscale + n0, t->e->colsum + n0,
                           t->e->bias ? t->e->bias + n0 : 0, t->y + (i + r) * t->ldy + n0, nc, t->e);
        }
    }
}

#ifdef FERRY_X86
__attribute__((target("avx2"))) static void qpanels_x86(const qtask *t, int64_t p0, int64_t p1) {
    qpanels_body(t, p0, p1, block_x86);
}
#endif

static void qpanels_portable(const qtask *t, int64_t p0, int64_t p1) { qpanels_body(t, p0, p1, block_portable); }

static void qpanels(const void *arg, int64_t p0, int64_t p1) {
    const qtask *t = arg;
#ifdef FERRY_X86
    if (t->avx2) {
        qpanels_x86(t, p0, p1);
        return;
    }
#endif
    qpanels_portable(t, p0, p1);
}

/* y (M, N) rows ``ldy`` apart = act(x (M, K) W^T + bias) (+ y when flags & 2), ReLU when flags & 1;
 * ``w``/``wscale``/``colsum`` as model/native.py packs them; ``bias`` may be NULL. Returns 0, or -1
 * when the activation scratch cannot be allocated. */
int ferry_linear_int8(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const int8_t *w,
                      const float *wscale, const int32_t *colsum, const float *bias, float *y, int64_t ldy,
                      int64_t flags, int64_t threads) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t kp = (K + KG - 1) / KG * KG, np = (N + NR - 1) / NR;
    size_t bytes = (size_t)(M * kp) + (size_t)M * (sizeof(float) + sizeof(int32_t));
    uint8_t *scratch = malloc(bytes);
    if (!scratch) return -1;
    float *sx = (float *)scratch;
    int32_t *zx = (int32_t *)(sx + M);
    uint8_t *q = (uint8_t *)(zx + M);
    quantize_rows(M, K, kp, x, ldx, q, sx, zx);
    epilogue e = {wscale, bias, colsum, (int)(flags & 1), (int)((flags >> 1) & 1)};
    qtask t = {M, N, kp, q, sx, zx, w, y, ldy, &e, 0};
#ifdef FERRY_X86
    t.avx2 = __builtin_cpu_supports("avx2");
#endif
    ferry_for_panels(qpanels, &t, np, M * N * K, threads);
    free(scratch);
    return 0;
}
