/*  admin_api.h: the admin API of docs/keys.md ("/admin/keys"), as JSON.

    The ingress (or gw-keys) forwards an admin call as ADMIN_REQUEST; this
    module validates it strictly (unknown fields and malformed values get a 400
    naming the field), runs it through key_store and answers with the key
    objects. Amounts are exact: budgets parse to pico-units and print with at
    least two decimals.
*/
#ifndef ADMIN_API_H_INCLUDED
#define ADMIN_API_H_INCLUDED

#include "key_store.h"

#include <stddef.h>
#include <stdint.h>

/*  Answers one call. Returns the JSON body (caller frees) and sets *status:
    200, 201, 400, 404, 405, or 503 when the database failed. */
char *admin_api_handle (usage_store_t *db, const key_policy_t *policy, const char *currency, const char *method,
                        const char *path, const void *body, size_t body_size, uint32_t *status);

void admin_api_test (bool verbose);

#endif
