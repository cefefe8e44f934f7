/*  balance_probe.c: GET /user/balance on a thread of its own. */
#include "balance_probe.h"
#include "gw_buf.h"
#include "gw_log.h"

#include <assert.h>
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct balance_probe_t {
    const char *log_service;  //  its starter's, for its lines (gw_log_service)
    const provider_t *provider;
    int interval_ms;
    char currency[8];
    char url[512];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    balance_t last;
    int failures;  //  polls failed in a row
};

int
balance_parse (const char *body, size_t size, const char *currency, balance_t *out)
{
    json_t *root = json_loadb (body, size, 0, NULL);
    json_t *infos = json_object_get (root, "balance_infos");
    if (!json_is_object (root) || !json_is_array (infos) || json_array_size (infos) == 0) {
        json_decref (root);
        return -1;
    }
    //  The entry in our currency when there is one, else the first.
    json_t *pick = json_array_get (infos, 0);
    size_t i;
    json_t *info;
    json_array_foreach (infos, i, info)
        if (currency && json_string_value (json_object_get (info, "currency"))
            && strcmp (json_string_value (json_object_get (info, "currency")), currency) == 0)
            pick = info;
    const char *cur = json_string_value (json_object_get (pick, "currency"));
    const char *total = json_string_value (json_object_get (pick, "total_balance"));
    int rc = cur && total ? 0 : -1;
    if (rc == 0) {
        out->known = true;
        out->available = json_is_true (json_object_get (root, "is_available"));
        snprintf (out->currency, sizeof out->currency, "%s", cur);
        snprintf (out->total, sizeof out->total, "%s", total);
    }
    json_decref (root);
    return rc;
}

static size_t
s_on_write (char *data, size_t size, size_t n, void *arg)
{
    gw_buf_t *buf = arg;
    if (buf->len + size * n > 65536)
        return 0;  //  a balance is small: anything bigger is not one
    return gw_buf_append (buf, data, size * n) ? 0 : size * n;
}

static void
s_probe (balance_probe_t *self)
{
    CURL *easy = curl_easy_init ();
    if (!easy)
        return;
    char auth[512];
    snprintf (auth, sizeof auth, "Authorization: Bearer %s", self->provider->api_key);
    struct curl_slist *headers = curl_slist_append (NULL, auth);
    headers = curl_slist_append (headers, "Accept: application/json");
    gw_buf_t body = { 0 };
    curl_easy_setopt (easy, CURLOPT_URL, self->url);
    curl_easy_setopt (easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt (easy, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform (easy);
    long status = 0;
    curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &status);
    balance_t got = { 0 };
    snprintf (got.provider, sizeof got.provider, "%s", self->provider->name);
    if (rc != CURLE_OK || status != 200
        || balance_parse (body.data ? body.data : "", body.len, self->currency, &got))
        //  The key is not in the message: only what went wrong.
    {
        gw_warn ("balance", "no balance provider=%s status=%ld curl=%s", self->provider->name, status,
                 curl_easy_strerror (rc));
        //  A balance read long ago is not reported as if it were current.
        pthread_mutex_lock (&self->lock);
        if (++self->failures >= 3)
            self->last.known = false;
        pthread_mutex_unlock (&self->lock);
    }
    else {
        pthread_mutex_lock (&self->lock);
        self->last = got;
        self->failures = 0;
        pthread_mutex_unlock (&self->lock);
        gw_debug ("balance", "provider=%s total=%s %s available=%d", got.provider, got.total, got.currency,
                  got.available);
    }
    gw_buf_free (&body);
    curl_slist_free_all (headers);
    curl_easy_cleanup (easy);
}

static void *
s_run (void *arg)
{
    balance_probe_t *self = arg;
    gw_log_thread_service (self->log_service);
    pthread_mutex_lock (&self->lock);
    while (!self->stop) {
        pthread_mutex_unlock (&self->lock);
        s_probe (self);
        pthread_mutex_lock (&self->lock);
        struct timespec until;
        clock_gettime (CLOCK_REALTIME, &until);
        until.tv_sec += self->interval_ms / 1000;
        until.tv_nsec += (long) (self->interval_ms % 1000) * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        while (!self->stop && pthread_cond_timedwait (&self->wake, &self->lock, &until) == 0)
            ;
    }
    pthread_mutex_unlock (&self->lock);
    return NULL;
}

balance_probe_t *
balance_probe_new (const provider_t *provider, int interval_ms, const char *currency)
{
    //  The balance lives beside the chat endpoint: <base>/user/balance.
    const char *suffix = "/chat/completions";
    size_t len = strlen (provider->chat_url), slen = strlen (suffix);
    if (len < slen || strcmp (provider->chat_url + len - slen, suffix) || len - slen + 14 >= 512)
        return NULL;
    balance_probe_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->provider = provider;
    self->interval_ms = interval_ms;
    snprintf (self->currency, sizeof self->currency, "%s", currency);
    snprintf (self->url, sizeof self->url, "%.*s/user/balance", (int) (len - slen), provider->chat_url);
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->wake, NULL);
    self->log_service = gw_log_service ();
    if (pthread_create (&self->thread, NULL, s_run, self)) {
        pthread_mutex_destroy (&self->lock);
        pthread_cond_destroy (&self->wake);
        free (self);
        return NULL;
    }
    gw_info ("balance", "probing provider=%s every_ms=%d", provider->name, interval_ms);
    return self;
}

void
balance_probe_destroy (balance_probe_t **self_p)
{
    balance_probe_t *self = *self_p;
    if (!self)
        return;
    pthread_mutex_lock (&self->lock);
    self->stop = true;
    pthread_cond_signal (&self->wake);
    pthread_mutex_unlock (&self->lock);
    pthread_join (self->thread, NULL);
    pthread_mutex_destroy (&self->lock);
    pthread_cond_destroy (&self->wake);
    free (self);
    *self_p = NULL;
}

void
balance_probe_get (balance_probe_t *self, balance_t *out)
{
    pthread_mutex_lock (&self->lock);
    *out = self->last;
    pthread_mutex_unlock (&self->lock);
}

void
balance_probe_test (bool verbose)
{
    if (verbose)
        printf (" * balance_probe: ");
    balance_t b = { 0 };
    const char *body = "{\"is_available\":true,\"balance_infos\":[{\"currency\":\"USD\",\"total_balance\":\"3.50\"},"
                       "{\"currency\":\"CNY\",\"total_balance\":\"110.00\",\"granted_balance\":\"10.00\"}]}";
    assert (balance_parse (body, strlen (body), "CNY", &b) == 0);
    assert (b.known && b.available && strcmp (b.currency, "CNY") == 0 && strcmp (b.total, "110.00") == 0);
    memset (&b, 0, sizeof b);
    assert (balance_parse (body, strlen (body), "EUR", &b) == 0 && strcmp (b.currency, "USD") == 0);
    assert (balance_parse ("{\"is_available\":false,\"balance_infos\":[]}", 41, "CNY", &b) == -1);
    assert (balance_parse ("nope", 4, "CNY", &b) == -1);
    if (verbose)
        printf ("OK\n");
}
