/* y = act(x W^T + b) (+ y) for the decoder's and encoder's Linears on CPU, float32.
 *
 * At decode row counts (1 to a few hundred rows against 256-1024 wide weights) MKL and oneDNN spend
 * much of each call on fixed costs and on blocking meant for large matrices; measured per decode step
 * of the 256-wide default models, this kernel ran the same GEMMs 1.2-1.9x faster on an AVX2 EPYC
 * (bench/gemm.py). The weight is packed once into panels of 16 output columns, each (K, 16)
 * contiguous (zero-padded past N), so one step of k reads 16 consecutive weights; a register block of
 * up to 6 rows x 16 columns (12 vector accumulators) runs over all of K, for few rows several panels
 * at once, so enough independent FMA chains hide their latency. Every output element is the same
 * in-order sum over k whatever the row count, block shape or thread split (a row's result does not
 * depend on the batch it is in).
 *
 * Threads: panels are split over ``threads`` threads once a call has enough work, through the OpenMP
 * runtime torch itself loaded (libgomp's GOMP_parallel, handed in by model/native.py with
 * ferry_set_openmp), so the GEMMs share torch's thread team rather than start a second pool. The
 * library itself links no OpenMP runtime (it loads wherever torch does); without one, one thread.
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FERRY_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FERRY_CLONES
#endif

#define NR 16               /* output columns per panel: two 8-float vectors */
#define PARALLEL_MACS 65536 /* below this many multiply-adds a call stays on one thread */

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* unaligned access */
typedef int32_t i8v __attribute__((vector_size(32)));

#define LOAD(p) (*(const v8u *)(p))
#define STORE(p, x) (*(v8u *)(p) = (x))

/* How a block's sums become outputs, branch-free (one small epilogue per row keeps the inlined
 * blocks, and the compile, small): + bias (zeros when there is none), ReLU as a max with ``floor``
 * (0, or -inf for none), + the previous y where ``keep`` is all ones (accumulating). */
typedef struct {
    v8 floor;
    i8v keep;
    const float *bias; /* N biases, or 16 zeros */
    int64_t bias_step; /* 16, or 0 for the zeros */
} epilogue;

static const float ZEROS[NR];

static inline __attribute__((always_inline)) v8 finish(v8 x, const float *bias, const float *y, const epilogue *e) {
    x += LOAD(bias);
    i8v above = x > e->floor;
    x = (v8)(((i8v)x & above) | ((i8v)e->floor & ~above));
    return x + (v8)((i8v)LOAD(y) & e->keep);
}

/* The last panel of an N that is not a multiple of 16: only its ``nc`` < 16 valid columns are
 * read or written (out of line: it keeps the inlined blocks, and the compile, small). */
static __attribute__((noinline)) void store_partial(const float *sums, float *y, int64_t nc, const float *bias,
                                                    const epilogue *e) {
    for (int64_t j = 0; j < nc; j++) {
        float v = sums[j] + bias[j];
        v = v > e->floor[0] ? v : e->floor[0];
        y[j] = e->keep[0] ? y[j] + v : v;
    }
}

/* One row's 16 results of one panel. */
static inline __attribute__((always_inline)) void store_row(v8 x0, v8 x1, float *y, int64_t nc, const float *bias,
                                                            const epilogue *e) {
    if (nc != NR) {
        float sums[NR];
        STORE(sums, x0);
        STORE(sums + 8, x1);
        store_partial(sums, y, nc, bias, e);
        return;
    }
    STORE(y, finish(x0, bias, y, e));
    STORE(y + 8, finish(x1, bias + 8, y + 8, e));
}

/* Accumulator names c<r><q><half> for up to 6 rows x 4 panels; the ones a block does not use are
 * dropped by the compiler (R and Q are constants in every instantiation). */
#define DECL_Q(r, q) v8 c##r##q##0 = {0}, c##r##q##1 = {0};
#define DECL_R(r) DECL_Q(r, 0) DECL_Q(r, 1) DECL_Q(r, 2) DECL_Q(r, 3)
#define FMA_RQ(r, q)                                                                                               \
    if (r < R && q < Q) {                                                                                          \
        c##r##q##0 += a##r * b##q##0;                                                                              \
        c##r##q##1 += a##r * b##q##1;                                                                              \
    }
#define FMA_R(r)                                                                                                   \
    if (r < R) {                                                                                                   \
        float a##r = x[(r) * ldx + k];                                                                             \
        FMA_RQ(r, 0) FMA_RQ(r, 1) FMA_RQ(r, 2) FMA_RQ(r, 3)                                                        \
    }
#define LOAD_Q(q)                                                                                                  \
    v8 b##q##0 = {0}, b##q##1 = {0};                                                                               \
    if (q < Q) {                                                                                                   \
        b##q##0 = LOAD(w + (q) * panel + k * NR);                                                                  \
        b##q##1 = LOAD(w + (q) * panel + k * NR + 8);                                                              \
    }
#define STORE_RQ(r, q)                                                                                             \
    if (r < R && q < Q)                                                                                            \
        store_row(c##r##q##0, c##r##q##1, y + (r) * ldy + (q) * NR, q == Q - 1 ? nc_last : NR,                     \
                  bias + (q) * e->bias_step, e);
#define STORE_R(r) STORE_RQ(r, 0) STORE_RQ(r, 1) STORE_RQ(r, 2) STORE_RQ(r, 3)

/* R rows of x against Q consecutive panels of w (each ``panel`` floats apart) into y. */
static inline __attribute__((always_inline)) void block(const int R, const int Q, int64_t K, const float *x,
                                                        int64_t ldx, const float *w, int64_t panel, const float *bias,
                                                        float *y, int64_t ldy, int64_t nc_last, const epilogue *e) {
    DECL_R(0) DECL_R(1) DECL_R(2) DECL_R(3) DECL_R(4) DECL_R(5)
    for (int64_t k = 0; k < K; k++) {
        LOAD_Q(0) LOAD_Q(1) LOAD_Q(2) LOAD_Q(3)
        FMA_R(0) FMA_R(1) FMA_R(2) FMA_R(3) FMA_R(4) FMA_R(5)
    }
    STORE_R(0) STORE_R(1) STORE_R(2) STORE_R(3) STORE_R(4) STORE_R(5)
}

/* Panels [p0, p1) for all M rows: blocks of 6 rows, and the remaining rows with as many panels
 * per block as keep ~8-12 accumulators busy. Each panel is read from memory once per call. */
FERRY_CLONES static void panels(int64_t p0, int64_t p1, int64_t M, int64_t N, int64_t K,
                                                         const float *x, int64_t ldx, const float *w,
                                                         float *y, int64_t ldy, const epilogue *e) {
    const int64_t panel = K * NR;
    const int64_t rest = M % 6, full = M - rest;
    const int64_t q = rest == 1 ? 4 : rest == 2 ? 3 : rest == 3 ? 2 : 1;
    const float *xr = x + full * ldx;
    float *yr = y + full * ldy;
    for (int64_t p = p0; p < p1;) {
        /* a group of ``take`` panels: full row blocks one panel at a time, then the remaining rows
         * across the group, while the group's weights are still in cache */
        const int64_t take = p1 - p >= q ? q : 1;
        for (int64_t g = p; g < p + take; g++) {
            const float *wp = w + g * panel, *bp = e->bias + g * e->bias_step;
            const int64_t nc = N - g * NR < NR ? N - g * NR : NR;
            for (int64_t i = 0; i < full; i += 6)
                block(6, 1, K, x + i * ldx, ldx, wp, panel, bp, y + i * ldy + g * NR, ldy, nc, e);
        }
        if (rest) {
            const float *wp = w + p * panel, *bp = e->bias + p * e->bias_step;
            float *yp = yr + p * NR;
            const int64_t nc = N - (p + take - 1) * NR < NR ? N - (p + take - 1) * NR : NR;
            if (take == 1) {
                switch (rest) {
                case 1: block(1, 1, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                case 2: block(2, 1, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                case 3: block(3, 1, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                case 4: block(4, 1, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                default: block(5, 1, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                }
            } else {
                switch (rest) {
                case 1: block(1, 4, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                case 2: block(2, 3, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                default: block(3, 2, K, xr, ldx, wp, panel, bp, yp, ldy, nc, e); break;
                }
            }
        }
        p += take;
    }
}

/* Pack W (N, K), rows ``ldw`` apart, into ceil(N / 16) panels of (K, 16), zero-padded past N. */
void ferry_pack_weight(int64_t N, int64_t K, const float *w, int64_t ldw, float *out) {
    int64_t np = (N + NR - 1) / NR;
    memset(out, 0, sizeof(float) * (size_t)(np * K * NR));
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[(n / NR) * K * NR + k * NR + n % NR] = w[n * ldw + k];
}

/* The OpenMP runtime's entry points (libgomp ABI, also exported by LLVM's and Intel's runtimes). */
void (*ferry_omp_parallel)(void (*)(void *), void *, unsigned, unsigned);
int (*ferry_omp_thread_num)(void);
int (*ferry_omp_num_threads)(void);

/* Hand in GOMP_parallel, omp_get_thread_num and omp_get_num_threads (all three, or NULLs: serial). */
void ferry_set_openmp(void *parallel, void *thread_num, void *num_threads) {
    int all = parallel && thread_num && num_threads;
    ferry_omp_parallel = all ? (void (*)(void (*)(void *), void *, unsigned, unsigned))parallel : 0;
    ferry_omp_thread_num = all ? (int (*)(void))thread_num : 0;
    ferry_omp_num_threads = all ? (int (*)(void))num_threads : 0;
}

typedef struct {
    void (*run)(const void *task, int64_t p0, int64_t p1);
    const void *task;
    int64_t np;
} panel_split;

/* One thread's contiguous share of the panels. */
static void split_share(void *arg) {
    const panel_split *s = arg;
    int64_t id = ferry_omp_thread_num(), n = ferry_omp_num_threads();
    s->run(s->task, s->np * id / n, s->np * (id + 1) / n);
}

/* run(task, 0, np) over ``np`` output panels, split over ``threads`` threads of torch's OpenMP team
 * when there is one and the call has ``macs`` >= PARALLEL_MACS multiply-adds (gemm.c and qgemm.c). */
void ferry_for_panels(void (*run)(const void *, int64_t, int64_t), const void *task, int64_t np, int64_t macs,
                      int64_t threads) {
    if (ferry_omp_parallel && threads > 1 && np > 1 && macs >= PARALLEL_MACS) {
        panel_split s = {run, task, np};
        ferry_omp_parallel(split_share, &s, (unsigned)(threads < np ? threads : np), 0);
    } else {
        run(task, 0, np);
    }
}

typedef struct {
    int64_t M, N, K, ldx, ldy;
    const float *x, *w;
    float *y;
    const epilogue *e;
} gemm_task;

static void gemm_panels(const void *arg, int64_t p0, int64_t p1) {
    const gemm_task *t = arg;
    panels(p0, p1, t->M, t->N, t->K, t->x, t->ldx, t->w, t->y, t->ldy, t->e);
}

/* y (M, N) rows ``ldy`` apart = act(x (M, K) W^T + bias) (+ y when flags & 2); act is ReLU when flags & 1.
 * ``w`` as ferry_pack_weight made it; ``bias`` may be NULL; y must not overlap x. Returns 0. */
int ferry_linear(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const float *w, const float *bias,
                 float *y, int64_t ldy, int64_t flags, int64_t threads) {
    epilogue e = {.bias = bias ? bias : ZEROS, .bias_step = bias ? NR : 0};
    for (int j = 0; j < 8; j++) {
        e.floor[j] = flags & 1 ? 0.0f : -__builtin_inff();
        e.keep[j] = flags & 2 ? -1 : 0;
    }
    if (M <= 0 || N <= 0) return 0;
    gemm_task task = {M, N, K, ldx, ldy, x, w, y, &e};
    ferry_for_panels(gemm_panels, &task, (N + NR - 1) / NR, M * N * K, threads);
    return 0;
}
