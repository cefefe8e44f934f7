/*  usage_spool.h: the dispatcher's durable queue of usage events for accounting.

    Every usage event is appended here and made durable (fdatasync) before it is
    sent; it is forgotten only when accounting acknowledges it after its database
    commit. After a restart, even after SIGKILL in the middle of a write, every
    durable event not acknowledged is pending again and goes out again (accounting
    deduplicates by event_id, so a resend is harmless).

    Use per loop turn: usage_spool_append() each new event (memory only, O(1))
    and usage_spool_write() before its answer leaves the process, then once
    usage_spool_sync_start() (one write for the whole turn, and an
    fdatasync on the spool's own thread, group commit; usage_spool_sync_finish()
    when usage_spool_sync_fd() is readable) or usage_spool_sync() (the same,
    waiting for the disk), then usage_spool_due() to send what is durable and
    due, and usage_spool_ack() for each USAGE_ACK event id.

    On disk: segment files spool-<16 hex digits>.log in one directory that belongs
    to one dispatcher instance (a second process opening it is refused). The
    record format is described in usage_spool.c. Not thread-safe: one loop owns it
    (the thread behind usage_spool_sync_start only writes and fdatasyncs).
*/
#ifndef USAGE_SPOOL_H_INCLUDED
#define USAGE_SPOOL_H_INCLUDED

#include "gw_proto.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  A segment is closed and a new one started once it holds this many bytes, so
    that old segments whose events are all acknowledged can be unlinked. */
#define USAGE_SPOOL_SEGMENT_SIZE (8u * 1024 * 1024)

/*  Largest record; a bigger event is refused (usage events are a few hundred
    bytes). Also bounds what a damaged file can make the replay allocate. */
#define USAGE_SPOOL_RECORD_MAX (1u * 1024 * 1024)

typedef struct usage_spool_t usage_spool_t;

/*  Receives one due event: its id and its encoded USAGE message, ready to send
    as one ZeroMQ frame. The bytes are borrowed; fn must not call the spool.
    Returns false when it could not send (the event stays due and the walk stops). */
typedef bool (usage_spool_send_fn) (void *arg, const char *event_id, const void *bytes, size_t size);

/*  Opens the spool directory (creating it and its parents) and replays its
    segments: every complete event not followed by an acknowledgement is pending
    again; a torn tail (crash mid-write) is cut off the file. max_bytes bounds
    the bytes of pending events (usage_spool_bytes). NULL on error (logged). */
usage_spool_t *usage_spool_new (const char *dir, size_t max_bytes);

/*  Writes what is buffered (acknowledgements, events not yet synced: one more
    usage_spool_sync) and closes. */
void usage_spool_destroy (usage_spool_t **self_p);

/*  Appends a copy of one event. Memory only: durable after the next successful
    usage_spool_sync(). An event_id already pending is kept once (returns 0).
    Returns -1 when the spool is full (pending bytes would exceed max_bytes; a
    usage_spool_ack makes room) or the event is too big or memory ran out. */
int usage_spool_append (usage_spool_t *self, const gw_usage_t *event);

/*  Group commit: writes every record appended since the last sync with one
    write and one fdatasync, then reclaims segments whose events are all
    acknowledged. Returns 0, or -1 (logged): the unsynced events stay buffered
    and the next sync retries them in a new segment. */
int usage_spool_sync (usage_spool_t *self);

/*  The same group commit without waiting for the disk: hands what was
    appended since the last sync to a thread of the spool's own, which writes
    it and fdatasyncs the file, while the loop goes on (appends gather for the
    next batch). Returns 1 when a batch is in flight (this one or one started
    before), 0 when there was nothing to write, -1 on error (logged; retried
    after a pause). When usage_spool_sync_fd() is readable, call
    usage_spool_sync_finish(): the batch's events become due. One batch at a
    time; usage_spool_sync() and usage_spool_destroy() wait for it. */
int usage_spool_sync_start (usage_spool_t *self);

/*  Writes what was appended to the file now (no fdatasync: that stays with the
    next sync), so that a crash of the process cannot lose it. The dispatcher
    calls it before an answer leaves: a client never holds an answer whose
    usage event is only in this process's memory. Returns 0, or -1 (logged;
    the events stay buffered, as for a failed sync). */
int usage_spool_write (usage_spool_t *self);

/*  An eventfd, readable once the batch in flight is done. */
int usage_spool_sync_fd (usage_spool_t *self);

/*  Takes the outcome of the batch in flight: 0 done (its events are due; also
    when none was in flight), 1 still in flight, -1 failed (logged; its events
    wait for the next start, after a pause, into a new segment). */
int usage_spool_sync_finish (usage_spool_t *self);

/*  A batch is in flight. */
bool usage_spool_syncing (usage_spool_t *self);

/*  Calls fn for each durable pending event never sent, or last sent more than
    resend_ms before now_ms (a monotonic clock), at most max events, oldest
    first, and records now_ms as its send time. Returns how many. */
size_t usage_spool_due (usage_spool_t *self, int64_t now_ms, int64_t resend_ms, size_t max,
                        usage_spool_send_fn *fn, void *arg);

/*  When usage_spool_due() next has something to hand out: 0 if it has now,
    else the now_ms at which a resend becomes due, INT64_MAX if never (nothing
    durable is pending). For the caller's timer. */
int64_t usage_spool_next_due (usage_spool_t *self, int64_t resend_ms);

/*  The event is committed downstream: forget it. Unknown ids are ignored (acks
    repeat). The acknowledgement is recorded by the next usage_spool_sync();
    losing it in a crash only means one harmless resend. */
void usage_spool_ack (usage_spool_t *self, const char *event_id);

/*  Events not acknowledged (synced or not). */
size_t usage_spool_pending (usage_spool_t *self);

/*  Their record bytes, what max_bytes bounds. */
size_t usage_spool_bytes (usage_spool_t *self);

void usage_spool_test (bool verbose);

#endif
