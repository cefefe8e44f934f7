/*  provider_table.h: upstream providers and the ordered route of each model.

    Read from the environment (see docs/operations.md):
      GW_PROVIDERS                  comma list of provider names, in fallback order
      GW_PROVIDER_<NAME>_BASE_URL   e.g. https://api.deepseek.com
      GW_PROVIDER_<NAME>_KEY_ENV    name of the variable holding the API key
      GW_PROVIDER_<NAME>_MODELS     public[=upstream],... models it serves
      GW_PROVIDER_<NAME>_OWNED_BY   owned_by shown in /v1/models
      GW_ROUTES                     optional per-model order: m=p1,p2;m2=p2
    Built-in defaults exist for "deepseek" and "maas" (Huawei Cloud MaaS).
*/
#ifndef PROVIDER_TABLE_H_INCLUDED
#define PROVIDER_TABLE_H_INCLUDED

#include "gw_proto.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *name;
    char *chat_url;  //  base URL + /chat/completions
    char *api_key;  //  never logged, never sent anywhere but to this provider
    char *owned_by;
} provider_t;

/*  One step of a model's route. */
typedef struct {
    const provider_t *provider;
    const char *upstream_model;
} route_step_t;

typedef struct provider_table_t provider_table_t;

/*  Builds the table from the environment; NULL (with a log line) on bad config. */
provider_table_t *provider_table_new (void);
void provider_table_destroy (provider_table_t **self_p);

/*  Fills steps (up to max) with the route of model, in order; returns the count. */
size_t provider_table_route (provider_table_t *self, const char *model, route_step_t *steps, size_t max);

/*  Appends every public model (once) and its owner to the lists. */
void provider_table_models (provider_table_t *self, gw_strlist_t *models, gw_strlist_t *owners);

/*  The provider of that name, or NULL. */
const provider_t *provider_table_find (provider_table_t *self, const char *name);

void provider_table_test (bool verbose);

#endif
