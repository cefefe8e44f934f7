/*  gw_buf.h: a growable byte buffer, always NUL-terminated for text users. */
#ifndef GW_BUF_H_INCLUDED
#define GW_BUF_H_INCLUDED

#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} gw_buf_t;

/*  Appends size bytes. Returns 0, or -1 when out of memory (buffer unchanged). */
int gw_buf_append (gw_buf_t *self, const void *data, size_t size);

/*  Removes the first n bytes. */
void gw_buf_consume (gw_buf_t *self, size_t n);

/*  Hands the bytes to the caller (who frees them) and empties the buffer. */
char *gw_buf_take (gw_buf_t *self);

void gw_buf_free (gw_buf_t *self);

#endif
