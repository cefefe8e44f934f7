/*  gw_time.c: UTC timestamps as operators and APIs write them. */
#include "gw_time.h"

#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int
gw_time_parse_ms (const char *text, int64_t *ms)
{
    if (!text || !*text)
        return -1;
    size_t len = strlen (text);
    bool digits = true;
    for (size_t i = 0; i < len; i++)
        digits &= isdigit ((unsigned char) text[i]) != 0;
    if (digits && len > 10) {  //  unix ms, not a year
        *ms = strtoll (text, NULL, 10);
        return 0;
    }
    struct tm tm = { 0 };
    const char *end = strptime (text, len == 10 ? "%Y-%m-%d" : "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!end || *end)
        return -1;
    *ms = (int64_t) timegm (&tm) * 1000;
    return 0;
}

void
gw_time_test (bool verbose)
{
    if (verbose)
        printf (" * gw_time: ");
    int64_t ms;
    assert (gw_time_parse_ms ("2026-11-01", &ms) == 0 && ms == 1793491200000LL);
    assert (gw_time_parse_ms ("2026-11-01T12:30:00Z", &ms) == 0 && ms == 1793491200000LL + 45000000);
    assert (gw_time_parse_ms ("1793491200123", &ms) == 0 && ms == 1793491200123LL);
    assert (gw_time_parse_ms ("2026-13-01", &ms) == -1);
    assert (gw_time_parse_ms ("yesterday", &ms) == -1);
    assert (gw_time_parse_ms ("2026-11-01T12:30:00", &ms) == -1);
    if (verbose)
        printf ("OK\n");
}
