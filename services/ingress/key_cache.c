/*  key_cache.c: gateway keys by hash, asked of accounting once per TTL. */
#include "key_cache.h"
#include "gw_apikey.h"
#include "gw_log.h"

#include <assert.h>
#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct s_entry_t {
    struct key_cache_t *cache;
    char hash[65];
    key_status_t status;  //  VALID, INVALID, or PENDING while asked
    key_info_t info;
    int64_t fetched_ms;
    uint64_t correlation;  //  the lookup in flight
    key_waiter_t *waiters;
} s_entry_t;

struct key_cache_t {
    control_client_t *control;
    int ttl_ms;
    size_t max_entries;
    zhashx_t *entries;  //  hash -> s_entry_t
    int64_t purged_ms;  //  when stale entries were last swept out
};

static void
s_entry_destroy (void **item)
{
    s_entry_t *e = *item;
    if (e) {
        gw_strlist_clear (&e->info.models);
        free (e);
        *item = NULL;
    }
}

static void
s_purge_stale (key_cache_t *self, int64_t now)
{
    zlist_t *stale = zlist_new ();
    for (s_entry_t *e = zhashx_first (self->entries); e; e = zhashx_next (self->entries))
        if (e->status != KEY_PENDING && now - e->fetched_ms > self->ttl_ms)
            zlist_append (stale, e->hash);
    for (char *h = zlist_first (stale); h; h = zlist_next (stale))
        zhashx_delete (self->entries, h);
    zlist_destroy (&stale);
}

static void
s_on_key_info (void *client, const gw_msg_t *reply)
{
    s_entry_t *e = client;
    key_cache_t *self = e->cache;
    e->correlation = 0;
    key_status_t status = KEY_UNAVAILABLE;
    if (reply && reply->key_info.status == 200) {
        status = KEY_VALID;
        e->info.key_id = reply->key_info.key_id;
        e->info.expires_ms = (int64_t) reply->key_info.expires_ms;
        e->info.admit = reply->key_info.admit;
        e->info.cache_ttl_s = reply->key_info.cache_ttl_s;
        for (size_t i = 0; i < reply->key_info.models.count; i++)
            gw_strlist_append (&e->info.models, reply->key_info.models.items[i]);
    }
    else if (reply && reply->key_info.status == 401)
        status = KEY_INVALID;
    e->status = status;
    e->fetched_ms = gw_now_ms ();
    //  Each waiter is unlinked before its call: a callback may cancel others.
    while (e->waiters) {
        key_waiter_t *w = e->waiters;
        e->waiters = w->next;
        if (e->waiters)
            e->waiters->prev = NULL;
        w->entry = NULL;
        w->prev = w->next = NULL;
        key_status_t st = status == KEY_VALID && e->info.expires_ms && e->fetched_ms >= e->info.expires_ms
                              ? KEY_INVALID
                              : status;
        w->fn (w->client, st, st == KEY_VALID ? &e->info : NULL);
    }
    //  Not kept: an answer we could not get, or a bad key when the cache is full.
    if (status == KEY_UNAVAILABLE || (status == KEY_INVALID && zhashx_size (self->entries) > self->max_entries))
        zhashx_delete (self->entries, e->hash);
}

static int
s_ask (key_cache_t *self, s_entry_t *e)
{
    gw_msg_t msg = { .id = GW_MSG_KEY_LOOKUP };
    msg.key_lookup.key_hash = e->hash;
    gw_strlist_clear (&e->info.models);
    e->status = KEY_PENDING;
    e->correlation = control_client_ask (self->control, &msg, s_on_key_info, e);
    return e->correlation ? 0 : -1;
}

key_status_t
key_cache_check (key_cache_t *self, const char *key, size_t len, key_waiter_t *waiter, key_answer_fn *fn,
                 void *client, const key_info_t **info)
{
    char hash[65];
    gw_apikey_hash (key, len, hash);
    int64_t now = gw_now_ms ();
    s_entry_t *e = zhashx_lookup (self->entries, hash);
    if (e && e->status != KEY_PENDING && now - e->fetched_ms > self->ttl_ms) {
        if (s_ask (self, e)) {
            //  Left pending with no question out, it would hold its waiters forever.
            zhashx_delete (self->entries, e->hash);
            return KEY_UNAVAILABLE;
        }
    }
    else if (!e) {
        //  A full pass over the table: at most once a second, or a flood of
        //  random keys would make every lookup walk it.
        if (zhashx_size (self->entries) >= self->max_entries && now - self->purged_ms >= 1000) {
            self->purged_ms = now;
            s_purge_stale (self, now);
        }
        e = calloc (1, sizeof *e);
        if (!e)
            return KEY_UNAVAILABLE;
        e->cache = self;
        memcpy (e->hash, hash, sizeof hash);
        zhashx_insert (self->entries, e->hash, e);
        if (s_ask (self, e)) {
            zhashx_delete (self->entries, e->hash);
            return KEY_UNAVAILABLE;
        }
    }
    if (e->status == KEY_PENDING) {
        waiter->entry = e;
        waiter->fn = fn;
        waiter->client = client;
        waiter->prev = NULL;
        waiter->next = e->waiters;
        if (e->waiters)
            e->waiters->prev = waiter;
        e->waiters = waiter;
        return KEY_PENDING;
    }
    if (e->status == KEY_VALID && !(e->info.expires_ms && now >= e->info.expires_ms)) {
        *info = &e->info;
        return KEY_VALID;
    }
    return KEY_INVALID;
}

void
key_cache_cancel (key_cache_t *self, key_waiter_t *waiter)
{
    (void) self;
    s_entry_t *e = waiter->entry;
    if (!e)
        return;
    if (waiter->prev)
        waiter->prev->next = waiter->next;
    else
        e->waiters = waiter->next;
    if (waiter->next)
        waiter->next->prev = waiter->prev;
    waiter->entry = NULL;
    waiter->prev = waiter->next = NULL;
}

bool
key_info_allows (const key_info_t *info, const char *model)
{
    if (info->models.count == 0)
        return true;
    for (size_t i = 0; i < info->models.count; i++)
        if (strcmp (info->models.items[i], model) == 0)
            return true;
    return false;
}

key_cache_t *
key_cache_new (control_client_t *control, int ttl_ms, size_t max_entries)
{
    key_cache_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->control = control;
    self->ttl_ms = ttl_ms;
    self->max_entries = max_entries ? max_entries : 1;
    self->entries = zhashx_new ();
    zhashx_set_key_duplicator (self->entries, NULL);
    zhashx_set_key_destructor (self->entries, NULL);
    zhashx_set_destructor (self->entries, s_entry_destroy);
    return self;
}

void
key_cache_destroy (key_cache_t **self_p)
{
    key_cache_t *self = *self_p;
    if (!self)
        return;
    //  Lookups still in flight: their answers must not reach freed entries.
    for (s_entry_t *e = zhashx_first (self->entries); e; e = zhashx_next (self->entries))
        if (e->status == KEY_PENDING)
            control_client_forget (self->control, e->correlation);
    zhashx_destroy (&self->entries);
    free (self);
    *self_p = NULL;
}

/* ---- selftest: a fake accounting on inproc answers the lookups ---- */

typedef struct {
    int calls;
    key_status_t status;
    uint64_t key_id;
} s_test_client_t;

static void
s_test_answer (void *client, key_status_t status, const key_info_t *info)
{
    s_test_client_t *c = client;
    c->calls++;
    c->status = status;
    c->key_id = info ? info->key_id : 0;
}

static void
s_test_stop (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) timer, (void) arg;
    gw_loop_stop (loop);
}

static void
s_test_spin (gw_loop_t *loop, int ms)
{
    gw_timer_t *t = gw_timer_new (s_test_stop, NULL);
    gw_timer_start (loop, t, ms);
    gw_loop_run (loop);
    gw_timer_destroy (loop, &t);
}

/*  Answers every KEY_LOOKUP waiting at the fake accounting: the hash of "good"
    is key 7 (models m1), of "old" key 8 expired, anything else 401. Returns
    how many lookups it answered. */
static int
s_test_serve (void *router)
{
    char good[65], old[65];
    gw_apikey_hash ("good", 4, good);
    gw_apikey_hash ("old", 3, old);
    int n = 0;
    char rid[256];
    size_t rid_size;
    gw_msg_t in;
    while (gw_msg_recv (router, rid, &rid_size, &in) != GW_DECODE_INTERRUPTED) {
        if (in.id == GW_MSG_KEY_LOOKUP) {
            gw_msg_t out = { .id = GW_MSG_KEY_INFO };
            out.key_info.correlation = in.key_lookup.correlation;
            out.key_info.status = 401;
            if (strcmp (in.key_lookup.key_hash, good) == 0) {
                out.key_info.status = 200;
                out.key_info.key_id = 7;
                gw_strlist_append (&out.key_info.models, "m1");
            }
            else if (strcmp (in.key_lookup.key_hash, old) == 0) {
                out.key_info.status = 200;
                out.key_info.key_id = 8;
                out.key_info.expires_ms = 1000;  //  long ago
            }
            gw_msg_send (router, rid, rid_size, &out);
            gw_strlist_clear (&out.key_info.models);
            n++;
        }
        gw_msg_clear (&in);
    }
    return n;
}

void
key_cache_test (bool verbose)
{
    if (verbose)
        printf (" * key_cache: ");
    void *ctx = zmq_ctx_new ();
    void *router = zmq_socket (ctx, ZMQ_ROUTER);
    assert (zmq_bind (router, "inproc://key-cache-test") == 0);
    gw_loop_t *loop = gw_loop_new ();
    control_client_t *control = control_client_new (loop, ctx, "inproc://key-cache-test", 200);
    key_cache_t *cache = key_cache_new (control, 300, 2);
    assert (control && cache);
    const key_info_t *info = NULL;
    key_waiter_t w1 = { 0 }, w2 = { 0 }, w3 = { 0 };
    s_test_client_t a = { 0 }, b = { 0 }, c = { 0 };

    //  Two requests with one key: one lookup, both answered.
    assert (key_cache_check (cache, "good", 4, &w1, s_test_answer, &a, &info) == KEY_PENDING);
    assert (key_cache_check (cache, "good", 4, &w2, s_test_answer, &b, &info) == KEY_PENDING);
    s_test_spin (loop, 30);
    assert (s_test_serve (router) == 1);
    s_test_spin (loop, 30);
    assert (a.calls == 1 && a.status == KEY_VALID && a.key_id == 7);
    assert (b.calls == 1 && b.status == KEY_VALID);
    //  Now cached: no question, and the model list applies.
    assert (key_cache_check (cache, "good", 4, &w1, s_test_answer, &a, &info) == KEY_VALID);
    assert (info->key_id == 7 && key_info_allows (info, "m1") && !key_info_allows (info, "m2"));

    //  Unknown and expired keys read the same; a cancelled waiter hears nothing.
    assert (key_cache_check (cache, "nope", 4, &w1, s_test_answer, &a, &info) == KEY_PENDING);
    assert (key_cache_check (cache, "old", 3, &w2, s_test_answer, &b, &info) == KEY_PENDING);
    assert (key_cache_check (cache, "nope", 4, &w3, s_test_answer, &c, &info) == KEY_PENDING);
    key_cache_cancel (cache, &w3);
    s_test_spin (loop, 30);
    assert (s_test_serve (router) == 2);
    s_test_spin (loop, 30);
    assert (a.calls == 2 && a.status == KEY_INVALID);
    assert (b.calls == 2 && b.status == KEY_INVALID);
    assert (c.calls == 0);
    assert (key_cache_check (cache, "old", 3, &w1, s_test_answer, &a, &info) == KEY_INVALID);

    //  After the TTL the key is asked again (a revocation shows within it).
    s_test_spin (loop, 350);
    assert (key_cache_check (cache, "good", 4, &w1, s_test_answer, &a, &info) == KEY_PENDING);
    s_test_spin (loop, 30);
    assert (s_test_serve (router) == 1);
    s_test_spin (loop, 30);
    assert (a.calls == 3 && a.status == KEY_VALID);

    //  Accounting silent: the waiter hears UNAVAILABLE and nothing is cached.
    assert (key_cache_check (cache, "quiet", 5, &w1, s_test_answer, &a, &info) == KEY_PENDING);
    s_test_spin (loop, 300);
    assert (a.calls == 4 && a.status == KEY_UNAVAILABLE);
    s_test_serve (router);  //  the late question, answered into the void

    key_cache_destroy (&cache);
    control_client_destroy (&control);
    gw_loop_destroy (&loop);
    zmq_close (router);
    zmq_ctx_term (ctx);
    if (verbose)
        printf ("OK\n");
}
