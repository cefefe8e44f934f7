/*  chat_request.c: validation of a /chat/completions body. */
#include "chat_request.h"
#include "gw_error.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_fail (chat_request_t *req, const char *param, const char *message)
{
    req->status = 400;
    req->error = gw_error_json ("invalid_request_error", "invalid_request_error", param, "%s", message);
    return -1;
}

static bool
s_number_in (json_t *v, double lo, double hi)
{
    return json_is_number (v) && json_number_value (v) >= lo && json_number_value (v) <= hi;
}

static int
s_check_messages (chat_request_t *req, json_t *messages)
{
    if (!json_is_array (messages) || json_array_size (messages) == 0)
        return s_fail (req, "messages", "messages must be a non-empty array");
    size_t i;
    json_t *m;
    json_array_foreach (messages, i, m) {
        char why[160];
        const char *role = json_string_value (json_object_get (m, "role"));
        json_t *content = json_object_get (m, "content");
        if (!json_is_object (m))
            snprintf (why, sizeof why, "messages[%zu] must be an object", i);
        else if (!role
                 || (strcmp (role, "system") && strcmp (role, "user") && strcmp (role, "assistant")
                     && strcmp (role, "tool")))
            snprintf (why, sizeof why,
                      "messages[%zu].role must be one of system, user, assistant, tool", i);
        else if (content && !json_is_string (content) && !json_is_array (content) && !json_is_null (content))
            snprintf (why, sizeof why, "messages[%zu].content must be a string or an array", i);
        //  Only an assistant turn (carrying tool_calls) may go without content.
        else if ((!content || json_is_null (content)) && strcmp (role, "assistant"))
            snprintf (why, sizeof why, "messages[%zu].content is required for role %s", i, role);
        else
            continue;
        return s_fail (req, "messages", why);
    }
    return 0;
}

/*  Tenths of a token in text, from DeepSeek's guidance: about 0.3 token per
    ASCII character and 0.6 per other character (Chinese). */
static uint64_t
s_text_tenths (const char *text, size_t len)
{
    uint64_t ascii = 0, other = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char) text[i];
        if (c < 0x80)
            ascii++;
        else if ((c & 0xC0) != 0x80)  //  the first byte of a multi-byte character
            other++;
    }
    return ascii * 3 + other * 6;
}

static uint64_t
s_json_tenths (json_t *v)
{
    if (json_is_string (v))
        return s_text_tenths (json_string_value (v), json_string_length (v));
    if (!v || json_is_null (v))
        return 0;
    //  Parts, tool calls, tool definitions: their JSON text is what the model reads.
    char *text = json_dumps (v, JSON_COMPACT);
    uint64_t t = text ? s_text_tenths (text, strlen (text)) : 0;
    free (text);
    return t;
}

/*  Prompt tokens before the call: every message's text plus 4 per message
    for the chat template, plus tool definitions; rounded up. */
static uint64_t
s_estimate_prompt (json_t *root)
{
    uint64_t tenths = 0;
    size_t i;
    json_t *m;
    json_array_foreach (json_object_get (root, "messages"), i, m) {
        json_t *content = json_object_get (m, "content");
        if (json_is_array (content)) {
            size_t k;
            json_t *part;
            json_array_foreach (content, k, part) {
                json_t *text = json_object_get (part, "text");
                tenths += json_is_string (text) ? s_json_tenths (text) : s_json_tenths (part);
            }
        }
        else
            tenths += s_json_tenths (content);
        tenths += s_json_tenths (json_object_get (m, "tool_calls")) + 40;
    }
    tenths += s_json_tenths (json_object_get (root, "tools"));
    return (tenths + 9) / 10;
}

int
chat_request_parse (const char *body, size_t size, chat_request_t *req)
{
    memset (req, 0, sizeof *req);
    json_error_t jerr;
    json_t *root = json_loadb (body, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char why[256];
        snprintf (why, sizeof why, "Request body is not valid JSON: %s (line %d, column %d)",
                  jerr.text, jerr.line, jerr.column);
        return s_fail (req, NULL, why);
    }
    int rc = -1;
    json_t *v;
    if (!json_is_object (root)) {
        s_fail (req, NULL, "Request body must be a JSON object");
        goto done;
    }
    v = json_object_get (root, "model");
    if (!json_is_string (v) || json_string_length (v) == 0) {
        s_fail (req, "model", "you must provide a model parameter");
        goto done;
    }
    if (json_string_length (v) >= sizeof req->model) {
        s_fail (req, "model", "Model Not Exist");
        goto done;
    }
    strcpy (req->model, json_string_value (v));
    if (s_check_messages (req, json_object_get (root, "messages")))
        goto done;
    v = json_object_get (root, "stream");
    if (v && !json_is_boolean (v) && !json_is_null (v)) {
        s_fail (req, "stream", "stream must be a boolean");
        goto done;
    }
    req->stream = json_is_true (v);
    v = json_object_get (root, "stream_options");
    if (v && !json_is_null (v)) {
        json_t *iu = json_object_get (v, "include_usage");
        if (!json_is_object (v) || (iu && !json_is_boolean (iu))) {
            s_fail (req, "stream_options", "stream_options must be an object with a boolean include_usage");
            goto done;
        }
        if (!req->stream) {
            s_fail (req, "stream_options", "stream_options is only allowed when stream is true");
            goto done;
        }
        req->client_usage = json_is_true (iu);
    }
    if ((v = json_object_get (root, "n")) && !json_is_null (v)
        && (!json_is_integer (v) || json_integer_value (v) != 1)) {
        s_fail (req, "n", "n must be 1");
        goto done;
    }
    const char *caps[] = { "max_tokens", "max_completion_tokens" };
    for (int i = 0; i < 2; i++) {
        if (!(v = json_object_get (root, caps[i])) || json_is_null (v))
            continue;
        if (!json_is_integer (v) || json_integer_value (v) < 1) {
            char why[96];
            snprintf (why, sizeof why, "%s must be a positive integer", caps[i]);
            s_fail (req, caps[i], why);
            goto done;
        }
        //  Only max_tokens bounds the answer: DeepSeek does not read
        //  max_completion_tokens, so it cannot lower the reserved cost.
        if (i == 0)
            req->max_tokens = (uint64_t) json_integer_value (v);
    }
    req->prompt_tokens = s_estimate_prompt (root);
    if ((v = json_object_get (root, "temperature")) && !json_is_null (v) && !s_number_in (v, 0, 2)) {
        s_fail (req, "temperature", "temperature must be a number between 0 and 2");
        goto done;
    }
    //  DeepSeek's default temperature is 1: only an explicit 0 asks for the
    //  same answer every time.
    req->deterministic = v && json_is_number (v) && json_number_value (v) == 0;
    if ((v = json_object_get (root, "top_p")) && !json_is_null (v) && !s_number_in (v, 0, 1)) {
        s_fail (req, "top_p", "top_p must be a number between 0 and 1");
        goto done;
    }
    const char *penalties[] = { "presence_penalty", "frequency_penalty" };
    for (int i = 0; i < 2; i++)
        if ((v = json_object_get (root, penalties[i])) && !json_is_null (v) && !s_number_in (v, -2, 2)) {
            char why[96];
            snprintf (why, sizeof why, "%s must be a number between -2 and 2", penalties[i]);
            s_fail (req, penalties[i], why);
            goto done;
        }
    rc = 0;
done:
    json_decref (root);
    return rc;
}

static void
s_expect (const char *body, int rc, const char *fragment)
{
    chat_request_t req;
    int got = chat_request_parse (body, strlen (body), &req);
    if (got != rc || (fragment && (!req.error || !strstr (req.error, fragment)))) {
        fprintf (stderr, "chat_request: body=%s rc=%d error=%s\n", body, got, req.error);
        assert (false);
    }
    if (rc)
        assert (req.status == 400);
    free (req.error);
}

void
chat_request_test (bool verbose)
{
    if (verbose)
        printf (" * chat_request: ");
    const char *ok = "{\"model\":\"deepseek-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                     "\"stream\":true,\"stream_options\":{\"include_usage\":true}}";
    chat_request_t req;
    assert (chat_request_parse (ok, strlen (ok), &req) == 0);
    assert (strcmp (req.model, "deepseek-chat") == 0 && req.stream && req.client_usage);
    assert (!req.deterministic);  //  no temperature: DeepSeek's default, 1
    const char *zero = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0}";
    assert (chat_request_parse (zero, strlen (zero), &req) == 0 && req.deterministic);
    const char *warm = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.2}";
    assert (chat_request_parse (warm, strlen (warm), &req) == 0 && !req.deterministic);
    //  "hi": 2 ASCII characters = 0.6, plus 4 for the message: 5 tokens.
    assert (req.prompt_tokens == 5 && req.max_tokens == 0);
    const char *zh = "{\"model\":\"m\",\"max_tokens\":100,\"max_completion_tokens\":50,\"messages\":["
                     "{\"role\":\"system\",\"content\":\"\u4f60\u597d\u4e16\u754c\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"abcdefghij\"}]}]}";
    assert (chat_request_parse (zh, strlen (zh), &req) == 0);
    //  4 Chinese characters (2.4) + 10 ASCII (3) + 2 x 4 = 13.4 -> 14; max_tokens is the cap.
    assert (req.prompt_tokens == 14 && req.max_tokens == 100);
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}]}", 0, NULL);
    s_expect ("{\"model\":", -1, "not valid JSON");
    s_expect ("[1]", -1, "JSON object");
    s_expect ("{\"messages\":[]}", -1, "provide a model");
    s_expect ("{\"model\":\"m\"}", -1, "non-empty array");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", -1, "role");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}", -1, "content is required");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":1}]}", -1, "string or an array");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", -1, "n must be 1");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", -1, "max_tokens");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}", -1, "temperature");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", -1, "boolean");
    s_expect ("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}", -1, "only allowed");
    s_expect ("{\"model\":\"m\",\"model\":\"n\",\"messages\":[]}", -1, "not valid JSON");
    if (verbose)
        printf ("OK\n");
}
