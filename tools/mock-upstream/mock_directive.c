//  mock_directive - per-request fault and shaping settings from X-Mock or [[mock ...]].

#include "mock_upstream.h"

//  Upper bounds keep a typo from asking for a week-long delay or a body of
//  gigabytes; they are far above anything a test needs.
#define MOCK_MAX_MS         3600000
#define MOCK_MAX_TOKENS     1000000

void
mock_directive_init (mock_directive_t *self)
{
    assert (self);
    self->status = 0;
    self->retry_after = -1;
    self->times = -1;
    self->id [0] = 0;
    self->first_byte_ms = -1;
    self->hold_ms = -1;
    self->keepalive_ms = -1;
    self->token_ms = -1;
    self->tokens = -1;
    self->reasoning = -1;
    self->cache = -1;
    self->drop_after = -1;
    self->malformed = -1;
    self->usage = -1;
}

static bool
s_is_separator (char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',' || c == ';';
}

static int
s_parse_uint (const char *text, size_t len, long max, int *value)
{
    if (len == 0 || len > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (text [i] < '0' || text [i] > '9')
            return -1;
        v = v * 10 + (text [i] - '0');
    }
    if (v > max)
        return -1;
    *value = (int) v;
    return 0;
}

//  Integer keys, their field and their bound, so that one loop parses them all.
typedef struct {
    const char *name;
    size_t offset;
    long max;
} s_int_key_t;

static const s_int_key_t s_int_keys [] = {
    { "retry_after",   offsetof (mock_directive_t, retry_after),   MOCK_MAX_MS },
    { "times",         offsetof (mock_directive_t, times),         INT_MAX },
    { "first_byte_ms", offsetof (mock_directive_t, first_byte_ms), MOCK_MAX_MS },
    { "hold_ms",       offsetof (mock_directive_t, hold_ms),       MOCK_MAX_MS },
    { "keepalive_ms",  offsetof (mock_directive_t, keepalive_ms),  MOCK_MAX_MS },
    { "token_ms",      offsetof (mock_directive_t, token_ms),      MOCK_MAX_MS },
    { "tokens",        offsetof (mock_directive_t, tokens),        MOCK_MAX_TOKENS },
    { "reasoning",     offsetof (mock_directive_t, reasoning),     MOCK_MAX_TOKENS },
    { "cache",         offsetof (mock_directive_t, cache),         INT_MAX },
    { "drop_after",    offsetof (mock_directive_t, drop_after),    MOCK_MAX_TOKENS },
};

static bool
s_key_is (const char *key, size_t klen, const char *name)
{
    return strlen (name) == klen && memcmp (key, name, klen) == 0;
}

static int
s_apply_pair (mock_directive_t *self, const char *key, size_t klen,
              const char *val, size_t vlen, char *err, size_t errsize)
{
    for (size_t i = 0; i < sizeof s_int_keys / sizeof s_int_keys [0]; i++) {
        const s_int_key_t *k = &s_int_keys [i];
        if (s_key_is (key, klen, k->name)) {
            int *field = (int *) ((char *) self + k->offset);
            if (s_parse_uint (val, vlen, k->max, field) == 0)
                return 0;
            snprintf (err, errsize, "mock directive: %s=%.*s is not an integer in [0, %ld]",
                      k->name, (int) vlen, val, k->max);
            return -1;
        }
    }
    if (s_key_is (key, klen, "status")) {
        //  Only error statuses: a 2xx "fault" would be an answer without a body
        if (s_parse_uint (val, vlen, 599, &self->status) == 0 && self->status >= 400)
            return 0;
        snprintf (err, errsize, "mock directive: status=%.*s is not in [400, 599]", (int) vlen, val);
        return -1;
    }
    if (s_key_is (key, klen, "malformed")) {
        if (vlen == 1 && (val [0] == '0' || val [0] == '1')) {
            self->malformed = val [0] - '0';
            return 0;
        }
        snprintf (err, errsize, "mock directive: malformed=%.*s is not 0 or 1", (int) vlen, val);
        return -1;
    }
    if (s_key_is (key, klen, "usage")) {
        if (vlen == 5 && memcmp (val, "final", 5) == 0)
            self->usage = MOCK_USAGE_FINAL;
        else
        if (vlen == 8 && memcmp (val, "separate", 8) == 0)
            self->usage = MOCK_USAGE_SEPARATE;
        else {
            snprintf (err, errsize, "mock directive: usage=%.*s is not final or separate", (int) vlen, val);
            return -1;
        }
        return 0;
    }
    if (s_key_is (key, klen, "id")) {
        //  Ids are echoed in logs and used as table keys: keep them plain
        bool plain = vlen > 0 && vlen < MOCK_DIRECTIVE_ID_MAX;
        for (size_t i = 0; plain && i < vlen; i++) {
            char c = val [i];
            plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                 || c == '-' || c == '_' || c == '.' || c == ':';
        }
        if (!plain) {
            snprintf (err, errsize, "mock directive: id must be 1-%d of [A-Za-z0-9._:-]", MOCK_DIRECTIVE_ID_MAX - 1);
            return -1;
        }
        memcpy (self->id, val, vlen);
        self->id [vlen] = 0;
        return 0;
    }
    snprintf (err, errsize, "mock directive: unknown key '%.*s'", (int) (klen > 40 ? 40 : klen), key);
    return -1;
}

int
mock_directive_apply (mock_directive_t *self, const char *text, size_t len,
                      char *err, size_t errsize)
{
    assert (self);
    size_t pos = 0;
    while (pos < len) {
        while (pos < len && s_is_separator (text [pos]))
            pos++;
        if (pos == len)
            break;
        size_t start = pos;
        while (pos < len && !s_is_separator (text [pos]))
            pos++;
        const char *pair = text + start;
        size_t plen = pos - start;
        const char *eq = memchr (pair, '=', plen);
        if (!eq) {
            snprintf (err, errsize, "mock directive: '%.*s' is not key=value", (int) (plen > 40 ? 40 : plen), pair);
            return -1;
        }
        size_t klen = (size_t) (eq - pair);
        if (s_apply_pair (self, pair, klen, eq + 1, plen - klen - 1, err, errsize))
            return -1;
    }
    return 0;
}

int
mock_directive_scan (mock_directive_t *self, const char *text, size_t len,
                     char *err, size_t errsize)
{
    assert (self);
    static const char opener [] = "[[mock";
    const size_t olen = sizeof opener - 1;
    size_t pos = 0;
    while (len - pos >= olen) {
        const char *hit = memmem (text + pos, len - pos, opener, olen);
        if (!hit)
            break;
        size_t inner = (size_t) (hit - text) + olen;
        //  "[[mockery]]" is prose, not a directive: the keyword must end here
        if (inner < len && !s_is_separator (text [inner]) && text [inner] != ']') {
            pos = inner;
            continue;
        }
        const char *close = memmem (text + inner, len - inner, "]]", 2);
        if (!close) {
            snprintf (err, errsize, "mock directive: [[mock without closing ]]");
            return -1;
        }
        size_t ilen = (size_t) (close - (text + inner));
        if (mock_directive_apply (self, text + inner, ilen, err, errsize))
            return -1;
        pos = inner + ilen + 2;
    }
    return 0;
}

int
mock_directive_check (mock_directive_t *self, char *err, size_t errsize)
{
    assert (self);
    if (self->times >= 0 && !self->id [0]) {
        snprintf (err, errsize, "mock directive: times=N needs id=STR");
        return -1;
    }
    return 0;
}

bool
mock_directive_has_fault (mock_directive_t *self)
{
    assert (self);
    return self->status > 0 || self->hold_ms > 0 || self->first_byte_ms > 0
        || self->drop_after >= 0 || self->malformed == 1;
}

void
mock_directive_clear_faults (mock_directive_t *self)
{
    assert (self);
    self->status = 0;
    self->retry_after = -1;
    self->hold_ms = -1;
    self->first_byte_ms = -1;
    self->drop_after = -1;
    self->malformed = -1;
}

void
mock_directive_test (bool verbose)
{
    (void) verbose;
    char err [256];
    mock_directive_t d;

    mock_directive_init (&d);
    mock_check (!mock_directive_has_fault (&d));
    const char *header = "status=429 retry_after=2, times=1;id=run-7 tokens=3";
    mock_check (mock_directive_apply (&d, header, strlen (header), err, sizeof err) == 0);
    mock_check (d.status == 429);
    mock_check (d.retry_after == 2);
    mock_check (d.times == 1);
    mock_check (strcmp (d.id, "run-7") == 0);
    mock_check (d.tokens == 3);
    mock_check (mock_directive_has_fault (&d));
    mock_check (mock_directive_check (&d, err, sizeof err) == 0);
    mock_directive_clear_faults (&d);
    mock_check (!mock_directive_has_fault (&d));
    mock_check (d.tokens == 3);

    //  Content directives: several, anywhere, later wins; prose is ignored
    mock_directive_init (&d);
    const char *content = "Hi [[mockery]] there [[mock tokens=5 usage=separate]] and "
                          "[[mock tokens=7 malformed=1 drop_after=2]] end";
    mock_check (mock_directive_scan (&d, content, strlen (content), err, sizeof err) == 0);
    mock_check (d.tokens == 7);
    mock_check (d.usage == MOCK_USAGE_SEPARATE);
    mock_check (d.malformed == 1);
    mock_check (d.drop_after == 2);

    mock_directive_init (&d);
    mock_check (mock_directive_scan (&d, "[[mock]]", 8, err, sizeof err) == 0);
    mock_check (mock_directive_scan (&d, "plain text", 10, err, sizeof err) == 0);
    mock_check (d.tokens == -1);

    //  Errors name the problem
    mock_directive_init (&d);
    mock_check (mock_directive_scan (&d, "[[mock tokens=3", 15, err, sizeof err) == -1);
    mock_check (strstr (err, "closing"));
    mock_check (mock_directive_apply (&d, "colour=red", 10, err, sizeof err) == -1);
    mock_check (strstr (err, "colour"));
    mock_check (mock_directive_apply (&d, "tokens=-1", 9, err, sizeof err) == -1);
    mock_check (mock_directive_apply (&d, "tokens", 6, err, sizeof err) == -1);
    mock_check (mock_directive_apply (&d, "status=200", 10, err, sizeof err) == -1);
    mock_check (mock_directive_apply (&d, "usage=both", 10, err, sizeof err) == -1);
    mock_check (mock_directive_apply (&d, "id=a/b", 6, err, sizeof err) == -1);
    mock_check (mock_directive_apply (&d, "token_ms=99999999999", 20, err, sizeof err) == -1);
    mock_directive_init (&d);
    mock_check (mock_directive_apply (&d, "times=2", 7, err, sizeof err) == 0);
    mock_check (mock_directive_check (&d, err, sizeof err) == -1);
}
