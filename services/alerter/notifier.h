/*  notifier.h: sends alert notices by email (SMTP via libcurl) and webhooks,
    asynchronously on a gw_loop.

    Channels come from the environment when the notifier is made:

    GW_ALERT_EMAIL_TO           comma-separated recipients; the email channel exists
                                only when this is set ("a@x, Ops <b@y>")
    GW_ALERT_EMAIL_FROM         sender (default gateway@localhost)
    GW_ALERT_SMTP_URL           smtp://host:port, or smtps://host:port for implicit
                                TLS (default smtp://127.0.0.1:25)
    GW_ALERT_SMTP_TLS           none | starttls | implicit (default: implicit for
                                smtps://, starttls for smtp://). starttls is
                                required, never opportunistic: a server without
                                STARTTLS fails the send instead of getting the
                                message in clear
    GW_ALERT_SMTP_USER          AUTH user, with GW_ALERT_SMTP_PASSWORD (no AUTH
                                when unset)
    GW_ALERT_SMTP_CA_FILE       CA bundle to verify the server with (a private CA or
                                a self-signed server; default: the system's)
    GW_ALERT_WEBHOOKS           comma-separated webhook names; for each NAME
                                (upper-cased, '-' as '_'):
    GW_ALERT_WEBHOOK_<NAME>_URL     where to POST (required)
    GW_ALERT_WEBHOOK_<NAME>_FORMAT  generic | slack | feishu | dingtalk | wecom
                                    (default generic); docs in webhook.h
    GW_ALERT_WEBHOOK_<NAME>_SECRET  signs the request (optional)
    GW_ALERT_SEND_TIMEOUT_MS    limit on one send, every channel (default 15000)
*/
#ifndef NOTIFIER_H_INCLUDED
#define NOTIFIER_H_INCLUDED

#include "gw_loop.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct notifier_t notifier_t;

/*  One notice. alert_id, severity, title and text are required; html and json
    may be NULL. */
typedef struct {
    const char *alert_id;  //  stable id of the alert: Message-ID <alert-ID@gateway>, dedupe keys
    const char *severity;  //  "warning", "critical" or "resolved"
    const char *title;  //  one line: what and how bad
    const char *text;  //  plain-text body
    const char *html;  //  HTML body, may be NULL (then derived from text, escaped, in <pre>)
    const char *json;  //  the alert as one JSON object, for the generic webhook; may be NULL
} notice_t;

/*  The outcome of one send: ok, or not with a one-line reason in error
    (borrowed, valid during the call). */
typedef void (notice_done_fn) (void *arg, bool ok, const char *error);

/*  Reads the channels from the environment (above). Returns NULL, logged, when
    the configuration is invalid. No channels at all is valid. */
notifier_t *notifier_new (gw_loop_t *loop);

/*  Cancels transfers in progress without calling their callbacks. Must not be
    called from inside a done callback. */
void notifier_destroy (notifier_t **self_p);

/*  Number of configured channels. */
size_t notifier_channels (notifier_t *self);

/*  Name of channel i: "email" or "webhook:<name>". Borrowed. */
const char *notifier_channel_name (notifier_t *self, size_t i);

/*  Index of the channel with that name, or -1. */
int notifier_channel_find (notifier_t *self, const char *name);

/*  Starts sending n on channel i; n is copied. done(arg, ok, error) is called
    exactly once, later (never from inside this call), unless notifier_destroy
    comes first. Returns 0 or -1 (i out of range, out of memory). One attempt
    only: retrying with backoff is the caller's job. */
int notifier_send (notifier_t *self, size_t i, const notice_t *n, notice_done_fn *done, void *arg);

/*  GW_ALERT_SEND_TIMEOUT_MS: how long one send may take. */
int64_t notifier_timeout_ms (notifier_t *self);

/*  Sends in progress. */
size_t notifier_active (notifier_t *self);

void notifier_test (bool verbose);

#endif
