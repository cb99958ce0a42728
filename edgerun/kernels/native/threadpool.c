/* The persistent thread pool of the native kernels (see threadpool.h).
 *
 * The caller's thread drives a job phase by phase: it posts a phase (a function and up to
 * ER_MAX_THREADS independent items), runs items itself, and waits until every item is done.
 * Item k is first offered to participant k (the caller is 0, worker k is k), so the same
 * thread handles the same part of every phase and its data stays in its core's cache; an
 * item nobody has claimed yet is taken by whoever is free, so a worker the OS has not
 * scheduled holds nothing up (there is no barrier every thread must reach).
 * Claims: claims[i] holds the last phase that claimed item i. Phases only advance once every
 * item is done, so an item of the current phase is unclaimed exactly while claims[i] is
 * older than the phase; a late thread that claims for a phase that is over notices it and
 * drops the claim (a stale claim is older than the current phase, so it claims nothing).
 *
 * One job owns the pool at a time. A second caller (another Python thread running a kernel with
 * the GIL released) waits on free_cv until the owner ends its job, then gets its own team of the
 * size it asked for. A thread that already owns the pool, or works for it, gets an error instead
 * of a deadlock. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, pthread_sigmask */
#include <pthread.h>
#include <signal.h>
#include <time.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "threadpool.h"

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
    pthread_mutex_t lock; /* sleeping waiters, ownership and worker creation */
    pthread_cond_t cv;    /* every state change a sleeper waits for is broadcast here */
    pthread_cond_t idle_cv; /* workers beyond the current job's thread count sleep here */
    pthread_cond_t free_cv; /* callers waiting for the pool to be free sleep here */
    int idle_sleepers;
    pthread_t ids[ER_MAX_THREADS];
    int started;          /* workers 1..started exist */
    int busy;             /* a job owns the pool */
    pthread_t owner;      /* the thread whose job it is (while busy) */
    int shutdown;
    int sleepers;
    int max_worker;       /* workers 1..max_worker take part in the current job */
    unsigned phase;       /* the last phase posted */
    phase_slot slots[2];  /* phase p is described in slots[p & 1] */
    unsigned claims[ER_MAX_THREADS];
    er_pool_stats stats;  /* under lock */
};

static er_team pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER,
                       .idle_cv = PTHREAD_COND_INITIALIZER, .free_cv = PTHREAD_COND_INITIALIZER};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

typedef struct {
    int tid;
    unsigned seen; /* the phase when the worker was created */
} worker_start;

static worker_start worker_starts[ER_MAX_THREADS];
static __thread int this_worker; /* 0 on callers' threads, k on worker k */
static er_team *held;            /* the job of er_pool_hold */

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
    if (items < 1 || items > ER_MAX_THREADS) return; /* read while rewritten: the phase is over */
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
    this_worker = tid;
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
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER, idle_cv = PTHREAD_COND_INITIALIZER,
                   free_cv = PTHREAD_COND_INITIALIZER;
    pool.lock = lock;
    pool.cv = cv;
    pool.idle_cv = idle_cv;
    pool.free_cv = free_cv;
    pool.started = pool.busy = pool.sleepers = pool.idle_sleepers = pool.shutdown = 0;
    pool.stats.waiting = 0;
    held = NULL;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, reset_in_child); }

/* Workers up to `wanted` (caller owns the pool). Threads block all signals: CPython's handlers
 * belong to its own threads. Returns how many workers exist. */
static int grow_pool(int wanted)
{
    if (pool.started >= wanted) return pool.started;
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
    return pool.started;
}

/* Makes the calling thread the pool's owner, waiting while another caller's job runs. */
static const char *acquire(int threads)
{
    if (this_worker) return "a kernel running on the thread pool asked it for threads (nested job)";
    pthread_mutex_lock(&pool.lock);
    if (pool.busy && pthread_equal(pool.owner, pthread_self())) {
        pthread_mutex_unlock(&pool.lock);
        return "this thread already holds the kernel thread pool (nested job)";
    }
    if (pool.busy && !pool.shutdown) {
        pool.stats.waits++;
        pool.stats.waiting++;
        while (pool.busy && !pool.shutdown) pthread_cond_wait(&pool.free_cv, &pool.lock);
        pool.stats.waiting--;
    }
    if (pool.shutdown) {
        pthread_mutex_unlock(&pool.lock);
        return "the kernel thread pool has shut down";
    }
    STORE(&pool.busy, 1);
    pool.owner = pthread_self();
    pool.stats.jobs++;
    pool.stats.last_threads = threads;
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

static void release(void)
{
    pthread_mutex_lock(&pool.lock);
    STORE(&pool.busy, 0);
    pthread_cond_signal(&pool.free_cv);
    pthread_mutex_unlock(&pool.lock);
}

const char *er_team_begin(int threads, er_team **team)
{
    *team = NULL;
    if (threads < 1 || threads > ER_MAX_THREADS) return "threads must be in 1..128";
    if (threads == 1) return NULL;
    pthread_once(&pool_once, register_fork_handler);
    const char *error = acquire(threads);
    if (error) return error;
    int previous = pool.max_worker;
    STORE(&pool.max_worker, threads - 1); /* before new workers start: they join at once */
    if (grow_pool(threads - 1) < threads - 1) {
        release();
        return "the kernel thread pool could not start as many threads as asked for";
    }
    /* idle workers all have tid > previous: only a larger job needs any of them */
    if (threads - 1 > previous && LOAD(&pool.idle_sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.idle_cv);
        pthread_mutex_unlock(&pool.lock);
    }
    *team = &pool;
    return NULL;
}

static int phase_done(const void *arg)
{
    const phase_slot *slot = (const phase_slot *)arg;
    return LOAD(&slot->done) == LOAD(&slot->items);
}

void er_team_run(er_team *team, er_item_fn fn, void *ctx, int items)
{
    if (team == NULL || items <= 1 || items > team->max_worker + 1) {
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
    if (team) release();
}

const char *er_run_parts(er_item_fn fn, void *ctx, int parts)
{
    er_team *team = NULL;
    const char *error = er_team_begin(parts, &team);
    if (error) return error;
    er_team_run(team, fn, ctx, parts);
    er_team_end(team);
    return NULL;
}

int er_pool_threads(void) { return LOAD(&pool.started) + 1; }

void er_pool_shutdown(void)
{
    pthread_mutex_lock(&pool.lock);
    while (pool.busy) pthread_cond_wait(&pool.free_cv, &pool.lock);
    STORE(&pool.busy, 1);
    STORE(&pool.shutdown, 1);
    pthread_cond_broadcast(&pool.cv);
    pthread_cond_broadcast(&pool.idle_cv);
    pthread_cond_broadcast(&pool.free_cv);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 1; i <= pool.started; i++) pthread_join(pool.ids[i], NULL);
    pool.started = 0;
}

er_pool_stats er_pool_statistics(void)
{
    pthread_mutex_lock(&pool.lock);
    er_pool_stats stats = pool.stats;
    pthread_mutex_unlock(&pool.lock);
    return stats;
}

const char *er_pool_hold(int threads)
{
    er_team *team = NULL;
    const char *error = er_team_begin(threads < 2 ? 2 : threads, &team);
    if (!error) held = team;
    return error;
}

const char *er_pool_release(void)
{
    pthread_mutex_lock(&pool.lock);
    int mine = held && pool.busy && pthread_equal(pool.owner, pthread_self());
    pthread_mutex_unlock(&pool.lock);
    if (!mine) return "this thread does not hold the kernel thread pool";
    held = NULL;
    er_team_end(&pool);
    return NULL;
}

/* A part smaller than about 10 us of work costs more in hand-overs than it saves. */
static long long min_part_macs = 300000;

long long er_min_part_macs(long long value)
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

void er_share(int n, int parts, int k, int *a, int *b)
{
    *a = (int)((long)n * k / parts);
    *b = (int)((long)n * (k + 1) / parts);
}
