/*  notifier.c: alert notices by email and webhook, on one curl multi handle that
    the loop drives (the pattern of the dispatcher's job_runner.c). */
#include "notifier.h"
#include "gw_buf.h"
#include "gw_env.h"
#include "gw_log.h"
#include "mail.h"
#include "webhook.h"

#include <assert.h>
#include <ctype.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

//  What of a webhook's answer is kept: enough for its error code and message.
#define MAX_ANSWER 65536

typedef enum { SMTP_TLS_NONE, SMTP_TLS_STARTTLS, SMTP_TLS_IMPLICIT } smtp_tls_t;

typedef struct {
    char *name;  //  "email", "webhook:<name>"
    bool email;
    //  email
    char *smtp_url;
    smtp_tls_t tls;
    char *user, *password, *ca_file;
    mail_addresses_t from;  //  exactly one
    mail_addresses_t to;
    //  webhook
    char *url;
    webhook_format_t format;
    char *secret;  //  NULL when unsigned
} channel_t;

typedef struct send_t send_t;
struct send_t {
    notifier_t *notifier;
    send_t *prev, *next;  //  in the notifier's list of sends
    const channel_t *channel;
    char *alert_id;
    CURL *easy;
    struct curl_slist *list;  //  recipients (email) or headers (webhook)
    char *message;  //  email: the message, uploaded from offset
    size_t size, offset;
    webhook_request_t request;
    gw_buf_t answer;  //  webhook: the start of the answer body
    char errbuf[CURL_ERROR_SIZE];
    notice_done_fn *done;
    void *arg;
};

struct notifier_t {
    gw_loop_t *loop;
    CURLM *multi;
    gw_timer_t *curl_timer;
    channel_t *channels;
    size_t nchannels;
    int64_t timeout_ms;
    send_t *sends;
    size_t active;
    bool in_callback;  //  a done callback is running: destroying now would pull the rug
};

static void s_check_done (notifier_t *self);

/* ---- configuration ---- */

static void
s_channel_free (channel_t *c)
{
    free (c->name);
    free (c->smtp_url);
    free (c->user);
    free (c->password);
    free (c->ca_file);
    mail_addresses_free (&c->from);
    mail_addresses_free (&c->to);
    free (c->url);
    free (c->secret);
    *c = (channel_t) { 0 };
}

static int
s_add_channel (notifier_t *self, channel_t *c)
{
    channel_t *grown = realloc (self->channels, (self->nchannels + 1) * sizeof *grown);
    if (!grown) {
        gw_error ("notifier", "out of memory");
        s_channel_free (c);
        return -1;
    }
    self->channels = grown;
    self->channels[self->nchannels++] = *c;
    return 0;
}

static char *
s_env_dup (const char *name)
{
    const char *v = gw_env_str (name, NULL);
    return v ? strdup (v) : NULL;
}

/*  The email channel, when GW_ALERT_EMAIL_TO is set. */
static int
s_config_email (notifier_t *self)
{
    const char *to = gw_env_str ("GW_ALERT_EMAIL_TO", NULL);
    if (!to)
        return 0;
    channel_t c = { .email = true };
    char error[256];
    const char *url = gw_env_str ("GW_ALERT_SMTP_URL", "smtp://127.0.0.1:25");
    bool smtps = strncasecmp (url, "smtps://", 8) == 0;
    if (!smtps && strncasecmp (url, "smtp://", 7) != 0) {
        gw_error ("notifier", "GW_ALERT_SMTP_URL must be smtp://host:port or smtps://host:port value=%s", url);
        return -1;
    }
    const char *tls = gw_env_str ("GW_ALERT_SMTP_TLS", smtps ? "implicit" : "starttls");
    if (strcasecmp (tls, "none") == 0)
        c.tls = SMTP_TLS_NONE;
    else if (strcasecmp (tls, "starttls") == 0)
        c.tls = SMTP_TLS_STARTTLS;
    else if (strcasecmp (tls, "implicit") == 0)
        c.tls = SMTP_TLS_IMPLICIT;
    else {
        gw_error ("notifier", "GW_ALERT_SMTP_TLS must be none, starttls or implicit value=%s", tls);
        return -1;
    }
    //  Implicit TLS is what smtps:// means to libcurl; the other two speak plain
    //  SMTP first. A mismatch is a mistake, better refused than guessed.
    if (smtps != (c.tls == SMTP_TLS_IMPLICIT)) {
        gw_error ("notifier", "GW_ALERT_SMTP_TLS=%s does not fit GW_ALERT_SMTP_URL=%s (implicit TLS needs smtps://, "
                  "none and starttls need smtp://)", tls, url);
        return -1;
    }
    c.smtp_url = strdup (url);
    c.user = s_env_dup ("GW_ALERT_SMTP_USER");
    c.password = s_env_dup ("GW_ALERT_SMTP_PASSWORD");
    c.ca_file = s_env_dup ("GW_ALERT_SMTP_CA_FILE");
    c.name = strdup ("email");
    if (!c.smtp_url || !c.name) {
        gw_error ("notifier", "out of memory");
        goto error;
    }
    if (!c.user != !c.password) {
        gw_error ("notifier", "GW_ALERT_SMTP_USER and GW_ALERT_SMTP_PASSWORD go together");
        goto error;
    }
    if (c.ca_file && access (c.ca_file, R_OK)) {
        gw_error ("notifier", "GW_ALERT_SMTP_CA_FILE is not readable path=%s", c.ca_file);
        goto error;
    }
    const char *from = gw_env_str ("GW_ALERT_EMAIL_FROM", "gateway@localhost");
    if (mail_addresses_parse (&c.from, from, error, sizeof error) || c.from.count != 1) {
        gw_error ("notifier", "GW_ALERT_EMAIL_FROM must be one address: %s",
                  c.from.count > 1 ? "several given" : error);
        goto error;
    }
    if (mail_addresses_parse (&c.to, to, error, sizeof error)) {
        gw_error ("notifier", "GW_ALERT_EMAIL_TO: %s", error);
        goto error;
    }
    if (c.tls == SMTP_TLS_NONE && c.user)
        gw_warn ("notifier", "SMTP password sent without TLS (GW_ALERT_SMTP_TLS=none)");
    gw_info ("notifier", "channel=email url=%s tls=%s auth=%s from=%s recipients=%zu", c.smtp_url, tls,
             c.user ? "yes" : "no", c.from.envelope[0], c.to.count);
    return s_add_channel (self, &c);
error:
    s_channel_free (&c);
    return -1;
}

/*  One webhook of GW_ALERT_WEBHOOKS, its variables named after it. */
static int
s_config_webhook (notifier_t *self, const char *name, size_t len)
{
    char key[128], var[192];
    if (len == 0 || len > 64) {
        gw_error ("notifier", "GW_ALERT_WEBHOOKS: names are 1 to 64 characters");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (!isalnum ((unsigned char) name[i]) && name[i] != '_' && name[i] != '-') {
            gw_error ("notifier", "GW_ALERT_WEBHOOKS: a name is letters, digits, '_' and '-' name=%.*s", (int) len,
                      name);
            return -1;
        }
        key[i] = name[i] == '-' ? '_' : (char) toupper ((unsigned char) name[i]);
    }
    key[len] = 0;
    channel_t c = { .email = false };
    if (asprintf (&c.name, "webhook:%.*s", (int) len, name) < 0) {
        c.name = NULL;
        gw_error ("notifier", "out of memory");
        return -1;
    }
    for (size_t i = 0; i < self->nchannels; i++)
        if (strcasecmp (self->channels[i].name, c.name) == 0) {
            gw_error ("notifier", "GW_ALERT_WEBHOOKS names a webhook twice name=%s", c.name + 8);
            goto error;
        }
    snprintf (var, sizeof var, "GW_ALERT_WEBHOOK_%s_URL", key);
    const char *url = gw_env_str (var, NULL);
    if (!url || (strncasecmp (url, "http://", 7) != 0 && strncasecmp (url, "https://", 8) != 0)) {
        gw_error ("notifier", "%s must be an http:// or https:// URL value=%s", var, url ? url : "(unset)");
        goto error;
    }
    snprintf (var, sizeof var, "GW_ALERT_WEBHOOK_%s_FORMAT", key);
    const char *format = gw_env_str (var, "generic");
    if (webhook_format_parse (format, &c.format)) {
        gw_error ("notifier", "%s must be generic, slack, feishu, dingtalk or wecom value=%s", var, format);
        goto error;
    }
    snprintf (var, sizeof var, "GW_ALERT_WEBHOOK_%s_SECRET", key);
    c.secret = s_env_dup (var);
    c.url = strdup (url);
    if (!c.url) {
        gw_error ("notifier", "out of memory");
        goto error;
    }
    //  The URL may carry a token (DingTalk, WeCom, Slack): only its host is logged.
    const char *host = strstr (url, "://") + 3;
    gw_info ("notifier", "channel=%s format=%s host=%.*s signed=%s", c.name, webhook_format_name (c.format),
             (int) strcspn (host, "/?#"), host, c.secret ? "yes" : "no");
    return s_add_channel (self, &c);
error:
    s_channel_free (&c);
    return -1;
}

static int
s_config_webhooks (notifier_t *self)
{
    const char *list = gw_env_str ("GW_ALERT_WEBHOOKS", NULL);
    if (!list)
        return 0;
    const char *p = list;
    while (true) {
        size_t len = strcspn (p, ",");
        const char *name = p;
        while (len && (*name == ' ' || *name == '\t'))
            name++, len--;
        while (len && (name[len - 1] == ' ' || name[len - 1] == '\t'))
            len--;
        if (len && s_config_webhook (self, name, len))
            return -1;
        p += strcspn (p, ",");
        if (!*p)
            return 0;
        p++;
    }
}

/* ---- curl on the loop ---- */

static void
s_on_socket_event (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    (void) loop;
    notifier_t *self = arg;
    int flags = 0, running;
    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action (self->multi, fd, flags, &running);
    s_check_done (self);
}

static int
s_on_curl_socket (CURL *easy, curl_socket_t fd, int what, void *arg, void *socketp)
{
    (void) easy, (void) socketp;
    notifier_t *self = arg;
    if (what == CURL_POLL_REMOVE)
        gw_loop_unwatch (self->loop, fd);
    else {
        uint32_t events = 0;
        if (what & CURL_POLL_IN)
            events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
            events |= EPOLLOUT;
        gw_loop_watch (self->loop, fd, events, s_on_socket_event, self);
    }
    return 0;
}

static void
s_on_curl_timeout (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) loop, (void) timer;
    notifier_t *self = arg;
    int running;
    curl_multi_socket_action (self->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    s_check_done (self);
}

static int
s_on_curl_timer (CURLM *multi, long timeout_ms, void *arg)
{
    (void) multi;
    notifier_t *self = arg;
    if (timeout_ms < 0)
        gw_timer_stop (self->loop, self->curl_timer);
    else
        gw_timer_start (self->loop, self->curl_timer, timeout_ms);
    return 0;
}

static size_t
s_on_read (char *buffer, size_t size, size_t nitems, void *arg)
{
    send_t *s = arg;
    size_t n = size * nitems;
    if (n > s->size - s->offset)
        n = s->size - s->offset;
    memcpy (buffer, s->message + s->offset, n);
    s->offset += n;
    return n;
}

static size_t
s_on_write (char *data, size_t size, size_t nmemb, void *arg)
{
    send_t *s = arg;
    size_t len = size * nmemb;
    //  The rest of a long answer is read and dropped: the transfer still counts.
    size_t keep = s->answer.len + len > MAX_ANSWER ? MAX_ANSWER - s->answer.len : len;
    if (keep && gw_buf_append (&s->answer, data, keep))
        return 0;
    return len;
}

/* ---- sends ---- */

static void
s_send_destroy (send_t **s_p)
{
    send_t *s = *s_p;
    notifier_t *self = s->notifier;
    if (s->prev)
        s->prev->next = s->next;
    else if (self->sends == s)
        self->sends = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->easy) {
        curl_multi_remove_handle (self->multi, s->easy);
        curl_easy_cleanup (s->easy);
    }
    curl_slist_free_all (s->list);
    free (s->message);
    webhook_request_free (&s->request);
    gw_buf_free (&s->answer);
    free (s->alert_id);
    free (s);
    self->active--;
    *s_p = NULL;
}

/*  A transfer is over: judge it, forget it, then tell the caller (who may send
    again from the callback). */
static void
s_send_finish (send_t *s, CURLcode rc)
{
    notifier_t *self = s->notifier;
    const channel_t *c = s->channel;
    long status = 0;
    curl_easy_getinfo (s->easy, CURLINFO_RESPONSE_CODE, &status);
    char error[768] = "";
    bool ok = true;
    if (rc != CURLE_OK) {
        size_t n = strlen (s->errbuf);
        while (n && (s->errbuf[n - 1] == '\n' || s->errbuf[n - 1] == '\r'))
            s->errbuf[--n] = 0;
        snprintf (error, sizeof error, "%s%s%s", curl_easy_strerror (rc), n ? ": " : "", s->errbuf);
        //  The SMTP reply code says which step the server refused (535 AUTH,
        //  550 a recipient, ...).
        if (c->email && status >= 400)
            snprintf (error + strlen (error), sizeof error - strlen (error), " (SMTP %ld)", status);
        ok = false;
    }
    else if (!c->email)
        ok = webhook_check_answer (c->format, status, s->answer.data, s->answer.len, error, sizeof error) == 0;
    if (ok)
        gw_info ("notifier", "sent channel=%s alert_id=%s", c->name, s->alert_id);
    else
        gw_warn ("notifier", "send failed channel=%s alert_id=%s error=\"%s\"", c->name, s->alert_id, error);
    notice_done_fn *done = s->done;
    void *arg = s->arg;
    s_send_destroy (&s);
    self->in_callback = true;
    done (arg, ok, ok ? NULL : error);
    self->in_callback = false;
}

static void
s_check_done (notifier_t *self)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        send_t *s;
        curl_easy_getinfo (msg->easy_handle, CURLINFO_PRIVATE, (char **) &s);
        s_send_finish (s, msg->data.result);
    }
}

/*  The easy handle's options for an email; returns 0 or -1. */
static int
s_prepare_email (send_t *s, const notice_t *n)
{
    const channel_t *c = s->channel;
    s->message = mail_message_new (n, c->from.header[0], &c->to, gw_wall_ms ());
    if (!s->message)
        return -1;
    s->size = strlen (s->message);
    for (size_t i = 0; i < c->to.count; i++) {
        struct curl_slist *l = curl_slist_append (s->list, c->to.envelope[i]);
        if (!l)
            return -1;
        s->list = l;
    }
    CURL *e = s->easy;
    bool bad = false;
    bad |= curl_easy_setopt (e, CURLOPT_URL, c->smtp_url) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_PROTOCOLS_STR, "smtp,smtps") != CURLE_OK;
    //  STARTTLS is required, not tried: a server (or a man in the middle) that
    //  does not offer it fails the send instead of getting it in clear.
    bad |= curl_easy_setopt (e, CURLOPT_USE_SSL,
                             (long) (c->tls == SMTP_TLS_NONE ? CURLUSESSL_NONE : CURLUSESSL_ALL))
           != CURLE_OK;
    if (c->ca_file)
        bad |= curl_easy_setopt (e, CURLOPT_CAINFO, c->ca_file) != CURLE_OK;
    if (c->user) {
        bad |= curl_easy_setopt (e, CURLOPT_USERNAME, c->user) != CURLE_OK;
        bad |= curl_easy_setopt (e, CURLOPT_PASSWORD, c->password) != CURLE_OK;
    }
    bad |= curl_easy_setopt (e, CURLOPT_MAIL_FROM, c->from.envelope[0]) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_MAIL_RCPT, s->list) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_UPLOAD, 1L) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_READFUNCTION, s_on_read) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_READDATA, s) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_INFILESIZE_LARGE, (curl_off_t) s->size) != CURLE_OK;
    //  One SMTP session per notice, ended with QUIT: alerts are rare, and an
    //  idle session would only be dropped by the server.
    bad |= curl_easy_setopt (e, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK;
    return bad ? -1 : 0;
}

/*  The easy handle's options for a webhook POST; returns 0 or -1. */
static int
s_prepare_webhook (send_t *s, const notice_t *n)
{
    const channel_t *c = s->channel;
    if (webhook_request_build (&s->request, c->format, c->url, c->secret, n, gw_wall_ms ()))
        return -1;
    const char *headers[] = { "Content-Type: application/json; charset=utf-8", "Accept: application/json",
                              "Expect:", s->request.header };
    for (size_t i = 0; i < 4 && headers[i]; i++) {
        struct curl_slist *l = curl_slist_append (s->list, headers[i]);
        if (!l)
            return -1;
        s->list = l;
    }
    CURL *e = s->easy;
    bool bad = false;
    bad |= curl_easy_setopt (e, CURLOPT_URL, s->request.url) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_HTTPHEADER, s->list) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_POSTFIELDS, s->request.body) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen (s->request.body)) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_WRITEFUNCTION, s_on_write) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_WRITEDATA, s) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_USERAGENT, "deepseek-gateway-alerter/1") != CURLE_OK;
    return bad ? -1 : 0;
}

/*  The multi handle, made on the first send: libcurl and the TLS library it
    initialises take about 2.4 MB of a process that may never send anything
    (an alerter whose thresholds are never crossed). */
static CURLM *
s_multi (notifier_t *self)
{
    if (self->multi)
        return self->multi;
    self->multi = curl_multi_init ();  //  runs curl_global_init once, on this (the only) thread
    if (!self->multi)
        return NULL;
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETFUNCTION, s_on_curl_socket);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETDATA, self);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERFUNCTION, s_on_curl_timer);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERDATA, self);
    curl_multi_setopt (self->multi, CURLMOPT_MAXCONNECTS, 16L);
    return self->multi;
}

/* ---- public ---- */

notifier_t *
notifier_new (gw_loop_t *loop)
{
    notifier_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->timeout_ms = gw_env_int ("GW_ALERT_SEND_TIMEOUT_MS", 15000, 100, 600000);
    if (s_config_email (self) || s_config_webhooks (self)) {
        notifier_destroy (&self);
        return NULL;
    }
    self->curl_timer = gw_timer_new (s_on_curl_timeout, self);
    if (!self->curl_timer) {
        gw_error ("notifier", "out of memory");
        notifier_destroy (&self);
        return NULL;
    }
    if (self->nchannels == 0)
        gw_info ("notifier", "no alert channels configured (GW_ALERT_EMAIL_TO, GW_ALERT_WEBHOOKS)");
    return self;
}

void
notifier_destroy (notifier_t **self_p)
{
    notifier_t *self = *self_p;
    if (!self)
        return;
    assert (!self->in_callback);
    while (self->sends) {
        send_t *s = self->sends;
        s_send_destroy (&s);
    }
    //  The multi handle before its timer: closing cached connections may still
    //  call s_on_curl_timer and s_on_curl_socket.
    if (self->multi)
        curl_multi_cleanup (self->multi);
    gw_timer_destroy (self->loop, &self->curl_timer);
    for (size_t i = 0; i < self->nchannels; i++)
        s_channel_free (&self->channels[i]);
    free (self->channels);
    free (self);
    *self_p = NULL;
}

size_t
notifier_channels (notifier_t *self)
{
    return self->nchannels;
}

const char *
notifier_channel_name (notifier_t *self, size_t i)
{
    assert (i < self->nchannels);
    return self->channels[i].name;
}

int
notifier_channel_find (notifier_t *self, const char *name)
{
    for (size_t i = 0; i < self->nchannels; i++)
        if (strcmp (self->channels[i].name, name) == 0)
            return (int) i;
    return -1;
}

int64_t
notifier_timeout_ms (notifier_t *self)
{
    return self->timeout_ms;
}

size_t
notifier_active (notifier_t *self)
{
    return self->active;
}

int
notifier_send (notifier_t *self, size_t i, const notice_t *n, notice_done_fn *done, void *arg)
{
    assert (n && n->alert_id && n->severity && n->title && n->text);
    assert (done);
    if (i >= self->nchannels)
        return -1;
    send_t *s = calloc (1, sizeof *s);
    if (!s)
        return -1;
    s->notifier = self;
    s->channel = &self->channels[i];
    s->done = done;
    s->arg = arg;
    s->next = self->sends;
    if (self->sends)
        self->sends->prev = s;
    self->sends = s;
    self->active++;
    s->alert_id = strdup (n->alert_id);
    s->easy = s_multi (self) ? curl_easy_init () : NULL;
    if (!s->alert_id || !s->easy)
        goto error;
    CURL *e = s->easy;
    bool bad = false;
    bad |= curl_easy_setopt (e, CURLOPT_PRIVATE, s) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_ERRORBUFFER, s->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_TIMEOUT_MS, (long) self->timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt (e, CURLOPT_CONNECTTIMEOUT_MS, (long) self->timeout_ms) != CURLE_OK;
    if (bad || (s->channel->email ? s_prepare_email (s, n) : s_prepare_webhook (s, n)))
        goto error;
    if (curl_multi_add_handle (self->multi, e) != CURLM_OK)
        goto error;
    return 0;
error:
    gw_error ("notifier", "could not start a send channel=%s alert_id=%s", s->channel->name, n->alert_id);
    //  Not yet in the multi handle: curl_multi_remove_handle ignores it.
    s_send_destroy (&s);
    return -1;
}

/* ---- selftest ---- */

typedef struct {
    int calls;
    bool ok;
    char error[256];
    bool sending;  //  set around notifier_send: done must not come from inside it
} s_test_outcome_t;

static void
s_test_done (void *arg, bool ok, const char *error)
{
    s_test_outcome_t *o = arg;
    assert (!o->sending);
    o->calls++;
    o->ok = ok;
    snprintf (o->error, sizeof o->error, "%s", error ? error : "");
}

static bool
s_test_called (void *arg)
{
    return ((s_test_outcome_t *) arg)->calls > 0;
}

/*  A loopback listener (listening when listen_too, else closed again: its
    port refuses). Returns the fd (or -1 when closed) and the port. */
static int
s_test_port (bool listen_too, int *port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    assert (bind (fd, (struct sockaddr *) &a, sizeof a) == 0);
    assert (getsockname (fd, (struct sockaddr *) &a, &len) == 0);
    *port = ntohs (a.sin_port);
    if (listen_too) {
        assert (listen (fd, 8) == 0);
        return fd;
    }
    close (fd);
    return -1;
}

static const char *s_test_vars[]
    = { "GW_ALERT_EMAIL_TO", "GW_ALERT_EMAIL_FROM", "GW_ALERT_SMTP_URL", "GW_ALERT_SMTP_TLS",
        "GW_ALERT_SMTP_USER", "GW_ALERT_SMTP_PASSWORD", "GW_ALERT_SMTP_CA_FILE", "GW_ALERT_WEBHOOKS",
        "GW_ALERT_WEBHOOK_OPS_URL", "GW_ALERT_WEBHOOK_OPS_FORMAT", "GW_ALERT_WEBHOOK_OPS_SECRET",
        "GW_ALERT_WEBHOOK_DING_TALK_URL", "GW_ALERT_WEBHOOK_DING_TALK_FORMAT", "GW_ALERT_SEND_TIMEOUT_MS" };

static void
s_test_clear_env (void)
{
    for (size_t i = 0; i < sizeof s_test_vars / sizeof s_test_vars[0]; i++)
        unsetenv (s_test_vars[i]);
}

/*  notifier_new with one variable changed from a valid setup is refused. */
static void
s_test_refused (gw_loop_t *loop, const char *name, const char *value)
{
    setenv ("GW_ALERT_EMAIL_TO", "ops@example.com", 1);
    setenv ("GW_ALERT_WEBHOOKS", "ops", 1);
    setenv ("GW_ALERT_WEBHOOK_OPS_URL", "http://127.0.0.1:9/hook", 1);
    setenv (name, value, 1);
    notifier_t *self = notifier_new (loop);
    assert (self == NULL);
    s_test_clear_env ();
}

void
notifier_test (bool verbose)
{
    if (verbose)
        printf (" * notifier: ");
    s_test_clear_env ();
    gw_loop_t *loop = gw_loop_new ();
    notifier_t *self = notifier_new (loop);
    assert (self && notifier_channels (self) == 0);
    notice_t n = { .alert_id = "t1", .severity = "warning", .title = "[warning] test", .text = "hello" };
    s_test_outcome_t o = { 0 };
    assert (notifier_send (self, 0, &n, s_test_done, &o) == -1);
    notifier_destroy (&self);
    notifier_destroy (&self);
    assert (self == NULL);

    //  Configuration: names, order, defaults.
    setenv ("GW_ALERT_EMAIL_TO", "a@example.com, b@example.com", 1);
    setenv ("GW_ALERT_WEBHOOKS", " ops , ding-talk", 1);
    setenv ("GW_ALERT_WEBHOOK_OPS_URL", "http://127.0.0.1:9/hook", 1);
    setenv ("GW_ALERT_WEBHOOK_DING_TALK_URL", "https://oapi.dingtalk.com/robot/send?access_token=x", 1);
    setenv ("GW_ALERT_WEBHOOK_DING_TALK_FORMAT", "dingtalk", 1);
    self = notifier_new (loop);
    assert (self && notifier_channels (self) == 3);
    assert (strcmp (notifier_channel_name (self, 0), "email") == 0);
    assert (strcmp (notifier_channel_name (self, 1), "webhook:ops") == 0);
    assert (strcmp (notifier_channel_name (self, 2), "webhook:ding-talk") == 0);
    assert (notifier_channel_find (self, "webhook:ding-talk") == 2 && notifier_channel_find (self, "x") == -1);
    assert (self->channels[0].tls == SMTP_TLS_STARTTLS && self->timeout_ms == 15000);
    assert (strcmp (self->channels[0].smtp_url, "smtp://127.0.0.1:25") == 0);
    assert (strcmp (self->channels[0].from.envelope[0], "<gateway@localhost>") == 0);
    assert (self->channels[1].format == WEBHOOK_GENERIC && self->channels[1].secret == NULL);
    assert (self->channels[2].format == WEBHOOK_DINGTALK);
    notifier_destroy (&self);
    s_test_clear_env ();
    setenv ("GW_ALERT_EMAIL_TO", "a@example.com", 1);
    setenv ("GW_ALERT_SMTP_URL", "smtps://mail.example.com:465", 1);
    self = notifier_new (loop);
    assert (self && self->channels[0].tls == SMTP_TLS_IMPLICIT);
    notifier_destroy (&self);
    s_test_clear_env ();

    //  Invalid configurations are refused.
    s_test_refused (loop, "GW_ALERT_SMTP_TLS", "sometimes");
    s_test_refused (loop, "GW_ALERT_SMTP_URL", "http://127.0.0.1:25");
    setenv ("GW_ALERT_SMTP_TLS", "starttls", 1);
    s_test_refused (loop, "GW_ALERT_SMTP_URL", "smtps://127.0.0.1:465");
    s_test_refused (loop, "GW_ALERT_SMTP_TLS", "implicit");  //  with smtp://
    s_test_refused (loop, "GW_ALERT_SMTP_USER", "u");  //  without a password
    s_test_refused (loop, "GW_ALERT_SMTP_CA_FILE", "/nonexistent/ca.pem");
    s_test_refused (loop, "GW_ALERT_EMAIL_FROM", "a@x, b@y");
    s_test_refused (loop, "GW_ALERT_EMAIL_TO", "not-an-address");
    s_test_refused (loop, "GW_ALERT_WEBHOOK_OPS_URL", "ftp://x/");
    s_test_refused (loop, "GW_ALERT_WEBHOOK_OPS_FORMAT", "teams");
    s_test_refused (loop, "GW_ALERT_WEBHOOKS", "ops,other");  //  other has no URL
    s_test_refused (loop, "GW_ALERT_WEBHOOKS", "ops,OPS");
    s_test_refused (loop, "GW_ALERT_WEBHOOKS", "o p s");

    //  A refused connection: done comes later, from the loop, with the reason.
    int port;
    s_test_port (false, &port);
    char url[128];
    snprintf (url, sizeof url, "http://127.0.0.1:%d/hook", port);
    setenv ("GW_ALERT_WEBHOOKS", "ops", 1);
    setenv ("GW_ALERT_WEBHOOK_OPS_URL", url, 1);
    snprintf (url, sizeof url, "smtp://127.0.0.1:%d", port);
    setenv ("GW_ALERT_EMAIL_TO", "a@example.com", 1);
    setenv ("GW_ALERT_SMTP_URL", url, 1);
    setenv ("GW_ALERT_SEND_TIMEOUT_MS", "3000", 1);
    self = notifier_new (loop);
    assert (self && notifier_channels (self) == 2);
    for (size_t i = 0; i < 2; i++) {
        o = (s_test_outcome_t) { .sending = true };
        assert (notifier_send (self, i, &n, s_test_done, &o) == 0);
        o.sending = false;
        assert (o.calls == 0 && notifier_active (self) == 1);
        gw_loop_run_until (loop, s_test_called, &o, 5000);
        assert (o.calls == 1 && !o.ok && strstr (o.error, "onnect"));
        assert (notifier_active (self) == 0);
    }
    notifier_destroy (&self);

    //  A server that never answers: destroy cancels without a call.
    int fd = s_test_port (true, &port);
    snprintf (url, sizeof url, "http://127.0.0.1:%d/hook", port);
    setenv ("GW_ALERT_WEBHOOK_OPS_URL", url, 1);
    self = notifier_new (loop);
    o = (s_test_outcome_t) { 0 };
    assert (notifier_send (self, 1, &n, s_test_done, &o) == 0);
    gw_loop_run_until (loop, s_test_called, &o, 200);
    assert (o.calls == 0 && notifier_active (self) == 1);
    notifier_destroy (&self);
    assert (o.calls == 0);
    //  ... and the send timeout ends it when nobody does.
    setenv ("GW_ALERT_SEND_TIMEOUT_MS", "300", 1);
    self = notifier_new (loop);
    assert (notifier_send (self, 1, &n, s_test_done, &o) == 0);
    int64_t start = gw_now_ms ();
    gw_loop_run_until (loop, s_test_called, &o, 5000);
    assert (o.calls == 1 && !o.ok && strstr (o.error, "imeout") && gw_now_ms () - start < 3000);
    notifier_destroy (&self);
    close (fd);
    s_test_clear_env ();
    gw_loop_destroy (&loop);
    if (verbose)
        printf ("OK\n");
}
