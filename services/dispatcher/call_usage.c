/*  call_usage.c: token usage of one upstream call. */
#include "call_usage.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

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
    if (verbose)
        printf ("OK\n");
}
