/* Every decoder layer of one decode step in one call: the pre-norm layer's layer norms, Linears
 * (model/gemm.c or model/qgemm.c), self-attention storing the step's K/V and cross-attention
 * (model/attend.c), and the residual adds, over the step's rows.
 *
 * With the GEMMs and attention in C, what was left of a decode step was Python and torch's per-op
 * dispatch between them (about a dozen small ops per layer: ~half of a greedy step's time after the
 * native GEMMs). Here the layer loop runs in C on scratch buffers; Python embeds the tokens before
 * and projects to the vocabulary after. Same operations in the same order as model/lean_step.py's
 * loop, so results agree with it within float rounding (the layer norm sums in another order).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int ferry_attend(int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t group, const float *q,
                 int64_t q_row_stride, float *k, float *v, int64_t kv_rows, int64_t kv_positions,
                 int64_t kv_row_stride, int64_t kv_head_stride, int64_t kv_pos_stride, const int64_t *lengths,
                 int64_t extra, int64_t *table, int64_t table_stride, const float *new_k, const float *new_v,
                 int64_t new_row_stride, float scale, float *out, int64_t out_row_stride);
int ferry_linear(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const float *w, const float *bias,
                 float *y, int64_t ldy, int64_t flags, int64_t threads);
int ferry_linear_int8(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const void *w,
                      const float *wscale, const int32_t *colsum, const float *bias, float *y, int64_t ldy,
                      int64_t flags, int64_t threads);

/* One Linear as model/native.py packed it. */
typedef struct {
    int64_t int8; /* 0: float32 panels (gemm.c), 1: int8 panels (qgemm.c) */
    int64_t n, k, relu;
    const void *w;
    const float *scale;    /* int8 only */
    const int32_t *colsum; /* int8 only */
    const float *bias;     /* may be NULL */
} ferry_lin;

typedef struct {
    const float *norm_w[3], *norm_b[3]; /* self-attention, cross-attention, feed-forward */
    ferry_lin qkv, self_out, cross_q, cross_out, fc1, fc2;
} ferry_layer;

/* K/V buffers of all layers: (rows, L, 2, Hkv, positions, D) with these element strides. */
typedef struct {
    float *base;
    int64_t rows, positions, row, layer, kv, head, pos;
} ferry_kv;

typedef struct {
    int64_t rows, d_model, heads, kv_heads, head_dim, group, layers, threads;
    float eps, scale;
    float *x; /* (rows, d_model) contiguous: the embedded tokens in, the last layer's output out */
    const ferry_layer *layer;
    ferry_kv self, cross;
    const int64_t *lengths, *src_lengths;
    int64_t *table; /* NULL, or the cache's row table */
    int64_t table_stride;
} ferry_step;

static int linear(const ferry_lin *l, int64_t m, const float *x, int64_t ldx, float *y, int64_t ldy, int add,
                  int64_t threads) {
    int64_t flags = (l->relu ? 1 : 0) | (add ? 2 : 0);
    if (l->int8)
        return ferry_linear_int8(m, l->n, l->k, x, ldx, l->w, l->scale, l->colsum, l->bias, y, ldy, flags, threads);
    return ferry_linear(m, l->n, l->k, x, ldx, (const float *)l->w, l->bias, y, ldy, flags, threads);
}

/* y = layer_norm(x) over rows of d (two passes: mean, then variance of the deviations). */
static void layer_norm(int64_t rows, int64_t d, const float *x, const float *w, const float *b, float eps, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * d;
        float *yr = y + r * d;
        float mean = 0.0f, var = 0.0f;
        for (int64_t i = 0; i < d; i++) mean += xr[i];
        mean /= (float)d;
        for (int64_t i = 0; i < d; i++) {
            float c = xr[i] - mean;
            var += c * c;
        }
        float inv = 1.0f / sqrtf(var / (float)d + eps);
        for (int64_t i = 0; i < d; i++) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
    }
}

/* Returns 0; -1 when scratch memory ran out; -2 when the attention found a length or table entry
 * outside the K/V buffers (nothing read or written out of bounds); -3 for inconsistent sizes. */
int ferry_decode_layers(const ferry_step *s) {
    const int64_t r = s->rows, d = s->d_model, hd = s->heads * s->head_dim, kd = s->kv_heads * s->head_dim;
    const int64_t qkv_width = hd + 2 * kd;
    if (r <= 0) return 0;
    int64_t widest = 0;
    for (int64_t l = 0; l < s->layers; l++) {
        const ferry_layer *w = s->layer + l;
        if (w->qkv.n != qkv_width || w->qkv.k != d || w->self_out.n != d || w->self_out.k != hd ||
            w->cross_q.n != hd || w->cross_q.k != d || w->cross_out.n != d || w->cross_out.k != hd ||
            w->fc1.k != d || w->fc2.n != d || w->fc2.k != w->fc1.n)
            return -3;
        widest = w->fc1.n > widest ? w->fc1.n : widest;
    }
    widest = widest > qkv_width ? widest : qkv_width;
    float *y = malloc(sizeof(float) * (size_t)(r * (d + widest + hd)));
    if (!y) return -1;
    float *wide = y + r * d, *att = wide + r * widest;
    int status = 0;
    for (int64_t l = 0; l < s->layers && status == 0; l++) {
        const ferry_layer *w = s->layer + l;
        float *sk = s->self.base + l * s->self.layer, *sv = sk + s->self.kv;
        float *ck = s->cross.base + l * s->cross.layer, *cv = ck + s->cross.kv;
        /* self-attention: x += out(attend(qkv(norm(x)))), storing this step's K/V */
        layer_norm(r, d, s->x, w->norm_w[0], w->norm_b[0], s->eps, y);
        status = linear(&w->qkv, r, y, d, wide, qkv_width, 0, s->threads);
        if (status == 0)
            status = ferry_attend(r, s->heads, s->kv_heads, s->head_dim, 1, wide, qkv_width, sk, sv, s->self.rows,
                                  s->self.positions, s->self.row, s->self.head, s->self.pos, s->lengths, 1,
                                  s->table, s->table_stride, wide + hd, wide + hd + kd, qkv_width, s->scale, att,
                                  hd);
        if (status == 0) status = linear(&w->self_out, r, att, hd, s->x, d, 1, s->threads);
        if (status) break;
        /* cross-attention over the encoder's K/V (beams of a sentence share its row) */
        layer_norm(r, d, s->x, w->norm_w[1], w->norm_b[1], s->eps, y);
        status = linear(&w->cross_q, r, y, d, wide, hd, 0, s->threads);
        if (status == 0)
            status = ferry_attend(r, s->heads, s->kv_heads, s->head_dim, s->group, wide, hd, ck, cv, s->cross.rows,
                                  s->cross.positions, s->cross.row, s->cross.head, s->cross.pos, s->src_lengths, 0,
                                  NULL, 0, NULL, NULL, 0, s->scale, att, hd);
        if (status == 0) status = linear(&w->cross_out, r, att, hd, s->x, d, 1, s->threads);
        if (status) break;
        /* feed-forward */
        layer_norm(r, d, s->x, w->norm_w[2], w->norm_b[2], s->eps, y);
        status = linear(&w->fc1, r, y, d, wide, w->fc1.n, 0, s->threads);
        if (status == 0) status = linear(&w->fc2, r, wide, w->fc1.n, s->x, d, 1, s->threads);
    }
    free(y);
    return status; /* 0, or the first failing call's code: each stops the step before its use */
}
