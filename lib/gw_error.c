/*  gw_error.c: error bodies in the OpenAI/DeepSeek shape. */
#include "gw_error.h"

#include <assert.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *
s_build (const char *type, const char *code, const char *param, const char *fmt, va_list ap)
{
    char message[1024];
    vsnprintf (message, sizeof message, fmt, ap);
    json_t *error = json_pack ("{s:s?, s:s, s:s?, s:s?}", "message", message, "type", type,
                               "param", param, "code", code);
    //  json_pack drops keys whose "s?" value is NULL; the OpenAI shape wants them
    //  present as null.
    if (error && !param)
        json_object_set_new (error, "param", json_null ());
    if (error && !code)
        json_object_set_new (error, "code", json_null ());
    json_t *root = error ? json_pack ("{s:o}", "error", error) : NULL;
    char *out = root ? json_dumps (root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref (root);
    return out;
}

char *
gw_error_json (const char *type, const char *code, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start (ap, fmt);
    char *out = s_build (type, code, param, fmt, ap);
    va_end (ap);
    return out;
}

char *
gw_error_sse (const char *type, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start (ap, fmt);
    char *json = s_build (type, code, NULL, fmt, ap);
    va_end (ap);
    if (!json)
        return NULL;
    size_t n = strlen (json) + 32;
    char *out = malloc (n);
    if (out)
        snprintf (out, n, "data: %s\n\ndata: [DONE]\n\n", json);
    free (json);
    return out;
}

void
gw_error_test (bool verbose)
{
    if (verbose)
        printf (" * gw_error: ");
    char *s = gw_error_json ("invalid_request_error", NULL, "model", "Model Not Exist: %s", "x\"y");
    assert (s);
    json_t *j = json_loads (s, 0, NULL);
    assert (j);
    json_t *e = json_object_get (j, "error");
    assert (strcmp (json_string_value (json_object_get (e, "message")), "Model Not Exist: x\"y") == 0);
    assert (json_is_null (json_object_get (e, "code")));
    assert (strcmp (json_string_value (json_object_get (e, "param")), "model") == 0);
    json_decref (j);
    free (s);
    s = gw_error_sse ("upstream_error", "upstream_disconnected", "upstream went away");
    assert (strncmp (s, "data: {\"error\":", 15) == 0);
    assert (strstr (s, "\n\ndata: [DONE]\n\n"));
    free (s);
    if (verbose)
        printf ("OK\n");
}
