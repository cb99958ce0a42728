/* The persistent thread pool of the native kernels (threadpool.c).
 * Workers start on first use and stay; waits spin briefly, then sleep. The pool serves one job at a
 * time: a caller that finds it busy waits until it is free, so a caller that asks for N threads gets
 * a team of N (or an error, never fewer threads in silence). */
#ifndef EDGERUN_THREADPOOL_H
#define EDGERUN_THREADPOOL_H

#define ER_MAX_THREADS 128 /* the caller + at most 127 workers */

typedef struct er_team er_team;
typedef void (*er_item_fn)(void *ctx, int item);

/* A job: er_team_begin(threads, &team) sets team (NULL for threads == 1: the caller runs alone) and
 * returns NULL, or returns why it cannot (threads outside 1..ER_MAX_THREADS, a nested job from a thread
 * that holds the pool or works for it, workers that cannot start, a pool shut down). While another
 * caller's job runs it waits. er_team_run(team, fn, ctx, items) runs fn(ctx, i) for every i in
 * [0, items) (items <= threads) on the caller and the team's workers and returns when all are done;
 * item i goes to participant i (the caller is 0) unless another is free first. er_team_end(team).
 * Items of one call must be independent of each other. */
const char *er_team_begin(int threads, er_team **team);
void er_team_run(er_team *team, er_item_fn fn, void *ctx, int items);
void er_team_end(er_team *team);
/* One phase of `parts` items on a team of that many threads (begin, run, end); NULL or an error. */
const char *er_run_parts(er_item_fn fn, void *ctx, int parts);

int er_pool_threads(void);   /* 1 + workers started so far */
void er_pool_shutdown(void); /* joins the workers (at exit); later jobs of > 1 thread are refused */

/* Counters of the pool (for tests): jobs begun on a team, jobs that waited for another caller's,
 * callers waiting now, and the threads of the last team begun. */
typedef struct {
    long long jobs, waits;
    int waiting, last_threads;
} er_pool_stats;
er_pool_stats er_pool_statistics(void);

/* Test hooks: hold the pool from the calling thread as a job of `threads` would, and let it go
 * (only the holder can). NULL or an error. */
const char *er_pool_hold(int threads);
const char *er_pool_release(void);

/* Work under 2 * this many multiply-adds is not worth a hand-over to another thread; value >= 0
 * sets it (tests set 0 to split every step), returns the previous value. */
long long er_min_part_macs(long long value);

/* How many parts (1 .. min(threads, most)) `macs` multiply-adds are worth splitting into: each
 * part gets at least about er_min_part_macs of them. */
int er_worth_parts(double macs, int threads, int most);

/* Part k of `parts` near-equal contiguous ranges of [0, n): [*a, *b). */
void er_share(int n, int parts, int k, int *a, int *b);

#endif
