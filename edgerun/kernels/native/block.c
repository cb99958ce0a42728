/* The fused inverted-residual block, chunk by chunk (MobileNetV2 paper, Section 5.1) and
 * band by band: for each band of output rows and each chunk of hidden channels, expand the
 * hidden rows the band needs, depthwise them, and accumulate their projection into out.
 *
 * Threads: a persistent pool (created on first use, torn down at exit, reset in a forked
 * child) runs the block one of two ways.
 * - Whole bands per thread, when the block has at least as many bands as threads and the
 *   caller gave one private slice of `expanded` and `depthwise` per thread (block_scratch
 *   with threads=T declares them): each thread takes whole bands, all their chunks, in its
 *   own slices; a band's projection writes only that band's output rows. One hand-over per
 *   block, and each thread keeps its data in its own core's cache.
 * - Otherwise the threads share every phase of one (band, chunk) step in the chunk's single
 *   buffers; the phases of a step are separated by waits. A narrow band (at most
 *   CHANNEL_SPLIT_PIXELS output pixels, e.g. the 7x7 and 14x14 blocks) is split by channels:
 *   expansion and depthwise by hidden channels, projection by output channels, so each thread
 *   reads part of the weights and the GEMMs keep every column; a wider band by rows: the
 *   expansion over hidden rows, the depthwise and projection over output rows.
 * Every output element is computed by the same operations in the same order whatever the
 * split, so any thread count gives the same bits. Waits spin briefly, then sleep on a
 * condition variable. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, pthread_sigmask */
#include <pthread.h>
#include <signal.h>
#include <math.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "kernels.h"
#ifndef CHANNEL_SPLIT_PIXELS
#define CHANNEL_SPLIT_PIXELS 256
#endif

int er_ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static int min_int(int a, int b) { return a < b ? a : b; }
static int max_int(int a, int b) { return a > b ? a : b; }

static int conv_output_size(int size, int k, int stride, int pad_begin, int pad_end)
{
    return floor_div(size + pad_begin + pad_end - k, stride) + 1;
}

const char *er_block_derive(er_block_geom *g)
{
    if (g->in_channels < 1 || g->in_height < 1 || g->in_width < 1 || g->hidden_channels < 1 ||
        g->out_channels < 1)
        return "channel counts and input sizes must be positive";
    if (g->expand_kernel < 0 || g->dw_kernel < 1 || g->dw_stride < 1 ||
        (g->expand_kernel > 0 && g->expand_stride < 1))
        return "kernels and strides must be positive";
    for (int i = 0; i < 4; i++)
        if (g->expand_pads[i] < 0 || g->dw_pads[i] < 0) return "pads must be non-negative";
    if (g->expand_kernel == 0) {
        if (g->hidden_channels != g->in_channels)
            return "without expansion hidden_channels must equal in_channels";
        g->hidden_height = g->in_height;
        g->hidden_width = g->in_width;
    } else {
        g->hidden_height = conv_output_size(g->in_height, g->expand_kernel, g->expand_stride,
                                            g->expand_pads[0], g->expand_pads[2]);
        g->hidden_width = conv_output_size(g->in_width, g->expand_kernel, g->expand_stride,
                                           g->expand_pads[1], g->expand_pads[3]);
    }
    if (g->hidden_height < 1 || g->hidden_width < 1) return "the expansion output would be empty";
    g->out_height = conv_output_size(g->hidden_height, g->dw_kernel, g->dw_stride, g->dw_pads[0],
                                     g->dw_pads[2]);
    g->out_width = conv_output_size(g->hidden_width, g->dw_kernel, g->dw_stride, g->dw_pads[1],
                                    g->dw_pads[3]);
    if (g->out_height < 1 || g->out_width < 1) return "the block output would be empty";
    if (g->residual && (g->in_channels != g->out_channels || g->in_height != g->out_height ||
                        g->in_width != g->out_width))
        return "a residual block needs equal input and output shapes";
    return NULL;
}

int er_block_hidden_rows(const er_block_geom *g, int band_rows)
{
    return min_int(g->hidden_height, (band_rows - 1) * g->dw_stride + g->dw_kernel);
}

/* ======================= persistent thread pool =======================
 * The caller's thread drives a job phase by phase: it posts a phase (a function and up to
 * MAX_THREADS independent items), runs items itself, and waits until every item is done.
 * Item k is first offered to participant k (the caller is 0, worker k is k), so the same
 * thread handles the same part of every phase and its data stays in its core's cache; an
 * item nobody has claimed yet is taken by whoever is free, so a worker the OS has not
 * scheduled holds nothing up (there is no barrier every thread must reach).
 * Claims: claims[i] holds the last phase that claimed item i. Phases only advance once every
 * item is done, so an item of the current phase is unclaimed exactly while claims[i] is
 * older than the phase; a late thread that claims for a phase that is over notices it and
 * drops the claim (a stale claim is older than the current phase, so it claims nothing). */
#define MAX_THREADS 64
#define DONE_SPIN_NS 200000L  /* items last microseconds: spin through them */
#define PHASE_SPIN_NS 300000L /* and through the Python code between two block calls */

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)

typedef struct {
    er_item_fn fn;
    void *ctx;
    int items;
    int done;
} phase_slot;

struct er_team {
    pthread_mutex_t lock; /* sleeping waiters and worker creation */
    pthread_cond_t cv;    /* every state change a sleeper waits for is broadcast here */
    pthread_cond_t idle_cv; /* workers beyond the current job's thread count sleep here */
    int idle_sleepers;
    pthread_t ids[MAX_THREADS];
    int started;          /* workers 1..started exist */
    int busy;             /* a job owns the pool (other callers run inline) */
    int shutdown;
    int sleepers;
    int max_worker;       /* workers 1..max_worker take part in the current job */
    unsigned phase;       /* the last phase posted */
    phase_slot slots[2];  /* phase p is described in slots[p & 1] */
    unsigned claims[MAX_THREADS];
};

static er_team pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
                       .idle_cv = PTHREAD_COND_INITIALIZER};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

typedef struct {
    int tid;
    unsigned seen; /* the phase when the worker was created */
} worker_start;

static worker_start worker_starts[MAX_THREADS];

/* Not PAUSE: under KVM a pausing loop can make the host deschedule the virtual CPU. */
static void cpu_relax(void) { __asm__ __volatile__("" ::: "memory"); }

static long elapsed_ns(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) * 1000000000L + (now.tv_nsec - t0->tv_nsec);
}

typedef int (*predicate)(const void *arg);

/* Spins up to spin_ns, then sleeps on the pool's condition variable until ready(arg).
 * Wakers change state (seq_cst) and then broadcast when sleepers > 0 (seq_cst): one of the
 * two always sees the other, so no wake-up is lost. */
static void wait_for(predicate ready, const void *arg, long spin_ns)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 1;; i++) {
        if (ready(arg)) return;
        cpu_relax();
        if ((i & 127) == 0 && elapsed_ns(&t0) > spin_ns) break;
    }
    pthread_mutex_lock(&pool.lock);
    ADD(&pool.sleepers, 1);
    while (!ready(arg)) pthread_cond_wait(&pool.cv, &pool.lock);
    ADD(&pool.sleepers, -1);
    pthread_mutex_unlock(&pool.lock);
}

static void wake_sleepers(void)
{
    if (LOAD(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.lock);
    }
}

/* Runs the items of `phase` participant `me` can claim: its own first, then the others. */
static void run_items(unsigned phase, int me)
{
    phase_slot *slot = &pool.slots[phase & 1];
    er_item_fn fn = LOAD(&slot->fn);
    void *ctx = LOAD(&slot->ctx);
    int items = LOAD(&slot->items);
    if (items < 1 || items > MAX_THREADS) return; /* read while rewritten: the phase is over */
    for (int n = 0; n < items; n++) {
        int i = (me + n) % items;
        unsigned seen = LOAD(&pool.claims[i]);
        if ((int)(seen - phase) >= 0) continue; /* claimed in this phase */
        if (!__atomic_compare_exchange_n(&pool.claims[i], &seen, phase, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            continue;
        if (LOAD(&pool.phase) != phase) return; /* the phase was over: the claim is stale */
        fn(ctx, i);
        if (ADD(&slot->done, 1) == items) wake_sleepers();
    }
}

static int phase_moved(const void *arg)
{
    return LOAD(&pool.shutdown) || LOAD(&pool.phase) != *(const unsigned *)arg;
}

static void *worker_main(void *arg)
{
    int tid = ((const worker_start *)arg)->tid;
    unsigned seen = ((const worker_start *)arg)->seen;
#if defined(__linux__)
    prctl(PR_SET_NAME, "edgerun-pool", 0, 0, 0); /* as ps / top / /proc show it */
#endif
    for (;;) {
        if (tid > LOAD(&pool.max_worker)) {
            /* not needed by the current job: sleep until a job wants this many threads (the
             * phase broadcasts do not wake this condition variable) */
            pthread_mutex_lock(&pool.lock);
            ADD(&pool.idle_sleepers, 1);
            while (tid > LOAD(&pool.max_worker) && !LOAD(&pool.shutdown))
                pthread_cond_wait(&pool.idle_cv, &pool.lock);
            ADD(&pool.idle_sleepers, -1);
            pthread_mutex_unlock(&pool.lock);
        }
        wait_for(phase_moved, &seen, PHASE_SPIN_NS);
        if (LOAD(&pool.shutdown)) return NULL;
        seen = LOAD(&pool.phase);
        if (tid <= LOAD(&pool.max_worker)) run_items(seen, tid);
    }
}

static void reset_in_child(void)
{
    /* the workers do not exist in a forked child: start afresh */
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER, idle_cv = PTHREAD_COND_INITIALIZER;
    pool.lock = lock;
    pool.cv = cv;
    pool.idle_cv = idle_cv;
    pool.started = pool.busy = pool.sleepers = pool.idle_sleepers = pool.shutdown = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, reset_in_child); }

/* Workers up to `wanted` (caller owns the pool). Threads block all signals: CPython's handlers
 * belong to its own threads. A thread that fails to start just means fewer workers. */
static void grow_pool(int wanted)
{
    if (pool.started >= wanted) return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pool.started < wanted) {
        int tid = pool.started + 1;
        worker_starts[tid].tid = tid;
        worker_starts[tid].seen = pool.phase;
        if (pthread_create(&pool.ids[tid], NULL, worker_main, &worker_starts[tid]) != 0) break;
        pool.started = tid;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

er_team *er_team_begin(int threads)
{
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads <= 1 || LOAD(&pool.shutdown) || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_SEQ_CST))
        return NULL; /* one thread, or the pool serves another caller: same result inline */
    pthread_once(&pool_once, register_fork_handler);
    int previous = pool.max_worker;
    STORE(&pool.max_worker, threads - 1); /* before new workers start: they join at once */
    grow_pool(threads - 1);
    if (pool.started == 0) {
        STORE(&pool.busy, 0);
        return NULL;
    }
    /* idle workers all have tid > previous: only a larger job needs any of them */
    if (threads - 1 > previous && LOAD(&pool.idle_sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.idle_cv);
        pthread_mutex_unlock(&pool.lock);
    }
    return &pool;
}

static int phase_done(const void *arg)
{
    const phase_slot *slot = (const phase_slot *)arg;
    return LOAD(&slot->done) == LOAD(&slot->items);
}

void er_team_run(er_team *team, er_item_fn fn, void *ctx, int items)
{
    if (team == NULL || items <= 1) {
        for (int i = 0; i < items; i++) fn(ctx, i);
        return;
    }
    if (items > MAX_THREADS) { /* more items than claim slots (kernels.h asks items <= threads) */
        for (int i = 0; i < items; i++) fn(ctx, i);
        return;
    }
    unsigned phase = team->phase + 1;
    phase_slot *slot = &team->slots[phase & 1];
    STORE(&slot->fn, fn);
    STORE(&slot->ctx, ctx);
    STORE(&slot->items, items);
    STORE(&slot->done, 0);
    /* every item unclaimed for the new phase, and claims never lag far behind it, so the
     * wrapping comparison in run_items holds however many phases a process runs */
    for (int i = 0; i < items; i++) STORE(&team->claims[i], phase - 1);
    STORE(&team->phase, phase);
    wake_sleepers();
    run_items(phase, 0);
    wait_for(phase_done, slot, DONE_SPIN_NS);
}

void er_team_end(er_team *team)
{
    if (team) STORE(&team->busy, 0);
}

void er_run_parts(er_item_fn fn, void *ctx, int parts)
{
    er_team *team = parts > 1 ? er_team_begin(parts) : NULL;
    er_team_run(team, fn, ctx, parts);
    er_team_end(team);
}

int er_pool_threads(void) { return LOAD(&pool.started) + 1; }

void er_pool_shutdown(void)
{
    struct timespec pause = {0, 100000};
    while (__atomic_exchange_n(&pool.busy, 1, __ATOMIC_SEQ_CST)) nanosleep(&pause, NULL);
    STORE(&pool.shutdown, 1);
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.cv);
    pthread_cond_broadcast(&pool.idle_cv);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 1; i <= pool.started; i++) pthread_join(pool.ids[i], NULL);
    pool.started = 0;
    STORE(&pool.busy, 0); /* later jobs run inline */
}

/* ======================= the block ======================= */
typedef struct {
    const er_block_geom *g;
    const er_block_weights *w;
    int t, band_rows;
    const float *x;
    float *out, *expanded, *depthwise;
    /* the current (band, chunk) step, cut into `parts` ranges of output rows */
    int c0, c1, h0, h1, o0, o1, parts;
} block_job;

/* One hidden row of hidden channel c by direct convolution (any kernel, stride, padding). */
static void expand_row_direct(const er_block_geom *g, const er_block_weights *w, const float *x, int c,
                              int h, float *dst)
{
    int k = g->expand_kernel, s = g->expand_stride, width = g->hidden_width;
    int pad_top = g->expand_pads[0], pad_left = g->expand_pads[1];
    long in_plane = (long)g->in_height * g->in_width;
    for (int j = 0; j < width; j++) dst[j] = w->be[c];
    for (int ci = 0; ci < g->in_channels; ci++) {
        for (int ky = 0; ky < k; ky++) {
            int r = h * s - pad_top + ky;
            if (r < 0 || r >= g->in_height) continue;
            const float *row = x + ci * in_plane + (long)r * g->in_width;
            const float *taps = w->we + (((long)c * g->in_channels + ci) * k + ky) * k;
            for (int kx = 0; kx < k; kx++) {
                int offset = kx - pad_left;
                int j0 = max_int(0, er_ceil_div(-offset, s));
                int j1 = min_int(width, floor_div(g->in_width - 1 - offset, s) + 1);
                float wv = taps[kx];
                for (int j = j0; j < j1; j++) dst[j] += wv * row[j * s + offset];
            }
        }
    }
    er_apply_activation(dst, width, &w->expand_act);
}

static int is_plain_pointwise(const er_block_geom *g)
{
    const int *p = g->expand_pads;
    return g->expand_kernel == 1 && g->expand_stride == 1 && !(p[0] | p[1] | p[2] | p[3]);
}

/* ---- expansion through a small im2col on the stack (the fused 3x3 stride-2 stem) ----
 * For a group of hidden rows, the Cin*ke*ke input taps of every hidden pixel are gathered
 * (zeros where the window hangs over the padding) into a stack buffer, then one GEMM
 * against we_t writes the rows into `expanded` with bias and activation. */
#define IM2COL_FLOATS 8192

/* Columns [j0, j1) of the hidden row whose tap (offset = kx - pad_left) lands inside the input. */
static void tap_columns(int width, int in_width, int stride, int offset, int *j0, int *j1)
{
    *j0 = min_int(width, max_int(0, er_ceil_div(-offset, stride)));
    *j1 = max_int(*j0, min_int(width, floor_div(in_width - 1 - offset, stride) + 1));
}

/* dst[j] = src[j * stride]; constant strides 1 and 2 (the stem) vectorise. */
static void copy_strided(float *restrict dst, const float *restrict src, int n, int stride)
{
    if (stride == 1)
        for (int j = 0; j < n; j++) dst[j] = src[j];
    else if (stride == 2)
        for (int j = 0; j < n; j++) dst[j] = src[2 * j];
    else
        for (int j = 0; j < n; j++) dst[j] = src[(long)j * stride];
}

static void gather_im2col(const er_block_geom *g, const float *x, int ha, int hb, float *cols)
{
    int k = g->expand_kernel, s = g->expand_stride, width = g->hidden_width;
    long pitch = (long)(hb - ha) * width, in_plane = (long)g->in_height * g->in_width;
    for (int ci = 0; ci < g->in_channels; ci++) {
        for (int ky = 0; ky < k; ky++) {
            for (int kx = 0; kx < k; kx++) {
                float *dst = cols + ((long)(ci * k + ky) * k + kx) * pitch;
                int offset = kx - g->expand_pads[1], j0, j1;
                tap_columns(width, g->in_width, s, offset, &j0, &j1);
                for (int h = ha; h < hb; h++, dst += width) {
                    int r = h * s - g->expand_pads[0] + ky;
                    if (r < 0 || r >= g->in_height) {
                        memset(dst, 0, sizeof(float) * width);
                        continue;
                    }
                    const float *row = x + ci * in_plane + (long)r * g->in_width + offset;
                    for (int j = 0; j < j0; j++) dst[j] = 0.0f;
                    copy_strided(dst + j0, row + (long)j0 * s, j1 - j0, s);
                    for (int j = j1; j < width; j++) dst[j] = 0.0f;
                }
            }
        }
    }
}

/* Hidden rows per im2col group; 0 when even one row does not fit the stack buffer. */
static int im2col_group_rows(const er_block_geom *g)
{
    long taps = (long)g->in_channels * g->expand_kernel * g->expand_kernel;
    return (int)(IM2COL_FLOATS / (taps * g->hidden_width));
}

/* Hidden rows [ha, hb) of channels [c0, c1) into dst (channel c0's rows [h0, h1)). */
static void expand_rows_im2col(block_job *job, int c0, int c1, int h0, int h1, int ha, int hb, float *dst)
{
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    float cols[IM2COL_FLOATS];
    int group = im2col_group_rows(g), width = g->hidden_width;
    long taps = (long)g->in_channels * g->expand_kernel * g->expand_kernel;
    for (int h = ha; h < hb; h += group) {
        int he = min_int(hb, h + group);
        gather_im2col(g, job->x, h, he, cols);
        er_gemm_tn(c1 - c0, (he - h) * width, (int)taps, w->we_t + c0, g->hidden_channels, cols,
                   (long)(he - h) * width, dst + (long)(h - h0) * width,
                   (long)(h1 - h0) * width, 0, w->be + c0, &w->expand_act);
    }
}


/* A part smaller than about 10 us of work costs more in hand-overs than it saves. */
static long long min_part_macs = 300000;

long long er_block_min_part_macs(long long value)
{
    long long old = LOAD(&min_part_macs);
    if (value >= 0) STORE(&min_part_macs, value);
    return old;
}

int er_worth_parts(double macs, int threads, int most)
{
    double fit = macs / ((double)LOAD(&min_part_macs) + 1.0);
    int parts = threads < most ? threads : most;
    if (fit < parts) parts = (int)fit;
    return parts < 1 ? 1 : parts;
}

/* Output rows [*p0, *p1) of part k of the step's band. */
static void part_rows(const block_job *job, int k, int *p0, int *p1)
{
    er_share(job->o1 - job->o0, job->parts, k, p0, p1);
    *p0 += job->o0;
    *p1 += job->o0;
}

/* First hidden row the depthwise of output row o reads (clamped to the step's rows). */
static int first_hidden_row(const block_job *job, int o)
{
    const er_block_geom *g = job->g;
    return min_int(job->h1, max_int(job->h0, o * g->dw_stride - g->dw_pads[0]));
}

/* Expansion item k: hidden rows [ha, hb) of all the chunk's channels, from the first row its
 * own output rows read up to the first row the next part reads (disjoint, covering [h0, h1);
 * the few rows a part reads beyond that come from its neighbour). */
static void expand_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int p0, p1, q0, q1;
    part_rows(job, k, &p0, &p1);
    int ha = k == 0 ? job->h0 : first_hidden_row(job, p0);
    int hb = job->h1;
    if (k + 1 < job->parts) {
        part_rows(job, k + 1, &q0, &q1);
        hb = first_hidden_row(job, q0);
    }
    if (ha >= hb) return;
    int width = g->hidden_width, rows = job->h1 - job->h0;
    if (is_plain_pointwise(g)) {
        int columns = rows * width;
        er_gemm_tn(job->c1 - job->c0, (hb - ha) * width, g->in_channels, w->we_t + job->c0,
                   g->hidden_channels, job->x + (long)ha * g->in_width, (long)g->in_height * g->in_width,
                   job->expanded + (long)(ha - job->h0) * width, columns, 0, w->be + job->c0,
                   &w->expand_act);
    } else if (im2col_group_rows(g) >= 1) {
        expand_rows_im2col(job, job->c0, job->c1, job->h0, job->h1, ha, hb, job->expanded);
    } else {
        for (int c = job->c0; c < job->c1; c++)
            for (int h = ha; h < hb; h++)
                expand_row_direct(g, w, job->x, c, h,
                                  job->expanded + ((long)(c - job->c0) * rows + (h - job->h0)) * width);
    }
}

/* out[m0:m1, columns n0:n1 of the band] = bias (+ x), before the band's first chunk accumulates. */
static void initialise_channels(block_job *job, int m0, int m1, int n0, int n1)
{
    const er_block_geom *g = job->g;
    long plane = (long)g->out_height * g->out_width, first = (long)job->o0 * g->out_width;
    for (int c = m0; c < m1; c++) {
        float *o = job->out + c * plane + first;
        float b = job->w->bp[c];
        if (g->residual) {
            const float *xi = job->x + c * plane + first;
            for (int i = n0; i < n1; i++) o[i] = b + xi[i];
        } else {
            for (int i = n0; i < n1; i++) o[i] = b;
        }
    }
}

static void initialise_output(block_job *job, int n0, int n1)
{
    initialise_channels(job, 0, job->g->out_channels, n0, n1);
}

/* Part k of the step: depthwise (+ bias, activation) of every hidden channel of the chunk for
 * its output rows [p0, p1), then out[:, those rows] += Wp[:, chunk] @ depthwise. The hidden
 * rows come from `expanded`, or straight from x when there is no expansion. */
static void rows_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int p0, p1, kd = g->dw_kernel, hidden_row0;
    part_rows(job, k, &p0, &p1);
    if (p0 >= p1) return;
    long hidden_stride;
    const float *hidden;
    if (g->expand_kernel) {
        hidden = job->expanded;
        hidden_stride = (long)(job->h1 - job->h0) * g->hidden_width;
        hidden_row0 = job->h0;
    } else {
        hidden_stride = (long)g->in_height * g->in_width;
        hidden = job->x + job->c0 * hidden_stride;
        hidden_row0 = 0;
    }
    int n0 = (p0 - job->o0) * g->out_width, n1 = (p1 - job->o0) * g->out_width;
    /* the part's own block of the depthwise scratch, (channels, its pixels): threads never
     * write into the same cache line (a (channels, band pixels) layout shares one a channel) */
    float *part_depthwise = job->depthwise + (long)(job->c1 - job->c0) * n0;
    for (int i = 0; i < job->c1 - job->c0; i++) {
        int c = job->c0 + i;
        er_depthwise_rows(hidden + i * hidden_stride, hidden_row0, g->hidden_height, g->hidden_width,
                          w->wd + (long)c * kd * kd, kd, g->dw_stride, g->dw_pads, w->bd[c], &w->dw_act,
                          part_depthwise + (long)i * (n1 - n0), p0, p1, g->out_width);
    }
    if (job->c0 == 0) initialise_output(job, n0, n1);
    long plane = (long)g->out_height * g->out_width;
    er_gemm_tn(g->out_channels, n1 - n0, job->c1 - job->c0, w->wp_t + (long)job->c0 * g->out_channels,
               g->out_channels, part_depthwise, n1 - n0,
               job->out + (long)job->o0 * g->out_width + n0, plane, 1, NULL, NULL);
}

/* Sets the job's band to output rows [o0, o0 + band_rows) and the hidden rows it reads. */
static void set_band(block_job *job, int o0)
{
    const er_block_geom *g = job->g;
    job->o0 = o0;
    job->o1 = min_int(o0 + job->band_rows, g->out_height);
    job->h0 = max_int(0, o0 * g->dw_stride - g->dw_pads[0]);
    job->h1 = min_int(g->hidden_height, (job->o1 - 1) * g->dw_stride - g->dw_pads[0] + g->dw_kernel);
}

/* Multiply-adds of one (band, chunk) step of the job's current band. */
static double step_macs(const block_job *job)
{
    const er_block_geom *g = job->g;
    int chunk = er_ceil_div(g->hidden_channels, job->t);
    int band_out = (job->o1 - job->o0) * g->out_width, k2 = g->expand_kernel * g->expand_kernel;
    return (double)chunk * ((double)g->in_channels * k2 * (job->h1 - job->h0) * g->hidden_width +
                            (double)(g->dw_kernel * g->dw_kernel + g->out_channels) * band_out);
}

/* ---- channel split: for narrow bands (few pixels), where a row split would leave each
 * thread too few columns for the GEMM tiles. Phase 1, part k: expansion and depthwise of its
 * share of the chunk's hidden channels; phase 2, part k: the projection of its share of the
 * output channels over all the band's pixels. Scratch layouts are those of one part. */
void er_share(int n, int parts, int k, int *a, int *b)
{
    *a = (int)((long)n * k / parts);
    *b = (int)((long)n * (k + 1) / parts);
}

static void hidden_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    const er_block_weights *w = job->w;
    int a0, a1, kd = g->dw_kernel;
    er_share(job->c1 - job->c0, job->parts, k, &a0, &a1);
    if (a0 >= a1) return;
    int ca = job->c0 + a0, cb = job->c0 + a1, width = g->hidden_width, rows = job->h1 - job->h0;
    long columns = (long)rows * width;
    const float *hidden;
    long hidden_stride;
    int hidden_row0;
    if (g->expand_kernel) {
        float *dst = job->expanded + a0 * columns;
        if (is_plain_pointwise(g)) {
            er_gemm_tn(cb - ca, (int)columns, g->in_channels, w->we_t + ca, g->hidden_channels,
                       job->x + (long)job->h0 * g->in_width, (long)g->in_height * g->in_width, dst, columns,
                       0, w->be + ca, &w->expand_act);
        } else if (im2col_group_rows(g) >= 1) {
            expand_rows_im2col(job, ca, cb, job->h0, job->h1, job->h0, job->h1, dst);
        } else {
            for (int c = ca; c < cb; c++)
                for (int h = job->h0; h < job->h1; h++)
                    expand_row_direct(g, w, job->x, c, h,
                                      job->expanded + ((long)(c - job->c0) * rows + (h - job->h0)) * width);
        }
        hidden = job->expanded;
        hidden_stride = columns;
        hidden_row0 = job->h0;
    } else {
        hidden_stride = (long)g->in_height * g->in_width;
        hidden = job->x + job->c0 * hidden_stride;
        hidden_row0 = 0;
    }
    long n = (long)(job->o1 - job->o0) * g->out_width;
    for (int i = a0; i < a1; i++) {
        int c = job->c0 + i;
        er_depthwise_rows(hidden + i * hidden_stride, hidden_row0, g->hidden_height, g->hidden_width,
                          w->wd + (long)c * kd * kd, kd, g->dw_stride, g->dw_pads, w->bd[c], &w->dw_act,
                          job->depthwise + i * n, job->o0, job->o1, g->out_width);
    }
}

static void project_item(void *ctx, int k)
{
    block_job *job = (block_job *)ctx;
    const er_block_geom *g = job->g;
    int m0, m1;
    er_share(g->out_channels, job->parts, k, &m0, &m1);
    if (m0 >= m1) return;
    int n = (job->o1 - job->o0) * g->out_width;
    if (job->c0 == 0) initialise_channels(job, m0, m1, 0, n);
    long plane = (long)g->out_height * g->out_width;
    er_gemm_tn(m1 - m0, n, job->c1 - job->c0, job->w->wp_t + (long)job->c0 * g->out_channels + m0,
               g->out_channels, job->depthwise, n, job->out + m0 * plane + (long)job->o0 * g->out_width,
               plane, 1, NULL, NULL);
}

/* Bands of at most this many output pixels are split by channels, wider ones by rows
 * (scheduler.blocks.CHANNEL_SPLIT_PIXELS says the same to the cost model). */
static int channel_split_pixels = CHANNEL_SPLIT_PIXELS;

/* Row split: each (band, chunk) step is [expansion of the hidden rows, split by rows] then
 * [depthwise and projection, split by output rows]; each phase completes before the next
 * starts. Part k of both phases goes to the same thread, so its rows stay in its cache. */
static void run_steps(er_team *team, block_job *job, int threads)
{
    const er_block_geom *g = job->g;
    int chunk = er_ceil_div(g->hidden_channels, job->t);
    for (int o0 = 0; o0 < g->out_height; o0 += job->band_rows) {
        set_band(job, o0);
        int by_channels = (job->o1 - o0) * g->out_width <= channel_split_pixels;
        int most = by_channels ? min_int(g->out_channels, chunk) : job->o1 - o0;
        job->parts = team ? max_int(1, min_int(min_int(min_int(threads, MAX_THREADS), most),
                                               (int)fmin(1e9, step_macs(job) / ((double)LOAD(&min_part_macs) + 1.0)))) : 1;
        by_channels = by_channels && job->parts > 1;
        for (int c0 = 0; c0 < g->hidden_channels; c0 += chunk) {
            job->c0 = c0;
            job->c1 = min_int(c0 + chunk, g->hidden_channels);
            if (by_channels) {
                er_team_run(team, hidden_item, job, job->parts);
                er_team_run(team, project_item, job, job->parts);
                continue;
            }
            if (g->expand_kernel) er_team_run(team, expand_item, job, job->parts);
            er_team_run(team, rows_item, job, job->parts);
        }
    }
}

/* Whole bands per thread: item k owns slice k of `expanded` and `depthwise` and runs bands
 * k, k + items, k + 2 * items, ... (an item whose thread is late is taken by a free one). It
 * runs every chunk of a band exactly as one thread does (one part), and a band's projection
 * writes only that band's output rows, so no two items write the same bytes and every output
 * element sees the same operations in the same order as with one thread. */
typedef struct {
    const block_job *base;
    long expanded_slice, depthwise_slice; /* floats per item */
    int bands, items;
} band_job;

static void band_item(void *ctx, int k)
{
    band_job *bands = (band_job *)ctx;
    block_job job = *bands->base;
    const er_block_geom *g = job.g;
    int chunk = er_ceil_div(g->hidden_channels, job.t);
    job.parts = 1;
    if (job.expanded) job.expanded += (long)k * bands->expanded_slice;
    job.depthwise += (long)k * bands->depthwise_slice;
    for (int b = k; b < bands->bands; b += bands->items) {
        set_band(&job, b * job.band_rows);
        for (int c0 = 0; c0 < g->hidden_channels; c0 += chunk) {
            job.c0 = c0;
            job.c1 = min_int(c0 + chunk, g->hidden_channels);
            if (g->expand_kernel) expand_item(&job, 0);
            rows_item(&job, 0);
        }
    }
}

static void run_bands(er_team *team, block_job *job, int items)
{
    const er_block_geom *g = job->g;
    int chunk = er_ceil_div(g->hidden_channels, job->t);
    band_job bands = {.base = job, .bands = er_ceil_div(g->out_height, job->band_rows)};
    bands.expanded_slice = (long)chunk * er_block_hidden_rows(g, job->band_rows) * g->hidden_width;
    bands.depthwise_slice = (long)chunk * job->band_rows * g->out_width;
    /* a block too small to pay for the hand-over runs on the caller (slice 0) */
    set_band(job, 0);
    double macs = step_macs(job) * er_ceil_div(g->hidden_channels, chunk) * bands.bands;
    if (macs < 2.0 * (double)LOAD(&min_part_macs)) items = 1;
    bands.items = min_int(items, bands.bands);
    er_team_run(team, band_item, &bands, bands.items);
}

void er_block_run(const er_block_geom *g, int t, int band_rows, const er_block_weights *w,
                  const float *x, float *out, float *expanded, float *depthwise, int threads,
                  int slices)
{
    block_job job = {.g = g, .w = w, .t = t, .band_rows = band_rows, .x = x, .out = out,
                     .expanded = expanded, .depthwise = depthwise};
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int parallel_bands = threads > 1 && slices >= threads &&
                         er_ceil_div(g->out_height, band_rows) >= threads;
    er_team *team = er_team_begin(threads);
    if (parallel_bands)
        run_bands(team, &job, threads);
    else
        run_steps(team, &job, threads);
    er_team_end(team);
}
