//  mock_config - settings of the mock upstream, read from MOCK_* environment variables.

#include "mock_upstream.h"

mock_config_t *
mock_config_new (void)
{
    mock_config_t *self = calloc (1, sizeof (mock_config_t));
    if (!self)
        return NULL;
    self->host = strdup ("127.0.0.1");
    self->api_key = strdup ("sk-mock");
    if (!self->host || !self->api_key) {
        mock_config_destroy (&self);
        return NULL;
    }
    self->port = 9100;
    self->token_delay_ms = 0;
    self->keepalive_ms = 1000;
    self->usage_mode = MOCK_USAGE_FINAL;
    self->threads = 1;
    return self;
}

void
mock_config_destroy (mock_config_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        mock_config_t *self = *self_p;
        free (self->host);
        free (self->api_key);
        free (self);
        *self_p = NULL;
    }
}

//  Parses a whole decimal integer in [min, max]; trailing junk is an error
//  because a typo such as MOCK_PORT=91OO must not silently become 91.
static int
s_parse_int (const char *text, long min, long max, int *value)
{
    char *end;
    errno = 0;
    long v = strtol (text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return -1;
    *value = (int) v;
    return 0;
}

static int
s_env_int (const char *name, long min, long max, int *value, char *err, size_t errsize)
{
    const char *text = getenv (name);
    if (!text || !*text)
        return 0;
    if (s_parse_int (text, min, max, value) == 0)
        return 0;
    snprintf (err, errsize, "%s=%s is not an integer in [%ld, %ld]", name, text, min, max);
    return -1;
}

static int
s_env_string (const char *name, char **value, char *err, size_t errsize)
{
    const char *text = getenv (name);
    if (!text || !*text)
        return 0;
    char *copy = strdup (text);
    if (!copy) {
        snprintf (err, errsize, "%s: out of memory", name);
        return -1;
    }
    free (*value);
    *value = copy;
    return 0;
}

int
mock_config_load_env (mock_config_t *self, char *err, size_t errsize)
{
    assert (self);
    if (s_env_string ("MOCK_HOST", &self->host, err, errsize)
        || s_env_string ("MOCK_API_KEY", &self->api_key, err, errsize)
        || s_env_int ("MOCK_PORT", 0, 65535, &self->port, err, errsize)
        || s_env_int ("MOCK_TOKEN_DELAY_MS", 0, 3600000, &self->token_delay_ms, err, errsize)
        || s_env_int ("MOCK_KEEPALIVE_MS", 0, 3600000, &self->keepalive_ms, err, errsize)
        || s_env_int ("MOCK_THREADS", 1, 256, &self->threads, err, errsize))
        return -1;

    const char *mode = getenv ("MOCK_USAGE_MODE");
    if (mode && *mode) {
        if (strcmp (mode, "final") == 0)
            self->usage_mode = MOCK_USAGE_FINAL;
        else
        if (strcmp (mode, "separate") == 0)
            self->usage_mode = MOCK_USAGE_SEPARATE;
        else {
            snprintf (err, errsize, "MOCK_USAGE_MODE=%s is not final or separate", mode);
            return -1;
        }
    }
    return 0;
}

void
mock_config_test (bool verbose)
{
    (void) verbose;
    char err [256];

    //  Start from a clean environment so that the caller's MOCK_* do not leak in
    const char *names [] = { "MOCK_HOST", "MOCK_PORT", "MOCK_API_KEY", "MOCK_TOKEN_DELAY_MS",
                             "MOCK_KEEPALIVE_MS", "MOCK_USAGE_MODE", "MOCK_THREADS" };
    char *saved [7];
    for (size_t i = 0; i < 7; i++) {
        const char *v = getenv (names [i]);
        saved [i] = v ? strdup (v) : NULL;
        unsetenv (names [i]);
    }

    mock_config_t *config = mock_config_new ();
    mock_check (config);
    mock_check (mock_config_load_env (config, err, sizeof err) == 0);
    mock_check (strcmp (config->host, "127.0.0.1") == 0);
    mock_check (config->port == 9100);
    mock_check (strcmp (config->api_key, "sk-mock") == 0);
    mock_check (config->token_delay_ms == 0);
    mock_check (config->keepalive_ms == 1000);
    mock_check (config->usage_mode == MOCK_USAGE_FINAL);
    mock_check (config->threads == 1);

    setenv ("MOCK_PORT", "9200", 1);
    setenv ("MOCK_USAGE_MODE", "separate", 1);
    setenv ("MOCK_API_KEY", "sk-test-1234", 1);
    mock_check (mock_config_load_env (config, err, sizeof err) == 0);
    mock_check (config->port == 9200);
    mock_check (config->usage_mode == MOCK_USAGE_SEPARATE);
    mock_check (strcmp (config->api_key, "sk-test-1234") == 0);

    setenv ("MOCK_PORT", "91OO", 1);
    mock_check (mock_config_load_env (config, err, sizeof err) == -1);
    mock_check (strstr (err, "MOCK_PORT"));
    setenv ("MOCK_PORT", "9100", 1);
    setenv ("MOCK_USAGE_MODE", "sometimes", 1);
    mock_check (mock_config_load_env (config, err, sizeof err) == -1);

    mock_config_destroy (&config);
    mock_check (config == NULL);
    mock_config_destroy (&config);

    for (size_t i = 0; i < 7; i++) {
        if (saved [i])
            setenv (names [i], saved [i], 1);
        else
            unsetenv (names [i]);
        free (saved [i]);
    }
}
