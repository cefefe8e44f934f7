/*  call_usage.c: token usage of one upstream call, and the cost of a dispatch's calls. */
#include "call_usage.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t
s_count (json_t *obj, const char *key, bool *present)
{
    json_t *v = json_object_get (obj, key);
    if (present)
        *present = json_is_integer (v) && json_integer_value (v) >= 0;
    return json_is_integer (v) && json_integer_value (v) > 0 ? (uint64_t) json_integer_value (v) : 0;
}

int
call_usage_read (json_t *usage, call_usage_t *out)
{
    bool has_prompt, has_completion, has_hit, has_miss;
    if (!json_is_object (usage))
        return -1;
    uint64_t prompt = s_count (usage, "prompt_tokens", &has_prompt);
    uint64_t completion = s_count (usage, "completion_tokens", &has_completion);
    if (!has_prompt || !has_completion)
        return -1;
    uint64_t hit = s_count (usage, "prompt_cache_hit_tokens", &has_hit);
    uint64_t miss = s_count (usage, "prompt_cache_miss_tokens", &has_miss);
    if (!has_hit)
        hit = s_count (json_object_get (usage, "prompt_tokens_details"), "cached_tokens", NULL);
    if (hit > prompt)
        hit = prompt;
    //  prompt = hit + miss by DeepSeek's definition; derive miss when absent so the
    //  two always add up, which billing relies on.
    if (!has_miss || hit + miss != prompt)
        miss = prompt - hit;
    *out = (call_usage_t) {
        .known = true,
        .prompt_tokens = prompt,
        .cache_hit_tokens = hit,
        .cache_miss_tokens = miss,
        .completion_tokens = completion,
        .reasoning_tokens = s_count (json_object_get (usage, "completion_tokens_details"), "reasoning_tokens", NULL),
    };
    return 0;
}

void
call_cost_add (call_cost_t *self, price_table_t *prices, const char *currency, const gw_usage_t *event)
{
    self->calls++;
    if (event->cached)
        return;  //  answered from the gateway's cache: nothing was bought
    uint64_t cost;
    if (!prices
        || price_table_cost (prices, event->provider, event->upstream_model, currency, (int64_t) event->started_ms,
                             event->cache_hit_tokens, event->cache_miss_tokens, event->completion_tokens, &cost)
        || cost > INT64_MAX || self->cost_pico + cost < self->cost_pico)
        self->unpriced = true;
    else
        self->cost_pico += cost;
}

/*  Loads a price table from text through a temporary file. */
static price_table_t *
s_test_prices (const char *text)
{
    char path[] = "/tmp/call_usage_test_XXXXXX";
    int fd = mkstemp (path);
    assert (fd >= 0);
    assert (write (fd, text, strlen (text)) == (ssize_t) strlen (text));
    close (fd);
    char err[256] = "";
    price_table_t *prices = price_table_load (path, err, sizeof err);
    unlink (path);
    assert (prices);
    return prices;
}

void
call_usage_test (bool verbose)
{
    if (verbose)
        printf (" * call_usage: ");
    call_usage_t u = { 0 };
    json_t *j = json_loads ("{\"prompt_tokens\":12,\"completion_tokens\":28,\"total_tokens\":40,"
                            "\"prompt_cache_hit_tokens\":4,\"prompt_cache_miss_tokens\":8,"
                            "\"completion_tokens_details\":{\"reasoning_tokens\":20}}", 0, NULL);
    assert (call_usage_read (j, &u) == 0);
    assert (u.known && u.prompt_tokens == 12 && u.cache_hit_tokens == 4 && u.cache_miss_tokens == 8);
    assert (u.completion_tokens == 28 && u.reasoning_tokens == 20);
    json_decref (j);
    j = json_loads ("{\"prompt_tokens\":10,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":3}}", 0, NULL);
    assert (call_usage_read (j, &u) == 0);
    assert (u.cache_hit_tokens == 3 && u.cache_miss_tokens == 7 && u.reasoning_tokens == 0);
    json_decref (j);
    u = (call_usage_t) { 0 };
    assert (call_usage_read (json_null (), &u) == -1 && !u.known);
    j = json_loads ("{\"prompt_tokens\":10}", 0, NULL);
    assert (call_usage_read (j, &u) == -1);
    json_decref (j);

    //  The cost of a dispatch: every call counted, priced ones summed; one
    //  unpriced call makes the whole unknown.
    price_table_t *prices = s_test_prices ("provider,model,currency,effective_from,window,"
                                           "cache_hit_per_m,cache_miss_per_m,output_per_m\n"
                                           "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n");
    int64_t jan2 = 1735776000000;  //  2025-01-02T00:00:00Z
    gw_usage_t ev = { .provider = "p", .upstream_model = "m", .started_ms = (uint64_t) jan2,
                      .cache_hit_tokens = 10, .cache_miss_tokens = 20, .completion_tokens = 30 };
    call_cost_t cost = { 0 };
    call_cost_add (&cost, prices, "CNY", &ev);
    //  1, 2 and 3 per 1M tokens: 1e6, 2e6 and 3e6 pico per token.
    assert (cost.calls == 1 && !cost.unpriced && cost.cost_pico == 140000000);
    ev.cache_hit_tokens = ev.cache_miss_tokens = ev.completion_tokens = 0;  //  a failed call
    call_cost_add (&cost, prices, "CNY", &ev);
    assert (cost.calls == 2 && !cost.unpriced && cost.cost_pico == 140000000);
    ev.completion_tokens = 1;
    call_cost_add (&cost, prices, "USD", &ev);
    assert (cost.calls == 3 && cost.unpriced && cost.cost_pico == 140000000);
    cost = (call_cost_t) { 0 };
    ev.started_ms = (uint64_t) (jan2 - 2 * 86400000);  //  before the first price
    call_cost_add (&cost, prices, "CNY", &ev);
    assert (cost.calls == 1 && cost.unpriced && cost.cost_pico == 0);
    cost = (call_cost_t) { 0 };
    ev.started_ms = (uint64_t) jan2;
    ev.completion_tokens = 4000000000000ULL;  //  fits 64 bits unsigned, not a bigint
    call_cost_add (&cost, prices, "CNY", &ev);
    assert (cost.calls == 1 && cost.unpriced);
    cost = (call_cost_t) { 0 };
    ev.completion_tokens = 1;
    call_cost_add (&cost, NULL, "CNY", &ev);
    assert (cost.calls == 1 && cost.unpriced && cost.cost_pico == 0);
    //  A cached answer counts as a call and costs nothing, priced or not.
    cost = (call_cost_t) { 0 };
    ev.cached = true;
    ev.completion_tokens = 1000;
    call_cost_add (&cost, prices, "CNY", &ev);
    call_cost_add (&cost, NULL, "USD", &ev);
    assert (cost.calls == 2 && !cost.unpriced && cost.cost_pico == 0);
    price_table_destroy (&prices);
    if (verbose)
        printf ("OK\n");
}
