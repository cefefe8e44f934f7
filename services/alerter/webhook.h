/*  webhook.h: the requests an alert notice becomes for each webhook format, their
    signatures, and how each receiver says it accepted.

    Bodies (JSON, UTF-8; title and text as in the notice):

    generic   {"alert": <notice json, or null>, "title": T, "severity": S, "text": X}
              with a secret: header X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, body)>
    slack     {"text": T + "\n" + X}, with &, <, > written &amp; &lt; &gt; (mrkdwn)
    feishu    {"msg_type": "text", "content": {"text": T + "\n" + X}}; with a secret,
              "timestamp": "<unix seconds>" and "sign": base64(HMAC-SHA256(key =
              timestamp + "\n" + secret, message empty)) come first (Feishu/Lark)
    dingtalk  {"msgtype": "markdown", "markdown": {"title": T, "text": "### " + T + "\n\n" + X}};
              with a secret the URL gets &timestamp=<unix ms>&sign=<urlencoded
              base64(HMAC-SHA256(key = secret, message = timestamp + "\n" + secret))>
    wecom     {"msgtype": "markdown", "markdown": {"content": "**" + T + "**\n" + X}}, the
              content cut to 4096 bytes at a UTF-8 boundary (WeCom's limit), ending
              in "…" when cut

    Text that is not valid UTF-8 has its bad bytes replaced by U+FFFD.
*/
#ifndef WEBHOOK_H_INCLUDED
#define WEBHOOK_H_INCLUDED

#include "notifier.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { WEBHOOK_GENERIC, WEBHOOK_SLACK, WEBHOOK_FEISHU, WEBHOOK_DINGTALK, WEBHOOK_WECOM } webhook_format_t;

/*  The format named name ("generic", "slack", "feishu", "dingtalk", "wecom",
    any case). Returns 0 or -1. */
int webhook_format_parse (const char *name, webhook_format_t *format);
const char *webhook_format_name (webhook_format_t format);

/*  One POST: where, what, and an extra header line (NULL when none). */
typedef struct {
    char *url;
    char *body;
    char *header;
} webhook_request_t;

/*  The request for n in format to url, signed with secret when it is not NULL,
    at now_ms (unix ms, for the Feishu and DingTalk timestamps). Returns 0, or -1
    when out of memory (self then holds nothing). */
int webhook_request_build (webhook_request_t *self, webhook_format_t format, const char *url, const char *secret,
                           const notice_t *n, int64_t now_ms);
void webhook_request_free (webhook_request_t *self);

/*  Whether the receiver took the notice: HTTP 2xx, and for feishu, dingtalk and
    wecom (which answer 200 with an error code) no non-zero "errcode", "code" or
    "StatusCode" in a JSON answer. Returns 0, or -1 with the reason in error. */
int webhook_check_answer (webhook_format_t format, long status, const char *body, size_t size, char *error,
                          size_t error_size);

/*  The signatures, each a new string (NULL when out of memory). */
char *webhook_sign_feishu (const char *secret, int64_t timestamp_s);  //  base64
char *webhook_sign_dingtalk (const char *secret, int64_t timestamp_ms);  //  base64, not URL-encoded
char *webhook_sign_generic (const char *secret, const char *body, size_t size);  //  "sha256=<hex>"

void webhook_test (bool verbose);

#endif
