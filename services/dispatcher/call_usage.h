/*  call_usage.h: token usage of one upstream call, read from DeepSeek's or an
    OpenAI-compatible provider's "usage" object, and what the calls of one
    dispatch cost, priced the way accounting prices their usage events. */
#ifndef CALL_USAGE_H_INCLUDED
#define CALL_USAGE_H_INCLUDED

#include "gw_proto.h"
#include "price_table.h"
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    bool known;
    uint64_t prompt_tokens;
    uint64_t cache_hit_tokens;
    uint64_t cache_miss_tokens;
    uint64_t completion_tokens;
    uint64_t reasoning_tokens;
} call_usage_t;

/*  Reads a usage object. DeepSeek reports prompt_cache_hit/miss_tokens; OpenAI-style
    providers report prompt_tokens_details.cached_tokens; either is understood.
    Returns 0, or -1 (usage untouched) when the object is not a usage. */
int call_usage_read (json_t *usage, call_usage_t *out);

/*  The calls of one dispatch so far. Start from all zeros. */
typedef struct {
    uint32_t calls;  //  usage events counted
    uint64_t cost_pico;  //  sum of the priced calls
    bool unpriced;  //  a call had no price (or there is no price table)
} call_cost_t;

/*  Counts one usage event and adds its cost, priced in currency by prices at the
    call's started_ms, as accounting does (a cost beyond a signed bigint counts as
    unpriced there, so here too). prices may be NULL: the call is unpriced. An
    answer from the gateway's response cache counts and costs nothing. */
void call_cost_add (call_cost_t *self, price_table_t *prices, const char *currency, const gw_usage_t *event);

void call_usage_test (bool verbose);

#endif
