/*  sse_reader.h: splits an upstream SSE stream into whole events as bytes arrive.

    Events are forwarded as they are, byte for byte, with two exceptions the
    gateway owes the client: the usage is captured wherever it rides (on the last
    content chunk, DeepSeek's way, or on an extra chunk with "choices":[], the
    OpenAI include_usage way), and that extra chunk is dropped when the gateway,
    not the client, asked for it.
*/
#ifndef SSE_READER_H_INCLUDED
#define SSE_READER_H_INCLUDED

#include "call_usage.h"
#include "gw_buf.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    gw_buf_t pending;  //  bytes of an event not yet complete
    bool keep_usage_chunk;  //  the client asked for include_usage itself
    bool done;  //  "data: [DONE]" was seen
    size_t events;  //  complete events seen (comments included)
    call_usage_t usage;
} sse_reader_t;

/*  Feeds bytes; appends every complete event to forward (for the client). */
int sse_reader_feed (sse_reader_t *self, const char *data, size_t size, gw_buf_t *forward);

void sse_reader_reset (sse_reader_t *self);

void sse_reader_test (bool verbose);

#endif
