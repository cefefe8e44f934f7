/*  gw_trim.c: malloc_trim once a burst is over. */
#include "gw_trim.h"
#include "gw_env.h"
#include "gw_log.h"

#include <assert.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct gw_trim_t {
    gw_loop_t *loop;
    gw_timer_t *timer;
    gw_trim_active_fn *active;
    void *arg;
    int interval_ms;
};

bool
gw_trim_now (gw_trim_t *self)
{
    if (self->active && self->active (self->arg))
        return false;
    malloc_trim (0);
    return true;
}

static void
s_on_timer (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    gw_trim_t *self = arg;
    gw_trim_now (self);
    gw_timer_start (loop, timer, self->interval_ms);
}

gw_trim_t *
gw_trim_new (gw_loop_t *loop, gw_trim_active_fn *active, void *arg)
{
    gw_trim_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->active = active;
    self->arg = arg;
    self->interval_ms = (int) gw_env_int ("GW_MEM_TRIM_MS", 10000, 0, 3600000);
    if (loop && self->interval_ms > 0) {
        self->timer = gw_timer_new (s_on_timer, self);
        gw_timer_start (loop, self->timer, self->interval_ms);
    }
    return self;
}

void
gw_trim_destroy (gw_trim_t **self_p)
{
    gw_trim_t *self = *self_p;
    if (!self)
        return;
    if (self->timer)
        gw_timer_destroy (self->loop, &self->timer);
    free (self);
    *self_p = NULL;
}

/* ---- selftest ---- */

static size_t s_test_busy;

static size_t
s_test_active (void *arg)
{
    (void) arg;
    return s_test_busy;
}

static long
s_test_rss_kib (void)
{
    FILE *f = fopen ("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf (f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose (f);
    }
    return rss * (sysconf (_SC_PAGESIZE) / 1024);
}

void
gw_trim_test (bool verbose)
{
    if (verbose)
        printf (" * gw_trim: ");
    gw_trim_t *trim = gw_trim_new (NULL, s_test_active, NULL);
    assert (trim);
    //  Many small blocks, freed all but the last: the heap cannot shrink from
    //  its top, only malloc_trim gives the pages in between back.
    enum { N = 20000, SIZE = 2048 };
    char **blocks = malloc (N * sizeof *blocks);
    assert (blocks);
    for (int i = 0; i < N; i++) {
        blocks[i] = malloc (SIZE);
        assert (blocks[i]);
        memset (blocks[i], 1, SIZE);
    }
    for (int i = 0; i < N - 1; i++)
        free (blocks[i]);
    long before = s_test_rss_kib ();
    s_test_busy = 1;
    assert (!gw_trim_now (trim));  //  work in progress: left alone
    s_test_busy = 0;
    assert (gw_trim_now (trim));
    long after = s_test_rss_kib ();
#ifndef __SANITIZE_ADDRESS__
    //  About 40 MB were freed; most of it must have gone back. (Under ASan
    //  the allocator is ASan's, which keeps freed blocks in quarantine and
    //  which malloc_trim does not reach: there is nothing to measure.)
    assert (before - after > 20 * 1024);
#endif
    free (blocks[N - 1]);
    free (blocks);
    gw_trim_destroy (&trim);
    if (verbose)
        printf ("OK (%ld KiB back)\n", before - after);
}
