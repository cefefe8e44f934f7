/*  call_usage.h: token usage of one upstream call, read from DeepSeek's or an
    OpenAI-compatible provider's "usage" object. */
#ifndef CALL_USAGE_H_INCLUDED
#define CALL_USAGE_H_INCLUDED

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

void call_usage_test (bool verbose);

#endif
