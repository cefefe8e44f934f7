/*  gw_buf.c: a growable byte buffer. */
#include "gw_buf.h"

#include <stdlib.h>
#include <string.h>

int
gw_buf_append (gw_buf_t *self, const void *data, size_t size)
{
    if (self->len + size + 1 > self->cap) {
        size_t cap = self->cap ? self->cap : 256;
        while (cap < self->len + size + 1)
            cap *= 2;
        char *n = realloc (self->data, cap);
        if (!n)
            return -1;
        self->data = n;
        self->cap = cap;
    }
    if (size)
        memcpy (self->data + self->len, data, size);
    self->len += size;
    self->data[self->len] = 0;
    return 0;
}

void
gw_buf_consume (gw_buf_t *self, size_t n)
{
    if (n >= self->len) {
        self->len = 0;
        if (self->data)
            self->data[0] = 0;
        return;
    }
    memmove (self->data, self->data + n, self->len - n);
    self->len -= n;
    self->data[self->len] = 0;
}

char *
gw_buf_take (gw_buf_t *self)
{
    char *d = self->data;
    *self = (gw_buf_t) { 0 };
    return d;
}

void
gw_buf_free (gw_buf_t *self)
{
    free (self->data);
    *self = (gw_buf_t) { 0 };
}
