/*  usage_spool.c: usage events in fsync'd segment files until accounting acknowledges them.

    Record, little-endian: [u32 length][u32 crc32][payload]. length counts the
    payload (at least 1, at most USAGE_SPOOL_RECORD_MAX), crc32 (IEEE, the zlib
    one) covers the payload. The payload's first byte is its type:
        'E'  event: [u16 id length][event_id][encoded USAGE message]
        'A'  acknowledgements: event_id NUL event_id NUL ...
    Segments (spool-<seq as 16 hex digits>.log) are written with write(2) on an
    O_APPEND descriptor and never written again once the process that wrote them
    is gone: a restart replays them and appends to a new segment.

    Why it holds together:
    -   An event is handed to usage_spool_due() only after the write and the
        fdatasync of its record returned. A segment's name is made durable
        (directory fsync) before anything is written into it.
    -   Records reach the file in the order the calls were made (one buffer), so
        an 'A' always follows the 'E' it names. Replay applies them in order: an
        'E' makes its event pending (a later copy of a pending event just moves
        it), an 'A' forgets the ids it lists.
    -   Segments are unlinked oldest first only. An 'A' in segment k names
        events whose record is in a segment <= k, so unlinking the oldest segment
        never brings an acknowledged event back.
    -   One event that is never acknowledged would pin every younger segment.
        When the files hold more than twice the pending bytes plus two segments,
        the oldest segment's pending events are copied into the current one
        (fdatasync'd first) and the old segment unlinked: disk use stays within
        about 2 * max_bytes + 2 segments.
    -   A crash mid-write leaves at most a torn record at the end of a segment
        (length or CRC wrong, or cut short). Replay cuts it off. Damage
        followed by a valid record is not a torn write but a damaged file: it is
        skipped, logged as an error, and the file left as it is.
    -   Acknowledgements are written with the next batch but, alone, not synced:
        losing them in a power cut costs a resend, which accounting absorbs.
*/
#include "usage_spool.h"
#include "gw_buf.h"
#include "gw_log.h"
#include "gw_loop.h"

#include <assert.h>
#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define RECORD_HEADER 8  //  length, crc32
#define EVENT_HEADER 3  //  tag, u16 id length
#define ID_MAX 255
#define ACK_RECORD_MAX (64u * 1024)  //  an acknowledgement record is closed at this size
#define TAG_EVENT 'E'
#define TAG_ACK 'A'
#define NO_MARK SIZE_MAX
#define RETRY_MS 1000  //  after a failed write, the next attempt waits this long

typedef struct event_t event_t;
typedef struct segment_t segment_t;

struct segment_t {
    uint64_t seq;
    int fd;  //  open for appending while it is the current segment, else -1
    size_t size;  //  bytes in the file
    size_t synced;  //  of which fdatasync'd
    size_t live;  //  pending events whose newest record is here
    event_t *first, *last;  //  those events
    segment_t *next;  //  the next younger segment
};

/*  Which queue an event is in. Unsynced events are only in the write buffer;
    written ones are in the current segment's file (the page cache: a crash of
    the process keeps them, a power cut may not); syncing ones are covered by
    the fdatasync the syncer thread is running. None of these is durable yet.
    The sent queue is ordered by send time, so resends come from its head. */
enum { Q_UNSYNCED, Q_WRITTEN, Q_SYNCING, Q_UNSENT, Q_SENT, Q_COUNT };

struct event_t {
    event_t *prev, *next;  //  in its queue
    event_t *seg_prev, *seg_next;  //  among its segment's live events
    segment_t *segment;  //  where its newest durable record is; NULL if none yet
    int queue;
    int64_t sent_ms;
    char *bytes;  //  the encoded USAGE message, after id in the same block
    size_t size;
    size_t record_size;  //  bytes its record takes on disk
    char id[];
};

typedef struct {
    event_t *head, *tail;
} queue_t;

struct usage_spool_t {
    const char *log_service;  //  its starter's, for the syncer's lines (gw_log_service)
    char *dir;
    int dirfd;  //  also holds the flock that keeps a second process out
    size_t max_bytes;
    size_t segment_max;  //  USAGE_SPOOL_SEGMENT_SIZE; smaller in the selftest
    int64_t retry_ms;
    zhashx_t *events;  //  event_id -> event_t, every pending event
    queue_t queues[Q_COUNT];
    segment_t *oldest, *newest;  //  every segment file, oldest first
    segment_t *current;  //  the one being appended to, NULL until the next flush
    uint64_t next_seq;
    size_t pending_bytes;  //  record bytes of the pending events
    size_t disk_bytes;  //  bytes of all segment files
    gw_buf_t wbuf;  //  records not yet written
    size_t wbuf_events;  //  event records among them
    size_t ack_mark;  //  offset in wbuf of the open acknowledgement record
    int64_t retry_at_ms;  //  after a failed write, no new attempt before this
    bool full;  //  refusing events; logged once per episode

    //  The background sync (usage_spool_sync_start/finish): the loop writes,
    //  the syncer thread only fdatasyncs the current segment (fseg), up to
    //  fsize; every change of state stays on the loop. done_fd becomes
    //  readable when the fdatasync returned.
    segment_t *fseg;
    size_t fsize;
    bool syncing;  //  an fdatasync is with the syncer
    int done_fd;
    bool syncer_started;
    pthread_t syncer;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    bool job_ready, job_done, stopping;  //  under mutex
    int job_errno;  //  under mutex
};

/* ---- CRC32 (IEEE 802.3, reflected, as zlib's crc32), eight bytes a step ---- */

static uint32_t s_crc_table[8][256];

static void
s_crc_init (void)
{
    if (s_crc_table[0][1])
        return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        s_crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++)
            s_crc_table[t][i] = s_crc_table[t - 1][i] >> 8 ^ s_crc_table[0][s_crc_table[t - 1][i] & 0xFF];
}

static uint32_t s_get_u32 (const uint8_t *p);

static uint32_t
s_crc32 (const void *data, size_t size)
{
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (; size >= 8; p += 8, size -= 8) {
        uint32_t a = c ^ s_get_u32 (p), b = s_get_u32 (p + 4);
        c = s_crc_table[7][a & 0xFF] ^ s_crc_table[6][a >> 8 & 0xFF] ^ s_crc_table[5][a >> 16 & 0xFF]
            ^ s_crc_table[4][a >> 24] ^ s_crc_table[3][b & 0xFF] ^ s_crc_table[2][b >> 8 & 0xFF]
            ^ s_crc_table[1][b >> 16 & 0xFF] ^ s_crc_table[0][b >> 24];
    }
    while (size--)
        c = s_crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void
s_put_u32 (uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t) v, p[1] = (uint8_t) (v >> 8), p[2] = (uint8_t) (v >> 16), p[3] = (uint8_t) (v >> 24);
}

static uint32_t
s_get_u32 (const uint8_t *p)
{
    return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static size_t
s_get_u16 (const uint8_t *p)
{
    return (size_t) p[0] | (size_t) p[1] << 8;
}

/* ---- queues and segment membership ---- */

static void
s_queue_push (usage_spool_t *self, int queue, event_t *e)
{
    queue_t *q = &self->queues[queue];
    e->queue = queue;
    e->prev = q->tail;
    e->next = NULL;
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
}

static void
s_queue_remove (usage_spool_t *self, event_t *e)
{
    queue_t *q = &self->queues[e->queue];
    if (e->prev)
        e->prev->next = e->next;
    else
        q->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        q->tail = e->prev;
    e->prev = e->next = NULL;
}

static void
s_attach (segment_t *seg, event_t *e)
{
    e->segment = seg;
    e->seg_prev = seg->last;
    e->seg_next = NULL;
    if (seg->last)
        seg->last->seg_next = e;
    else
        seg->first = e;
    seg->last = e;
    seg->live++;
}

static void
s_detach (event_t *e)
{
    segment_t *seg = e->segment;
    if (!seg)
        return;
    if (e->seg_prev)
        e->seg_prev->seg_next = e->seg_next;
    else
        seg->first = e->seg_next;
    if (e->seg_next)
        e->seg_next->seg_prev = e->seg_prev;
    else
        seg->last = e->seg_prev;
    e->seg_prev = e->seg_next = NULL;
    e->segment = NULL;
    seg->live--;
}

/*  A new event with copies of id and bytes in one block (the codec's buffer
    has 8 KiB of room, too much to keep for each pending event), or NULL. */
static event_t *
s_event_new (const char *id, size_t id_size, const void *bytes, size_t size)
{
    event_t *e = malloc (sizeof *e + id_size + 1 + size);
    if (!e)
        return NULL;
    memset (e, 0, sizeof *e);
    memcpy (e->id, id, id_size);
    e->id[id_size] = 0;
    e->bytes = e->id + id_size + 1;
    memcpy (e->bytes, bytes, size);
    e->size = size;
    e->record_size = RECORD_HEADER + EVENT_HEADER + id_size + size;
    return e;
}

/*  Indexes a new event, whose id the caller found absent, in a queue. */
static void
s_event_add (usage_spool_t *self, event_t *e, int queue)
{
    int rc = zhashx_insert (self->events, e->id, e);
    assert (rc == 0);
    (void) rc;
    s_queue_push (self, queue, e);
    self->pending_bytes += e->record_size;
}

static void
s_event_forget (usage_spool_t *self, event_t *e)
{
    zhashx_delete (self->events, e->id);
    s_queue_remove (self, e);
    s_detach (e);
    self->pending_bytes -= e->record_size;
    free (e);
}

/* ---- building records in the write buffer ---- */

/*  Fills in length and CRC of the record whose header starts at mark. */
static void
s_record_seal (usage_spool_t *self, size_t mark)
{
    uint8_t *rec = (uint8_t *) self->wbuf.data + mark;
    size_t len = self->wbuf.len - mark - RECORD_HEADER;
    s_put_u32 (rec, (uint32_t) len);
    s_put_u32 (rec + 4, s_crc32 (rec + RECORD_HEADER, len));
}

static void
s_wbuf_truncate (usage_spool_t *self, size_t len)
{
    self->wbuf.len = len;
    if (self->wbuf.data)
        self->wbuf.data[len] = 0;
}

static void
s_ack_close (usage_spool_t *self)
{
    if (self->ack_mark == NO_MARK)
        return;
    s_record_seal (self, self->ack_mark);
    self->ack_mark = NO_MARK;
}

static int
s_put_event (usage_spool_t *self, const event_t *e)
{
    s_ack_close (self);
    size_t mark = self->wbuf.len;
    size_t id_size = strlen (e->id);
    uint8_t head[RECORD_HEADER + EVENT_HEADER] = { 0 };
    head[RECORD_HEADER] = TAG_EVENT;
    head[RECORD_HEADER + 1] = (uint8_t) id_size;
    head[RECORD_HEADER + 2] = (uint8_t) (id_size >> 8);
    if (gw_buf_append (&self->wbuf, head, sizeof head) || gw_buf_append (&self->wbuf, e->id, id_size)
        || gw_buf_append (&self->wbuf, e->bytes, e->size)) {
        s_wbuf_truncate (self, mark);
        return -1;
    }
    s_record_seal (self, mark);
    self->wbuf_events++;
    return 0;
}

/*  Adds an id to the open acknowledgement record. Out of memory, the
    acknowledgement is not recorded: a resend after a restart. */
static void
s_put_ack (usage_spool_t *self, const char *id)
{
    size_t id_size = strlen (id) + 1;
    if (self->ack_mark != NO_MARK && self->wbuf.len - self->ack_mark + id_size > ACK_RECORD_MAX)
        s_ack_close (self);
    if (self->ack_mark == NO_MARK) {
        size_t mark = self->wbuf.len;
        uint8_t head[RECORD_HEADER + 1] = { [RECORD_HEADER] = TAG_ACK };
        if (gw_buf_append (&self->wbuf, head, sizeof head))
            return;
        self->ack_mark = mark;
    }
    gw_buf_append (&self->wbuf, id, id_size);
}

/* ---- segment files ---- */

static void
s_segment_name (uint64_t seq, char name[32])
{
    snprintf (name, 32, "spool-%016" PRIx64 ".log", seq);
}

/*  The sequence number of a segment file name, or 0 for any other name. */
static uint64_t
s_segment_seq (const char *name)
{
    uint64_t seq = 0;
    if (strlen (name) != 26 || strncmp (name, "spool-", 6) || strcmp (name + 22, ".log"))
        return 0;
    for (int i = 6; i < 22; i++) {
        char c = name[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (digit < 0)
            return 0;
        seq = seq << 4 | (uint64_t) digit;
    }
    return seq;
}

static segment_t *
s_segment_add (usage_spool_t *self, uint64_t seq)
{
    segment_t *seg = calloc (1, sizeof *seg);
    if (!seg)
        return NULL;
    seg->seq = seq;
    seg->fd = -1;
    if (self->newest)
        self->newest->next = seg;
    else
        self->oldest = seg;
    self->newest = seg;
    return seg;
}

static void
s_segment_seal (usage_spool_t *self, segment_t *seg)
{
    if (seg->fd >= 0)
        close (seg->fd);
    seg->fd = -1;
    if (self->current == seg)
        self->current = NULL;
}

/*  Unlinks a segment that holds no pending event and drops it from the list.
    The caller fsyncs the directory. Returns 0 or -1. */
static int
s_segment_drop (usage_spool_t *self, segment_t *seg)
{
    assert (seg->live == 0);
    char name[32];
    s_segment_name (seg->seq, name);
    if (unlinkat (self->dirfd, name, 0) && errno != ENOENT) {
        gw_error ("spool", "cannot unlink dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        return -1;
    }
    segment_t **link = &self->oldest, *prev = NULL;
    while (*link != seg)
        prev = *link, link = &(*link)->next;
    *link = seg->next;
    if (self->newest == seg)
        self->newest = prev;
    s_segment_seal (self, seg);
    self->disk_bytes -= seg->size;
    free (seg);
    return 0;
}

static int
s_segment_create (usage_spool_t *self)
{
    char name[32];
    uint64_t seq = self->next_seq++;
    s_segment_name (seq, name);
    int fd = openat (self->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        gw_error ("spool", "cannot create dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        return -1;
    }
    //  The name must be durable before anything in the file counts as durable.
    segment_t *seg = NULL;
    if (fsync (self->dirfd) || !(seg = s_segment_add (self, seq))) {
        gw_error ("spool", "cannot create dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        close (fd);
        unlinkat (self->dirfd, name, 0);
        return -1;
    }
    seg->fd = fd;
    self->current = seg;
    return 0;
}

/*  Unlinks, oldest first, the segments whose events are all acknowledged. */
static void
s_reclaim (usage_spool_t *self)
{
    bool dropped = false;
    while (self->oldest && self->oldest != self->current && self->oldest->live == 0) {
        if (s_segment_drop (self, self->oldest))
            break;
        dropped = true;
    }
    //  Not needed for correctness (a segment coming back only means resends),
    //  but it keeps a replay from reading what was already reclaimed.
    if (dropped && fsync (self->dirfd))
        gw_warn ("spool", "directory fsync failed dir=%s error=%s", self->dir, strerror (errno));
}

static int
s_write_all (int fd, const char *data, size_t size)
{
    while (size) {
        ssize_t n = write (fd, data, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        data += n;
        size -= (size_t) n;
    }
    return 0;
}

/*  After a failed write or fdatasync, what the current segment holds beyond
    its last fdatasync is suspect (the kernel may have dropped the dirty pages,
    and a second fdatasync would succeed without them): it is cut off, the
    segment sealed, and its unsynced events written again from the buffer,
    into a new segment. Not while the syncer holds the segment. */
static void
s_rewind (usage_spool_t *self, segment_t *seg, int err)
{
    assert (!self->syncing);
    char name[32];
    s_segment_name (seg->seq, name);
    gw_error ("spool", "write failed dir=%s segment=%s bytes=%zu error=%s: retrying in a new segment", self->dir,
              name, seg->size - seg->synced + self->wbuf.len, strerror (err));
    if (seg->size > seg->synced) {
        if (ftruncate (seg->fd, (off_t) seg->synced))
            gw_error ("spool", "cannot truncate dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        self->disk_bytes -= seg->size - seg->synced;
        seg->size = seg->synced;
    }
    //  Their acknowledgements in the cut tail are lost: a resend at worst.
    for (int q = Q_WRITTEN; q <= Q_SYNCING; q++) {
        event_t *e;
        while ((e = self->queues[q].head)) {
            s_queue_remove (self, e);
            s_detach (e);
            if (s_put_event (self, e))
                gw_error ("spool", "out of memory: event_id=%s is not durable", e->id);
            s_queue_push (self, Q_UNSYNCED, e);
        }
    }
    s_segment_seal (self, seg);
    if (seg->size == 0 && seg->live == 0)
        s_segment_drop (self, seg);
}

static void s_synced (usage_spool_t *self, segment_t *seg, size_t size, int queue);

/*  Writes the buffer to the current segment (creating one if needed); its
    events are written, not durable. A full segment is sealed first, when the
    syncer is idle (its unsynced tail fdatasync'd here: once a segment).
    Returns 0 or -1 (logged; the buffer is kept, and when the syncer is idle
    the segment is rewound). */
static int
s_write (usage_spool_t *self)
{
    s_ack_close (self);
    if (self->wbuf.len == 0)
        return 0;
    segment_t *seg = self->current;
    if (seg && seg->size >= self->segment_max && !self->syncing) {
        if (seg->synced < seg->size && fdatasync (seg->fd)) {
            s_rewind (self, seg, errno);
            return -1;
        }
        s_synced (self, seg, seg->size, Q_WRITTEN);
        s_segment_seal (self, seg);
    }
    if (!self->current && s_segment_create (self))
        return -1;
    seg = self->current;
    if (s_write_all (seg->fd, self->wbuf.data, self->wbuf.len)) {
        int err = errno;
        //  The part of this write that made it goes too.
        if (ftruncate (seg->fd, (off_t) seg->size))
            gw_error ("spool", "cannot truncate dir=%s error=%s", self->dir, strerror (errno));
        if (!self->syncing)
            s_rewind (self, seg, err);
        return -1;
    }
    seg->size += self->wbuf.len;
    self->disk_bytes += self->wbuf.len;
    s_wbuf_truncate (self, 0);
    self->wbuf_events = 0;
    event_t *e;
    while ((e = self->queues[Q_UNSYNCED].head)) {
        s_queue_remove (self, e);
        s_attach (seg, e);
        s_queue_push (self, Q_WRITTEN, e);
    }
    return 0;
}

/*  Written events whose fdatasync returned become due. */
static void
s_synced (usage_spool_t *self, segment_t *seg, size_t size, int queue)
{
    if (size > seg->synced)
        seg->synced = size;
    event_t *e;
    while ((e = self->queues[queue].head)) {
        s_queue_remove (self, e);
        s_queue_push (self, Q_UNSENT, e);
    }
}

/*  Writes the buffer and fdatasyncs the current segment, on this thread; the
    events become due. into_p, if given, gets the segment written to. Returns
    0 or -1 (logged; the events wait, after a pause, for a new segment). */
static int
s_flush (usage_spool_t *self, segment_t **into_p)
{
    assert (!self->syncing);
    if (s_write (self))
        return -1;
    segment_t *seg = self->current;
    if (!seg)
        return 0;
    if (self->queues[Q_WRITTEN].head && fdatasync (seg->fd)) {
        s_rewind (self, seg, errno);
        return -1;
    }
    s_synced (self, seg, seg->size, Q_WRITTEN);
    if (into_p)
        *into_p = seg;
    if (seg->size >= self->segment_max)
        s_segment_seal (self, seg);
    return 0;
}

/*  Copies the pending events of the oldest segment into the current one when
    old segments hold mostly acknowledged events but cannot go because of it. */
static void
s_compact (usage_spool_t *self)
{
    segment_t *old = self->oldest;
    if (!old || old == self->current || old->live == 0
        || self->disk_bytes <= 2 * self->pending_bytes + 2 * self->segment_max)
        return;
    if (self->syncing || self->queues[Q_WRITTEN].head)
        return;
    //  New events may wait in the buffer: they go with the copies, and stay
    //  if the copies fail.
    s_ack_close (self);
    size_t mark = self->wbuf.len, mark_events = self->wbuf_events;
    for (event_t *e = old->first; e; e = e->seg_next)
        if (s_put_event (self, e)) {
            s_wbuf_truncate (self, mark);
            self->wbuf_events = mark_events;
            return;
        }
    segment_t *into = NULL;
    if (s_flush (self, &into)) {
        //  The events stay in the old segment, which stays.
        s_wbuf_truncate (self, mark);
        self->wbuf_events = mark_events;
        return;
    }
    char name[32];
    s_segment_name (old->seq, name);
    gw_debug ("spool", "compacted dir=%s segment=%s events=%zu", self->dir, name, old->live);
    while (old->first) {
        event_t *e = old->first;
        s_detach (e);
        s_attach (into, e);
    }
}

/* ---- replay ---- */

/*  Length of the valid record starting at off (header included), or 0. */
static size_t
s_record_at (const uint8_t *data, size_t size, size_t off)
{
    if (size - off < RECORD_HEADER + 1)
        return 0;
    size_t len = s_get_u32 (data + off);
    if (len < 1 || len > USAGE_SPOOL_RECORD_MAX || len > size - off - RECORD_HEADER)
        return 0;
    const uint8_t *p = data + off + RECORD_HEADER;
    if (p[0] == TAG_EVENT) {
        if (len < EVENT_HEADER + 2)
            return 0;
        size_t id_size = s_get_u16 (p + 1);
        if (id_size < 1 || id_size > ID_MAX || EVENT_HEADER + id_size >= len
            || memchr (p + EVENT_HEADER, 0, id_size))
            return 0;
    }
    else if (p[0] == TAG_ACK) {
        if (len > 1 && p[len - 1] != 0)
            return 0;
    }
    else
        return 0;
    if (s_crc32 (p, len) != s_get_u32 (data + off + 4))
        return 0;
    return RECORD_HEADER + len;
}

/*  Applies one valid record. Returns 0 or -1 (out of memory). */
static int
s_replay_record (usage_spool_t *self, segment_t *seg, const uint8_t *p, size_t len)
{
    if (p[0] == TAG_ACK) {
        for (size_t i = 1; i < len;) {
            const char *id = (const char *) p + i;
            event_t *e = zhashx_lookup (self->events, id);
            if (e)
                s_event_forget (self, e);
            i += strlen (id) + 1;
        }
        return 0;
    }
    size_t id_size = s_get_u16 (p + 1);
    char id[ID_MAX + 1];
    memcpy (id, p + EVENT_HEADER, id_size);
    id[id_size] = 0;
    event_t *e = zhashx_lookup (self->events, id);
    if (e) {
        //  A newer copy (compaction) of a pending event: it lives here now.
        s_detach (e);
        s_attach (seg, e);
        return 0;
    }
    e = s_event_new (id, id_size, p + EVENT_HEADER + id_size, len - EVENT_HEADER - id_size);
    if (!e)
        return -1;
    s_event_add (self, e, Q_UNSENT);
    s_attach (seg, e);
    return 0;
}

static int
s_replay_segment (usage_spool_t *self, segment_t *seg)
{
    char name[32];
    s_segment_name (seg->seq, name);
    int fd = openat (self->dirfd, name, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat (fd, &st)) {
        gw_error ("spool", "cannot open dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        if (fd >= 0)
            close (fd);
        return -1;
    }
    size_t size = (size_t) st.st_size;
    uint8_t *data = malloc (size ? size : 1);
    size_t got = 0;
    while (data && got < size) {
        ssize_t n = pread (fd, data + got, size - got, (off_t) got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t) n;
    }
    if (!data || got < size) {
        gw_error ("spool", "cannot read dir=%s segment=%s error=%s", self->dir, name,
                  data ? strerror (errno) : "out of memory");
        free (data);
        close (fd);
        return -1;
    }
    int rc = 0;
    size_t off = 0;
    while (off < size && rc == 0) {
        size_t len = s_record_at (data, size, off);
        if (len) {
            rc = s_replay_record (self, seg, data + off + RECORD_HEADER, len - RECORD_HEADER);
            off += len;
            continue;
        }
        size_t next = off + 1;
        while (next < size && !s_record_at (data, size, next))
            next++;
        if (next < size) {
            gw_error ("spool", "damaged record skipped dir=%s segment=%s offset=%zu bytes=%zu", self->dir,
                      name, off, next - off);
            off = next;
            continue;
        }
        gw_warn ("spool", "torn tail cut dir=%s segment=%s offset=%zu bytes=%zu", self->dir, name, off,
                 size - off);
        if (ftruncate (fd, (off_t) off) || fdatasync (fd))
            gw_error ("spool", "cannot truncate dir=%s segment=%s error=%s", self->dir, name, strerror (errno));
        else
            size = off;
        break;
    }
    free (data);
    close (fd);
    seg->size = seg->synced = size;
    self->disk_bytes += size;
    return rc;
}

static int
s_compare_seq (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

/*  Lists the segment files and replays them in order. Returns 0 or -1. */
static int
s_replay (usage_spool_t *self)
{
    DIR *dir = opendir (self->dir);
    if (!dir) {
        gw_error ("spool", "cannot list dir=%s error=%s", self->dir, strerror (errno));
        return -1;
    }
    uint64_t *seqs = NULL;
    size_t count = 0, cap = 0;
    struct dirent *entry;
    int rc = 0;
    while ((entry = readdir (dir))) {
        uint64_t seq = s_segment_seq (entry->d_name);
        if (!seq)
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *n = realloc (seqs, cap * sizeof *n);
            if (!n) {
                rc = -1;
                break;
            }
            seqs = n;
        }
        seqs[count++] = seq;
    }
    closedir (dir);
    if (count)
        qsort (seqs, count, sizeof *seqs, s_compare_seq);
    for (size_t i = 0; i < count && rc == 0; i++) {
        segment_t *seg = s_segment_add (self, seqs[i]);
        rc = seg ? s_replay_segment (self, seg) : -1;
    }
    self->next_seq = count ? seqs[count - 1] + 1 : 1;
    free (seqs);
    return rc;
}

/*  mkdir -p, the new directory's entry made durable. Returns 0 or -1. */
static int
s_mkdir (const char *dir)
{
    char *path = strdup (dir);
    if (!path)
        return -1;
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir (path, 0750) && errno != EEXIST) {
                free (path);
                return -1;
            }
            *p = '/';
        }
    int rc = 0;
    if (mkdir (path, 0750) == 0) {
        char *slash = strrchr (path, '/');
        if (slash == path)
            slash[1] = 0;
        else if (slash)
            *slash = 0;
        int fd = open (slash ? path : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync (fd);
            close (fd);
        }
    }
    else if (errno != EEXIST)
        rc = -1;
    free (path);
    return rc;
}

/* ---- public API ---- */

/* ---- the syncer thread ---- */

/*  fdatasyncs the segment the loop hands over, one at a time. It touches
    nothing but the job fields (under the mutex) and the segment's descriptor,
    which the loop does not close until done_fd says so. */
static void *
s_syncer (void *arg)
{
    usage_spool_t *self = arg;
    gw_log_thread_service (self->log_service);
    pthread_mutex_lock (&self->mutex);
    while (true) {
        while (!self->job_ready && !self->stopping)
            pthread_cond_wait (&self->cond, &self->mutex);
        if (!self->job_ready)
            break;
        int fd = self->fseg->fd;
        pthread_mutex_unlock (&self->mutex);
        int err = fdatasync (fd) ? errno : 0;
        pthread_mutex_lock (&self->mutex);
        self->job_errno = err;
        self->job_ready = false;
        self->job_done = true;
        uint64_t one = 1;
        if (write (self->done_fd, &one, sizeof one) < 0)
            gw_error ("spool", "cannot signal the loop error=%s", strerror (errno));
    }
    pthread_mutex_unlock (&self->mutex);
    return NULL;
}

static int
s_syncer_start (usage_spool_t *self)
{
    if (self->syncer_started)
        return 0;
    //  Signals stay with the loop's thread (it blocks them for its signalfd).
    sigset_t all, old;
    sigfillset (&all);
    pthread_sigmask (SIG_SETMASK, &all, &old);
    self->log_service = gw_log_service ();
    int rc = pthread_create (&self->syncer, NULL, s_syncer, self);
    pthread_sigmask (SIG_SETMASK, &old, NULL);
    if (rc) {
        gw_error ("spool", "cannot start the syncer thread error=%s", strerror (rc));
        return -1;
    }
    self->syncer_started = true;
    return 0;
}

/*  Blocks until the batch with the syncer is done. */
static void
s_sync_wait (usage_spool_t *self)
{
    while (self->syncing) {
        struct pollfd p = { self->done_fd, POLLIN, 0 };
        if (poll (&p, 1, -1) < 0 && errno != EINTR)
            break;
        usage_spool_sync_finish (self);
    }
}

int
usage_spool_sync_start (usage_spool_t *self)
{
    assert (self);
    if (self->retry_at_ms) {
        if (gw_now_ms () < self->retry_at_ms)
            return self->syncing ? 1 : -1;
        self->retry_at_ms = 0;
    }
    //  Written now, on the loop: a crash of the process cannot lose them
    //  from here on; only their fdatasync is left to the syncer.
    if (s_write (self)) {
        self->retry_at_ms = gw_now_ms () + self->retry_ms;
        return self->syncing ? 1 : -1;
    }
    if (self->syncing)
        return 1;  //  the next fdatasync starts when this one returns
    if (!self->queues[Q_WRITTEN].head)
        return 0;
    if (s_syncer_start (self))
        return usage_spool_sync (self);  //  no thread: the loop waits, as before
    event_t *e;
    while ((e = self->queues[Q_WRITTEN].head)) {
        s_queue_remove (self, e);
        s_queue_push (self, Q_SYNCING, e);
    }
    self->fseg = self->current;
    self->fsize = self->current->size;
    self->syncing = true;
    pthread_mutex_lock (&self->mutex);
    self->job_ready = true;
    self->job_done = false;
    pthread_cond_signal (&self->cond);
    pthread_mutex_unlock (&self->mutex);
    return 1;
}

int
usage_spool_write (usage_spool_t *self)
{
    assert (self);
    if (self->retry_at_ms && gw_now_ms () < self->retry_at_ms)
        return -1;
    if (s_write (self)) {
        self->retry_at_ms = gw_now_ms () + self->retry_ms;
        return -1;
    }
    return 0;
}

int
usage_spool_sync_fd (usage_spool_t *self)
{
    assert (self);
    return self->done_fd;
}

bool
usage_spool_syncing (usage_spool_t *self)
{
    assert (self);
    return self->syncing;
}

int
usage_spool_sync_finish (usage_spool_t *self)
{
    assert (self);
    uint64_t count;
    if (self->done_fd >= 0 && read (self->done_fd, &count, sizeof count) < 0 && errno != EAGAIN)
        gw_warn ("spool", "cannot read the syncer's signal error=%s", strerror (errno));
    if (!self->syncing)
        return 0;
    pthread_mutex_lock (&self->mutex);
    bool done = self->job_done;
    int err = self->job_errno;
    self->job_done = false;
    pthread_mutex_unlock (&self->mutex);
    if (!done)
        return 1;
    self->syncing = false;
    segment_t *seg = self->fseg;
    self->fseg = NULL;
    if (err) {
        s_rewind (self, seg, err);
        self->retry_at_ms = gw_now_ms () + self->retry_ms;
        return -1;
    }
    s_synced (self, seg, self->fsize, Q_SYNCING);
    s_reclaim (self);
    s_compact (self);
    s_reclaim (self);
    return 0;
}

usage_spool_t *
usage_spool_new (const char *dir, size_t max_bytes)
{
    assert (dir && *dir);
    assert (max_bytes > 0);
    s_crc_init ();
    usage_spool_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->dirfd = -1;
    self->done_fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init (&self->mutex, NULL);
    pthread_cond_init (&self->cond, NULL);
    self->max_bytes = max_bytes;
    self->segment_max = USAGE_SPOOL_SEGMENT_SIZE;
    self->retry_ms = RETRY_MS;
    self->ack_mark = NO_MARK;
    self->dir = strdup (dir);
    self->events = zhashx_new ();
    if (!self->dir || !self->events || self->done_fd < 0)
        goto error;
    //  Keys are the events' own id strings.
    zhashx_set_key_duplicator (self->events, NULL);
    zhashx_set_key_destructor (self->events, NULL);
    if (s_mkdir (dir)) {
        gw_error ("spool", "cannot create dir=%s error=%s", dir, strerror (errno));
        goto error;
    }
    self->dirfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (self->dirfd < 0) {
        gw_error ("spool", "cannot open dir=%s error=%s", dir, strerror (errno));
        goto error;
    }
    //  Two writers would unlink each other's segments.
    if (flock (self->dirfd, LOCK_EX | LOCK_NB)) {
        gw_error ("spool", "dir=%s is in use by another process error=%s", dir, strerror (errno));
        goto error;
    }
    if (s_replay (self))
        goto error;
    s_reclaim (self);
    size_t segments = 0;
    for (segment_t *seg = self->oldest; seg; seg = seg->next)
        segments++;
    gw_info ("spool", "opened dir=%s segments=%zu pending=%zu bytes=%zu max_bytes=%zu", dir, segments,
             usage_spool_pending (self), self->pending_bytes, max_bytes);
    if (self->pending_bytes > max_bytes)
        gw_warn ("spool", "over its bound dir=%s bytes=%zu max_bytes=%zu: new events wait for acknowledgements",
                 dir, self->pending_bytes, max_bytes);
    return self;
error:
    usage_spool_destroy (&self);
    return NULL;
}

void
usage_spool_destroy (usage_spool_t **self_p)
{
    assert (self_p);
    usage_spool_t *self = *self_p;
    if (!self)
        return;
    s_sync_wait (self);
    if (self->syncer_started) {
        pthread_mutex_lock (&self->mutex);
        self->stopping = true;
        pthread_cond_signal (&self->cond);
        pthread_mutex_unlock (&self->mutex);
        pthread_join (self->syncer, NULL);
    }
    if (self->dirfd >= 0) {
        size_t unsynced = 0;
        for (event_t *e = self->queues[Q_UNSYNCED].head; e; e = e->next)
            unsynced++;
        if (s_flush (self, NULL) && unsynced)
            gw_error ("spool", "closing with events not durable dir=%s count=%zu", self->dir, unsynced);
    }
    for (int q = 0; q < Q_COUNT; q++)
        while (self->queues[q].head)
            s_event_forget (self, self->queues[q].head);
    while (self->oldest) {
        segment_t *seg = self->oldest;
        self->oldest = seg->next;
        if (seg->fd >= 0)
            close (seg->fd);
        free (seg);
    }
    zhashx_destroy (&self->events);
    gw_buf_free (&self->wbuf);
    if (self->done_fd >= 0)
        close (self->done_fd);
    pthread_mutex_destroy (&self->mutex);
    pthread_cond_destroy (&self->cond);
    if (self->dirfd >= 0)
        close (self->dirfd);
    free (self->dir);
    free (self);
    *self_p = NULL;
}

int
usage_spool_append (usage_spool_t *self, const gw_usage_t *event)
{
    assert (self && event);
    assert (event->event_id && *event->event_id && strlen (event->event_id) <= ID_MAX);
    if (zhashx_lookup (self->events, event->event_id))
        return 0;
    gw_msg_t msg = { .id = GW_MSG_USAGE, .usage = *event };
    char *bytes;
    size_t size;
    if (gw_msg_encode (&msg, &bytes, &size)) {
        gw_error ("spool", "cannot encode event_id=%s", event->event_id);
        return -1;
    }
    size_t id_size = strlen (event->event_id);
    if (EVENT_HEADER + id_size + size > USAGE_SPOOL_RECORD_MAX) {
        gw_error ("spool", "event too big event_id=%s bytes=%zu", event->event_id, size);
        free (bytes);
        return -1;
    }
    event_t *e = s_event_new (event->event_id, id_size, bytes, size);
    free (bytes);
    if (!e)
        return -1;
    if (self->pending_bytes + e->record_size > self->max_bytes) {
        if (!self->full)
            gw_warn ("spool", "full dir=%s pending=%zu bytes=%zu max_bytes=%zu: refusing events", self->dir,
                     usage_spool_pending (self), self->pending_bytes, self->max_bytes);
        self->full = true;
        free (e);
        return -1;
    }
    if (s_put_event (self, e)) {
        free (e);
        return -1;
    }
    s_event_add (self, e, Q_UNSYNCED);
    if (self->full)
        gw_info ("spool", "has room again dir=%s bytes=%zu", self->dir, self->pending_bytes);
    self->full = false;
    return 0;
}

int
usage_spool_sync (usage_spool_t *self)
{
    assert (self);
    s_sync_wait (self);
    if (self->retry_at_ms) {
        if (gw_now_ms () < self->retry_at_ms)
            return -1;
        self->retry_at_ms = 0;
    }
    if (s_flush (self, NULL)) {
        self->retry_at_ms = gw_now_ms () + self->retry_ms;
        return -1;
    }
    s_reclaim (self);
    s_compact (self);
    s_reclaim (self);
    return 0;
}

size_t
usage_spool_due (usage_spool_t *self, int64_t now_ms, int64_t resend_ms, size_t max, usage_spool_send_fn *fn,
                 void *arg)
{
    assert (self && fn);
    assert (resend_ms >= 0);
    size_t count = 0;
    while (count < max) {
        //  Everything sent before was appended before anything still unsent,
        //  so resends first is oldest first.
        event_t *e = self->queues[Q_SENT].head;
        if (!e || now_ms - e->sent_ms <= resend_ms)
            e = self->queues[Q_UNSENT].head;
        if (!e)
            break;
        //  Not taken (the socket is full or not connected): it stays where it
        //  is, and so does everything behind it.
        if (!fn (arg, e->id, e->bytes, e->size))
            break;
        s_queue_remove (self, e);
        s_queue_push (self, Q_SENT, e);
        e->sent_ms = now_ms;
        count++;
    }
    return count;
}

int64_t
usage_spool_next_due (usage_spool_t *self, int64_t resend_ms)
{
    assert (self);
    if (self->queues[Q_UNSENT].head)
        return 0;
    if (self->queues[Q_SENT].head)
        return self->queues[Q_SENT].head->sent_ms + resend_ms + 1;
    return INT64_MAX;
}

void
usage_spool_ack (usage_spool_t *self, const char *event_id)
{
    assert (self && event_id);
    event_t *e = zhashx_lookup (self->events, event_id);
    if (!e)
        return;
    s_put_ack (self, event_id);
    s_event_forget (self, e);
}

size_t
usage_spool_pending (usage_spool_t *self)
{
    assert (self);
    return zhashx_size (self->events);
}

size_t
usage_spool_bytes (usage_spool_t *self)
{
    assert (self);
    return self->pending_bytes;
}

/* ---- selftest ---- */

/*  Fills ev for event number i of a series; id has room for 64 bytes. */
static void
s_test_event (gw_usage_t *ev, char *id, const char *series, uint32_t i)
{
    snprintf (id, 64, "%s-%08u.0.1", series, i);
    *ev = (gw_usage_t) { .event_id = id, .request_id = id, .attempt = 1, .provider = "deepseek",
                         .upstream_model = "deepseek-chat", .model = "deepseek-chat",
                         .cache_hit_tokens = i, .cache_miss_tokens = 1000 + i, .completion_tokens = 7 * i,
                         .status = 200, .usage_known = true, .streamed = i % 2, .total_us = 123456,
                         .started_ms = 1700000000000 + i };
}

static int
s_test_append (usage_spool_t *spool, const char *series, uint32_t i)
{
    char id[64];
    gw_usage_t ev;
    s_test_event (&ev, id, series, i);
    return usage_spool_append (spool, &ev);
}

/*  Bytes on disk of event number i of a series. */
static size_t
s_test_record_size (const char *series, uint32_t i)
{
    char id[64];
    gw_usage_t ev;
    s_test_event (&ev, id, series, i);
    gw_msg_t msg = { .id = GW_MSG_USAGE, .usage = ev };
    char *bytes;
    size_t size;
    assert (gw_msg_encode (&msg, &bytes, &size) == 0);
    free (bytes);
    return RECORD_HEADER + EVENT_HEADER + strlen (id) + size;
}

static bool
s_test_pending (usage_spool_t *spool, const char *series, uint32_t i)
{
    char id[64];
    gw_usage_t ev;
    s_test_event (&ev, id, series, i);
    return zhashx_lookup (spool->events, id) != NULL;
}

static void
s_test_ack (usage_spool_t *spool, const char *series, uint32_t i)
{
    char id[64];
    gw_usage_t ev;
    s_test_event (&ev, id, series, i);
    usage_spool_ack (spool, id);
}

/*  What due() handed out, each message checked against its id. */
typedef struct {
    char ids[64][64];
    size_t count;
} s_test_sent_t;

static bool
s_test_collect (void *arg, const char *event_id, const void *bytes, size_t size)
{
    s_test_sent_t *sent = arg;
    gw_msg_t msg;
    assert (gw_msg_decode (bytes, size, &msg, NULL, 0) == GW_DECODE_OK);
    assert (msg.id == GW_MSG_USAGE);
    assert (strcmp (msg.usage.event_id, event_id) == 0);
    unsigned i = 0;
    assert (sscanf (event_id, "%*[^-]-%u", &i) == 1);
    assert (msg.usage.completion_tokens == 7 * i && msg.usage.cache_miss_tokens == 1000 + i);
    assert (strcmp (msg.usage.model, "deepseek-chat") == 0 && msg.usage.streamed == (i % 2));
    gw_msg_clear (&msg);
    if (sent && sent->count < 64)
        snprintf (sent->ids[sent->count++], 64, "%s", event_id);
    return true;
}

/*  Takes the first n events offered, then refuses, as a full socket would. */
static bool
s_test_refuse_after (void *arg, const char *event_id, const void *bytes, size_t size)
{
    (void) event_id, (void) bytes, (void) size;
    size_t *left = arg;
    if (*left == 0)
        return false;
    (*left)--;
    return true;
}

static bool
s_test_ignore (void *arg, const char *event_id, const void *bytes, size_t size)
{
    (void) event_id, (void) bytes, (void) size;
    (*(size_t *) arg)++;
    return true;
}

/*  Number of segment files in dir; their total size and the newest's path. */
static size_t
s_test_files (const char *dir, size_t *bytes_p, char *newest)
{
    DIR *d = opendir (dir);
    assert (d);
    size_t count = 0, bytes = 0;
    uint64_t top = 0;
    struct dirent *entry;
    while ((entry = readdir (d))) {
        uint64_t seq = s_segment_seq (entry->d_name);
        if (!seq)
            continue;
        char path[512];
        snprintf (path, sizeof path, "%s/%s", dir, entry->d_name);
        struct stat st;
        assert (stat (path, &st) == 0);
        count++;
        bytes += (size_t) st.st_size;
        if (seq > top && newest) {
            top = seq;
            snprintf (newest, 512, "%s", path);
        }
    }
    closedir (d);
    if (bytes_p)
        *bytes_p = bytes;
    return count;
}

static off_t
s_test_size (const char *path)
{
    struct stat st;
    assert (stat (path, &st) == 0);
    return st.st_size;
}

static void
s_test_write_tail (const char *path, const void *data, size_t size)
{
    int fd = open (path, O_WRONLY | O_APPEND);
    assert (fd >= 0);
    assert (write (fd, data, size) == (ssize_t) size);
    close (fd);
}

static void
s_test_rmdir (const char *dir)
{
    DIR *d = opendir (dir);
    if (!d)
        return;
    struct dirent *entry;
    while ((entry = readdir (d)))
        if (strcmp (entry->d_name, ".") && strcmp (entry->d_name, "..")) {
            char path[512];
            snprintf (path, sizeof path, "%s/%s", dir, entry->d_name);
            unlink (path);
        }
    closedir (d);
    rmdir (dir);
}

/*  Whether the crash child had acknowledged event j when it had appended n:
    most events 500 behind, every 97th (a straggler) only 20000 behind. */
static bool
s_test_acked (uint32_t j, uint32_t n)
{
    return (j + 500 < n && j % 97) || j + 20000 < n;
}

#define CRASH_BATCH 200

/*  The crash child: appends batches, acknowledges by s_test_acked, syncs, and
    reports each synced count on fd until it is killed. */
static void
s_test_crash_child (const char *dir, int fd)
{
    usage_spool_t *spool = usage_spool_new (dir, 64u << 20);
    if (!spool)
        _exit (2);
    spool->segment_max = 64 * 1024;
    uint32_t n = 0, a = 0, b = 0;
    while (n < 10000000) {
        for (int k = 0; k < CRASH_BATCH; k++)
            if (s_test_append (spool, "crash", n++))
                _exit (3);
        for (; a + 500 < n; a++)
            if (a % 97)
                s_test_ack (spool, "crash", a);
        for (; b + 20000 < n; b++)
            if (b % 97 == 0)
                s_test_ack (spool, "crash", b);
        if (usage_spool_sync (spool))
            _exit (4);
        size_t sent = 0;
        usage_spool_due (spool, gw_now_ms (), 1000, SIZE_MAX, s_test_ignore, &sent);
        if (write (fd, &n, sizeof n) != sizeof n)
            _exit (5);
    }
    _exit (0);
}

/*  Kills a child at a random moment and checks what the spool holds. */
static void
s_test_crash (const char *dir, unsigned round, bool verbose)
{
    int fds[2];
    assert (pipe (fds) == 0);
    fflush (stdout);
    fflush (stderr);
    pid_t pid = fork ();
    assert (pid >= 0);
    if (pid == 0) {
        close (fds[0]);
        s_test_crash_child (dir, fds[1]);
    }
    close (fds[1]);
    //  The first report says the child runs; the kill comes at a random moment after.
    uint32_t n = 0, report;
    assert (read (fds[0], &n, sizeof n) == sizeof n);
    int64_t kill_after_ms = 20 + (gw_now_us () + round * 7919) % 400;
    usleep ((useconds_t) kill_after_ms * 1000);
    assert (kill (pid, SIGKILL) == 0);
    int status = 0;
    assert (waitpid (pid, &status, 0) == pid);
    assert (WIFSIGNALED (status) && WTERMSIG (status) == SIGKILL);
    //  The last complete report: pipe writes of 4 bytes are atomic.
    while (read (fds[0], &report, sizeof report) == sizeof report)
        n = report;
    close (fds[0]);
    assert (n > 0);

    usage_spool_t *spool = usage_spool_new (dir, 64u << 20);
    assert (spool);
    size_t pending = usage_spool_pending (spool);
    for (uint32_t j = 0; j < n; j++) {
        bool is = s_test_pending (spool, "crash", j);
        //  Acknowledged before the reported sync: recorded. Not acknowledged
        //  even by the two syncs after it (one unreported, one under way): pending.
        if (s_test_acked (j, n))
            assert (!is);
        else if (!s_test_acked (j, n + 2 * CRASH_BATCH))
            assert (is);
    }
    //  Nothing pending that the child never appended.
    size_t beyond = 0;
    for (uint32_t j = n; j < n + 2 * CRASH_BATCH; j++)
        beyond += s_test_pending (spool, "crash", j);
    size_t in_range = 0;
    for (uint32_t j = 0; j < n; j++)
        in_range += s_test_pending (spool, "crash", j);
    assert (in_range + beyond == pending);
    //  Every pending message decodes and is due.
    size_t due = usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL);
    assert (due == pending);
    usage_spool_destroy (&spool);
    //  Recovery is idempotent.
    spool = usage_spool_new (dir, 64u << 20);
    assert (spool && usage_spool_pending (spool) == pending);
    for (uint32_t j = 0; j < n + 2 * CRASH_BATCH; j++)
        s_test_ack (spool, "crash", j);
    assert (usage_spool_pending (spool) == 0 && usage_spool_bytes (spool) == 0);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 64u << 20);
    assert (spool && usage_spool_pending (spool) == 0);
    assert (s_test_files (dir, NULL, NULL) == 0);
    usage_spool_destroy (&spool);
    if (verbose)
        printf ("\n   crash round %u: killed after %" PRId64 " ms, %u synced, %zu pending", round, kill_after_ms,
                n, pending);
}

void
usage_spool_test (bool verbose)
{
    if (verbose)
        printf (" * usage_spool: ");
    s_crc_init ();
    assert (s_crc32 ("123456789", 9) == 0xCBF43926u);
    assert (s_crc32 ("The quick brown fox jumps over the lazy dog", 43) == 0x414FA339u);
    assert (s_crc32 ("", 0) == 0);
    assert (s_segment_seq ("spool-00000000000000ff.log") == 255);
    assert (s_segment_seq ("spool-00000000000000FF.log") == 0);
    assert (s_segment_seq ("spool-00000000000000ff.log.tmp") == 0);

    const char *tmp = getenv ("TMPDIR");
    char base[256];
    snprintf (base, sizeof base, "%s/usage_spool-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert (mkdtemp (base));
    char dir[300];
    snprintf (dir, sizeof dir, "%s/spool/a", base);  //  parents are created too

    //  Round trip: nothing is due before it is durable.
    usage_spool_t *spool = usage_spool_new (dir, 1 << 20);
    assert (spool);
    assert (usage_spool_pending (spool) == 0 && usage_spool_bytes (spool) == 0);
    assert (usage_spool_next_due (spool, 1000) == INT64_MAX);
    for (uint32_t i = 0; i < 10; i++)
        assert (s_test_append (spool, "rt", i) == 0);
    assert (s_test_append (spool, "rt", 3) == 0);  //  a retried append is kept once
    assert (usage_spool_pending (spool) == 10);
    size_t one = s_test_record_size ("rt", 0);
    assert (one == s_test_record_size ("rt", 9) && usage_spool_bytes (spool) == 10 * one);
    s_test_sent_t sent = { 0 };
    assert (usage_spool_due (spool, 1000, 5000, SIZE_MAX, s_test_collect, &sent) == 0);
    assert (usage_spool_sync (spool) == 0);
    assert (usage_spool_next_due (spool, 5000) == 0);
    assert (usage_spool_due (spool, 1000, 5000, 4, s_test_collect, &sent) == 4);
    assert (usage_spool_due (spool, 1000, 5000, SIZE_MAX, s_test_collect, &sent) == 6);
    assert (usage_spool_due (spool, 1000, 5000, SIZE_MAX, s_test_collect, &sent) == 0);
    assert (sent.count == 10);
    for (uint32_t i = 0; i < 10; i++) {
        char id[64];
        gw_usage_t ev;
        s_test_event (&ev, id, "rt", i);
        assert (strcmp (sent.ids[i], id) == 0);  //  oldest first
    }
    //  Resend only after more than resend_ms.
    assert (usage_spool_next_due (spool, 5000) == 6001);
    assert (usage_spool_due (spool, 6000, 5000, SIZE_MAX, s_test_collect, NULL) == 0);
    sent.count = 0;
    assert (usage_spool_due (spool, 6001, 5000, 3, s_test_collect, &sent) == 3);
    assert (strcmp (sent.ids[0], "rt-00000000.0.1") == 0 && strcmp (sent.ids[2], "rt-00000002.0.1") == 0);
    //  A send that is refused (socket full) leaves that event and the rest due.
    size_t room = 2;
    assert (usage_spool_due (spool, 6002, 5000, SIZE_MAX, s_test_refuse_after, &room) == 2);
    assert (usage_spool_due (spool, 6002, 5000, SIZE_MAX, s_test_collect, &sent) == 5);
    assert (strcmp (sent.ids[3], "rt-00000005.0.1") == 0 && strcmp (sent.ids[7], "rt-00000009.0.1") == 0);
    //  Acknowledged events go; unknown and repeated acks are ignored.
    for (uint32_t i = 0; i < 5; i++)
        s_test_ack (spool, "rt", i);
    s_test_ack (spool, "rt", 0);
    usage_spool_ack (spool, "no-such-event");
    assert (usage_spool_pending (spool) == 5 && usage_spool_bytes (spool) == 5 * one);
    assert (usage_spool_due (spool, 20000, 5000, SIZE_MAX, s_test_collect, NULL) == 5);
    //  A second process may not open the same directory.
    assert (usage_spool_new (dir, 1 << 20) == NULL);
    //  Closing writes the acknowledgements; reopening replays exactly the rest.
    usage_spool_destroy (&spool);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 5 && usage_spool_bytes (spool) == 5 * one);
    for (uint32_t i = 0; i < 10; i++)
        assert (s_test_pending (spool, "rt", i) == (i >= 5));
    sent.count = 0;
    assert (usage_spool_due (spool, 1, 5000, SIZE_MAX, s_test_collect, &sent) == 5);
    assert (strcmp (sent.ids[0], "rt-00000005.0.1") == 0 && strcmp (sent.ids[4], "rt-00000009.0.1") == 0);
    //  An event acknowledged before it was synced stays forgotten.
    assert (s_test_append (spool, "rt", 10) == 0);
    s_test_ack (spool, "rt", 10);
    assert (usage_spool_sync (spool) == 0);
    for (uint32_t i = 5; i < 10; i++)
        s_test_ack (spool, "rt", i);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 0);
    assert (s_test_files (dir, NULL, NULL) == 0);  //  all acknowledged: reclaimed
    usage_spool_destroy (&spool);

    //  Full: refuses beyond max_bytes until acknowledgements make room.
    spool = usage_spool_new (dir, 3 * one + one / 2);
    assert (spool);
    for (uint32_t i = 0; i < 3; i++)
        assert (s_test_append (spool, "rt", i) == 0);
    assert (s_test_append (spool, "rt", 3) == -1);
    assert (s_test_append (spool, "rt", 0) == 0);  //  already pending: no room needed
    assert (usage_spool_pending (spool) == 3);
    assert (usage_spool_sync (spool) == 0);
    s_test_ack (spool, "rt", 1);
    assert (s_test_append (spool, "rt", 3) == 0);
    assert (s_test_append (spool, "rt", 4) == -1);
    for (uint32_t i = 0; i < 4; i++)
        s_test_ack (spool, "rt", i);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);

    //  Segments: a new one every segment_max bytes, unlinked once acknowledged.
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool);
    spool->segment_max = 4096;
    for (uint32_t i = 0; i < 300; i++) {
        assert (s_test_append (spool, "seg", i) == 0);
        if (i % 20 == 19)
            assert (usage_spool_sync (spool) == 0);
    }
    size_t disk = 0;
    size_t files = s_test_files (dir, &disk, NULL);
    assert (files >= 300 * one / (4096 + 20 * one) && disk == spool->disk_bytes && disk == usage_spool_bytes (spool));
    for (uint32_t i = 0; i < 150; i++)
        s_test_ack (spool, "seg", i);
    assert (usage_spool_sync (spool) == 0);
    size_t files_half = s_test_files (dir, NULL, NULL);
    assert (files_half < files && files_half >= files / 2 - 1);
    for (uint32_t i = 150; i < 300; i++)
        s_test_ack (spool, "seg", i);
    assert (usage_spool_sync (spool) == 0);
    assert (s_test_files (dir, NULL, NULL) <= 1);  //  the current one may stay
    usage_spool_destroy (&spool);

    //  A straggler does not pin the segments after it: it is copied forward.
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool);
    spool->segment_max = 4096;
    for (uint32_t i = 0; i < 2000; i++) {
        assert (s_test_append (spool, "strag", i) == 0);
        if (i % 10 == 9)
            assert (usage_spool_sync (spool) == 0);
        if (i >= 20 && (i - 20) % 1000 != 7)
            s_test_ack (spool, "strag", i - 20);
        assert (spool->disk_bytes <= 2 * spool->pending_bytes + 3 * spool->segment_max + 20 * one);
    }
    assert (usage_spool_sync (spool) == 0);
    assert (s_test_files (dir, &disk, NULL) <= 10 && disk == spool->disk_bytes);
    assert (usage_spool_pending (spool) == 22);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 22);
    assert (s_test_pending (spool, "strag", 7) && s_test_pending (spool, "strag", 1007));
    assert (s_test_pending (spool, "strag", 1980) && !s_test_pending (spool, "strag", 8));
    for (uint32_t i = 0; i < 2000; i++)
        s_test_ack (spool, "strag", i);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 0 && s_test_files (dir, NULL, NULL) == 0);

    //  A crash after compaction wrote its copy, before the old segment went:
    //  the event lives in the newer segment, the old one is reclaimed.
    assert (s_test_append (spool, "dup", 0) == 0 && s_test_append (spool, "dup", 1) == 0);
    assert (usage_spool_sync (spool) == 0);
    s_segment_seal (spool, spool->current);
    char id[64];
    gw_usage_t ev;
    s_test_event (&ev, id, "dup", 0);
    assert (s_put_event (spool, zhashx_lookup (spool->events, id)) == 0);
    assert (s_flush (spool, NULL) == 0);
    usage_spool_destroy (&spool);
    assert (s_test_files (dir, NULL, NULL) == 2);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 2 && usage_spool_bytes (spool) == 2 * s_test_record_size ("dup", 0));
    uint64_t copy_seq = spool->newest->seq;
    assert (((event_t *) zhashx_lookup (spool->events, id))->segment == spool->newest);
    s_test_ack (spool, "dup", 1);
    assert (usage_spool_sync (spool) == 0);
    assert (spool->oldest->seq == copy_seq && s_test_files (dir, NULL, NULL) == 2);
    s_test_ack (spool, "dup", 0);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 0 && s_test_files (dir, NULL, NULL) == 0);

    //  Torn tails: the last record cut short, garbage, zeros, a lying length.
    for (uint32_t i = 0; i < 50; i++)
        assert (s_test_append (spool, "torn", i) == 0);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    char newest[512];
    assert (s_test_files (dir, NULL, newest) == 1);
    off_t whole = s_test_size (newest);
    assert (truncate (newest, whole - 5) == 0);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 49);
    assert (s_test_pending (spool, "torn", 48) && !s_test_pending (spool, "torn", 49));
    usage_spool_destroy (&spool);
    off_t good = s_test_size (newest);
    assert (good == whole - (off_t) s_test_record_size ("torn", 49));  //  cut at the end of the last whole record
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t) (i * 131 + 17);
    s_test_write_tail (newest, junk, 37);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 49 && s_test_size (newest) == good);
    usage_spool_destroy (&spool);
    memset (junk, 0, sizeof junk);
    s_test_write_tail (newest, junk, sizeof junk);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 49 && s_test_size (newest) == good);
    usage_spool_destroy (&spool);
    uint8_t liar[RECORD_HEADER + 4] = { 0x00, 0x00, 0x01, 0x00, 1, 2, 3, 4, TAG_EVENT };
    s_test_write_tail (newest, liar, sizeof liar);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 49 && s_test_size (newest) == good);
    //  New events go to a new segment, never after a replayed one.
    assert (s_test_append (spool, "torn", 49) == 0);
    assert (usage_spool_sync (spool) == 0);
    assert (s_test_files (dir, NULL, NULL) == 2);
    usage_spool_destroy (&spool);

    //  Damage in the middle: the damaged record is lost, the ones after it are not.
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 50);
    for (uint32_t i = 0; i < 50; i++)
        s_test_ack (spool, "torn", i);
    for (uint32_t i = 0; i < 20; i++)
        assert (s_test_append (spool, "mid", i) == 0);
    assert (usage_spool_sync (spool) == 0);
    usage_spool_destroy (&spool);
    assert (s_test_files (dir, NULL, newest) >= 1);
    whole = s_test_size (newest);
    int fd = open (newest, O_RDWR);
    assert (fd >= 0);
    uint8_t byte;
    off_t at = whole;
    for (uint32_t i = 19; i >= 10; i--)
        at -= (off_t) s_test_record_size ("mid", i);
    at -= (off_t) s_test_record_size ("mid", 9) / 2;  //  inside event 9 of 0..19
    assert (pread (fd, &byte, 1, at) == 1);
    byte ^= 0x40;
    assert (pwrite (fd, &byte, 1, at) == 1);
    close (fd);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 19);
    assert (!s_test_pending (spool, "mid", 9) && s_test_pending (spool, "mid", 10) && s_test_pending (spool, "mid", 19));
    assert (s_test_size (newest) == whole);  //  a damaged file is left for inspection
    for (uint32_t i = 0; i < 20; i++)
        s_test_ack (spool, "mid", i);

    //  A failing write: nothing is due, the batch goes whole to a new segment.
    spool->retry_ms = 0;
    assert (s_test_append (spool, "fail", 0) == 0);
    assert (usage_spool_sync (spool) == 0);
    assert (spool->current);
    int saved = dup (spool->current->fd);
    int rdonly = open ("/dev/null", O_RDONLY);
    assert (saved >= 0 && rdonly >= 0 && dup2 (rdonly, spool->current->fd) >= 0);
    close (rdonly);
    for (uint32_t i = 1; i < 5; i++)
        assert (s_test_append (spool, "fail", i) == 0);
    assert (usage_spool_sync (spool) == -1);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 1);  //  "fail" 0 only
    assert (usage_spool_sync (spool) == 0);
    close (saved);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 4);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 5);
    for (uint32_t i = 0; i < 5; i++)
        s_test_ack (spool, "fail", i);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 0 && s_test_files (dir, NULL, NULL) == 0);
    usage_spool_destroy (&spool);

    //  The background sync: events appended while a batch is in flight make
    //  the next one; nothing is due before its batch's fdatasync returned.
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && !usage_spool_syncing (spool));
    assert (usage_spool_sync_start (spool) == 0);  //  nothing to write
    for (uint32_t i = 0; i < 3; i++)
        assert (s_test_append (spool, "async", i) == 0);
    assert (usage_spool_sync_start (spool) == 1 && usage_spool_syncing (spool));
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 0);
    for (uint32_t i = 3; i < 5; i++)
        assert (s_test_append (spool, "async", i) == 0);
    assert (usage_spool_sync_start (spool) == 1);  //  still the first batch
    struct pollfd done = { usage_spool_sync_fd (spool), POLLIN, 0 };
    assert (poll (&done, 1, 5000) == 1);
    assert (usage_spool_sync_finish (spool) == 0 && !usage_spool_syncing (spool));
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 3);
    assert (usage_spool_sync_start (spool) == 1);
    assert (poll (&done, 1, 5000) == 1 && usage_spool_sync_finish (spool) == 0);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 2);
    //  A write that fails (on the loop): nothing is due; the events go into
    //  a new segment on the next start.
    spool->retry_ms = 0;
    assert (s_test_append (spool, "async", 5) == 0);
    saved = dup (spool->current->fd);
    rdonly = open ("/dev/null", O_RDONLY);
    assert (saved >= 0 && rdonly >= 0 && dup2 (rdonly, spool->current->fd) >= 0);
    close (rdonly);
    assert (usage_spool_sync_start (spool) == -1 && !usage_spool_syncing (spool));
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 0);
    close (saved);
    assert (usage_spool_sync_start (spool) == 1);
    assert (poll (&done, 1, 5000) == 1 && usage_spool_sync_finish (spool) == 0);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 1);
    //  An fdatasync that fails (in the syncer; a pipe cannot be synced): what
    //  it covered and what was written after it go again, into a new segment.
    int pipe_fds[2];
    assert (pipe (pipe_fds) == 0);
    assert (s_test_append (spool, "async", 6) == 0);
    assert (dup2 (pipe_fds[1], spool->current->fd) >= 0);
    assert (usage_spool_sync_start (spool) == 1);
    assert (s_test_append (spool, "async", 7) == 0);
    assert (usage_spool_sync_start (spool) == 1);  //  7 written behind 6, not in that sync
    assert (poll (&done, 1, 5000) == 1 && usage_spool_sync_finish (spool) == -1);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 0);
    close (pipe_fds[0]);
    close (pipe_fds[1]);
    assert (usage_spool_sync_start (spool) == 1);
    assert (poll (&done, 1, 5000) == 1 && usage_spool_sync_finish (spool) == 0);
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_collect, NULL) == 2);
    //  destroy waits for a batch in flight; all of it is there after a reopen
    assert (s_test_append (spool, "async", 8) == 0);
    assert (usage_spool_sync_start (spool) == 1);
    usage_spool_destroy (&spool);
    spool = usage_spool_new (dir, 1 << 20);
    assert (spool && usage_spool_pending (spool) == 9);
    for (uint32_t i = 0; i < 9; i++)
        s_test_ack (spool, "async", i);
    usage_spool_destroy (&spool);

    //  An event written (not yet synced) survives a SIGKILL of the process: the
    //  dispatcher writes each event before the job's answer leaves.
    {
        int fds[2];
        assert (pipe (fds) == 0);
        fflush (stdout);
        fflush (stderr);
        pid_t pid = fork ();
        assert (pid >= 0);
        if (pid == 0) {
            usage_spool_t *child = usage_spool_new (dir, 1 << 20);
            if (!child || s_test_append (child, "written", 0) || usage_spool_write (child))
                _exit (2);
            char one = 1;
            if (write (fds[1], &one, 1) != 1)
                _exit (3);
            pause ();  //  killed here, before any fdatasync or destroy
            _exit (0);
        }
        char one;
        assert (read (fds[0], &one, 1) == 1);
        assert (kill (pid, SIGKILL) == 0);
        int status = 0;
        assert (waitpid (pid, &status, 0) == pid && WIFSIGNALED (status));
        close (fds[0]);
        close (fds[1]);
        spool = usage_spool_new (dir, 1 << 20);
        assert (spool && usage_spool_pending (spool) == 1 && s_test_pending (spool, "written", 0));
        s_test_ack (spool, "written", 0);
        usage_spool_destroy (&spool);
    }

    //  SIGKILL at random moments while appending, syncing, acknowledging.
    for (unsigned round = 0; round < 3; round++)
        s_test_crash (dir, round, verbose);

    //  Throughput: the default segment size, a sync every 1000 events.
    spool = usage_spool_new (dir, 256u << 20);
    assert (spool);
    const uint32_t total = 100000;
    int64_t t0 = gw_now_us ();
    for (uint32_t i = 0; i < total; i++) {
        assert (s_test_append (spool, "bench", i) == 0);
        if (i % 1000 == 999)
            assert (usage_spool_sync (spool) == 0);
    }
    int64_t t1 = gw_now_us ();
    size_t count = 0;
    assert (usage_spool_due (spool, 1, 0, SIZE_MAX, s_test_ignore, &count) == total && count == total);
    int64_t t2 = gw_now_us ();
    for (uint32_t i = 0; i < total; i++) {
        s_test_ack (spool, "bench", i);
        if (i % 1000 == 999)
            assert (usage_spool_sync (spool) == 0);
    }
    int64_t t3 = gw_now_us ();
    assert (usage_spool_pending (spool) == 0 && s_test_files (dir, NULL, NULL) <= 1);
    usage_spool_destroy (&spool);
    if (verbose)
        printf ("\n   %u events, sync every 1000: append+sync %.0f/s, due %.0f/s, ack+sync %.0f/s\n   ", total,
                total * 1e6 / (double) (t1 - t0 + 1), total * 1e6 / (double) (t2 - t1 + 1),
                total * 1e6 / (double) (t3 - t2 + 1));

    s_test_rmdir (dir);
    snprintf (dir, sizeof dir, "%s/spool", base);
    s_test_rmdir (dir);
    s_test_rmdir (base);
    if (verbose)
        printf ("OK\n");
}
