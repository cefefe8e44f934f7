//  mock_tokens - the deterministic token rule: prompt counting and the shape of the answer.

#include "mock_upstream.h"

//  Counts bytes of the compact JSON form without building the string.
static int
s_count_bytes (const char *buffer, size_t size, void *data)
{
    (void) buffer;
    *(size_t *) data += size;
    return 0;
}

long
mock_tokens_prompt (json_t *messages)
{
    long tokens = 0;
    size_t index;
    json_t *message;
    json_array_foreach (messages, index, message) {
        json_t *content = json_object_get (message, "content");
        size_t bytes = 0;
        if (json_is_string (content))
            bytes = json_string_length (content);
        else
        if (content)
            json_dump_callback (content, s_count_bytes, &bytes, JSON_COMPACT | JSON_ENCODE_ANY);
        tokens += 4 + (long) ((bytes + 3) / 4);
    }
    return tokens;
}

void
mock_tokens_plan (mock_plan_t *plan, int reasoning, int content, int max_tokens)
{
    assert (plan);
    assert (reasoning >= 0 && content >= 0 && max_tokens >= 0);
    plan->reasoning = reasoning;
    plan->content = content;
    plan->truncated = false;
    if (max_tokens > 0 && (long) reasoning + content > max_tokens) {
        plan->truncated = true;
        if (plan->reasoning > max_tokens)
            plan->reasoning = max_tokens;
        plan->content = max_tokens - plan->reasoning;
    }
}

size_t
mock_tokens_word (char *buf, size_t size, bool reasoning, int index)
{
    assert (index >= 1);
    //  Hand-rolled rather than snprintf: this runs once per streamed token,
    //  hundreds of thousands of times a second under load
    char digits [12];
    size_t ndigits = 0;
    for (unsigned value = (unsigned) index; value; value /= 10)
        digits [ndigits++] = (char) ('0' + value % 10);
    const char *stem = reasoning ? "think" : "tok";
    size_t stem_len = reasoning ? 5 : 3;
    size_t len = (index > 1 ? 1 : 0) + stem_len + ndigits;
    assert (len < size);
    char *out = buf;
    if (index > 1)
        *out++ = ' ';
    memcpy (out, stem, stem_len);
    out += stem_len;
    while (ndigits)
        *out++ = digits [--ndigits];
    *out = 0;
    return len;
}

char *
mock_tokens_text (bool reasoning, int count)
{
    //  " think1000000" is the longest word: 13 bytes
    size_t cap = (size_t) count * 14 + 1;
    char *text = malloc (cap);
    if (!text)
        return NULL;
    size_t len = 0;
    text [0] = 0;
    for (int i = 1; i <= count; i++)
        len += mock_tokens_word (text + len, cap - len, reasoning, i);
    return text;
}

void
mock_tokens_test (bool verbose)
{
    (void) verbose;
    //  "Hello" is 5 bytes: 4 + 2; "你好" is 6 bytes: 4 + 2; "" is 4 + 0;
    //  [{"type":"text","text":"hi"}] is 29 bytes compact: 4 + 8; null is 4 bytes: 4 + 1;
    //  a message without content is 4
    json_error_t error;
    json_t *messages = json_loads (
        "[{\"role\":\"system\",\"content\":\"Hello\"},"
        " {\"role\":\"user\",\"content\":\"\\u4f60\\u597d\"},"
        " {\"role\":\"user\",\"content\":\"\"},"
        " {\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
        " {\"role\":\"assistant\",\"content\":null},"
        " {\"role\":\"assistant\"}]", 0, &error);
    mock_check (messages);
    mock_check (mock_tokens_prompt (messages) == 6 + 6 + 4 + 12 + 5 + 4);
    json_decref (messages);

    mock_plan_t plan;
    mock_tokens_plan (&plan, 0, 16, 0);
    mock_check (plan.reasoning == 0 && plan.content == 16 && !plan.truncated);
    mock_tokens_plan (&plan, 8, 16, 24);
    mock_check (plan.reasoning == 8 && plan.content == 16 && !plan.truncated);
    mock_tokens_plan (&plan, 8, 16, 10);
    mock_check (plan.reasoning == 8 && plan.content == 2 && plan.truncated);
    mock_tokens_plan (&plan, 8, 16, 5);
    mock_check (plan.reasoning == 5 && plan.content == 0 && plan.truncated);

    char word [32];
    mock_check (mock_tokens_word (word, sizeof word, false, 1) == 4 && strcmp (word, "tok1") == 0);
    mock_check (mock_tokens_word (word, sizeof word, true, 12) == 8 && strcmp (word, " think12") == 0);
    mock_check (mock_tokens_word (word, sizeof word, false, 1000000) == 11 && strcmp (word, " tok1000000") == 0);

    char *text = mock_tokens_text (false, 3);
    mock_check (text && strcmp (text, "tok1 tok2 tok3") == 0);
    free (text);
    text = mock_tokens_text (true, 0);
    mock_check (text && strcmp (text, "") == 0);
    free (text);
}
