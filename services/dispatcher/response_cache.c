/*  response_cache.c: exact-match answers, bounded by bytes, least recently used
    out first. A hash table of SHA-256 keys (the key's own bytes are the hash)
    and a list from newest to oldest use; one allocation per entry. */
#include "response_cache.h"

#include <assert.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry_t entry_t;
struct entry_t {
    entry_t *chain;  //  next in its bucket
    entry_t *newer, *older;  //  use order
    uint8_t key[RESPONSE_CACHE_KEY_SIZE];
    int64_t expires_ms;
    size_t bytes;  //  what it counts against max_bytes
    cache_answer_t answer;  //  pointers into data
    uint8_t data[];  //  body, then content type, provider, upstream model
};

struct response_cache_t {
    size_t max_bytes;
    size_t entry_max_bytes;
    entry_t **buckets;
    size_t nbuckets;  //  a power of two
    entry_t *newest, *oldest;
    cache_stats_t stats;
};

response_cache_t *
response_cache_new (size_t max_bytes, size_t entry_max_bytes)
{
    response_cache_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->max_bytes = max_bytes;
    self->entry_max_bytes = entry_max_bytes < max_bytes ? entry_max_bytes : max_bytes;
    self->nbuckets = 256;
    self->buckets = calloc (self->nbuckets, sizeof *self->buckets);
    if (!self->buckets) {
        free (self);
        return NULL;
    }
    return self;
}

void
response_cache_destroy (response_cache_t **self_p)
{
    response_cache_t *self = *self_p;
    if (!self)
        return;
    for (entry_t *e = self->newest, *next; e; e = next) {
        next = e->older;
        free (e);
    }
    free (self->buckets);
    free (self);
    *self_p = NULL;
}

int
response_cache_key (uint64_t api_key_id, bool stream, const uint8_t *body, size_t size,
                    uint8_t key[RESPONSE_CACHE_KEY_SIZE])
{
    //  Canonical form: clients that build the same request in another key
    //  order or with other spacing still meet the same answer.
    json_t *root = json_loadb ((const char *) body, size, 0, NULL);
    if (!json_is_object (root)) {
        json_decref (root);
        return -1;
    }
    char *canonical = json_dumps (root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref (root);
    if (!canonical)
        return -1;
    char head[48];
    int n = snprintf (head, sizeof head, "%llu\n%d\n", (unsigned long long) api_key_id, stream ? 1 : 0);
    size_t len = strlen (canonical);
    char *text = malloc ((size_t) n + len);
    if (!text) {
        free (canonical);
        return -1;
    }
    memcpy (text, head, (size_t) n);
    memcpy (text + n, canonical, len);
    crypto_hash_sha256 (key, (const unsigned char *) text, (size_t) n + len);
    free (text);
    free (canonical);
    return 0;
}

static size_t
s_bucket (const response_cache_t *self, const uint8_t *key)
{
    uint64_t h;
    memcpy (&h, key, sizeof h);  //  already uniform: it is a SHA-256
    return (size_t) h & (self->nbuckets - 1);
}

static entry_t **
s_find (response_cache_t *self, const uint8_t *key)
{
    entry_t **slot = &self->buckets[s_bucket (self, key)];
    while (*slot && memcmp ((*slot)->key, key, RESPONSE_CACHE_KEY_SIZE) != 0)
        slot = &(*slot)->chain;
    return slot;
}

static void
s_unlink_use (response_cache_t *self, entry_t *e)
{
    if (e->newer)
        e->newer->older = e->older;
    else
        self->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        self->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void
s_link_newest (response_cache_t *self, entry_t *e)
{
    e->older = self->newest;
    e->newer = NULL;
    if (self->newest)
        self->newest->newer = e;
    else
        self->oldest = e;
    self->newest = e;
}

static void
s_remove (response_cache_t *self, entry_t *e)
{
    entry_t **slot = s_find (self, e->key);
    assert (*slot == e);
    *slot = e->chain;
    s_unlink_use (self, e);
    self->stats.entries--;
    self->stats.bytes -= e->bytes;
    free (e);
}

/*  More buckets once entries outnumber them, so chains stay short. */
static void
s_grow (response_cache_t *self)
{
    size_t n = self->nbuckets * 2;
    entry_t **buckets = calloc (n, sizeof *buckets);
    if (!buckets)
        return;  //  longer chains, still correct
    entry_t **old = self->buckets;
    size_t nold = self->nbuckets;
    self->buckets = buckets;
    self->nbuckets = n;
    for (size_t i = 0; i < nold; i++)
        for (entry_t *e = old[i], *next; e; e = next) {
            next = e->chain;
            size_t b = s_bucket (self, e->key);
            e->chain = buckets[b];
            buckets[b] = e;
        }
    free (old);
}

bool
response_cache_get (response_cache_t *self, const uint8_t key[RESPONSE_CACHE_KEY_SIZE], int64_t now_ms,
                    cache_answer_t *out)
{
    entry_t *e = *s_find (self, key);
    if (e && e->expires_ms <= now_ms) {
        s_remove (self, e);
        self->stats.expired++;
        e = NULL;
    }
    if (!e) {
        self->stats.misses++;
        return false;
    }
    s_unlink_use (self, e);
    s_link_newest (self, e);
    self->stats.hits++;
    *out = e->answer;
    return true;
}

bool
response_cache_fits (response_cache_t *self, size_t size)
{
    return size <= self->entry_max_bytes;
}

int
response_cache_put (response_cache_t *self, const uint8_t key[RESPONSE_CACHE_KEY_SIZE], int64_t now_ms,
                    uint32_t ttl_s, const cache_answer_t *answer)
{
    if (ttl_s == 0 || !response_cache_fits (self, answer->size))
        return -1;
    const char *strings[3] = { answer->content_type ? answer->content_type : "",
                               answer->provider ? answer->provider : "",
                               answer->upstream_model ? answer->upstream_model : "" };
    size_t lens[3], total = answer->size;
    for (int i = 0; i < 3; i++)
        total += (lens[i] = strlen (strings[i])) + 1;
    size_t bytes = sizeof (entry_t) + total;
    if (bytes > self->max_bytes)
        return -1;
    entry_t *old = *s_find (self, key);
    if (old)
        s_remove (self, old);
    while (self->oldest && self->stats.bytes + bytes > self->max_bytes) {
        s_remove (self, self->oldest);
        self->stats.evictions++;
    }
    entry_t *e = malloc (bytes);
    if (!e)
        return -1;
    memcpy (e->key, key, RESPONSE_CACHE_KEY_SIZE);
    e->expires_ms = now_ms + (int64_t) ttl_s * 1000;
    e->bytes = bytes;
    e->answer.usage = answer->usage;
    e->answer.size = answer->size;
    uint8_t *p = e->data;
    if (answer->size)
        memcpy (p, answer->body, answer->size);
    e->answer.body = p;
    p += answer->size;
    const char **dest[3] = { &e->answer.content_type, &e->answer.provider, &e->answer.upstream_model };
    for (int i = 0; i < 3; i++) {
        memcpy (p, strings[i], lens[i] + 1);
        *dest[i] = (const char *) p;
        p += lens[i] + 1;
    }
    size_t b = s_bucket (self, key);
    e->chain = self->buckets[b];
    self->buckets[b] = e;
    s_link_newest (self, e);
    self->stats.entries++;
    self->stats.bytes += bytes;
    self->stats.stores++;
    if (self->stats.entries > self->nbuckets)
        s_grow (self);
    return 0;
}

cache_stats_t
response_cache_stats (response_cache_t *self)
{
    return self->stats;
}

/* ---- selftest ---- */

static void
s_key_of (const char *body, uint64_t key_id, bool stream, uint8_t *key)
{
    int rc = response_cache_key (key_id, stream, (const uint8_t *) body, strlen (body), key);
    assert (rc == 0);
    (void) rc;
}

void
response_cache_test (bool verbose)
{
    if (verbose)
        printf (" * response_cache: ");
    uint8_t a[32], b[32], c[32], d[32];
    //  Key order and spacing do not matter; the key, the stream flag and any
    //  value do.
    s_key_of ("{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 1, false, a);
    s_key_of ("{ \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ], \"temperature\": 0, \"model\": \"m\" }", 1,
              false, b);
    assert (memcmp (a, b, 32) == 0);
    s_key_of ("{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 2, false, c);
    assert (memcmp (a, c, 32) != 0);
    s_key_of ("{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 1, true, c);
    assert (memcmp (a, c, 32) != 0);
    s_key_of ("{\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi!\"}]}", 1, false, d);
    assert (memcmp (a, d, 32) != 0);
    assert (response_cache_key (1, false, (const uint8_t *) "[1]", 3, d) == -1);
    assert (response_cache_key (1, false, (const uint8_t *) "{", 1, d) == -1);

    //  Put, get, replace, expire.
    response_cache_t *cache = response_cache_new (64 * 1024, 8 * 1024);
    cache_answer_t in = { .content_type = "application/json", .body = (const uint8_t *) "{\"x\":1}", .size = 7,
                          .provider = "deepseek", .upstream_model = "deepseek-chat",
                          .usage = { .known = true, .cache_miss_tokens = 11, .completion_tokens = 5 } };
    cache_answer_t out;
    assert (!response_cache_get (cache, a, 1000, &out));
    assert (response_cache_put (cache, a, 1000, 0, &in) == -1);  //  no TTL: not kept
    assert (response_cache_put (cache, a, 1000, 10, &in) == 0);
    assert (response_cache_get (cache, a, 5000, &out));
    assert (out.size == 7 && memcmp (out.body, "{\"x\":1}", 7) == 0);
    assert (strcmp (out.content_type, "application/json") == 0 && strcmp (out.provider, "deepseek") == 0);
    assert (out.usage.known && out.usage.cache_miss_tokens == 11 && out.usage.completion_tokens == 5);
    in.body = (const uint8_t *) "{\"x\":22}";
    in.size = 8;
    assert (response_cache_put (cache, a, 2000, 10, &in) == 0);
    assert (response_cache_stats (cache).entries == 1);
    assert (response_cache_get (cache, a, 11999, &out) && out.size == 8);
    assert (!response_cache_get (cache, a, 12000, &out));  //  expired at 2000 + 10 s
    assert (response_cache_stats (cache).entries == 0 && response_cache_stats (cache).bytes == 0);
    assert (response_cache_stats (cache).expired == 1);

    //  Too large for one entry: not kept.
    static uint8_t big[9 * 1024];
    memset (big, 'x', sizeof big);
    cache_answer_t large = in;
    large.body = big;
    large.size = sizeof big;
    assert (!response_cache_fits (cache, sizeof big));
    assert (response_cache_put (cache, a, 0, 60, &large) == -1);

    //  Bounded: many 4 KiB answers never take more than 64 KiB, the least
    //  recently used go first, and a recently read one stays.
    large.size = 4 * 1024;
    uint8_t keys[100][32];
    for (int i = 0; i < 100; i++) {
        char body[64];
        snprintf (body, sizeof body, "{\"i\":%d}", i);
        s_key_of (body, 1, false, keys[i]);
        assert (response_cache_put (cache, keys[i], 0, 60, &large) == 0);
        assert (response_cache_stats (cache).bytes <= 64 * 1024);
        if (i >= 1)
            assert (response_cache_get (cache, keys[0], 1, &out));  //  keep 0 in use
    }
    cache_stats_t st = response_cache_stats (cache);
    assert (st.entries >= 10 && st.entries < 16 && st.evictions == 100 - st.entries);
    assert (response_cache_get (cache, keys[0], 1, &out) && out.size == 4 * 1024);
    assert (response_cache_get (cache, keys[99], 1, &out));
    assert (!response_cache_get (cache, keys[1], 1, &out));
    assert (!response_cache_get (cache, keys[50], 1, &out));
    response_cache_destroy (&cache);

    //  Many small entries: the table grows and every one is still found.
    cache = response_cache_new (64 << 20, 1024);
    for (int i = 0; i < 5000; i++) {
        char body[64];
        uint8_t k[32];
        snprintf (body, sizeof body, "{\"n\":%d}", i);
        s_key_of (body, 7, false, k);
        assert (response_cache_put (cache, k, 0, 60, &in) == 0);
    }
    for (int i = 0; i < 5000; i++) {
        char body[64];
        uint8_t k[32];
        snprintf (body, sizeof body, "{\"n\":%d}", i);
        s_key_of (body, 7, false, k);
        assert (response_cache_get (cache, k, 1, &out) && out.size == 8);
    }
    assert (response_cache_stats (cache).entries == 5000);
    response_cache_destroy (&cache);

    //  A cache of 0 bytes keeps nothing.
    cache = response_cache_new (0, 1024);
    assert (response_cache_put (cache, a, 0, 60, &in) == -1);
    assert (!response_cache_get (cache, a, 0, &out));
    response_cache_destroy (&cache);
    if (verbose)
        printf ("OK\n");
}
