/*  gw_time.h: UTC timestamps as operators and APIs write them. */
#ifndef GW_TIME_H_INCLUDED
#define GW_TIME_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

/*  Parses "YYYY-MM-DD" (midnight UTC), "YYYY-MM-DDTHH:MM:SSZ" or unix ms digits
    into unix ms. Returns 0 or -1. */
int gw_time_parse_ms (const char *text, int64_t *ms);

void gw_time_test (bool verbose);

#endif
