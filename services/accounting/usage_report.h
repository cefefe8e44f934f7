/*  usage_report.h: usage reports from the stored rows, as JSON.

    Totals of calls, requests, tokens (cache hit, cache miss, completion,
    reasoning) and exact cost, for a period (today, yesterday, this week, this
    month, all time, or custom bounds; UTC), in total and grouped by model, day,
    API key or provider. The cost is summed in PostgreSQL from the integer
    pico-unit column and printed as an exact decimal.
*/
#ifndef USAGE_REPORT_H_INCLUDED
#define USAGE_REPORT_H_INCLUDED

#include "gw_proto.h"
#include "usage_store.h"
#include <stdbool.h>
#include <stdint.h>

/*  Runs the report asked for. Returns a JSON body (caller frees) and sets
    *status: 200, 400 (bad period or grouping, with an OpenAI-style error body)
    or 503 (database unavailable). */
char *usage_report_run (usage_store_t *store, const gw_report_request_t *request, const char *currency,
                        uint32_t *status);

#endif
