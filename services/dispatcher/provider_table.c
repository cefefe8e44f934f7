/*  provider_table.c: upstream providers and model routes, from the environment. */
#include "provider_table.h"
#include "gw_env.h"
#include "gw_log.h"

#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROVIDERS 16
#define MAX_MODELS 64

typedef struct {
    char *model;  //  public name
    const provider_t *provider;
    char *upstream_model;
} model_entry_t;

struct provider_table_t {
    provider_t providers[MAX_PROVIDERS];
    size_t nproviders;
    model_entry_t entries[MAX_PROVIDERS * MAX_MODELS];  //  in provider order
    size_t nentries;
    char *routes;  //  GW_ROUTES copy, or NULL
};

typedef struct {
    const char *name, *base_url, *key_env, *models, *owned_by;
} provider_default_t;

static const provider_default_t s_defaults[] = {
    { "deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY", "deepseek-chat,deepseek-reasoner", "deepseek" },
    { "maas", "https://api.modelarts-maas.com/v1", "MAAS_API_KEY",
      "deepseek-chat=DeepSeek-V3,deepseek-reasoner=DeepSeek-R1", "huawei-maas" },
};

static const char *
s_setting (const char *name, const char *what, const char *dflt)
{
    char var[128];
    snprintf (var, sizeof var, "GW_PROVIDER_%s_%s", name, what);
    for (char *p = var; *p; p++)
        *p = (char) (isalnum ((unsigned char) *p) ? toupper ((unsigned char) *p) : '_');
    return gw_env_str (var, dflt);
}

static char *
s_trim (char *s)
{
    while (isspace ((unsigned char) *s))
        s++;
    char *end = s + strlen (s);
    while (end > s && isspace ((unsigned char) end[-1]))
        *--end = 0;
    return s;
}

static int
s_add_provider (provider_table_t *self, const char *name)
{
    if (self->nproviders == MAX_PROVIDERS) {
        gw_error ("providers", "too many providers max=%d", MAX_PROVIDERS);
        return -1;
    }
    const provider_default_t *d = NULL;
    for (size_t i = 0; i < sizeof s_defaults / sizeof s_defaults[0]; i++)
        if (strcmp (s_defaults[i].name, name) == 0)
            d = &s_defaults[i];
    char key_env_default[128];
    snprintf (key_env_default, sizeof key_env_default, "%s_API_KEY", name);
    for (char *p = key_env_default; *p; p++)
        *p = (char) (isalnum ((unsigned char) *p) ? toupper ((unsigned char) *p) : '_');
    const char *base = s_setting (name, "BASE_URL", d ? d->base_url : NULL);
    const char *key_env = s_setting (name, "KEY_ENV", d ? d->key_env : key_env_default);
    const char *models = s_setting (name, "MODELS", d ? d->models : NULL);
    if (!base || !models) {
        gw_error ("providers", "provider needs BASE_URL and MODELS name=%s", name);
        return -1;
    }
    provider_t *p = &self->providers[self->nproviders++];
    p->name = strdup (name);
    size_t blen = strlen (base);
    while (blen && base[blen - 1] == '/')
        blen--;
    p->chat_url = malloc (blen + sizeof "/chat/completions");
    memcpy (p->chat_url, base, blen);
    strcpy (p->chat_url + blen, "/chat/completions");
    const char *key = gw_env_str (key_env, NULL);
    if (!key)
        gw_warn ("providers", "no API key provider=%s variable=%s (calls will get 401)", name, key_env);
    p->api_key = strdup (key ? key : "");
    p->owned_by = strdup (s_setting (name, "OWNED_BY", d ? d->owned_by : name));

    char *list = strdup (models), *save = NULL;
    for (char *tok = strtok_r (list, ",", &save); tok; tok = strtok_r (NULL, ",", &save)) {
        char *eq = strchr (tok, '=');
        if (eq)
            *eq = 0;
        char *pub = s_trim (tok), *up = eq ? s_trim (eq + 1) : pub;
        if (!*pub || !*up || self->nentries == MAX_PROVIDERS * MAX_MODELS)
            continue;
        self->entries[self->nentries++] = (model_entry_t) { strdup (pub), p, strdup (up) };
    }
    free (list);
    gw_info ("providers", "provider name=%s url=%s models=%s", p->name, p->chat_url, models);
    return 0;
}

provider_table_t *
provider_table_new (void)
{
    provider_table_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    char *names = strdup (gw_env_str ("GW_PROVIDERS", "deepseek")), *save = NULL;
    for (char *tok = strtok_r (names, ",", &save); tok; tok = strtok_r (NULL, ",", &save)) {
        char *name = s_trim (tok);
        if (*name && s_add_provider (self, name)) {
            free (names);
            provider_table_destroy (&self);
            return NULL;
        }
    }
    free (names);
    const char *routes = gw_env_str ("GW_ROUTES", NULL);
    self->routes = routes ? strdup (routes) : NULL;
    return self;
}

void
provider_table_destroy (provider_table_t **self_p)
{
    provider_table_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->nproviders; i++) {
        free (self->providers[i].name);
        free (self->providers[i].chat_url);
        free (self->providers[i].api_key);
        free (self->providers[i].owned_by);
    }
    for (size_t i = 0; i < self->nentries; i++) {
        free (self->entries[i].model);
        free (self->entries[i].upstream_model);
    }
    free (self->routes);
    free (self);
    *self_p = NULL;
}

static const model_entry_t *
s_entry (provider_table_t *self, const char *model, const char *provider)
{
    for (size_t i = 0; i < self->nentries; i++)
        if (strcmp (self->entries[i].model, model) == 0
            && (!provider || strcmp (self->entries[i].provider->name, provider) == 0))
            return &self->entries[i];
    return NULL;
}

size_t
provider_table_route (provider_table_t *self, const char *model, route_step_t *steps, size_t max)
{
    size_t n = 0;
    //  An explicit route in GW_ROUTES wins: "model=p1,p2;other=p2".
    if (self->routes) {
        size_t mlen = strlen (model);
        for (const char *r = self->routes; r && *r; r = strchr (r, ';') ? strchr (r, ';') + 1 : NULL) {
            while (*r == ' ')
                r++;
            if (strncmp (r, model, mlen) || r[mlen] != '=')
                continue;
            const char *p = r + mlen + 1;
            while (*p && *p != ';' && n < max) {
                size_t len = strcspn (p, ",;");
                char name[64];
                snprintf (name, sizeof name, "%.*s", (int) (len < 63 ? len : 63), p);
                const model_entry_t *e = s_entry (self, model, s_trim (name));
                if (e)
                    steps[n++] = (route_step_t) { e->provider, e->upstream_model };
                p += len;
                if (*p == ',')
                    p++;
            }
            return n;
        }
    }
    for (size_t i = 0; i < self->nentries && n < max; i++)
        if (strcmp (self->entries[i].model, model) == 0)
            steps[n++] = (route_step_t) { self->entries[i].provider, self->entries[i].upstream_model };
    return n;
}

const provider_t *
provider_table_find (provider_table_t *self, const char *name)
{
    for (size_t i = 0; i < self->nproviders; i++)
        if (strcmp (self->providers[i].name, name) == 0)
            return &self->providers[i];
    return NULL;
}

void
provider_table_models (provider_table_t *self, gw_strlist_t *models, gw_strlist_t *owners)
{
    for (size_t i = 0; i < self->nentries; i++) {
        bool seen = false;
        for (size_t k = 0; k < models->count && !seen; k++)
            seen = strcmp (models->items[k], self->entries[i].model) == 0;
        if (!seen) {
            gw_strlist_append (models, self->entries[i].model);
            gw_strlist_append (owners, self->entries[i].provider->owned_by);
        }
    }
}

void
provider_table_test (bool verbose)
{
    if (verbose)
        printf (" * provider_table: ");
    setenv ("GW_PROVIDERS", "deepseek, maas,local", 1);
    setenv ("GW_PROVIDER_DEEPSEEK_BASE_URL", "http://127.0.0.1:1/", 1);
    setenv ("DEEPSEEK_API_KEY", "sk-test", 1);
    setenv ("GW_PROVIDER_LOCAL_BASE_URL", "http://127.0.0.1:2/v1", 1);
    setenv ("GW_PROVIDER_LOCAL_MODELS", "qwen, deepseek-chat=ds-local", 1);
    provider_table_t *t = provider_table_new ();
    assert (t);
    route_step_t steps[8];
    size_t n = provider_table_route (t, "deepseek-chat", steps, 8);
    assert (n == 3);
    assert (strcmp (steps[0].provider->chat_url, "http://127.0.0.1:1/chat/completions") == 0);
    assert (strcmp (steps[0].provider->api_key, "sk-test") == 0);
    assert (strcmp (steps[1].provider->name, "maas") == 0);
    assert (strcmp (steps[1].upstream_model, "DeepSeek-V3") == 0);
    assert (strcmp (steps[2].upstream_model, "ds-local") == 0);
    assert (provider_table_route (t, "nope", steps, 8) == 0);
    gw_strlist_t models = { 0 }, owners = { 0 };
    provider_table_models (t, &models, &owners);
    assert (models.count == 3 && strcmp (models.items[2], "qwen") == 0);
    assert (strcmp (owners.items[0], "deepseek") == 0);
    gw_strlist_clear (&models);
    gw_strlist_clear (&owners);
    provider_table_destroy (&t);

    setenv ("GW_ROUTES", "deepseek-chat=local,deepseek;x=y", 1);
    t = provider_table_new ();
    n = provider_table_route (t, "deepseek-chat", steps, 8);
    assert (n == 2 && strcmp (steps[0].provider->name, "local") == 0);
    assert (strcmp (steps[1].provider->name, "deepseek") == 0);
    provider_table_destroy (&t);
    provider_table_destroy (&t);
    unsetenv ("GW_ROUTES");
    unsetenv ("GW_PROVIDERS");
    unsetenv ("GW_PROVIDER_DEEPSEEK_BASE_URL");
    unsetenv ("GW_PROVIDER_LOCAL_BASE_URL");
    unsetenv ("GW_PROVIDER_LOCAL_MODELS");
    unsetenv ("DEEPSEEK_API_KEY");
    if (verbose)
        printf ("OK\n");
}
