/* One-query attention over per-row K/V prefixes: the decoder's self- and cross-attention step.
 *
 * torch's scaled_dot_product_attention spends ~0.6 us of fixed cost per (row, head) on CPU (buffer
 * allocation, blocking, a masked softmax over padded positions); a decode step of 25 rows x 8 heads
 * over 15 positions took ~125 us for ~400 kFLOP. This file does the same arithmetic in one plain
 * loop: for each row r and head h, softmax(q . K[0:n] * scale) . V[0:n] over the row's own n
 * positions, so padded or not-yet-written positions are never read (no mask, no NaN hazard).
 *
 * Built by model/native.py with the system C compiler; loaded through ctypes (no Python or torch
 * headers). On x86-64 with GCC, an AVX2/FMA clone and a baseline clone are picked at load time.
 * Thread-free: one call runs on the calling thread (ctypes releases the GIL around it).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FERRY_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FERRY_CLONES
#endif

#define STACK_POSITIONS 1024
#define BLOCK 32 /* logits scanned per vector max in ferry_top_log_probs */

/* exp(x) for x <= 0 (softmax after subtracting the maximum), to ~2 ulp: 2^n * p(r) with
 * x = n ln2 + r, |r| <= ln2 / 2, p a degree-6 Taylor polynomial. Branch-free and call-free, so the
 * compiler vectorises the loop around it (libm's expf is a call per element: it took most of a step). */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;  /* ln2 in two parts (Cody-Waite): r stays exact */
    r = r + n * 2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* out[0:D] = softmax(q . k_t * scale for t < n) . v_t; k_t = k + off[t] (same for v). */
static inline void attend_head(const float *restrict q, const float *restrict k, const float *restrict v,
                               const int64_t *restrict off, int64_t n, int64_t d, float scale, float *restrict s,
                               float *restrict out) {
    for (int64_t i = 0; i < d; i++) out[i] = 0.0f;
    if (n <= 0) return;
    float top = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        const float *kt = k + off[t];
        float acc = 0.0f;
        for (int64_t i = 0; i < d; i++) acc += q[i] * kt[i];
        acc *= scale;
        s[t] = acc;
        top = acc > top ? acc : top;
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < n; t++) {
        s[t] = exp_nonpositive(s[t] - top);
        sum += s[t];
    }
    float inv = 1.0f / sum;
    for (int64_t t = 0; t < n; t++) {
        const float *vt = v + off[t];
        float p = s[t] * inv;
        for (int64_t i = 0; i < d; i++) out[i] += p * vt[i];
    }
}

/* Eight floats as one vector (GCC/Clang vector extensions: AVX in the x86-64-v3 clone, SSE or NEON
 * halves elsewhere); loads and stores through memcpy, so no alignment is assumed. */
typedef float v8 __attribute__((vector_size(32)));
#define MAX_CHUNKS 16 /* head sizes up to 128 take the vector path */

static inline v8 load8(const float *p) {
    v8 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline float sum8(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* attend_head for head sizes that are a multiple of 8: the dot products of four positions at a time
 * run as four independent FMA chains (one chain per position stalls on FMA latency: a third of the
 * speed), and the output accumulates in registers. */
static inline void attend_head_v8(const float *restrict q, const float *restrict k, const float *restrict v,
                                  const int64_t *restrict off, int64_t n, int64_t d, float scale,
                                  float *restrict s, float *restrict out) {
    int64_t chunks = d / 8;
    v8 qv[MAX_CHUNKS], acc[MAX_CHUNKS];
    for (int64_t c = 0; c < chunks; c++) {
        qv[c] = load8(q + 8 * c);
        acc[c] = (v8){0};
    }
    if (n > 0) {
        float top = -INFINITY;
        int64_t t = 0;
        for (; t + 4 <= n; t += 4) {
            const float *k0 = k + off[t], *k1 = k + off[t + 1], *k2 = k + off[t + 2], *k3 = k + off[t + 3];
            v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int64_t c = 0; c < chunks; c++) {
                a0 += qv[c] * load8(k0 + 8 * c);
                a1 += qv[c] * load8(k1 + 8 * c);
                a2 += qv[c] * load8(k2 + 8 * c);
                a3 += qv[c] * load8(k3 + 8 * c);
            }
            s[t] = sum8(a0) * scale;
            s[t + 1] = sum8(a1) * scale;
            s[t + 2] = sum8(a2) * scale;
            s[t + 3] = sum8(a3) * scale;
        }
        for (; t < n; t++) {
            const float *kt = k + off[t];
            v8 a = {0};
            for (int64_t c = 0; c < chunks; c++) a += qv[c] * load8(kt + 8 * c);
            s[t] = sum8(a) * scale;
        }
        for (t = 0; t < n; t++) top = s[t] > top ? s[t] : top;
        float sum = 0.0f;
        for (t = 0; t < n; t++) {
            s[t] = exp_nonpositive(s[t] - top);
            sum += s[t];
        }
        float inv = 1.0f / sum;
        for (t = 0; t < n; t++) {
            const float *vt = v + off[t];
            float p = s[t] * inv;
            for (int64_t c = 0; c < chunks; c++) acc[c] += p * load8(vt + 8 * c);
        }
    }
    for (int64_t c = 0; c < chunks; c++) __builtin_memcpy(out + 8 * c, &acc[c], sizeof acc[c]);
}

/* Row r (of `rows`) attends to its first n = lengths[r] + extra positions; query head h reads K/V
 * head h / (heads / kv_heads). Position t of row r is read from K/V row table[r][t] when `table` is
 * not NULL (beam search without moving the cache: a reorder rewrites only the table), else from row
 * r / group (beams of one sentence share cross-attention K/V).
 * When new_k is not NULL (self-attention: group 1, extra 1), each row first stores its step's K/V
 * (new_k/new_v + r * new_row_stride, heads `head_dim` apart) at its own row, position lengths[r],
 * and records that row in table[r][lengths[r]].
 * Element strides: q and out rows; K/V rows, heads and positions (the head dimension is contiguous
 * everywhere; q and out heads are `head_dim` apart). Returns 0, -1 if scratch memory ran out, -2 if
 * a length or a table entry falls outside the K/V (`kv_rows` x `kv_positions`). */
FERRY_CLONES
int ferry_attend(int64_t rows, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t group,
                 const float *q, int64_t q_row_stride, float *k, float *v, int64_t kv_rows, int64_t kv_positions,
                 int64_t kv_row_stride, int64_t kv_head_stride, int64_t kv_pos_stride, const int64_t *lengths,
                 int64_t extra, int64_t *table, int64_t table_stride, const float *new_k, const float *new_v,
                 int64_t new_row_stride, float scale, float *out, int64_t out_row_stride) {
    /* Bounds first: every row's positions within the K/V's `kv_positions`, every K/V row it names
     * within `kv_rows` (-2 otherwise, before anything is read or written). */
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || group <= 0) return -2;
    for (int64_t r = 0; r < rows; r++) {
        int64_t n = lengths[r] + extra;
        if (lengths[r] < 0 || n > kv_positions || (new_k != NULL && table != NULL && lengths[r] >= table_stride))
            return -2;
        if (table == NULL) {
            if (r / group >= kv_rows) return -2;
        } else {
            if (new_k != NULL && r >= kv_rows) return -2;
            const int64_t *where = table + r * table_stride;
            int64_t stored = new_k != NULL ? lengths[r] : n; /* the position about to be stored names row r */
            for (int64_t t = 0; t < stored; t++)
                if (where[t] < 0 || where[t] >= kv_rows) return -2;
        }
    }
    if (new_k != NULL) {
        for (int64_t r = 0; r < rows; r++) {
            float *kr = k + r * kv_row_stride + lengths[r] * kv_pos_stride;
            float *vr = v + r * kv_row_stride + lengths[r] * kv_pos_stride;
            const float *nk = new_k + r * new_row_stride;
            const float *nv = new_v + r * new_row_stride;
            for (int64_t h = 0; h < kv_heads; h++)
                for (int64_t i = 0; i < head_dim; i++) {
                    kr[h * kv_head_stride + i] = nk[h * head_dim + i];
                    vr[h * kv_head_stride + i] = nv[h * head_dim + i];
                }
            if (table != NULL) table[r * table_stride + lengths[r]] = r;
        }
    }
    int64_t longest = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t n = lengths[r] + extra;
        longest = n > longest ? n : longest;
    }
    float stack[STACK_POSITIONS];
    int64_t off_stack[STACK_POSITIONS];
    float *s = stack;
    int64_t *off = off_stack;
    if (longest > STACK_POSITIONS) {
        s = (float *)malloc((size_t)longest * sizeof(float));
        off = (int64_t *)malloc((size_t)longest * sizeof(int64_t));
        if (s == NULL || off == NULL) {
            free(s);
            free(off);
            return -1;
        }
    }
    int64_t per_kv = heads / kv_heads;
    for (int64_t r = 0; r < rows; r++) {
        int64_t n = lengths[r] + extra;
        const int64_t *where = table != NULL ? table + r * table_stride : NULL;
        int64_t own = (r / group) * kv_row_stride;
        for (int64_t t = 0; t < n; t++) off[t] = (where != NULL ? where[t] * kv_row_stride : own) + t * kv_pos_stride;
        const float *qr = q + r * q_row_stride;
        float *o = out + r * out_row_stride;
        for (int64_t h = 0; h < heads; h++) {
            int64_t kv = (h / per_kv) * kv_head_stride;
            /* Constant head sizes let the compiler unroll and vectorise the inner loops. */
            if (head_dim == 32)
                attend_head_v8(qr + h * 32, k + kv, v + kv, off, n, 32, scale, s, o + h * 32);
            else if (head_dim == 64)
                attend_head_v8(qr + h * 64, k + kv, v + kv, off, n, 64, scale, s, o + h * 64);
            else if (head_dim % 8 == 0 && head_dim <= 8 * MAX_CHUNKS)
                attend_head_v8(qr + h * head_dim, k + kv, v + kv, off, n, head_dim, scale, s, o + h * head_dim);
            else
                attend_head(qr + h * head_dim, k + kv, v + kv, off, n, head_dim, scale, s, o + h * head_dim);
        }
    }
    if (s != stack) {
        free(s);
        free(off);
    }
    return 0;
}

/* The k best log-probabilities of each row of logits (R, V): tokens and log_softmax values, best
 * first, the `banned` ids excluded from the choice (as if -inf) but not from the normaliser (log_softmax
 * is over every token, then banned ids are masked: the search's order). One pass keeps the k best
 * logits in a small sorted array; a second sums exp(x - max) for the log-sum-exp. Rows with fewer
 * than k allowed tokens get banned ids with -inf scores after the allowed ones. Returns 0, -1 if
 * scratch memory ran out, -2 for a banned id outside the vocabulary or k outside 1..vocab. The logits are modified during the call and restored before it returns. */
FERRY_CLONES
int ferry_top_log_probs(int64_t rows, int64_t vocab, float *logits, int64_t row_stride, const int64_t *banned,
                        int64_t n_banned, int64_t k, float *out_scores, int64_t *out_tokens) {
    for (int64_t b = 0; b < n_banned; b++)
        if (banned[b] < 0 || banned[b] >= vocab) return -2;
    if (k < 1 || k > vocab) return -2;
    float saved_stack[64];
    float *saved = saved_stack;
    if (n_banned > 64) {
        saved = (float *)malloc((size_t)n_banned * sizeof(float));
        if (saved == NULL) return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        float *x = logits + r * row_stride;
        float *best = out_scores + r * k;
        int64_t *tok = out_tokens + r * k;
        for (int64_t b = 0; b < n_banned; b++) {
            saved[b] = x[banned[b]];
            x[banned[b]] = -INFINITY;
        }
        int64_t count = 0;
        float floor = -INFINITY; /* the k-th best so far once the array is full */
        for (int64_t start = 0; start < vocab; start += BLOCK) {
            int64_t end = start + BLOCK < vocab ? start + BLOCK : vocab;
            if (count == k && end - start == BLOCK) { /* most blocks hold nothing better: one vector max */
                float m = x[start];
                for (int64_t i = start + 1; i < end; i++) m = x[i] > m ? x[i] : m;
                if (!(m > floor)) continue;
            }
            for (int64_t i = start; i < end; i++) {
                float v = x[i];
                if (count == k && !(v > floor)) continue;
                int64_t j = count < k ? count++ : k - 1; /* insert: shift the worse ones down */
                while (j > 0 && best[j - 1] < v) {
                    best[j] = best[j - 1];
                    tok[j] = tok[j - 1];
                    j--;
                }
                best[j] = v;
                tok[j] = i;
                if (count == k) floor = best[k - 1];
            }
        }
        float top = count ? best[0] : -INFINITY;
        for (int64_t b = 0; b < n_banned; b++) top = saved[b] > top ? saved[b] : top;
        float sum = 0.0f;
        if (top > -INFINITY) {
            for (int64_t i = 0; i < vocab; i++) sum += exp_nonpositive(x[i] - top);
            for (int64_t b = 0; b < n_banned; b++) sum += exp_nonpositive(saved[b] - top);
        }
        float lse = top > -INFINITY ? top + logf(sum) : 0.0f; /* all -inf: leave the scores -inf */
        for (int64_t j = 0; j < count; j++) best[j] -= lse;
        for (int64_t b = n_banned - 1; b >= 0; b--) x[banned[b]] = saved[b]; /* reverse: repeated ids */
    }
    if (saved != saved_stack) free(saved);
    return 0;
}
