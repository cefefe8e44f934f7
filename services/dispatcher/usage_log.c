/*  usage_log.c: usage events as JSON lines, keys derived from the proto model. */
#include "usage_log.h"
#include "gw_log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct usage_log_t {
    int fd;
};

static json_t *
s_json_U32 (uint32_t v)
{
    return json_integer (v);
}
static json_t *
s_json_U64 (uint64_t v)
{
    return json_integer ((json_int_t) v);
}
static json_t *
s_json_BOOL (bool v)
{
    return json_boolean (v);
}
static json_t *
s_json_STR (const char *v)
{
    return json_string (v ? v : "");
}

char *
usage_log_json (const gw_usage_t *event)
{
    json_t *obj = json_object ();
#define USAGE_JSON_FIELD(type, field, desc) json_object_set_new (obj, #field, s_json_##type (event->field));
    GW_USAGE_FIELDS (USAGE_JSON_FIELD)
#undef USAGE_JSON_FIELD
    char *line = json_dumps (obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (obj);
    return line;
}

usage_log_t *
usage_log_new (const char *path)
{
    usage_log_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->fd = -1;
    if (path) {
        self->fd = open (path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (self->fd < 0) {
            gw_error ("usage", "cannot open usage log path=%s errno=%d", path, errno);
            free (self);
            return NULL;
        }
    }
    return self;
}

void
usage_log_destroy (usage_log_t **self_p)
{
    usage_log_t *self = *self_p;
    if (!self)
        return;
    if (self->fd >= 0)
        close (self->fd);
    free (self);
    *self_p = NULL;
}

int
usage_log_write (usage_log_t *self, const gw_usage_t *event)
{
    char *line = usage_log_json (event);
    if (!line)
        return -1;
    //  On stderr at info level only when it is the sole record.
    gw_log (self->fd >= 0 ? GW_LOG_DEBUG : GW_LOG_INFO, "usage", "%s", line);
    int rc = 0;
    if (self->fd >= 0) {
        size_t n = strlen (line);
        line[n] = '\n';
        //  One write with O_APPEND: lines from several dispatchers never mix.
        if (write (self->fd, line, n + 1) != (ssize_t) (n + 1)) {
            gw_error ("usage", "usage log write failed errno=%d", errno);
            rc = -1;
        }
    }
    free (line);
    return rc;
}

void
usage_log_test (bool verbose)
{
    if (verbose)
        printf (" * usage_log: ");
    gw_usage_t ev = { .event_id = "r.0.1", .request_id = "r", .attempt = 1, .completion_tokens = 7,
                      .streamed = true };
    char *line = usage_log_json (&ev);
    json_t *j = json_loads (line, 0, NULL);
    assert (j);
    assert (json_integer_value (json_object_get (j, "completion_tokens")) == 7);
    assert (json_is_true (json_object_get (j, "streamed")));
    assert (strcmp (json_string_value (json_object_get (j, "provider")), "") == 0);
    json_decref (j);
    free (line);
    if (verbose)
        printf ("OK\n");
}
