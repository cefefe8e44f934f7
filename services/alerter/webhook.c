/*  webhook.c: webhook payloads per format, their signatures, and answer checks. */
#include "webhook.h"
#include "gw_buf.h"
#include "gw_log.h"

#include <assert.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

//  WeCom refuses markdown content over 4096 bytes.
#define WECOM_MAX_CONTENT 4096

static const char *s_format_names[] = { "generic", "slack", "feishu", "dingtalk", "wecom" };

int
webhook_format_parse (const char *name, webhook_format_t *format)
{
    for (size_t i = 0; i < sizeof s_format_names / sizeof s_format_names[0]; i++)
        if (strcasecmp (name, s_format_names[i]) == 0) {
            *format = (webhook_format_t) i;
            return 0;
        }
    return -1;
}

const char *
webhook_format_name (webhook_format_t format)
{
    assert ((size_t) format < sizeof s_format_names / sizeof s_format_names[0]);
    return s_format_names[format];
}

/* ---- text ---- */

/*  Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when it is
    not one (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t
s_utf8_char (const unsigned char *s, size_t n)
{
    if (s[0] < 0x80)
        return 1;
    size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (len == 0 || len > n || s[0] > 0xf4)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) || (s[0] == 0xf0 && s[1] < 0x90)
        || (s[0] == 0xf4 && s[1] > 0x8f))
        return 0;
    return len;
}

/*  text with every byte that is not part of valid UTF-8 replaced by U+FFFD,
    as JSON insists. */
static int
s_append_utf8 (gw_buf_t *out, const char *text)
{
    const unsigned char *p = (const unsigned char *) text;
    size_t n = strlen (text);
    while (n) {
        size_t len = s_utf8_char (p, n);
        if (len == 0 ? gw_buf_append (out, "\xef\xbf\xbd", 3) : gw_buf_append (out, p, len))
            return -1;
        if (len == 0)
            len = 1;
        p += len, n -= len;
    }
    return out->data ? 0 : gw_buf_append (out, "", 0);
}

/*  a, b and c joined, as valid UTF-8; for Slack with &, < and > escaped. */
static char *
s_join (const char *a, const char *b, const char *c, bool slack)
{
    gw_buf_t raw = { 0 }, out = { 0 };
    int rc = s_append_utf8 (&raw, a) | s_append_utf8 (&raw, b) | s_append_utf8 (&raw, c);
    if (rc || !slack) {
        if (rc)
            gw_buf_free (&raw);
        return gw_buf_take (&raw);
    }
    rc = gw_buf_append (&out, "", 0);
    for (const char *p = raw.data; *p && rc == 0; p++)
        rc = *p == '&'   ? gw_buf_append (&out, "&amp;", 5)
             : *p == '<' ? gw_buf_append (&out, "&lt;", 4)
             : *p == '>' ? gw_buf_append (&out, "&gt;", 4)
                         : gw_buf_append (&out, p, 1);
    gw_buf_free (&raw);
    if (rc)
        gw_buf_free (&out);
    return gw_buf_take (&out);
}

/*  Cuts text to at most max bytes, at a character boundary, ending in "…". */
static void
s_truncate_utf8 (char *text, size_t max)
{
    static const char ellipsis[] = "\xe2\x80\xa6";
    size_t len = strlen (text);
    if (len <= max)
        return;
    size_t cut = max - (sizeof ellipsis - 1);
    while (cut && ((unsigned char) text[cut] & 0xc0) == 0x80)
        cut--;
    memcpy (text + cut, ellipsis, sizeof ellipsis);
}

/* ---- signatures ---- */

static char *
s_base64 (const unsigned char *data, size_t size)
{
    char *out = malloc (4 * ((size + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock ((unsigned char *) out, data, (int) size);
    return out;
}

static void
s_hmac_sha256 (const void *key, size_t key_len, const void *msg, size_t msg_len, unsigned char mac[32])
{
    unsigned int len = 32;
    HMAC (EVP_sha256 (), key, (int) key_len, msg, msg_len, mac, &len);
    assert (len == 32);
}

char *
webhook_sign_feishu (const char *secret, int64_t timestamp_s)
{
    char *key;
    if (asprintf (&key, "%lld\n%s", (long long) timestamp_s, secret) < 0)
        return NULL;
    unsigned char mac[32];
    s_hmac_sha256 (key, strlen (key), "", 0, mac);
    free (key);
    return s_base64 (mac, sizeof mac);
}

char *
webhook_sign_dingtalk (const char *secret, int64_t timestamp_ms)
{
    char *msg;
    if (asprintf (&msg, "%lld\n%s", (long long) timestamp_ms, secret) < 0)
        return NULL;
    unsigned char mac[32];
    s_hmac_sha256 (secret, strlen (secret), msg, strlen (msg), mac);
    free (msg);
    return s_base64 (mac, sizeof mac);
}

char *
webhook_sign_generic (const char *secret, const char *body, size_t size)
{
    unsigned char mac[32];
    s_hmac_sha256 (secret, strlen (secret), body, size, mac);
    char *out = malloc (7 + 64 + 1);
    if (!out)
        return NULL;
    memcpy (out, "sha256=", 7);
    for (size_t i = 0; i < sizeof mac; i++)
        snprintf (out + 7 + 2 * i, 3, "%02x", mac[i]);
    return out;
}

/*  Percent-encodes everything but RFC 3986 unreserved characters. */
static char *
s_url_encode (const char *s)
{
    char *out = malloc (3 * strlen (s) + 1), *o = out;
    if (!out)
        return NULL;
    for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr ("-._~", *p))
            *o++ = (char) *p;
        else
            o += sprintf (o, "%%%02X", *p);
    }
    *o = 0;
    return out;
}

/* ---- bodies ---- */

static json_t *
s_generic_body (const notice_t *n)
{
    json_t *alert = NULL;
    if (n->json) {
        alert = json_loads (n->json, 0, NULL);
        if (!json_is_object (alert)) {
            gw_warn ("webhook", "notice json is not an object alert_id=%s", n->alert_id);
            json_decref (alert);
            alert = NULL;
        }
    }
    char *title = s_join (n->title, "", "", false);
    char *severity = s_join (n->severity, "", "", false);
    char *text = s_join (n->text, "", "", false);
    json_t *body = title && severity && text ? json_pack ("{s:o, s:s, s:s, s:s}", "alert", alert ? alert : json_null (),
                                                           "title", title, "severity", severity, "text", text)
                                             : NULL;
    if (!body)
        json_decref (alert);
    free (title);
    free (severity);
    free (text);
    return body;
}

static json_t *
s_body (webhook_format_t format, const notice_t *n, const char *secret, int64_t now_ms)
{
    json_t *body = NULL;
    char *content = NULL, *title = NULL;
    switch (format) {
        case WEBHOOK_GENERIC:
            return s_generic_body (n);
        case WEBHOOK_SLACK:
            content = s_join (n->title, "\n", n->text, true);
            body = content ? json_pack ("{s:s}", "text", content) : NULL;
            break;
        case WEBHOOK_FEISHU:
            content = s_join (n->title, "\n", n->text, false);
            if (!content)
                break;
            if (secret) {
                char timestamp[24];
                snprintf (timestamp, sizeof timestamp, "%lld", (long long) (now_ms / 1000));
                char *sign = webhook_sign_feishu (secret, now_ms / 1000);
                body = sign ? json_pack ("{s:s, s:s, s:s, s:{s:s}}", "timestamp", timestamp, "sign", sign, "msg_type",
                                         "text", "content", "text", content)
                            : NULL;
                free (sign);
            }
            else
                body = json_pack ("{s:s, s:{s:s}}", "msg_type", "text", "content", "text", content);
            break;
        case WEBHOOK_DINGTALK:
            title = s_join (n->title, "", "", false);
            content = s_join ("### ", n->title, "\n\n", false);
            if (title && content) {
                gw_buf_t text = { .data = content, .len = strlen (content), .cap = strlen (content) + 1 };
                content = s_append_utf8 (&text, n->text) ? NULL : text.data;
                if (!content)
                    gw_buf_free (&text);
            }
            body = title && content ? json_pack ("{s:s, s:{s:s, s:s}}", "msgtype", "markdown", "markdown", "title",
                                                 title, "text", content)
                                    : NULL;
            break;
        case WEBHOOK_WECOM:
            content = s_join ("**", n->title, "**\n", false);
            if (content) {
                gw_buf_t text = { .data = content, .len = strlen (content), .cap = strlen (content) + 1 };
                content = s_append_utf8 (&text, n->text) ? NULL : text.data;
                if (!content)
                    gw_buf_free (&text);
                else
                    s_truncate_utf8 (content, WECOM_MAX_CONTENT);
            }
            body = content ? json_pack ("{s:s, s:{s:s}}", "msgtype", "markdown", "markdown", "content", content)
                           : NULL;
            break;
    }
    free (content);
    free (title);
    return body;
}

int
webhook_request_build (webhook_request_t *self, webhook_format_t format, const char *url, const char *secret,
                       const notice_t *n, int64_t now_ms)
{
    assert (n->alert_id && n->severity && n->title && n->text);
    *self = (webhook_request_t) { 0 };
    json_t *body = s_body (format, n, secret, now_ms);
    if (!body)
        return -1;
    self->body = json_dumps (body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (body);
    if (!self->body)
        goto error;
    if (secret && format == WEBHOOK_DINGTALK) {
        char *sign = webhook_sign_dingtalk (secret, now_ms);
        char *encoded = sign ? s_url_encode (sign) : NULL;
        int rc = encoded ? asprintf (&self->url, "%s%stimestamp=%lld&sign=%s", url, strchr (url, '?') ? "&" : "?",
                                     (long long) now_ms, encoded)
                         : -1;
        free (sign);
        free (encoded);
        if (rc < 0) {
            self->url = NULL;
            goto error;
        }
    }
    else if (!(self->url = strdup (url)))
        goto error;
    if (secret && format == WEBHOOK_GENERIC) {
        char *sign = webhook_sign_generic (secret, self->body, strlen (self->body));
        int rc = sign ? asprintf (&self->header, "X-Gateway-Signature: %s", sign) : -1;
        free (sign);
        if (rc < 0) {
            self->header = NULL;
            goto error;
        }
    }
    return 0;
error:
    webhook_request_free (self);
    return -1;
}

void
webhook_request_free (webhook_request_t *self)
{
    free (self->url);
    free (self->body);
    free (self->header);
    *self = (webhook_request_t) { 0 };
}

/* ---- answers ---- */

/*  The start of an answer body, on one line, for an error message. */
static void
s_snippet (const char *body, size_t size, char *out, size_t out_size)
{
    size_t n = 0;
    for (size_t i = 0; i < size && n + 1 < out_size && n < 200; i++)
        out[n++] = (unsigned char) body[i] < 0x20 ? ' ' : body[i];
    out[n] = 0;
}

int
webhook_check_answer (webhook_format_t format, long status, const char *body, size_t size, char *error,
                      size_t error_size)
{
    char snippet[256];
    s_snippet (body ? body : "", body ? size : 0, snippet, sizeof snippet);
    if (status < 200 || status > 299) {
        snprintf (error, error_size, "HTTP %ld: %.200s", status, snippet);
        return -1;
    }
    if (format == WEBHOOK_GENERIC || format == WEBHOOK_SLACK || !body)
        return 0;
    //  DingTalk and WeCom answer {"errcode":0,"errmsg":"ok"}, Feishu
    //  {"code":0,"msg":"success"} (older bots {"StatusCode":0,...}): anything
    //  else is a refusal (bad signature, keyword missing, rate limit) under 200.
    static const char *codes[] = { "errcode", "code", "StatusCode" };
    static const char *messages[] = { "errmsg", "msg", "StatusMessage" };
    json_t *answer = json_loadb (body, size, 0, NULL);
    int rc = 0;
    for (size_t i = 0; i < 3 && json_is_object (answer); i++) {
        json_t *code = json_object_get (answer, codes[i]);
        if (json_is_integer (code) && json_integer_value (code) != 0) {
            const char *message = json_string_value (json_object_get (answer, messages[i]));
            snprintf (error, error_size, "HTTP %ld with %s=%lld: %.200s", status, codes[i],
                      (long long) json_integer_value (code), message ? message : snippet);
            rc = -1;
            break;
        }
    }
    json_decref (answer);
    return rc;
}

/* ---- selftest ---- */

static json_t *
s_test_request (webhook_request_t *req, webhook_format_t format, const char *secret, const notice_t *n)
{
    assert (webhook_request_build (req, format, "https://hooks.example.com/x?access_token=t", secret, n,
                                   1700000000123)
            == 0);
    json_t *j = json_loads (req->body, 0, NULL);
    assert (json_is_object (j));
    return j;
}

static const char *
s_test_str (json_t *j, const char *path)
{
    char key[64];
    snprintf (key, sizeof key, "%s", path);
    char *dot = strchr (key, '.');
    if (dot) {
        *dot = 0;
        j = json_object_get (j, key);
        return json_string_value (json_object_get (j, dot + 1));
    }
    return json_string_value (json_object_get (j, key));
}

void
webhook_test (bool verbose)
{
    if (verbose)
        printf (" * webhook: ");
    webhook_format_t f;
    assert (webhook_format_parse ("DingTalk", &f) == 0 && f == WEBHOOK_DINGTALK);
    assert (webhook_format_parse ("teams", &f) == -1);
    assert (strcmp (webhook_format_name (WEBHOOK_WECOM), "wecom") == 0);

    //  Signatures: RFC 4231 test case 2, and vectors from Python's hmac module.
    char *s = webhook_sign_generic ("Jefe", "what do ya want for nothing?", 28);
    assert (strcmp (s, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843") == 0);
    free (s);
    s = webhook_sign_feishu ("demo-secret", 1700000000);
    assert (strcmp (s, "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA=") == 0);
    free (s);
    s = webhook_sign_dingtalk ("SEC000demo", 1700000000000);
    assert (strcmp (s, "iurE96kfHUStduit0Bo4Ci97BbRdyDi3E4VnAF7SkIQ=") == 0);
    free (s);

    notice_t n = {
        .alert_id = "a1",
        .severity = "critical",
        .title = "[critical] Budget <web> & co",
        .text = "used 100%\n预算",
        .json = "{\"id\":\"a1\",\"value\":1.5}",
    };
    webhook_request_t req;
    json_t *j = s_test_request (&req, WEBHOOK_GENERIC, NULL, &n);
    assert (strcmp (req.body, "{\"alert\":{\"id\":\"a1\",\"value\":1.5},\"title\":\"[critical] Budget <web> & co\","
                              "\"severity\":\"critical\",\"text\":\"used 100%\\n预算\"}")
            == 0);
    assert (req.header == NULL && strcmp (req.url, "https://hooks.example.com/x?access_token=t") == 0);
    json_decref (j);
    webhook_request_free (&req);
    j = s_test_request (&req, WEBHOOK_GENERIC, "Jefe", &n);
    char *expect = webhook_sign_generic ("Jefe", req.body, strlen (req.body));
    assert (strncmp (req.header, "X-Gateway-Signature: ", 21) == 0 && strcmp (req.header + 21, expect) == 0);
    free (expect);
    json_decref (j);
    webhook_request_free (&req);

    j = s_test_request (&req, WEBHOOK_SLACK, "ignored", &n);
    assert (strcmp (req.body, "{\"text\":\"[critical] Budget &lt;web&gt; &amp; co\\nused 100%\\n预算\"}") == 0);
    assert (req.header == NULL);
    json_decref (j);
    webhook_request_free (&req);

    j = s_test_request (&req, WEBHOOK_FEISHU, NULL, &n);
    assert (strcmp (req.body, "{\"msg_type\":\"text\",\"content\":{\"text\":\"[critical] Budget <web> & co\\nused "
                              "100%\\n预算\"}}")
            == 0);
    json_decref (j);
    webhook_request_free (&req);
    j = s_test_request (&req, WEBHOOK_FEISHU, "demo-secret", &n);
    assert (strcmp (s_test_str (j, "timestamp"), "1700000000") == 0);
    assert (strcmp (s_test_str (j, "sign"), "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA=") == 0);
    assert (strcmp (s_test_str (j, "msg_type"), "text") == 0);
    json_decref (j);
    webhook_request_free (&req);

    j = s_test_request (&req, WEBHOOK_DINGTALK, "SEC000demo", &n);
    assert (strcmp (req.body, "{\"msgtype\":\"markdown\",\"markdown\":{\"title\":\"[critical] Budget <web> & co\","
                              "\"text\":\"### [critical] Budget <web> & co\\n\\nused 100%\\n预算\"}}")
            == 0);
    //  The sign rides in the URL, URL-encoded.
    const char *prefix = "https://hooks.example.com/x?access_token=t&timestamp=1700000000123&sign=";
    assert (strncmp (req.url, prefix, strlen (prefix)) == 0);
    assert (strcspn (req.url + strlen (prefix), "+/=") == strlen (req.url + strlen (prefix)));
    json_decref (j);
    webhook_request_free (&req);
    assert (webhook_request_build (&req, WEBHOOK_DINGTALK, "https://x/robot", "SEC000demo", &n, 1700000000000) == 0);
    assert (strcmp (req.url,
                    "https://x/robot?timestamp=1700000000000&sign=iurE96kfHUStduit0Bo4Ci97BbRdyDi3E4VnAF7SkIQ%3D")
            == 0);
    webhook_request_free (&req);

    j = s_test_request (&req, WEBHOOK_WECOM, NULL, &n);
    assert (strcmp (req.body, "{\"msgtype\":\"markdown\",\"markdown\":"
                              "{\"content\":\"**[critical] Budget <web> & co**\\n"
                              "used 100%\\n预算\"}}")
            == 0);
    json_decref (j);
    webhook_request_free (&req);
    //  WeCom's 4096 bytes: cut between characters, with an ellipsis.
    char *big = malloc (6001);
    for (size_t i = 0; i < 2000; i++)
        memcpy (big + 3 * i, "预", 3);
    big[6000] = 0;
    n.text = big;
    j = s_test_request (&req, WEBHOOK_WECOM, NULL, &n);
    const char *content = s_test_str (j, "markdown.content");
    assert (strlen (content) <= WECOM_MAX_CONTENT && strlen (content) > WECOM_MAX_CONTENT - 6);
    assert (strcmp (content + strlen (content) - 6, "预…") == 0);
    json_decref (j);
    webhook_request_free (&req);
    free (big);

    //  Bad UTF-8 and a JSON that is not an object still make valid JSON.
    n.text = "bad \xff\xc3 end";
    n.json = "[1]";
    j = s_test_request (&req, WEBHOOK_GENERIC, NULL, &n);
    assert (json_is_null (json_object_get (j, "alert")));
    assert (strcmp (s_test_str (j, "text"), "bad \xef\xbf\xbd\xef\xbf\xbd end") == 0);
    json_decref (j);
    webhook_request_free (&req);

    //  Answers.
    char error[512];
    assert (webhook_check_answer (WEBHOOK_GENERIC, 204, NULL, 0, error, sizeof error) == 0);
    assert (webhook_check_answer (WEBHOOK_SLACK, 200, "ok", 2, error, sizeof error) == 0);
    assert (webhook_check_answer (WEBHOOK_GENERIC, 500, "boom\n", 5, error, sizeof error) == -1);
    assert (strcmp (error, "HTTP 500: boom ") == 0);
    const char *refused = "{\"errcode\":310000,\"errmsg\":\"sign not match\"}";
    assert (webhook_check_answer (WEBHOOK_DINGTALK, 200, refused, strlen (refused), error, sizeof error) == -1);
    assert (strcmp (error, "HTTP 200 with errcode=310000: sign not match") == 0);
    assert (webhook_check_answer (WEBHOOK_GENERIC, 200, refused, strlen (refused), error, sizeof error) == 0);
    const char *feishu_bad = "{\"code\":19021,\"msg\":\"sign match fail or timestamp is not within one hour\"}";
    assert (webhook_check_answer (WEBHOOK_FEISHU, 200, feishu_bad, strlen (feishu_bad), error, sizeof error) == -1);
    const char *ok = "{\"errcode\":0,\"errmsg\":\"ok\"}";
    assert (webhook_check_answer (WEBHOOK_WECOM, 200, ok, strlen (ok), error, sizeof error) == 0);
    assert (webhook_check_answer (WEBHOOK_FEISHU, 200, "not json", 8, error, sizeof error) == 0);
    if (verbose)
        printf ("OK\n");
}
