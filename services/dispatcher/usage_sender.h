/*  usage_sender.h: usage events from the spool to accounting, until acknowledged.

    Every event is appended to the spool, made durable by one fdatasync per loop
    turn (group commit), and only then sent. One DEALER socket connected to every
    accounting endpoint spreads events over the instances; an event not
    acknowledged within the resend interval is sent again (to whichever instance),
    and accounting's insert is idempotent, so duplicates cost nothing. An event the
    spool cannot take (full) waits in memory and is retried each turn: it is never
    dropped.
*/
#ifndef USAGE_SENDER_H_INCLUDED
#define USAGE_SENDER_H_INCLUDED

#include "gw_loop.h"
#include "gw_proto.h"
#include "usage_spool.h"

typedef struct usage_sender_t usage_sender_t;

typedef struct {
    const char *endpoints;  //  comma list of accounting endpoints
    int resend_ms;  //  an unacknowledged event is sent again after this
} sender_config_t;

usage_sender_t *usage_sender_new (gw_loop_t *loop, void *zmq_ctx, const sender_config_t *config,
                                  usage_spool_t *spool);
void usage_sender_destroy (usage_sender_t **self_p);

/*  Takes one event (copied) for durable delivery. It is in the spool's file
    when this returns (unless the disk fails): the job's answer may leave. */
void usage_sender_submit (usage_sender_t *self, const gw_usage_t *event);

/*  Events the full spool could not take, held in memory. */
size_t usage_sender_held (usage_sender_t *self);

/*  Makes everything submitted durable now (at shutdown). */
void usage_sender_flush (usage_sender_t *self);

/*  Sends a STATUS on the same DEALER (best effort: a status that is lost is
    replaced by the next one). */
void usage_sender_status (usage_sender_t *self, const gw_status_t *status);

#endif
