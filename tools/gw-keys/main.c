/*  gw-keys: the admin API of gateway keys (docs/keys.md) from the command line,
    asked of an accounting instance's control socket (ADMIN_REQUEST/ADMIN_REPLY).

    gw-keys create --name N [fields]    POST   /admin/keys
    gw-keys list [--json]               GET    /admin/keys
    gw-keys show ID                     GET    /admin/keys/ID
    gw-keys update ID [fields]          PATCH  /admin/keys/ID
    gw-keys revoke ID                   DELETE /admin/keys/ID

    Prints the JSON answer (list: a table, unless --json). Exit status 0 on a 2xx
    answer; 1 on any other answer or bad arguments, with the error on stderr; 2
    when accounting does not answer in time. */
#include "gw_env.h"
#include "gw_loop.h"
#include "gw_proto.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define EXIT_NO_ANSWER 2

static const char s_usage_text[] =
    "usage: gw-keys create --name NAME [FIELDS]\n"
    "       gw-keys list [--json]\n"
    "       gw-keys show ID\n"
    "       gw-keys update ID [--name NAME] [FIELDS]\n"
    "       gw-keys revoke ID\n"
    "\n"
    "FIELDS:\n"
    "  --models a,b          models the key may use (\"\" for all)\n"
    "  --expires T           YYYY-MM-DD or RFC 3339 UTC time, or \"never\"\n"
    "  --rpm N               requests per minute\n"
    "  --tpm N               tokens per minute\n"
    "  --concurrency N       requests in progress at once\n"
    "  --budget-day X        spend per UTC day, in the gateway currency\n"
    "  --budget-week X       spend per ISO week\n"
    "  --budget-month X      spend per calendar month\n"
    "  --budget-total X      spend over the key's life\n"
    "Each limit and budget takes a number (0 allows nothing), \"unlimited\", or\n"
    "\"default\" (the accounting service's default for every key).\n"
    "  --cache-ttl S         keep answers to the key's temperature-0 requests in the\n"
    "                        response cache S seconds (0: off; docs/cache.md)\n"
    "\n"
    "environment:\n"
    "  GW_CONTROL_ENDPOINTS   accounting control socket; the first is asked\n"
    "                         (default tcp://127.0.0.1:5557)\n"
    "  GW_CONTROL_TIMEOUT_MS  how long to wait for the answer (default 5000)\n";

typedef enum { FIELD_STRING, FIELD_MODELS, FIELD_EXPIRES, FIELD_LIMIT, FIELD_BUDGET, FIELD_SECONDS } field_kind_t;

/*  The key fields an option sets, and how its value becomes JSON. */
static const struct {
    const char *option;
    const char *field;
    field_kind_t kind;
} s_fields[] = {
    { "--name", "name", FIELD_STRING },
    { "--models", "models", FIELD_MODELS },
    { "--expires", "expires_at", FIELD_EXPIRES },
    { "--rpm", "rpm", FIELD_LIMIT },
    { "--tpm", "tpm", FIELD_LIMIT },
    { "--concurrency", "concurrency", FIELD_LIMIT },
    { "--budget-day", "budget_day", FIELD_BUDGET },
    { "--budget-week", "budget_week", FIELD_BUDGET },
    { "--budget-month", "budget_month", FIELD_BUDGET },
    { "--budget-total", "budget_total", FIELD_BUDGET },
    { "--cache-ttl", "cache_ttl_s", FIELD_SECONDS },
};

static bool
s_all_digits (const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isdigit ((unsigned char) s[i]))
            return false;
    return true;
}

/*  "123" or "12.345678": digits, then at most 6 decimals. */
static bool
s_is_decimal (const char *s)
{
    const char *point = strchr (s, '.');
    if (!point)
        return s_all_digits (s, strlen (s));
    size_t decimals = strlen (point + 1);
    return s_all_digits (s, (size_t) (point - s)) && decimals <= 6 && s_all_digits (point + 1, decimals);
}

/*  The JSON value of one option, or NULL (with the reason on stderr) when the
    value does not fit the field. */
static json_t *
s_field_value (field_kind_t kind, const char *option, const char *value)
{
    if (kind == FIELD_STRING)
        return json_string (value);
    if (kind == FIELD_MODELS) {
        json_t *models = json_array ();
        char *list = strdup (value), *save = NULL;
        for (char *m = strtok_r (list, ", ", &save); m; m = strtok_r (NULL, ", ", &save))
            json_array_append_new (models, json_string (m));
        free (list);
        return models;
    }
    if (kind == FIELD_EXPIRES)
        return strcmp (value, "never") ? json_string (value) : json_null ();
    if (kind == FIELD_SECONDS) {
        if (s_all_digits (value, strlen (value)) && strlen (value) <= 9)
            return json_integer (strtoll (value, NULL, 10));
        fprintf (stderr, "gw-keys: %s wants a whole number of seconds, not \"%s\"\n", option, value);
        return NULL;
    }
    if (!strcmp (value, "default"))
        return json_null ();
    if (!strcmp (value, "unlimited"))
        return json_string ("unlimited");
    if (kind == FIELD_LIMIT && s_all_digits (value, strlen (value)) && strlen (value) <= 18)
        return json_integer (strtoll (value, NULL, 10));
    //  Budgets go as strings: a decimal amount must not pass through a double.
    if (kind == FIELD_BUDGET && s_is_decimal (value))
        return json_string (value);
    fprintf (stderr, "gw-keys: %s wants %s, \"unlimited\" or \"default\", not \"%s\"\n", option,
             kind == FIELD_LIMIT ? "a whole number" : "an amount such as 100 or 0.50", value);
    return NULL;
}

/*  Reads the field options from argv[first..] into body. Returns 0, or -1 with
    the reason on stderr. */
static int
s_parse_fields (int argc, char **argv, int first, json_t *body)
{
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i], *value = NULL;
        size_t name_len = strcspn (arg, "=");
        if (arg[name_len] == '=')
            value = arg + name_len + 1;
        else if (i + 1 < argc)
            value = argv[++i];
        size_t f = 0;
        while (f < sizeof s_fields / sizeof s_fields[0]
               && (strlen (s_fields[f].option) != name_len || strncmp (s_fields[f].option, arg, name_len)))
            f++;
        if (f == sizeof s_fields / sizeof s_fields[0]) {
            fprintf (stderr, "gw-keys: unknown option %.*s (see gw-keys --help)\n", (int) name_len, arg);
            return -1;
        }
        if (!value) {
            fprintf (stderr, "gw-keys: %s needs a value\n", s_fields[f].option);
            return -1;
        }
        json_t *v = s_field_value (s_fields[f].kind, s_fields[f].option, value);
        if (!v)
            return -1;
        json_object_set_new (body, s_fields[f].field, v);
    }
    return 0;
}

/*  Columns a UTF-8 string takes on a terminal, for the table: one per
    character, two for the CJK and fullwidth ones (key names are often Chinese).
    Three-byte sequences cover those blocks; the rare wide ones beyond are
    counted as one. */
static size_t
s_width (const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
        if ((*p & 0xC0) == 0x80)
            continue;
        unsigned cp = (*p & 0xF0) == 0xE0 && p[1] && p[2] ? (*p & 0x0Fu) << 12 | (p[1] & 0x3Fu) << 6 | (p[2] & 0x3Fu)
                                                          : 0;
        bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) || (cp >= 0xAC00 && cp <= 0xD7A3)
                    || (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0xFE30 && cp <= 0xFE4F)
                    || (cp >= 0xFF00 && cp <= 0xFF60) || (cp >= 0xFFE0 && cp <= 0xFFE6);
        n += wide ? 2 : 1;
    }
    return n;
}

/*  A limit as the table shows it: its value, "unlimited", or (when the key
    leaves it to the default) the default in effect, marked with '*'. */
static char *
s_limit_cell (json_t *key, const char *field)
{
    json_t *v = json_object_get (key, field);
    json_t *effective = json_object_get (json_object_get (key, "effective"), field);
    bool from_default = json_is_null (v) || !v;
    if (from_default)
        v = effective;
    char *cell = NULL;
    if (json_is_integer (v))
        (void) !asprintf (&cell, "%lld%s", (long long) json_integer_value (v), from_default ? "*" : "");
    else if (json_is_string (v))
        (void) !asprintf (&cell, "%s%s", json_string_value (v), from_default ? "*" : "");
    else
        (void) !asprintf (&cell, "unlimited%s", from_default ? "*" : "");
    return cell;
}

static char *
s_budgets_cell (json_t *key)
{
    static const char *periods[] = { "day", "week", "month", "total" };
    char *cell = strdup ("");
    for (size_t i = 0; i < 4; i++) {
        char field[32];
        snprintf (field, sizeof field, "budget_%s", periods[i]);
        char *limit = s_limit_cell (key, field);
        if (strncmp (limit, "unlimited", 9)) {
            char *longer = NULL;
            (void) !asprintf (&longer, "%s%s%s %s", cell, *cell ? " " : "", periods[i], limit);
            free (cell);
            cell = longer;
        }
        free (limit);
    }
    if (!*cell) {
        free (cell);
        cell = strdup ("none");
    }
    return cell;
}

static char *
s_string_cell (json_t *v)
{
    if (json_is_string (v))
        return strdup (json_string_value (v));
    if (json_is_integer (v)) {
        char *cell = NULL;
        (void) !asprintf (&cell, "%lld", (long long) json_integer_value (v));
        return cell;
    }
    return strdup ("-");
}

#define COLUMNS 10

/*  The list of keys as a table, one line per key. */
static void
s_print_table (json_t *list)
{
    static const char *titles[COLUMNS] = { "id",  "name",        "prefix",  "revoked",   "rpm",
                                           "tpm", "concurrency", "budgets", "spend_day", "spend_month" };
    json_t *keys = json_object_get (list, "data");
    size_t nkeys = json_array_size (keys);
    if (nkeys == 0) {
        printf ("no keys\n");
        return;
    }
    char **cells = calloc ((nkeys + 1) * COLUMNS, sizeof *cells);
    size_t widths[COLUMNS] = { 0 };
    const char *currency = NULL;
    for (size_t c = 0; c < COLUMNS; c++)
        cells[c] = strdup (titles[c]);
    for (size_t k = 0; k < nkeys; k++) {
        json_t *key = json_array_get (keys, k), *spend = json_object_get (key, "spend");
        char **row = cells + (k + 1) * COLUMNS;
        row[0] = s_string_cell (json_object_get (key, "id"));
        row[1] = s_string_cell (json_object_get (key, "name"));
        row[2] = s_string_cell (json_object_get (key, "prefix"));
        row[3] = strdup (json_is_string (json_object_get (key, "revoked_at")) ? "yes" : "no");
        row[4] = s_limit_cell (key, "rpm");
        row[5] = s_limit_cell (key, "tpm");
        row[6] = s_limit_cell (key, "concurrency");
        row[7] = s_budgets_cell (key);
        row[8] = s_string_cell (json_object_get (spend, "day"));
        row[9] = s_string_cell (json_object_get (spend, "month"));
        if (!currency)
            currency = json_string_value (json_object_get (key, "currency"));
    }
    for (size_t i = 0; i < (nkeys + 1) * COLUMNS; i++)
        if (widths[i % COLUMNS] < s_width (cells[i]))
            widths[i % COLUMNS] = s_width (cells[i]);
    for (size_t r = 0; r <= nkeys; r++) {
        for (size_t c = 0; c < COLUMNS; c++) {
            const char *cell = cells[r * COLUMNS + c];
            if (c + 1 == COLUMNS)
                printf ("%s\n", cell);
            else
                printf ("%s%*s  ", cell, (int) (widths[c] - s_width (cell)), "");
        }
    }
    printf ("\n* the accounting default; amounts in %s\n", currency ? currency : "the gateway currency");
    for (size_t i = 0; i < (nkeys + 1) * COLUMNS; i++)
        free (cells[i]);
    free (cells);
}

/*  Sends one admin call and waits for its answer. Returns 0 with *reply filled
    (the caller clears it), or -1 when accounting could not be asked or did not
    answer within timeout_ms. */
static int
s_call (const char *endpoint, int timeout_ms, gw_admin_request_t *request, gw_msg_t *reply)
{
    void *ctx = zmq_ctx_new ();
    void *dealer = zmq_socket (ctx, ZMQ_DEALER);
    int zero = 0, rc = -1;
    zmq_setsockopt (dealer, ZMQ_LINGER, &zero, sizeof zero);
    gw_msg_t msg = { .id = GW_MSG_ADMIN_REQUEST, .admin_request = *request };
    if (zmq_connect (dealer, endpoint) || gw_msg_send (dealer, NULL, 0, &msg))
        goto done;
    //  Blocking waits with a deadline: this is a one-shot tool. An answer to
    //  someone else's correlation cannot come on our own socket, but a stray
    //  message must not be taken for the answer either.
    int64_t deadline = gw_now_ms () + timeout_ms;
    for (int64_t left = timeout_ms; left > 0; left = deadline - gw_now_ms ()) {
        zmq_pollitem_t item = { dealer, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, (long) left) <= 0)
            break;
        if (gw_msg_recv (dealer, NULL, NULL, reply) == GW_DECODE_OK && reply->id == GW_MSG_ADMIN_REPLY
            && reply->admin_reply.correlation == request->correlation) {
            rc = 0;
            break;
        }
        gw_msg_clear (reply);
    }
done:
    zmq_close (dealer);
    zmq_ctx_term (ctx);
    return rc;
}

/*  The error an answer carries, for stderr. */
static void
s_print_error (uint32_t status, json_t *answer, const gw_bin_t *raw)
{
    json_t *error = json_object_get (answer, "error");
    const char *message = json_string_value (json_object_get (error, "message"));
    const char *code = json_string_value (json_object_get (error, "code"));
    const char *param = json_string_value (json_object_get (error, "param"));
    if (message)
        fprintf (stderr, "gw-keys: %s (status %u%s%s%s%s)\n", message, status, code ? ", code " : "",
                 code ? code : "", param ? ", param " : "", param ? param : "");
    else
        fprintf (stderr, "gw-keys: status %u: %.*s\n", status, (int) raw->size, raw->data ? (const char *) raw->data : "");
}

int
main (int argc, char **argv)
{
    if (argc < 2) {
        fputs (s_usage_text, stderr);
        return 1;
    }
    for (int i = 1; i < argc; i++)
        if (!strcmp (argv[i], "--help") || !strcmp (argv[i], "-h")) {
            fputs (s_usage_text, stdout);
            return 0;
        }
    const char *command = argv[1];
    bool with_id = !strcmp (command, "show") || !strcmp (command, "update") || !strcmp (command, "revoke");
    bool with_fields = !strcmp (command, "create") || !strcmp (command, "update");
    bool as_json = false;
    if (!with_id && !with_fields && strcmp (command, "list")) {
        fprintf (stderr, "gw-keys: unknown command \"%s\" (see gw-keys --help)\n", command);
        return 1;
    }
    const char *id = NULL;
    int next = 2;
    if (with_id) {
        id = argc > 2 ? argv[2] : "";
        if (!s_all_digits (id, strlen (id)) || strlen (id) > 18) {
            fprintf (stderr, "gw-keys: %s wants a key id (a number), not \"%s\"\n", command, id);
            return 1;
        }
        next = 3;
    }
    json_t *body = json_object ();
    if (with_fields) {
        if (s_parse_fields (argc, argv, next, body)) {
            json_decref (body);
            return 1;
        }
        if (!strcmp (command, "create") && !json_is_string (json_object_get (body, "name"))) {
            fprintf (stderr, "gw-keys: create needs --name\n");
            json_decref (body);
            return 1;
        }
        if (!strcmp (command, "update") && json_object_size (body) == 0) {
            fprintf (stderr, "gw-keys: update needs at least one field to change (see gw-keys --help)\n");
            json_decref (body);
            return 1;
        }
    }
    else
        for (int i = next; i < argc; i++)
            if (!strcmp (command, "list") && !strcmp (argv[i], "--json"))
                as_json = true;
            else {
                fprintf (stderr, "gw-keys: %s takes no argument \"%s\" (see gw-keys --help)\n", command, argv[i]);
                json_decref (body);
                return 1;
            }

    char path[64], *text = with_fields ? json_dumps (body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref (body);
    snprintf (path, sizeof path, "/admin/keys%s%s", id ? "/" : "", id ? id : "");
    gw_admin_request_t request = {
        .correlation = (uint64_t) getpid () << 20 ^ (uint64_t) gw_now_ms (),
        .method = !strcmp (command, "create")   ? "POST"
                  : !strcmp (command, "update") ? "PATCH"
                  : !strcmp (command, "revoke") ? "DELETE"
                                                : "GET",
        .path = path,
        .body = { (uint8_t *) text, text ? strlen (text) : 0 },
    };
    //  The same variable the ingresses read; its first endpoint is asked.
    char endpoint[256];
    snprintf (endpoint, sizeof endpoint, "%s", gw_env_str ("GW_CONTROL_ENDPOINTS", "tcp://127.0.0.1:5557"));
    endpoint[strcspn (endpoint, ", ")] = 0;
    int timeout_ms = (int) gw_env_int ("GW_CONTROL_TIMEOUT_MS", 5000, 1, 3600000);

    gw_msg_t reply;
    int rc = s_call (endpoint, timeout_ms, &request, &reply);
    free (text);
    if (rc) {
        fprintf (stderr, "gw-keys: accounting did not answer at %s within %d ms\n", endpoint, timeout_ms);
        return EXIT_NO_ANSWER;
    }
    uint32_t status = reply.admin_reply.status;
    gw_bin_t *raw = &reply.admin_reply.body;
    json_t *answer = json_loadb (raw->data ? (const char *) raw->data : "", raw->size, 0, NULL);
    rc = 1;
    if (status < 200 || status > 299)
        s_print_error (status, answer, raw);
    else if (!answer)
        fprintf (stderr, "gw-keys: status %u with a body that is not JSON: %.*s\n", status, (int) raw->size,
                 raw->data ? (const char *) raw->data : "");
    else {
        if (!strcmp (command, "list") && !as_json)
            s_print_table (answer);
        else {
            char *pretty = json_dumps (answer, JSON_INDENT (2) | JSON_PRESERVE_ORDER);
            printf ("%s\n", pretty);
            free (pretty);
        }
        rc = 0;
    }
    json_decref (answer);
    gw_msg_clear (&reply);
    return rc;
}
