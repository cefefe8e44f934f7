/*  gw_proto.h: C structs and codec for the messages defined in gw_messages.h.

    A gw_msg_t owns its strings and byte buffers after gw_msg_decode(); release them
    with gw_msg_clear(). For sending, fill a gw_msg_t with borrowed pointers and call
    gw_msg_send(): nothing is freed on that path.
*/
#ifndef GW_PROTO_H_INCLUDED
#define GW_PROTO_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw_messages.h"

typedef struct {
    uint8_t *data;
    size_t size;
} gw_bin_t;

typedef struct {
    char **items;
    size_t count;
} gw_strlist_t;

#define GW_CTYPE_U32 uint32_t
#define GW_CTYPE_U64 uint64_t
#define GW_CTYPE_BOOL bool
#define GW_CTYPE_STR char *
#define GW_CTYPE_BIN gw_bin_t
#define GW_CTYPE_STRLIST gw_strlist_t

typedef enum {
#define GW_ENUM_ENTRY(NAME, num, name, version, desc) GW_MSG_##NAME = num,
    GW_MESSAGES (GW_ENUM_ENTRY)
#undef GW_ENUM_ENTRY
} gw_msg_id_t;

/*  Each message's version (gw_messages.h): GW_VERSION_JOB, ... */
enum {
#define GW_VERSION_ENTRY(NAME, num, name, version, desc) GW_VERSION_##NAME = version,
    GW_MESSAGES (GW_VERSION_ENTRY)
#undef GW_VERSION_ENTRY
};

#define GW_FIELD_DECL(type, field, desc) GW_CTYPE_##type field;
#define GW_STRUCT_DECL(NAME, num, name, version, desc)                          \
    typedef struct {                                                                \
        GW_##NAME##_FIELDS (GW_FIELD_DECL)                                          \
    } gw_##name##_t;
GW_MESSAGES (GW_STRUCT_DECL)
#undef GW_STRUCT_DECL
#undef GW_FIELD_DECL

typedef struct {
    gw_msg_id_t id;
    //  The version in the message's header, set by gw_msg_decode (0 in a
    //  message built for sending: those go out with their message's version;
    //  for HELLO, the sender's protocol version).
    uint32_t version;
    union {
#define GW_UNION_ENTRY(NAME, num, name, version, desc) gw_##name##_t name;
        GW_MESSAGES (GW_UNION_ENTRY)
#undef GW_UNION_ENTRY
    };
} gw_msg_t;

/*  Largest encoded message we accept; a bound on what a peer can make us allocate. */
#define GW_PROTO_MAX_SIZE (64u * 1024 * 1024)

/*  Result of decoding. INTERRUPTED is reserved for receive paths (EINTR/EAGAIN). */
typedef enum {
    GW_DECODE_OK = 0,
    GW_DECODE_MALFORMED = -1,
    GW_DECODE_VERSION = -2,
    GW_DECODE_INTERRUPTED = -3,
} gw_decode_t;

/*  Name of a message id ("HELLO"), or "?" for an unknown id. */
const char *gw_msg_name (int id);

/*  Encodes msg into a fresh malloc'd buffer owned by the caller. Returns 0 or -1. */
int gw_msg_encode (const gw_msg_t *msg, char **data_p, size_t *size_p);

/*  Encodes msg for a peer that reads protocol peer_version (the version in its
    HELLO or in the message it sent): in the newest shape of the message it
    reads (GW_OLDER_SHAPES), newer trailing fields left out. -1 when the peer
    reads no shape of it. */
int gw_msg_encode_as (const gw_msg_t *msg, uint32_t peer_version, char **data_p, size_t *size_p);

/*  Whether a message of this id can be written for a peer of peer_version. */
bool gw_msg_writable_for (int id, uint32_t peer_version);

/*  Decodes any bytes into msg. On success msg owns its fields (gw_msg_clear).
    On failure msg is left cleared and err (if given) says why. Never crashes. */
gw_decode_t gw_msg_decode (const void *data, size_t size, gw_msg_t *msg, char *err, size_t errlen);

/*  Frees what a decoded msg owns and zeroes it. Safe on a zeroed msg. */
void gw_msg_clear (gw_msg_t *msg);

/*  Sends msg on a raw libzmq socket, preceded by a routing-id frame when
    routing_id is not NULL (ROUTER sockets). Non-blocking. Returns 0 or -1 (errno). */
int gw_msg_send (void *socket, const void *routing_id, size_t routing_id_size, const gw_msg_t *msg);

/*  gw_msg_send for a peer that reads protocol peer_version (gw_msg_encode_as). */
int gw_msg_send_as (void *socket, const void *routing_id, size_t routing_id_size, const gw_msg_t *msg,
                    uint32_t peer_version);

/*  Receives one message without blocking. When routing_id is not NULL the first
    frame is copied there (up to 255 bytes, length in *routing_id_size).
    Returns GW_DECODE_INTERRUPTED when nothing is waiting. */
gw_decode_t gw_msg_recv (void *socket, void *routing_id, size_t *routing_id_size, gw_msg_t *msg);

/*  A ZeroMQ context as every service uses it: received messages are copied
    out of libzmq's receive buffers instead of keeping them (gw_proto.c). */
void *gw_proto_context (void);

/*  Creates a DEALER for talking to a service (no linger, messages only on live
    connections, quick reconnects) and connects it to every endpoint of a comma
    list. sndhwm > 0 sets the send high-water mark (options only apply to
    connections made after them, hence here). NULL (logged under module) when a
    connect fails or nothing is given. */
void *gw_proto_dealer (void *zmq_ctx, const char *endpoints, int sndhwm, const char *module);

/*  Helpers for STRLIST fields: append a copy; free all. */
int gw_strlist_append (gw_strlist_t *list, const char *s);
void gw_strlist_clear (gw_strlist_t *list);

void gw_proto_test (bool verbose);

#endif
