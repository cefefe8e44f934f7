/*  gw_proto.c: msgpack codec for the messages of gw_messages.h, derived by X-macros. */
#include "gw_proto.h"
#include "gw_log.h"

#include <assert.h>
#include <errno.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* ---- packing: one function per field type ---- */

static void
s_pack_U32 (msgpack_packer *pk, uint32_t v)
{
    msgpack_pack_uint32 (pk, v);
}

static void
s_pack_U64 (msgpack_packer *pk, uint64_t v)
{
    msgpack_pack_uint64 (pk, v);
}

static void
s_pack_BOOL (msgpack_packer *pk, bool v)
{
    if (v)
        msgpack_pack_true (pk);
    else
        msgpack_pack_false (pk);
}

static void
s_pack_STR (msgpack_packer *pk, const char *v)
{
    size_t len = v ? strlen (v) : 0;
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, v ? v : "", len);
}

static void
s_pack_BIN (msgpack_packer *pk, gw_bin_t v)
{
    msgpack_pack_bin (pk, v.size);
    msgpack_pack_bin_body (pk, v.data, v.size);
}

static void
s_pack_STRLIST (msgpack_packer *pk, gw_strlist_t v)
{
    msgpack_pack_array (pk, v.count);
    for (size_t i = 0; i < v.count; i++)
        s_pack_STR (pk, v.items[i]);
}

/*  Upper bounds of each field's encoded size, so that a message is packed
    into one buffer of about its own size. msgpack's own buffer starts at 8 KiB
    and was handed to libzmq as it was: every 200-byte CHUNK waiting in a queue
    held 8 KiB (10,000 streams peaked at 109 KiB each, bench/RESULTS.md). */
static size_t
s_size_U32 (uint32_t v)
{
    (void) v;
    return 5;
}

static size_t
s_size_U64 (uint64_t v)
{
    (void) v;
    return 9;
}

static size_t
s_size_BOOL (bool v)
{
    (void) v;
    return 1;
}

static size_t
s_size_STR (const char *v)
{
    return 5 + (v ? strlen (v) : 0);
}

static size_t
s_size_BIN (gw_bin_t v)
{
    return 5 + v.size;
}

static size_t
s_size_STRLIST (gw_strlist_t v)
{
    size_t n = 5;
    for (size_t i = 0; i < v.count; i++)
        n += s_size_STR (v.items[i]);
    return n;
}

/* ---- unpacking: each returns 0 or -1 and never trusts the input ---- */

static int
s_unpack_U32 (const msgpack_object *o, uint32_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > UINT32_MAX)
        return -1;
    *v = (uint32_t) o->via.u64;
    return 0;
}

static int
s_unpack_U64 (const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -1;
    *v = o->via.u64;
    return 0;
}

static int
s_unpack_BOOL (const msgpack_object *o, bool *v)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return -1;
    *v = o->via.boolean;
    return 0;
}

static int
s_unpack_STR (const msgpack_object *o, char **v)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return -1;
    //  Strings travel without a terminator; a NUL inside would truncate them
    //  silently on use, so it is refused here.
    if (o->via.str.size && memchr (o->via.str.ptr, 0, o->via.str.size))
        return -1;
    char *s = malloc (o->via.str.size + 1);
    if (!s)
        return -1;
    if (o->via.str.size)
        memcpy (s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = 0;
    *v = s;
    return 0;
}

static int
s_unpack_BIN (const msgpack_object *o, gw_bin_t *v)
{
    if (o->type != MSGPACK_OBJECT_BIN)
        return -1;
    //  One spare byte keeps the data NUL-terminated for text users (JSON bodies).
    uint8_t *d = malloc (o->via.bin.size + 1);
    if (!d)
        return -1;
    if (o->via.bin.size)
        memcpy (d, o->via.bin.ptr, o->via.bin.size);
    d[o->via.bin.size] = 0;
    v->data = d;
    v->size = o->via.bin.size;
    return 0;
}

static int
s_unpack_STRLIST (const msgpack_object *o, gw_strlist_t *v)
{
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    v->items = calloc (o->via.array.size + 1, sizeof (char *));
    if (!v->items)
        return -1;
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        if (s_unpack_STR (&o->via.array.ptr[i], &v->items[i]))
            return -1;
        v->count++;
    }
    return 0;
}

/* ---- defaults for fields an older sender did not have ---- */

static int
s_default_U32 (uint32_t *v)
{
    *v = 0;
    return 0;
}

static int
s_default_U64 (uint64_t *v)
{
    *v = 0;
    return 0;
}

static int
s_default_BOOL (bool *v)
{
    *v = false;
    return 0;
}

static int
s_default_STR (char **v)
{
    //  Decoded strings are never NULL, missing ones included.
    *v = strdup ("");
    return *v ? 0 : -1;
}

static int
s_default_BIN (gw_bin_t *v)
{
    *v = (gw_bin_t) { 0 };
    return 0;
}

static int
s_default_STRLIST (gw_strlist_t *v)
{
    *v = (gw_strlist_t) { 0 };
    return 0;
}

/* ---- freeing ---- */

static void
s_free_U32 (uint32_t *v)
{
    *v = 0;
}

static void
s_free_U64 (uint64_t *v)
{
    *v = 0;
}

static void
s_free_BOOL (bool *v)
{
    *v = false;
}

static void
s_free_STR (char **v)
{
    free (*v);
    *v = NULL;
}

static void
s_free_BIN (gw_bin_t *v)
{
    free (v->data);
    v->data = NULL;
    v->size = 0;
}

static void
s_free_STRLIST (gw_strlist_t *v)
{
    gw_strlist_clear (v);
}

/* ---- per-message functions, generated ---- */

#define GW_COUNT_FIELD(type, field, desc) +1
#define GW_PACK_FIELD(type, field, desc)                                            \
    if (k++ < nfields)                                                              \
        s_pack_##type (pk, m->field);
#define GW_UNPACK_FIELD(type, field, desc)                                          \
    if (i >= n) {                                                                   \
        if (s_default_##type (&m->field))                                           \
            return -1;                                                              \
    }                                                                               \
    else if (s_unpack_##type (&f[i], &m->field))                                    \
        return -1;                                                                  \
    i++;
#define GW_FREE_FIELD(type, field, desc) s_free_##type (&m->field);
#define GW_SIZE_FIELD(type, field, desc) n += s_size_##type (m->field);

#define GW_MESSAGE_FUNCS(NAME, num, name, version, desc)                        \
    enum { s_##name##_nfields = 0 GW_##NAME##_FIELDS (GW_COUNT_FIELD) };            \
    static void s_pack_##name (msgpack_packer *pk, const gw_##name##_t *m,          \
                               uint32_t as_version, uint32_t nfields)               \
    {                                                                               \
        uint32_t k = 0;                                                             \
        msgpack_pack_array (pk, 2 + nfields);                                       \
        msgpack_pack_uint32 (pk, as_version);                                       \
        msgpack_pack_uint32 (pk, num);                                               \
        GW_##NAME##_FIELDS (GW_PACK_FIELD)                                          \
    }                                                                               \
    static int s_unpack_##name (const msgpack_object *f, uint32_t n, bool older,   \
                                gw_##name##_t *m)                                   \
    {                                                                               \
        uint32_t i = 0;                                                             \
        if (n < s_##name##_nfields && !older)                                       \
            return -1;                                                              \
        GW_##NAME##_FIELDS (GW_UNPACK_FIELD)                                        \
        (void) i;                                                                   \
        return 0;                                                                   \
    }                                                                               \
    static void s_free_##name (gw_##name##_t *m)                                    \
    {                                                                               \
        GW_##NAME##_FIELDS (GW_FREE_FIELD)                                          \
    }                                                                               \
    static size_t s_size_##name (const gw_##name##_t *m)                            \
    {                                                                               \
        size_t n = 5 + 5 + 5; /* array header, version, id */                        \
        GW_##NAME##_FIELDS (GW_SIZE_FIELD)                                          \
        return n;                                                                   \
    }
GW_MESSAGES (GW_MESSAGE_FUNCS)
#undef GW_MESSAGE_FUNCS

const char *
gw_msg_name (int id)
{
    switch (id) {
#define GW_NAME_CASE(NAME, num, name, version, desc)                            \
    case num:                                                                        \
        return #NAME;
        GW_MESSAGES (GW_NAME_CASE)
#undef GW_NAME_CASE
    }
    return "?";
}

/*  The shape a message of this id is written in for a peer that reads
    protocol peer_version: the message's own (version, fields) when the peer is
    new enough, else the newest older shape it reads. -1 when there is none. */
static int
s_shape (int id, uint32_t peer_version, uint32_t *version, uint32_t *nfields)
{
    switch (id) {
#define GW_SHAPE_CASE(NAME, num, name, msg_version, desc)                       \
    case GW_MSG_##NAME:                                                             \
        *version = msg_version;                                                     \
        *nfields = s_##name##_nfields;                                              \
        break;
        GW_MESSAGES (GW_SHAPE_CASE)
#undef GW_SHAPE_CASE
    default:
        return -1;
    }
    if (peer_version >= *version)
        return 0;
    bool found = false;
#define GW_OLDER_CASE(NAME, shape_version, shape_fields)                        \
    if (id == GW_MSG_##NAME && shape_version <= peer_version                        \
        && (!found || shape_version > *version)) {                                  \
        found = true;                                                               \
        *version = shape_version;                                                   \
        *nfields = shape_fields;                                                    \
    }
    *version = 0;
    GW_OLDER_SHAPES (GW_OLDER_CASE)
#undef GW_OLDER_CASE
    return found ? 0 : -1;
}

bool
gw_msg_writable_for (int id, uint32_t peer_version)
{
    uint32_t version, nfields;
    return s_shape (id, peer_version, &version, &nfields) == 0;
}

int
gw_msg_encode (const gw_msg_t *msg, char **data_p, size_t *size_p)
{
    return gw_msg_encode_as (msg, GW_PROTO_VERSION, data_p, size_p);
}

int
gw_msg_encode_as (const gw_msg_t *msg, uint32_t peer_version, char **data_p, size_t *size_p)
{
    uint32_t as_version, nfields;
    if (s_shape (msg->id, peer_version, &as_version, &nfields))
        return -1;
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    switch (msg->id) {
#define GW_PACK_CASE(NAME, num, name, version, desc)                            \
    case GW_MSG_##NAME:                                                             \
        sbuf.alloc = s_size_##name (&msg->name);                                    \
        if (!(sbuf.data = malloc (sbuf.alloc)))                                     \
            return -1;                                                              \
        s_pack_##name (&pk, &msg->name, as_version, nfields);                       \
        break;
        GW_MESSAGES (GW_PACK_CASE)
#undef GW_PACK_CASE
    default:
        msgpack_sbuffer_destroy (&sbuf);
        return -1;
    }
    //  msgpack-c's sbuffer aborts on nothing; a NULL data means allocation failed.
    if (!sbuf.data)
        return -1;
    *data_p = sbuf.data;
    *size_p = sbuf.size;
    return 0;
}

static gw_decode_t
s_fail (gw_msg_t *msg, gw_decode_t rc, char *err, size_t errlen, const char *fmt, ...)
{
    gw_msg_clear (msg);
    if (err && errlen) {
        va_list ap;
        va_start (ap, fmt);
        vsnprintf (err, errlen, fmt, ap);
        va_end (ap);
    }
    return rc;
}

static uint64_t
s_be (const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*  Walks the msgpack structure without allocating and checks that every count
    it declares fits in the bytes that remain. msgpack-c allocates containers by
    their declared size, so without this a 10-byte message announcing 2^32
    elements would make it try to allocate 64 GB. */
static int
s_check_bounds (const uint8_t *p, size_t size)
{
    size_t off = 0, pending = 1;
    while (pending) {
        if (off >= size)
            return -1;
        uint8_t b = p[off++];
        pending--;
        size_t left = size - off;
        uint64_t skip = 0, children = 0;
        int hdr = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            ;
        else if (b <= 0x8f)
            children = 2u * (b & 0x0f);
        else if (b <= 0x9f)
            children = b & 0x0f;
        else if (b <= 0xbf)
            skip = b & 0x1f;
        else if (b == 0xc4 || b == 0xd9)
            hdr = 1;
        else if (b == 0xc5 || b == 0xda)
            hdr = 2;
        else if (b == 0xc6 || b == 0xdb)
            hdr = 4;
        else if (b == 0xc7 || b == 0xc8 || b == 0xc9) {
            hdr = b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4;
            skip = 1;  //  the ext type byte
        }
        else if (b == 0xca || b == 0xcb)
            skip = b == 0xca ? 4 : 8;
        else if (b >= 0xcc && b <= 0xd3)
            skip = 1u << ((b - 0xcc) & 3);
        else if (b >= 0xd4 && b <= 0xd8)
            skip = 1 + (1u << (b - 0xd4));
        else if (b == 0xdc || b == 0xdd || b == 0xde || b == 0xdf) {
            int n = (b == 0xdc || b == 0xde) ? 2 : 4;
            if (left < (size_t) n)
                return -1;
            children = s_be (p + off, n) * (b >= 0xde ? 2 : 1);
            off += (size_t) n;
            left -= (size_t) n;
        }
        else
            return -1;  //  0xc1 is never used
        if (hdr) {
            if (left < (size_t) hdr)
                return -1;
            skip += s_be (p + off, hdr);
            off += (size_t) hdr;
            left -= (size_t) hdr;
        }
        //  Every pending object needs at least one byte.
        if (skip > left || children > left - skip || pending + children > left - skip)
            return -1;
        off += (size_t) skip;
        pending += (size_t) children;
    }
    return off == size ? 0 : -1;
}

gw_decode_t
gw_msg_decode (const void *data, size_t size, gw_msg_t *msg, char *err, size_t errlen)
{
    memset (msg, 0, sizeof *msg);
    if (!data || size == 0 || size > GW_PROTO_MAX_SIZE)
        return s_fail (msg, GW_DECODE_MALFORMED, err, errlen, "size %zu out of range", size);
    if (s_check_bounds (data, size))
        return s_fail (msg, GW_DECODE_MALFORMED, err, errlen, "not one well-formed msgpack object");

    msgpack_unpacked result;
    msgpack_unpacked_init (&result);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next (&result, data, size, &off);
    gw_decode_t status = GW_DECODE_OK;
    const char *why = NULL;
    if (rc != MSGPACK_UNPACK_SUCCESS || off != size)
        why = "not one msgpack object";
    else if (result.data.type != MSGPACK_OBJECT_ARRAY || result.data.via.array.size < 2)
        why = "not an array of at least 2";
    else {
        const msgpack_object *f = result.data.via.array.ptr;
        uint32_t n = result.data.via.array.size - 2;
        uint32_t version = 0, id = 0;
        if (s_unpack_U32 (&f[0], &version) || s_unpack_U32 (&f[1], &id))
            why = "bad header";
        else if (version < GW_PROTO_MIN_VERSION || version > GW_PROTO_VERSION) {
            status = GW_DECODE_VERSION;
            why = "protocol version mismatch";
        }
        else {
            msg->id = (gw_msg_id_t) id;
            msg->version = version;
            int frc = -1;
            switch (id) {
#define GW_UNPACK_CASE(NAME, num, name, msg_version, desc)                      \
    case GW_MSG_##NAME:                                                             \
        frc = s_unpack_##name (f + 2, n, version < GW_VERSION_##NAME, &msg->name);  \
        break;
                GW_MESSAGES (GW_UNPACK_CASE)
#undef GW_UNPACK_CASE
            }
            if (frc)
                why = "bad fields";
        }
    }
    msgpack_unpacked_destroy (&result);
    if (why)
        return s_fail (msg, status ? status : GW_DECODE_MALFORMED, err, errlen, "%s", why);
    return GW_DECODE_OK;
}

void
gw_msg_clear (gw_msg_t *msg)
{
    switch (msg->id) {
#define GW_FREE_CASE(NAME, num, name, version, desc)                            \
    case GW_MSG_##NAME:                                                             \
        s_free_##name (&msg->name);                                                 \
        break;
        GW_MESSAGES (GW_FREE_CASE)
#undef GW_FREE_CASE
    }
    memset (msg, 0, sizeof *msg);
}

static void
s_free_buffer (void *data, void *hint)
{
    (void) hint;
    free (data);
}

int
gw_msg_send (void *socket, const void *routing_id, size_t routing_id_size, const gw_msg_t *msg)
{
    return gw_msg_send_as (socket, routing_id, routing_id_size, msg, GW_PROTO_VERSION);
}

int
gw_msg_send_as (void *socket, const void *routing_id, size_t routing_id_size, const gw_msg_t *msg,
                uint32_t peer_version)
{
    char *data;
    size_t size;
    if (gw_msg_encode_as (msg, peer_version, &data, &size)) {
        errno = EPROTO;
        return -1;
    }
    if (routing_id && zmq_send (socket, routing_id, routing_id_size, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        free (data);
        return -1;
    }
    //  Hand the buffer to libzmq instead of copying it: chunks can be large.
    zmq_msg_t frame;
    if (zmq_msg_init_data (&frame, data, size, s_free_buffer, NULL)) {
        free (data);
        return -1;
    }
    if (zmq_msg_send (&frame, socket, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close (&frame);
        return -1;
    }
    return 0;
}

gw_decode_t
gw_msg_recv (void *socket, void *routing_id, size_t *routing_id_size, gw_msg_t *msg)
{
    memset (msg, 0, sizeof *msg);
    zmq_msg_t frame;
    zmq_msg_init (&frame);
    if (routing_id) {
        if (zmq_msg_recv (&frame, socket, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close (&frame);
            return GW_DECODE_INTERRUPTED;
        }
        size_t n = zmq_msg_size (&frame);
        if (n > 255)
            n = 255;
        memcpy (routing_id, zmq_msg_data (&frame), n);
        *routing_id_size = n;
        if (!zmq_msg_more (&frame)) {
            zmq_msg_close (&frame);
            return GW_DECODE_MALFORMED;
        }
    }
    if (zmq_msg_recv (&frame, socket, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close (&frame);
        return GW_DECODE_INTERRUPTED;
    }
    //  Extra frames are not part of the protocol: drain them so the next
    //  receive starts at a message boundary, then refuse the message.
    bool extra = zmq_msg_more (&frame);
    gw_decode_t rc = extra ? GW_DECODE_MALFORMED
                           : gw_msg_decode (zmq_msg_data (&frame), zmq_msg_size (&frame), msg, NULL, 0);
    while (zmq_msg_more (&frame) && zmq_msg_recv (&frame, socket, ZMQ_DONTWAIT) >= 0)
        ;
    zmq_msg_close (&frame);
    return rc;
}

/*  libzmq's context option ZMQ_ZERO_COPY_RECV (a draft name in 4.3, read by
    every build): on, which is the default, a received message keeps the whole
    receive buffer it came in alive, about 18 KiB with its counters, until the
    message is freed. A service that is behind on its queue then holds a buffer
    for every few small messages: 10,000 streams' CHUNKs made the ingress 25 KiB
    a stream. Off, each message is copied out at its own size. */
#define GW_ZMQ_ZERO_COPY_RECV 10

void *
gw_proto_context (void)
{
    void *ctx = zmq_ctx_new ();
    if (ctx && zmq_ctx_set (ctx, GW_ZMQ_ZERO_COPY_RECV, 0))
        gw_warn ("proto", "libzmq ignored ZMQ_ZERO_COPY_RECV: received messages keep their buffers");
    return ctx;
}

void *
gw_proto_dealer (void *zmq_ctx, const char *endpoints, int sndhwm, const char *module)
{
    void *dealer = zmq_socket (zmq_ctx, ZMQ_DEALER);
    int one = 1, zero = 0, ivl = 100, connected = 0;
    //  IMMEDIATE: a send fails while no peer is connected instead of queueing
    //  for one that may never come; callers keep the data and retry.
    zmq_setsockopt (dealer, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt (dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt (dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    if (sndhwm > 0)
        zmq_setsockopt (dealer, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm);
    char *list = strdup (endpoints), *save = NULL;
    for (char *ep = strtok_r (list, ", ", &save); ep; ep = strtok_r (NULL, ", ", &save), connected++)
        if (zmq_connect (dealer, ep)) {
            gw_error (module, "cannot connect endpoint=%s error=%s", ep, zmq_strerror (errno));
            connected = -1;
            break;
        }
    free (list);
    if (connected <= 0) {
        zmq_close (dealer);
        return NULL;
    }
    return dealer;
}

int
gw_strlist_append (gw_strlist_t *list, const char *s)
{
    char **items = realloc (list->items, (list->count + 2) * sizeof (char *));
    if (!items)
        return -1;
    list->items = items;
    items[list->count] = strdup (s);
    if (!items[list->count])
        return -1;
    items[++list->count] = NULL;
    return 0;
}

void
gw_strlist_clear (gw_strlist_t *list)
{
    for (size_t i = 0; i < list->count; i++)
        free (list->items[i]);
    free (list->items);
    list->items = NULL;
    list->count = 0;
}

/* ---- selftest ---- */

static void
s_roundtrip (const gw_msg_t *in, gw_msg_t *out)
{
    char *data;
    size_t size;
    int rc = gw_msg_encode (in, &data, &size);
    assert (rc == 0);
    gw_decode_t d = gw_msg_decode (data, size, out, NULL, 0);
    assert (d == GW_DECODE_OK);
    assert (out->id == in->id);
    free (data);
}

void
gw_proto_test (bool verbose)
{
    if (verbose)
        printf (" * gw_proto: ");

    //  Every message round-trips with its fields intact.
    gw_msg_t in = { .id = GW_MSG_HELLO }, out;
    in.hello.dispatcher_id = "d-1";
    in.hello.credits = 128;
    gw_strlist_append (&in.hello.models, "deepseek-chat");
    gw_strlist_append (&in.hello.models, "deepseek-reasoner");
    s_roundtrip (&in, &out);
    assert (strcmp (out.hello.dispatcher_id, "d-1") == 0);
    assert (out.hello.credits == 128);
    assert (out.hello.models.count == 2);
    assert (strcmp (out.hello.models.items[1], "deepseek-reasoner") == 0);
    assert (out.hello.owners.count == 0);
    gw_strlist_clear (&in.hello.models);
    gw_msg_clear (&out);

    uint8_t body[] = "{\"model\":\"deepseek-chat\"}";
    in = (gw_msg_t) { .id = GW_MSG_JOB };
    in.job.job_id = UINT64_MAX;
    in.job.request_id = "req-abc";
    in.job.stream = true;
    in.job.body = (gw_bin_t) { body, sizeof body - 1 };
    s_roundtrip (&in, &out);
    assert (out.job.job_id == UINT64_MAX);
    assert (out.job.stream && !out.job.client_usage);
    assert (out.job.body.size == sizeof body - 1);
    assert (memcmp (out.job.body.data, body, sizeof body) == 0);
    assert (strcmp (out.job.model, "") == 0);
    gw_msg_clear (&out);
    {
        //  Packed into one buffer of its bound: no regrowth, little slack.
        char *bytes;
        size_t n;
        assert (gw_msg_encode (&in, &bytes, &n) == 0);
        assert (n <= s_size_job (&in.job) && s_size_job (&in.job) - n < 64);
        free (bytes);
        gw_msg_t hello = { .id = GW_MSG_HELLO };
        hello.hello.dispatcher_id = "d-1";
        gw_strlist_append (&hello.hello.models, "deepseek-chat");
        gw_strlist_append (&hello.hello.models, "deepseek-reasoner");
        assert (gw_msg_encode (&hello, &bytes, &n) == 0 && n <= s_size_hello (&hello.hello));
        free (bytes);
        gw_strlist_clear (&hello.hello.models);
    }
    gw_msg_clear (&out);

#define GW_TEST_EMPTY(NAME, num, name, version, desc)                           \
    in = (gw_msg_t) { .id = GW_MSG_##NAME };                                        \
    s_roundtrip (&in, &out);                                                        \
    assert (strcmp (gw_msg_name (out.id), #NAME) == 0);                             \
    gw_msg_clear (&out);
    GW_MESSAGES (GW_TEST_EMPTY)
#undef GW_TEST_EMPTY

    //  Wrong version is told apart from garbage.
    char *data;
    size_t size;
    in = (gw_msg_t) { .id = GW_MSG_CREDIT, .credit = { 5 } };
    gw_msg_encode (&in, &data, &size);
    assert (data[1] == GW_VERSION_CREDIT);  //  unchanged since version 1: older peers read it
    data[1] = GW_PROTO_VERSION + 1;
    char err[64];
    assert (gw_msg_decode (data, size, &out, err, sizeof err) == GW_DECODE_VERSION);
    data[1] = GW_VERSION_CREDIT;
    //  Every truncation and every single-byte corruption decodes or fails cleanly.
    for (size_t cut = 0; cut < size; cut++)
        assert (gw_msg_decode (data, cut, &out, NULL, 0) != GW_DECODE_OK);
    for (size_t pos = 0; pos < size; pos++)
        for (int v = 0; v < 256; v++) {
            char saved = data[pos];
            data[pos] = (char) v;
            if (gw_msg_decode (data, size, &out, NULL, 0) == GW_DECODE_OK)
                gw_msg_clear (&out);
            data[pos] = saved;
        }
    free (data);

    //  An older sender's message lacks the newer trailing fields: they read as
    //  zero/empty. The same short message under the current version is refused.
    {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init (&sb);
        msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array (&pk, 2 + 2);
        msgpack_pack_uint32 (&pk, GW_PROTO_MIN_VERSION);
        msgpack_pack_uint32 (&pk, GW_MSG_KEY_INFO);
        msgpack_pack_uint64 (&pk, 7);
        msgpack_pack_uint32 (&pk, 200);
        assert (gw_msg_decode (sb.data, sb.size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.key_info.correlation == 7 && out.key_info.status == 200);
        assert (out.version == GW_PROTO_MIN_VERSION);
        assert (out.key_info.key_id == 0 && out.key_info.models.count == 0 && !out.key_info.admit);
        gw_msg_clear (&out);
        sb.data[1] = GW_PROTO_VERSION;
        assert (gw_msg_decode (sb.data, sb.size, &out, NULL, 0) == GW_DECODE_MALFORMED);
        //  A version 2 STATUS (before `leaving`) still reads, as not leaving.
        msgpack_sbuffer_clear (&sb);
        msgpack_pack_array (&pk, 2 + 12);
        msgpack_pack_uint32 (&pk, 2);
        msgpack_pack_uint32 (&pk, GW_MSG_STATUS);
        for (int k = 0; k < 3; k++)
            msgpack_pack_str_with_body (&pk, "x", 1);
        for (int k = 0; k < 5; k++)
            msgpack_pack_uint32 (&pk, 1);
        for (int k = 0; k < 3; k++)
            msgpack_pack_str_with_body (&pk, "", 0);
        msgpack_pack_true (&pk);
        assert (gw_msg_decode (sb.data, sb.size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.version == 2 && out.status.balance_available && !out.status.leaving);
        gw_msg_clear (&out);
        //  HELLO says the sender's protocol version; others their own.
        in = (gw_msg_t) { .id = GW_MSG_HELLO };
        gw_msg_encode (&in, &data, &size);
        assert (data[1] == GW_PROTO_VERSION);
        free (data);
        msgpack_sbuffer_destroy (&sb);
        in = (gw_msg_t) { .id = GW_MSG_END };
        s_roundtrip (&in, &out);
        assert (out.end.currency && strcmp (out.end.currency, "") == 0);
        gw_msg_clear (&out);

        //  A lookup's version says which KEY_INFO its asker reads.
        assert (GW_VERSION_KEY_LOOKUP >= GW_VERSION_KEY_INFO);
        //  Written for an older peer: the newest shape it reads, the newer
        //  trailing fields left out; a peer older than every shape gets nothing.
        in = (gw_msg_t) { .id = GW_MSG_JOB };
        in.job = (gw_job_t) { .job_id = 9, .request_id = "r", .model = "m", .api_key_id = 5,
                              .cache_lookup = true, .cache_ttl_s = 60 };
        assert (gw_msg_encode_as (&in, 3, &data, &size) == 0);
        assert (data[1] == 2 && (uint8_t) data[0] == (0x90 | (2 + 9)));
        assert (gw_msg_decode (data, size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.version == 2 && out.job.job_id == 9 && out.job.api_key_id == 5);
        assert (!out.job.cache_lookup && out.job.cache_ttl_s == 0);
        gw_msg_clear (&out);
        free (data);
        assert (gw_msg_encode_as (&in, 1, &data, &size) == -1);
        assert (!gw_msg_writable_for (GW_MSG_JOB, 1) && gw_msg_writable_for (GW_MSG_JOB, 2));
        //  A version 4 dispatcher reads the JOB of the response cache, without flow control.
        in.job.flow_window = 4096;
        assert (gw_msg_encode_as (&in, 4, &data, &size) == 0);
        assert (data[1] == 4 && (uint8_t) data[0] == (0x90 | (2 + 11)));
        assert (gw_msg_decode (data, size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.job.cache_lookup && out.job.cache_ttl_s == 60 && out.job.flow_window == 0);
        gw_msg_clear (&out);
        free (data);
        assert (gw_msg_writable_for (GW_MSG_CREDIT, 1));
        assert (gw_msg_encode_as (&in, GW_PROTO_VERSION, &data, &size) == 0);
        assert (gw_msg_decode (data, size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.version == GW_VERSION_JOB && out.job.cache_lookup && out.job.cache_ttl_s == 60);
        gw_msg_clear (&out);
        free (data);
        in = (gw_msg_t) { .id = GW_MSG_KEY_INFO };
        in.key_info = (gw_key_info_t) { .correlation = 3, .status = 200, .admit = true, .cache_ttl_s = 30 };
        assert (gw_msg_encode_as (&in, 2, &data, &size) == 0);
        assert (data[1] == 2);
        assert (gw_msg_decode (data, size, &out, NULL, 0) == GW_DECODE_OK);
        assert (out.key_info.admit && out.key_info.cache_ttl_s == 0);
        gw_msg_clear (&out);
        free (data);
        //  Unchanged since version 1: written as it is to anyone.
        in = (gw_msg_t) { .id = GW_MSG_CREDIT, .credit = { 5 } };
        assert (gw_msg_encode_as (&in, 1, &data, &size) == 0 && data[1] == 1);
        free (data);
    }

    //  Arbitrary bytes never crash (a cheap in-process fuzz; see tests/ for libFuzzer).
    unsigned seed = 12345;
    uint8_t junk[64];
    for (int round = 0; round < 20000; round++) {
        size_t n = 1 + (size_t) (rand_r (&seed) % sizeof junk);
        for (size_t i = 0; i < n; i++)
            junk[i] = (uint8_t) rand_r (&seed);
        if (round % 2)
            junk[0] = 0x90 | (junk[0] & 0x0f);  //  make many of them arrays
        if (gw_msg_decode (junk, n, &out, NULL, 0) == GW_DECODE_OK)
            gw_msg_clear (&out);
    }
    //  A tiny message announcing a huge array is refused before any allocation.
    const uint8_t huge[] = { 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02 };
    assert (gw_msg_decode (huge, sizeof huge, &out, NULL, 0) == GW_DECODE_MALFORMED);
    const uint8_t huge_map[] = { 0x93, 0x01, 0x01, 0xdf, 0x7f, 0xff, 0xff, 0xff };
    assert (gw_msg_decode (huge_map, sizeof huge_map, &out, NULL, 0) == GW_DECODE_MALFORMED);
    //  A string with an embedded NUL is refused.
    const uint8_t nul[] = { 0x93, 0x01, 0x04, 0xa3, 'a', 0, 'b' };
    assert (gw_msg_decode (nul, sizeof nul, &out, NULL, 0) == GW_DECODE_MALFORMED);
    if (verbose)
        printf ("OK\n");
}
