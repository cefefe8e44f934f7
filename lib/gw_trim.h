/*  gw_trim.h: give memory back to the system once a burst is over.

    glibc keeps what a process freed for its next allocations: after 10,000
    streams, an ingress that served them holds hundreds of megabytes it no
    longer uses, for good. A trimmer looks every interval and, when its
    owner says nothing is in progress, calls malloc_trim(0), which returns the
    free pages of every arena to the system. It costs a walk of the arenas
    (well under a millisecond when there is little to give back), never while
    work is in progress. */
#ifndef GW_TRIM_H_INCLUDED
#define GW_TRIM_H_INCLUDED

#include "gw_loop.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct gw_trim_t gw_trim_t;

/*  Work in progress of the owner (requests, jobs); 0 means idle. */
typedef size_t (gw_trim_active_fn) (void *arg);

/*  Looks every interval_ms (GW_MEM_TRIM_MS, default 10000; 0 never). */
gw_trim_t *gw_trim_new (gw_loop_t *loop, gw_trim_active_fn *active, void *arg);
void gw_trim_destroy (gw_trim_t **self_p);

/*  Trims now if idle; returns whether it did. (What the timer calls.) */
bool gw_trim_now (gw_trim_t *self);

void gw_trim_test (bool verbose);

#endif
