//  mock_completion - one chat answer and its wire forms: the JSON body and the SSE frames.

#include "mock_upstream.h"
#include <time.h>

//  The fingerprint of a real capture; clients only pass it through.
#define MOCK_FINGERPRINT "fp_1c141eb703"

void
mock_completion_init (mock_completion_t *self, const char *model, bool reasoner,
                      long prompt_tokens, long cache, const mock_plan_t *plan)
{
    assert (self && model && plan);
    memset (self, 0, sizeof *self);
    mock_uuid_generate (self->id);
    self->created = (long long) time (NULL);
    self->model = model;
    self->reasoner = reasoner;
    self->prompt_tokens = prompt_tokens;
    self->cache_hit = cache < 0 ? 0 : cache > prompt_tokens ? prompt_tokens : cache;
    self->plan = *plan;
    self->usage_mode = MOCK_USAGE_FINAL;
    int len = snprintf (self->prefix, sizeof self->prefix,
        "data: {\"id\":\"%s\",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":\"%s\","
        "\"system_fingerprint\":\"" MOCK_FINGERPRINT "\",\"choices\":[",
        self->id, self->created, self->model);
    assert (len > 0 && (size_t) len < sizeof self->prefix);
    self->prefix_len = (size_t) len;
}

int
mock_completion_tokens (mock_completion_t *self)
{
    return self->plan.reasoning + self->plan.content;
}

//  Writes the usage object, in the field order of real captures.
static int
s_usage (mock_completion_t *self, char *buf, size_t size)
{
    long completion = mock_completion_tokens (self);
    char reasoning [64] = "";
    if (self->reasoner)
        snprintf (reasoning, sizeof reasoning,
                  ",\"completion_tokens_details\":{\"reasoning_tokens\":%d}", self->plan.reasoning);
    return snprintf (buf, size,
        "{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld%s,"
        "\"prompt_tokens_details\":{\"cached_tokens\":%ld},"
        "\"prompt_cache_hit_tokens\":%ld,\"prompt_cache_miss_tokens\":%ld}",
        self->prompt_tokens, completion, self->prompt_tokens + completion, reasoning,
        self->cache_hit, self->cache_hit, self->prompt_tokens - self->cache_hit);
}

static const char *
s_finish_reason (mock_completion_t *self)
{
    return self->plan.truncated ? "length" : "stop";
}

char *
mock_completion_body (mock_completion_t *self, size_t *len_p)
{
    assert (self && len_p);
    char usage [512];
    s_usage (self, usage, sizeof usage);
    char *content = mock_tokens_text (false, self->plan.content);
    char *reasoning = self->reasoner ? mock_tokens_text (true, self->plan.reasoning) : NULL;
    char *body = NULL;
    int len = -1;
    if (content && (reasoning || !self->reasoner))
        len = asprintf (&body,
            "{\"id\":\"%s\",\"object\":\"chat.completion\",\"created\":%lld,\"model\":\"%s\","
            "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"%s%s%s},"
            "\"logprobs\":null,\"finish_reason\":\"%s\"}],"
            "\"usage\":%s,\"system_fingerprint\":\"" MOCK_FINGERPRINT "\"}",
            self->id, self->created, self->model, content,
            reasoning ? ",\"reasoning_content\":\"" : "", reasoning ? reasoning : "",
            reasoning ? "\"" : "", s_finish_reason (self), usage);
    free (content);
    free (reasoning);
    if (len < 0)
        return NULL;
    //  Half a body is invalid JSON whatever the answer: the closing brace is gone
    if (self->malformed) {
        len /= 2;
        body [len] = 0;
    }
    *len_p = (size_t) len;
    return body;
}

void
mock_completion_frame_info (mock_completion_t *self, int index, mock_frame_t *frame)
{
    assert (self && frame && index >= 0);
    int tokens = mock_completion_tokens (self);
    int extra = self->malformed ? 1 : 0;
    frame->tokens = 0;
    if (index == 0)
        frame->kind = MOCK_FRAME_ROLE;
    else
    if (index <= extra)
        frame->kind = MOCK_FRAME_MALFORMED;
    else
    if (index <= extra + tokens) {
        frame->kind = MOCK_FRAME_TOKEN;
        frame->tokens = index - extra;
    }
    else {
        frame->tokens = tokens;
        int tail = index - extra - tokens;      //  1 = final, then usage?, done, end
        bool usage_frame = self->usage_mode == MOCK_USAGE_SEPARATE && self->include_usage;
        if (tail == 1)
            frame->kind = MOCK_FRAME_FINAL;
        else
        if (usage_frame && tail == 2)
            frame->kind = MOCK_FRAME_USAGE;
        else
        if (tail == (usage_frame ? 3 : 2))
            frame->kind = MOCK_FRAME_DONE;
        else
            frame->kind = MOCK_FRAME_END;
    }
}

//  Appends to a frame buffer. Frames are built from fixed pieces with
//  memcpy rather than snprintf: one frame per token per stream makes this
//  the hottest code of the mock. Sizes are bounded (see MOCK_FRAME_MAX).
typedef struct {
    char *buf;
    size_t size;
    size_t len;
} s_frame_out_t;

static void
s_put (s_frame_out_t *out, const char *text, size_t len)
{
    assert (out->len + len < out->size);
    memcpy (out->buf + out->len, text, len);
    out->len += len;
}

#define s_put_literal(out, literal) s_put ((out), (literal), sizeof (literal) - 1)

size_t
mock_completion_frame (mock_completion_t *self, int index, char *buf, size_t size)
{
    assert (self && buf && size >= MOCK_FRAME_MAX);
    mock_frame_t frame;
    mock_completion_frame_info (self, index, &frame);
    s_frame_out_t out = { buf, size, 0 };
    if (frame.kind == MOCK_FRAME_END)
        return 0;
    if (frame.kind == MOCK_FRAME_DONE) {
        s_put_literal (&out, "data: [DONE]\n\n");
        buf [out.len] = 0;
        return out.len;
    }
    s_put (&out, self->prefix, self->prefix_len);
    if (frame.kind == MOCK_FRAME_MALFORMED) {
        s_put_literal (&out, "{\"index\":0,\"delta\":{\"content\":\n\n");
        buf [out.len] = 0;
        return out.len;
    }
    if (frame.kind == MOCK_FRAME_USAGE) {
        s_put_literal (&out, "],\"usage\":");
        out.len += (size_t) s_usage (self, buf + out.len, size - out.len);
        s_put_literal (&out, "}\n\n");
        buf [out.len] = 0;
        return out.len;
    }
    s_put_literal (&out, "{\"index\":0,\"delta\":");
    if (frame.kind == MOCK_FRAME_ROLE) {
        if (self->reasoner)
            s_put_literal (&out, "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"\"}");
        else
            s_put_literal (&out, "{\"role\":\"assistant\",\"content\":\"\"}");
    }
    else
    if (frame.kind == MOCK_FRAME_TOKEN) {
        char word [32];
        bool thinking = frame.tokens <= self->plan.reasoning;
        int n = thinking ? frame.tokens : frame.tokens - self->plan.reasoning;
        size_t word_len = mock_tokens_word (word, sizeof word, thinking, n);
        if (thinking)
            s_put_literal (&out, "{\"content\":null,\"reasoning_content\":\"");
        else
            s_put_literal (&out, "{\"content\":\"");
        s_put (&out, word, word_len);
        if (self->reasoner && !thinking)
            s_put_literal (&out, "\",\"reasoning_content\":null}");
        else
            s_put_literal (&out, "\"}");
    }
    else {
        assert (frame.kind == MOCK_FRAME_FINAL);
        if (self->reasoner)
            s_put_literal (&out, "{\"content\":\"\",\"reasoning_content\":null}");
        else
            s_put_literal (&out, "{\"content\":\"\"}");
    }
    s_put_literal (&out, ",\"logprobs\":null,\"finish_reason\":");
    if (frame.kind == MOCK_FRAME_FINAL && self->plan.truncated)
        s_put_literal (&out, "\"length\"}]");
    else
    if (frame.kind == MOCK_FRAME_FINAL)
        s_put_literal (&out, "\"stop\"}]");
    else
        s_put_literal (&out, "null}]");

    if (frame.kind == MOCK_FRAME_FINAL && self->usage_mode == MOCK_USAGE_FINAL) {
        s_put_literal (&out, ",\"usage\":");
        out.len += (size_t) s_usage (self, buf + out.len, size - out.len);
    }
    else
    if (self->usage_mode == MOCK_USAGE_SEPARATE && self->include_usage)
        //  OpenAI style: usage is null on every chunk but the usage chunk
        s_put_literal (&out, ",\"usage\":null");
    s_put_literal (&out, "}\n\n");
    buf [out.len] = 0;
    return out.len;
}

//  Parses the JSON of one "data: ...\n\n" frame, for the selftest.
static json_t *
s_frame_json (const char *frame, size_t len)
{
    if (len < 8 || memcmp (frame, "data: ", 6) != 0 || memcmp (frame + len - 2, "\n\n", 2) != 0)
        return NULL;
    return json_loadb (frame + 6, len - 8, 0, NULL);
}

void
mock_completion_test (bool verbose)
{
    (void) verbose;
    mock_plan_t plan;
    mock_tokens_plan (&plan, 0, 3, 0);
    mock_completion_t answer;
    mock_completion_init (&answer, "deepseek-chat", false, 20, 50, &plan);
    mock_check (answer.cache_hit == 20);

    //  Non-streaming body
    size_t len;
    char *body = mock_completion_body (&answer, &len);
    mock_check (body && len == strlen (body));
    json_t *json = json_loadb (body, len, 0, NULL);
    mock_check (json);
    mock_check (strcmp (json_string_value (json_object_get (json, "object")), "chat.completion") == 0);
    mock_check (strcmp (json_string_value (json_object_get (json, "id")), answer.id) == 0);
    json_t *choice = json_array_get (json_object_get (json, "choices"), 0);
    json_t *message = json_object_get (choice, "message");
    mock_check (strcmp (json_string_value (json_object_get (message, "content")), "tok1 tok2 tok3") == 0);
    mock_check (json_object_get (message, "reasoning_content") == NULL);
    mock_check (json_is_null (json_object_get (choice, "logprobs")));
    mock_check (strcmp (json_string_value (json_object_get (choice, "finish_reason")), "stop") == 0);
    json_t *usage = json_object_get (json, "usage");
    mock_check (json_integer_value (json_object_get (usage, "prompt_tokens")) == 20);
    mock_check (json_integer_value (json_object_get (usage, "completion_tokens")) == 3);
    mock_check (json_integer_value (json_object_get (usage, "total_tokens")) == 23);
    mock_check (json_integer_value (json_object_get (usage, "prompt_cache_hit_tokens")) == 20);
    mock_check (json_integer_value (json_object_get (usage, "prompt_cache_miss_tokens")) == 0);
    mock_check (json_object_get (usage, "completion_tokens_details") == NULL);
    json_decref (json);
    free (body);

    answer.malformed = true;
    body = mock_completion_body (&answer, &len);
    mock_check (body && len > 0);
    mock_check (json_loadb (body, len, 0, NULL) == NULL);
    free (body);

    //  Reasoner, truncated by max_tokens, body
    mock_tokens_plan (&plan, 2, 16, 4);
    mock_completion_init (&answer, "deepseek-reasoner", true, 10, 0, &plan);
    body = mock_completion_body (&answer, &len);
    json = json_loadb (body, len, 0, NULL);
    mock_check (json);
    choice = json_array_get (json_object_get (json, "choices"), 0);
    message = json_object_get (choice, "message");
    mock_check (strcmp (json_string_value (json_object_get (message, "reasoning_content")), "think1 think2") == 0);
    mock_check (strcmp (json_string_value (json_object_get (message, "content")), "tok1 tok2") == 0);
    mock_check (strcmp (json_string_value (json_object_get (choice, "finish_reason")), "length") == 0);
    usage = json_object_get (json, "usage");
    mock_check (json_integer_value (json_object_get (usage, "completion_tokens")) == 4);
    mock_check (json_integer_value (json_object_get (
        json_object_get (usage, "completion_tokens_details"), "reasoning_tokens")) == 2);
    json_decref (json);
    free (body);

    //  Reasoner stream, final usage: role, 2 thinking, 2 content, final, done
    char frame [MOCK_FRAME_MAX];
    mock_frame_t info;
    const char *expected [] = {
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"\"}",
        "{\"content\":null,\"reasoning_content\":\"think1\"}",
        "{\"content\":null,\"reasoning_content\":\" think2\"}",
        "{\"content\":\"tok1\",\"reasoning_content\":null}",
        "{\"content\":\" tok2\",\"reasoning_content\":null}",
        "{\"content\":\"\",\"reasoning_content\":null}" };
    for (int i = 0; i < 6; i++) {
        len = mock_completion_frame (&answer, i, frame, sizeof frame);
        json = s_frame_json (frame, len);
        mock_check (json);
        mock_check (strcmp (json_string_value (json_object_get (json, "object")), "chat.completion.chunk") == 0);
        choice = json_array_get (json_object_get (json, "choices"), 0);
        char *delta = json_dumps (json_object_get (choice, "delta"), JSON_COMPACT);
        mock_check (delta && strcmp (delta, expected [i]) == 0);
        free (delta);
        mock_check ((json_object_get (json, "usage") != NULL) == (i == 5));
        if (i == 5) {
            mock_check (strcmp (json_string_value (json_object_get (choice, "finish_reason")), "length") == 0);
            mock_check (json_integer_value (json_object_get (json_object_get (json, "usage"), "total_tokens")) == 14);
        }
        else
            mock_check (json_is_null (json_object_get (choice, "finish_reason")));
        json_decref (json);
    }
    mock_completion_frame_info (&answer, 5, &info);
    mock_check (info.kind == MOCK_FRAME_FINAL && info.tokens == 4);
    len = mock_completion_frame (&answer, 6, frame, sizeof frame);
    mock_check (len == 14 && memcmp (frame, "data: [DONE]\n\n", 14) == 0);
    mock_check (mock_completion_frame (&answer, 7, frame, sizeof frame) == 0);

    //  Separate usage with include_usage and a malformed frame after the role
    mock_tokens_plan (&plan, 0, 1, 0);
    mock_completion_init (&answer, "deepseek-chat", false, 7, 3, &plan);
    answer.usage_mode = MOCK_USAGE_SEPARATE;
    answer.include_usage = true;
    answer.malformed = true;
    mock_frame_kind_t kinds [] = { MOCK_FRAME_ROLE, MOCK_FRAME_MALFORMED, MOCK_FRAME_TOKEN,
                                   MOCK_FRAME_FINAL, MOCK_FRAME_USAGE, MOCK_FRAME_DONE, MOCK_FRAME_END };
    for (int i = 0; i < 7; i++) {
        mock_completion_frame_info (&answer, i, &info);
        mock_check (info.kind == kinds [i]);
    }
    len = mock_completion_frame (&answer, 1, frame, sizeof frame);
    mock_check (len > 0 && s_frame_json (frame, len) == NULL);
    len = mock_completion_frame (&answer, 2, frame, sizeof frame);
    json = s_frame_json (frame, len);
    mock_check (json && json_is_null (json_object_get (json, "usage")));
    json_decref (json);
    len = mock_completion_frame (&answer, 4, frame, sizeof frame);
    json = s_frame_json (frame, len);
    mock_check (json && json_array_size (json_object_get (json, "choices")) == 0);
    usage = json_object_get (json, "usage");
    mock_check (json_integer_value (json_object_get (usage, "prompt_cache_hit_tokens")) == 3);
    mock_check (json_integer_value (json_object_get (usage, "prompt_cache_miss_tokens")) == 4);
    mock_check (json_integer_value (json_object_get (
        json_object_get (usage, "prompt_tokens_details"), "cached_tokens")) == 3);
    json_decref (json);
}
