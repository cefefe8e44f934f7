/*  admin_api.c: the admin API of docs/keys.md, as JSON over key_store. */
#include "admin_api.h"
#include "gw_apikey.h"
#include "gw_error.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "gw_time.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 200
#define MODELS_MAX 100
#define CACHE_TTL_MAX_S (30 * 86400)

static char *
s_error (uint32_t *status, uint32_t code, const char *error_code, const char *param, const char *message)
{
    *status = code;
    const char *type = code == 503 ? "api_error" : "invalid_request_error";
    return gw_error_json (type, error_code, param, "%s", message);
}

//  One limit from JSON: null (default), "unlimited", or a number: a
//  non-negative integer, or for budgets an amount with up to 6 decimals
//  (a JSON number or a string). Returns 0, or -1 with message set.
static int
s_parse_limit (key_limit_t limit, json_t *value, int64_t *out, char *message, size_t size)
{
    const char *name = key_limit_names[limit];
    bool money = key_limit_is_money (limit);
    if (json_is_null (value)) {
        *out = KEY_LIMIT_DEFAULT;
        return 0;
    }
    if (json_is_string (value) && strcmp (json_string_value (value), "unlimited") == 0) {
        *out = KEY_LIMIT_UNLIMITED;
        return 0;
    }
    if (json_is_integer (value) && json_integer_value (value) >= 0) {
        json_int_t n = json_integer_value (value);
        if (!money) {
            *out = n;
            return 0;
        }
        char text[32];
        snprintf (text, sizeof text, "%" JSON_INTEGER_FORMAT, n);
        if (key_money_parse (text, out) == 0)
            return 0;
    }
    else if (money && json_is_real (value) && json_real_value (value) >= 0) {
        //  A JSON number with a fraction: accepted when 6 decimals render it exactly.
        double d = json_real_value (value);
        char text[64];
        snprintf (text, sizeof text, "%.6f", d);
        if (isfinite (d) && strtod (text, NULL) == d && key_money_parse (text, out) == 0)
            return 0;
    }
    else if (money && json_is_string (value) && key_money_parse (json_string_value (value), out) == 0)
        return 0;
    if (money)
        snprintf (message, size,
                  "%s must be a non-negative amount with at most 6 decimals (100, \"0.50\"), null or \"unlimited\"",
                  name);
    else
        snprintf (message, size, "%s must be a non-negative integer, null or \"unlimited\"", name);
    return -1;
}

/*  Reads the fields of a POST or PATCH body into f (whose strings point into
    root or *models_json, which the caller frees). Returns 0, or -1 with
    *param and message set. */
static int
s_parse_fields (json_t *root, key_fields_t *f, char **models_json, const char **param, char *message, size_t size)
{
    const char *field;
    json_t *value;
    json_object_foreach (root, field, value) {
        *param = field;
        if (strcmp (field, "name") == 0) {
            if (!json_is_string (value) || json_string_length (value) == 0
                || strlen (json_string_value (value)) > NAME_MAX_LEN) {
                snprintf (message, size, "name must be a non-empty string of at most %d bytes", NAME_MAX_LEN);
                return -1;
            }
            f->has_name = true;
            f->name = json_string_value (value);
            continue;
        }
        if (strcmp (field, "expires_at") == 0) {
            int64_t ms = 0;
            if (!json_is_null (value)
                && (!json_is_string (value) || gw_time_parse_ms (json_string_value (value), &ms) || ms <= 0)) {
                snprintf (message, size,
                          "expires_at must be a UTC date (YYYY-MM-DD), an RFC 3339 time (YYYY-MM-DDTHH:MM:SSZ) or null");
                return -1;
            }
            //  A key born expired is a mistake (revoke a key to end it now).
            if (ms && ms <= gw_wall_ms ()) {
                snprintf (message, size, "expires_at is in the past; to end a key now, revoke it");
                return -1;
            }
            f->has_expires = true;
            f->expires_ms = ms;
            continue;
        }
        if (strcmp (field, "models") == 0) {
            bool ok = json_is_null (value) || (json_is_array (value) && json_array_size (value) <= MODELS_MAX);
            size_t i;
            json_t *model;
            json_array_foreach (value, i, model)
                ok &= json_is_string (model) && json_string_length (model) > 0 && json_string_length (model) <= 200;
            if (!ok) {
                snprintf (message, size, "models must be a list of model names (at most %d), or null for all",
                          MODELS_MAX);
                return -1;
            }
            f->has_models = true;
            free (*models_json);
            *models_json = json_is_null (value) ? strdup ("[]") : json_dumps (value, JSON_COMPACT);
            f->models_json = *models_json;
            continue;
        }
        if (strcmp (field, "cache_ttl_s") == 0) {
            //  How long answers to this key's deterministic requests are kept
            //  in the dispatchers' response cache (docs/cache.md); 0 or null: off.
            if (!json_is_null (value)
                && (!json_is_integer (value) || json_integer_value (value) < 0
                    || json_integer_value (value) > CACHE_TTL_MAX_S)) {
                snprintf (message, size, "cache_ttl_s must be an integer of seconds from 0 to %d, or null (off)",
                          CACHE_TTL_MAX_S);
                return -1;
            }
            f->has_cache_ttl = true;
            f->cache_ttl_s = json_is_null (value) ? 0 : (int64_t) json_integer_value (value);
            continue;
        }
        bool known = false;
        for (int i = 0; i < KEY_NLIMITS && !known; i++)
            if (strcmp (field, key_limit_names[i]) == 0) {
                known = true;
                if (s_parse_limit ((key_limit_t) i, value, &f->limits[i], message, size))
                    return -1;
                f->has_limit[i] = true;
            }
        if (!known) {
            snprintf (message, size, "Unknown field: %s", field);
            return -1;
        }
    }
    *param = NULL;
    return 0;
}

static json_t *
s_money (int64_t pico)
{
    char text[48];
    key_money_format (pico, text, sizeof text);
    return json_string (text);
}

//  A limit as set on the key: the number, null (default) or "unlimited".
static json_t *
s_limit_json (key_limit_t limit, int64_t value)
{
    if (value == KEY_LIMIT_DEFAULT)
        return json_null ();
    if (value == KEY_LIMIT_UNLIMITED)
        return json_string ("unlimited");
    return key_limit_is_money (limit) ? s_money (value) : json_integer (value);
}

static json_t *
s_time_json (const char *text)
{
    return *text ? json_string (text) : json_null ();
}

static json_t *
s_key_json (const key_record_t *r, const key_policy_t *policy, const char *currency)
{
    json_t *models = json_loads (r->models_json, 0, NULL);
    json_t *key = json_pack ("{s:I, s:s, s:s, s:s, s:o, s:o, s:o, s:o}", "id", (json_int_t) r->id, "object",
                             "api_key", "name", r->name, "prefix", r->prefix, "created_at",
                             s_time_json (r->created_at), "expires_at", s_time_json (r->expires_at), "revoked_at",
                             s_time_json (r->revoked_at), "models", models ? models : json_array ());
    json_t *effective = json_object ();
    for (int i = 0; i < KEY_NLIMITS; i++) {
        json_object_set_new (key, key_limit_names[i], s_limit_json ((key_limit_t) i, r->limits[i]));
        int64_t e = key_limit_effective (r->limits[i], policy->defaults[i]);
        json_object_set_new (effective, key_limit_names[i],
                             e == KEY_LIMIT_UNLIMITED ? json_null ()
                             : key_limit_is_money ((key_limit_t) i) ? s_money (e)
                                                                     : json_integer (e));
    }
    json_object_set_new (key, "cache_ttl_s", json_integer (r->cache_ttl_s));
    json_object_set_new (key, "currency", json_string (currency));
    json_object_set_new (key, "effective", effective);
    json_object_set_new (key, "spend", json_pack ("{s:o, s:o, s:o, s:o}", "day", s_money (r->spend[0]), "week",
                                                  s_money (r->spend[1]), "month", s_money (r->spend[2]), "total",
                                                  s_money (r->spend[3])));
    return key;
}

static char *
s_dump (json_t *root, uint32_t *status, uint32_t code)
{
    char *text = json_dumps (root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (root);
    *status = code;
    return text;
}

static char *
s_unavailable (uint32_t *status)
{
    return s_error (status, 503, "accounting_unavailable", NULL, "The key database cannot be reached; try again.");
}

static char *
s_not_found (uint32_t *status, uint64_t id)
{
    char message[96];
    snprintf (message, sizeof message, "No API key with id %" PRIu64 ".", id);
    return s_error (status, 404, "key_not_found", NULL, message);
}

//  Answers with the key as stored now (after a write), status code.
static char *
s_answer_key (usage_store_t *db, const key_policy_t *policy, const char *currency, uint64_t id, uint32_t code,
              const char *shown_key, uint32_t *status)
{
    key_record_t record;
    int found = key_store_get (db, id, &record);
    if (found < 0)
        return s_unavailable (status);
    if (!found)
        return s_not_found (status, id);
    json_t *key = s_key_json (&record, policy, currency);
    if (shown_key)
        json_object_set_new (key, "key", json_string (shown_key));
    key_record_clear (&record);
    return s_dump (key, status, code);
}

static char *
s_list (usage_store_t *db, const key_policy_t *policy, const char *currency, uint32_t *status)
{
    key_record_t *records;
    size_t count;
    if (key_store_list (db, &records, &count))
        return s_unavailable (status);
    json_t *data = json_array ();
    for (size_t i = 0; i < count; i++) {
        json_array_append_new (data, s_key_json (&records[i], policy, currency));
        key_record_clear (&records[i]);
    }
    free (records);
    return s_dump (json_pack ("{s:s, s:o}", "object", "list", "data", data), status, 200);
}

//  POST and PATCH: parse the body, then create or update.
static char *
s_write (usage_store_t *db, const key_policy_t *policy, const char *currency, uint64_t id, const void *body,
         size_t body_size, uint32_t *status)
{
    json_error_t jerr;
    json_t *root = body_size ? json_loadb (body, body_size, JSON_REJECT_DUPLICATES, &jerr) : json_object ();
    if (!json_is_object (root)) {
        char message[256];
        if (root)
            snprintf (message, sizeof message, "The body must be a JSON object.");
        else
            snprintf (message, sizeof message, "The body is not valid JSON: %s.", jerr.text);
        json_decref (root);
        return s_error (status, 400, "invalid_json", NULL, message);
    }
    key_fields_t fields = { 0 };
    char *models_json = NULL, message[256];
    const char *param = NULL;
    char *answer = NULL;
    if (s_parse_fields (root, &fields, &models_json, &param, message, sizeof message))
        answer = s_error (status, 400, strncmp (message, "Unknown", 7) ? "invalid_value" : "unknown_parameter",
                          param, message);
    else if (id == 0 && !fields.has_name)
        answer = s_error (status, 400, "invalid_value", "name", "name is required: say who the key is for");
    else if (id == 0) {
        char key[GW_APIKEY_LEN + 1], hash[65], prefix[GW_APIKEY_SHOWN + 1];
        uint64_t new_id = 0;
        if (gw_apikey_generate (key)) {
            gw_error ("admin", "cannot generate a key");
            answer = s_error (status, 500, "internal_error", NULL, "No random bytes for a new key.");
        }
        else {
            gw_apikey_hash (key, strlen (key), hash);
            snprintf (prefix, sizeof prefix, "%.*s", GW_APIKEY_SHOWN, key);
            if (key_store_create (db, hash, prefix, &fields, &new_id))
                answer = s_unavailable (status);
            else {
                gw_info ("admin", "key created id=%" PRIu64 " prefix=%s", new_id, prefix);
                answer = s_answer_key (db, policy, currency, new_id, 201, key, status);
            }
        }
        explicit_bzero (key, sizeof key);
    }
    else {
        int rc = key_store_update (db, id, &fields);
        if (rc < 0)
            answer = s_unavailable (status);
        else if (rc == 0)
            answer = s_not_found (status, id);
        else {
            gw_info ("admin", "key updated id=%" PRIu64, id);
            answer = s_answer_key (db, policy, currency, id, 200, NULL, status);
        }
    }
    free (models_json);
    json_decref (root);
    return answer;
}

/*  Splits "/admin/keys[/<id>][?query]": 0 the collection, 1 one key (*id), -1 other. */
static int
s_route (const char *path, uint64_t *id)
{
    static const char base[] = "/admin/keys";
    size_t len = strcspn (path, "?");
    if (strncmp (path, base, sizeof base - 1) || len < sizeof base - 1)
        return -1;
    const char *rest = path + sizeof base - 1;
    len -= sizeof base - 1;
    if (len == 0 || (len == 1 && rest[0] == '/'))
        return 0;
    if (rest[0] != '/' || len > 19)
        return -1;
    uint64_t n = 0;
    for (size_t i = 1; i < len; i++) {
        if (rest[i] < '0' || rest[i] > '9')
            return -1;
        n = n * 10 + (uint64_t) (rest[i] - '0');
    }
    *id = n;
    return n ? 1 : -1;
}

char *
admin_api_handle (usage_store_t *db, const key_policy_t *policy, const char *currency, const char *method,
                  const char *path, const void *body, size_t body_size, uint32_t *status)
{
    uint64_t id = 0;
    int route = s_route (path, &id);
    if (route < 0) {
        //  An id that is not a number names no key.
        if (strncmp (path, "/admin/keys/", 12) == 0)
            return s_error (status, 404, "key_not_found", NULL, "No API key with that id.");
        return s_error (status, 404, "not_found", NULL, "Unknown admin path; see /admin/keys.");
    }
    if (route == 0 && strcmp (method, "GET") == 0)
        return s_list (db, policy, currency, status);
    if (route == 0 && strcmp (method, "POST") == 0)
        return s_write (db, policy, currency, 0, body, body_size, status);
    if (route == 1 && strcmp (method, "GET") == 0)
        return s_answer_key (db, policy, currency, id, 200, NULL, status);
    if (route == 1 && strcmp (method, "PATCH") == 0)
        return s_write (db, policy, currency, id, body, body_size, status);
    if (route == 1 && strcmp (method, "DELETE") == 0) {
        int rc = key_store_revoke (db, id);
        if (rc < 0)
            return s_unavailable (status);
        if (rc == 0)
            return s_not_found (status, id);
        gw_info ("admin", "key revoked id=%" PRIu64, id);
        return s_answer_key (db, policy, currency, id, 200, NULL, status);
    }
    char message[128];
    snprintf (message, sizeof message, "%s is not allowed here; use %s.", method,
              route == 0 ? "GET or POST" : "GET, PATCH or DELETE");
    return s_error (status, 405, "method_not_allowed", NULL, message);
}

//  --------------------------------------------------------------------------
//  Selftest

//  Parses a body's fields; returns the param at fault, "" when accepted.
static const char *
s_fields_of (const char *body, key_fields_t *f)
{
    static char fault[64];
    json_t *root = json_loads (body, JSON_REJECT_DUPLICATES, NULL);
    assert (root);
    memset (f, 0, sizeof *f);
    char *models = NULL, message[256];
    const char *param = NULL;
    int rc = s_parse_fields (root, f, &models, &param, message, sizeof message);
    snprintf (fault, sizeof fault, "%s", rc ? param : "");
    free (models);
    f->name = NULL;
    f->models_json = NULL;
    json_decref (root);
    return fault;
}

void
admin_api_test (bool verbose)
{
    if (verbose)
        printf (" * admin_api: ");
    key_fields_t f;
    assert (strcmp (s_fields_of ("{\"name\":\"web\",\"rpm\":100,\"tpm\":null,\"concurrency\":\"unlimited\","
                                 "\"budget_day\":100,\"budget_week\":\"0.50\",\"budget_month\":2000.25,"
                                 "\"budget_total\":\"unlimited\",\"models\":[\"deepseek-chat\"],"
                                 "\"expires_at\":\"2027-01-01\"}",
                                 &f),
                    "")
            == 0);
    assert (f.has_name && f.has_models && f.has_expires && f.expires_ms == 1798761600000LL);
    assert (f.limits[KEY_RPM] == 100 && f.limits[KEY_TPM] == KEY_LIMIT_DEFAULT);
    assert (f.limits[KEY_CONCURRENCY] == KEY_LIMIT_UNLIMITED && f.limits[KEY_BUDGET_TOTAL] == KEY_LIMIT_UNLIMITED);
    assert (f.limits[KEY_BUDGET_DAY] == 100000000000000LL && f.limits[KEY_BUDGET_WEEK] == 500000000000LL);
    assert (f.limits[KEY_BUDGET_MONTH] == 2000250000000000LL);
    for (int i = 0; i < KEY_NLIMITS; i++)
        assert (f.has_limit[i]);
    assert (strcmp (s_fields_of ("{\"rpm\":0,\"expires_at\":null,\"models\":null}", &f), "") == 0);
    assert (f.limits[KEY_RPM] == 0 && f.has_expires && f.expires_ms == 0 && !f.has_name);

    //  Each bad value is refused naming its field.
    const char *bad[][2] = {
        { "{\"rpm\":-1}", "rpm" },
        { "{\"rpm\":1.5}", "rpm" },
        { "{\"tpm\":\"100\"}", "tpm" },
        { "{\"concurrency\":true}", "concurrency" },
        { "{\"budget_day\":-1}", "budget_day" },
        { "{\"budget_day\":0.1234567}", "budget_day" },
        { "{\"budget_week\":\"1e3\"}", "budget_week" },
        { "{\"budget_month\":1e30}", "budget_month" },
        { "{\"budget_total\":\"Unlimited\"}", "budget_total" },
        { "{\"name\":3}", "name" },
        { "{\"models\":\"deepseek-chat\"}", "models" },
        { "{\"models\":[\"\"]}", "models" },
        { "{\"models\":[1]}", "models" },
        { "{\"expires_at\":\"tomorrow\"}", "expires_at" },
        { "{\"expires_at\":20270101}", "expires_at" },
        { "{\"rmp\":10}", "rmp" },
        { "{\"name\":\"x\",\"revoked_at\":null}", "revoked_at" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *fault = s_fields_of (bad[i][0], &f);
        if (strcmp (fault, bad[i][1]))
            fprintf (stderr, "admin_api: %s: expected param %s, got \"%s\"\n", bad[i][0], bad[i][1], fault);
        assert (strcmp (fault, bad[i][1]) == 0);
    }

    //  Routes.
    uint64_t id = 0;
    assert (s_route ("/admin/keys", &id) == 0);
    assert (s_route ("/admin/keys/", &id) == 0);
    assert (s_route ("/admin/keys?limit=3", &id) == 0);
    assert (s_route ("/admin/keys/42", &id) == 1 && id == 42);
    assert (s_route ("/admin/keys/42?x", &id) == 1 && id == 42);
    assert (s_route ("/admin/keys/0", &id) == -1);
    assert (s_route ("/admin/keys/4x", &id) == -1);
    assert (s_route ("/admin/keys/99999999999999999999", &id) == -1);
    assert (s_route ("/admin/keysx", &id) == -1);
    assert (s_route ("/admin/other", &id) == -1);

    //  Key objects: limits as set, effective ones with defaults, exact money.
    key_policy_t policy = { .defaults = { 100, 200000, KEY_LIMIT_UNLIMITED, 100000000000000LL, KEY_LIMIT_UNLIMITED,
                                          2000000000000000LL, KEY_LIMIT_UNLIMITED } };
    key_record_t r = { .id = 3, .name = "web-team", .prefix = "sk-gw-1a2b", .models_json = "[\"deepseek-chat\"]",
                       .created_at = "2026-11-27T04:00:00Z",
                       .limits = { 100, KEY_LIMIT_DEFAULT, KEY_LIMIT_UNLIMITED, KEY_LIMIT_DEFAULT, KEY_LIMIT_DEFAULT,
                                   2000000000000000LL, KEY_LIMIT_DEFAULT },
                       .spend = { 1234567000000LL, 1234567000000LL, 20500000000000LL, 20500000000000LL } };
    json_t *key = s_key_json (&r, &policy, "CNY");
    char *text = json_dumps (key, JSON_COMPACT | JSON_PRESERVE_ORDER);
    const char *expected
        = "{\"id\":3,\"object\":\"api_key\",\"name\":\"web-team\",\"prefix\":\"sk-gw-1a2b\","
          "\"created_at\":\"2026-11-27T04:00:00Z\",\"expires_at\":null,\"revoked_at\":null,"
          "\"models\":[\"deepseek-chat\"],\"rpm\":100,\"tpm\":null,\"concurrency\":\"unlimited\","
          "\"budget_day\":null,\"budget_week\":null,\"budget_month\":\"2000.00\",\"budget_total\":null,"
          "\"cache_ttl_s\":0,\"currency\":\"CNY\",\"effective\":{\"rpm\":100,\"tpm\":200000,\"concurrency\":null,"
          "\"budget_day\":\"100.00\",\"budget_week\":null,\"budget_month\":\"2000.00\",\"budget_total\":null},"
          "\"spend\":{\"day\":\"1.234567\",\"week\":\"1.234567\",\"month\":\"20.50\",\"total\":\"20.50\"}}";
    if (strcmp (text, expected))
        fprintf (stderr, "admin_api: got %s\n", text);
    assert (strcmp (text, expected) == 0);
    free (text);
    json_decref (key);
    if (verbose)
        printf ("OK\n");
}
