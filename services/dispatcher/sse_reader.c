/*  sse_reader.c: whole SSE events out of upstream bytes, usage captured. */
#include "sse_reader.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

/*  Looks at one event's data payload. Returns false when the event must not be
    forwarded. */
static bool
s_inspect (sse_reader_t *self, const char *data, size_t len)
{
    if (len == 6 && memcmp (data, "[DONE]", 6) == 0) {
        self->done = true;
        return true;
    }
    //  Parsing every chunk would cost more than the relay itself; only a chunk
    //  that mentions usage is worth a look.
    if (!memmem (data, len, "\"usage\"", 7))
        return true;
    json_t *chunk = json_loadb (data, len, 0, NULL);
    if (!chunk)
        return true;
    bool forward = true;
    if (call_usage_read (json_object_get (chunk, "usage"), &self->usage) == 0) {
        json_t *choices = json_object_get (chunk, "choices");
        if (json_is_array (choices) && json_array_size (choices) == 0 && !self->keep_usage_chunk)
            forward = false;
    }
    json_decref (chunk);
    return forward;
}

/*  Processes one complete event (without its blank-line terminator). */
static bool
s_event (sse_reader_t *self, const char *ev, size_t len)
{
    self->events++;
    //  Gather the data: lines; a multi-line payload is joined with newlines.
    gw_buf_t data = { 0 };
    const char *p = ev, *end = ev + len;
    bool has_data = false;
    while (p < end) {
        const char *eol = memchr (p, '\n', (size_t) (end - p));
        const char *line_end = eol ? eol : end;
        size_t line_len = (size_t) (line_end - p);
        if (line_len && p[line_len - 1] == '\r')
            line_len--;
        if (line_len >= 5 && memcmp (p, "data:", 5) == 0) {
            const char *v = p + 5;
            size_t vlen = line_len - 5;
            if (vlen && *v == ' ')
                v++, vlen--;
            if (has_data)
                gw_buf_append (&data, "\n", 1);
            gw_buf_append (&data, v, vlen);
            has_data = true;
        }
        p = eol ? eol + 1 : end;
    }
    bool forward = has_data ? s_inspect (self, data.data, data.len) : true;
    gw_buf_free (&data);
    return forward;
}

int
sse_reader_feed (sse_reader_t *self, const char *data, size_t size, gw_buf_t *forward)
{
    if (gw_buf_append (&self->pending, data, size))
        return -1;
    size_t start = 0;
    const char *buf = self->pending.data;
    size_t len = self->pending.len;
    for (size_t i = 0; i + 1 < len; i++) {
        //  An event ends with an empty line: "\n\n" (or "\r\n\r\n").
        size_t term = 0;
        if (buf[i] == '\n' && buf[i + 1] == '\n')
            term = 2;
        else if (buf[i] == '\n' && buf[i + 1] == '\r' && i + 2 < len && buf[i + 2] == '\n')
            term = 3;
        if (!term)
            continue;
        size_t ev_len = i + 1 - start;
        if (s_event (self, buf + start, ev_len) && gw_buf_append (forward, buf + start, ev_len + term - 1))
            return -1;
        start = i + term;
        i = start - 1;
    }
    gw_buf_consume (&self->pending, start);
    return 0;
}

void
sse_reader_reset (sse_reader_t *self)
{
    gw_buf_free (&self->pending);
    bool keep = self->keep_usage_chunk;
    *self = (sse_reader_t) { .keep_usage_chunk = keep };
}

void
sse_reader_test (bool verbose)
{
    if (verbose)
        printf (" * sse_reader: ");
    const char *stream = ": keep-alive\n\n"
                         "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
                         "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
                         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,"
                         "\"prompt_cache_hit_tokens\":0,\"prompt_cache_miss_tokens\":5}}\n\n"
                         "data: [DONE]\n\n";
    //  Byte by byte: events come out whole and in order, the usage-only chunk dropped.
    sse_reader_t r = { 0 };
    gw_buf_t out = { 0 };
    for (size_t i = 0; stream[i]; i++)
        assert (sse_reader_feed (&r, stream + i, 1, &out) == 0);
    assert (r.done && r.events == 5 && r.usage.known && r.usage.prompt_tokens == 5);
    assert (strstr (out.data, "\"choices\":[]") == NULL);
    assert (strncmp (out.data, ": keep-alive\n\ndata: {", 21) == 0);
    assert (strcmp (out.data + out.len - 14, "data: [DONE]\n\n") == 0);
    sse_reader_reset (&r);
    gw_buf_free (&out);
    //  The client asked for it: everything passes, byte for byte.
    r.keep_usage_chunk = true;
    assert (sse_reader_feed (&r, stream, strlen (stream), &out) == 0);
    assert (out.len == strlen (stream) && memcmp (out.data, stream, out.len) == 0);
    sse_reader_reset (&r);
    gw_buf_free (&out);
    //  Usage on the final content chunk (DeepSeek's captures), CRLF line ends.
    const char *ds = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":3,"
                     "\"completion_tokens\":9}}\r\n\r\ndata: [DONE]\r\n\r\n";
    assert (sse_reader_feed (&r, ds, strlen (ds), &out) == 0);
    assert (r.usage.completion_tokens == 9 && r.done && out.len == strlen (ds));
    //  An incomplete event stays pending.
    assert (sse_reader_feed (&r, "data: {\"x\":1}\n", 14, &out) == 0);
    assert (out.len == strlen (ds) && r.pending.len == 14);
    sse_reader_reset (&r);
    gw_buf_free (&out);
    if (verbose)
        printf ("OK\n");
}
