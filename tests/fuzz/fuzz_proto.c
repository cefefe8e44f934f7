/*  fuzz_proto.c: libFuzzer target for the wire decoder; any bytes must decode or
    fail cleanly, and whatever decodes must encode and decode again the same way.
    Run with `make fuzz` (FUZZ_SECONDS, default 60). */
#include "gw_proto.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    gw_msg_t msg, again;
    if (gw_msg_decode (data, size, &msg, NULL, 0) != GW_DECODE_OK)
        return 0;
    char *bytes;
    size_t len;
    assert (gw_msg_encode (&msg, &bytes, &len) == 0);
    assert (gw_msg_decode (bytes, len, &again, NULL, 0) == GW_DECODE_OK);
    assert (again.id == msg.id);
    char *bytes2;
    size_t len2;
    assert (gw_msg_encode (&again, &bytes2, &len2) == 0);
    assert (len2 == len && memcmp (bytes, bytes2, len) == 0);
    free (bytes);
    free (bytes2);
    gw_msg_clear (&msg);
    gw_msg_clear (&again);
    return 0;
}
