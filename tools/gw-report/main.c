/*  gw-report: usage reports for operators, asked of an accounting instance's
    control socket (GW_CONTROL_ENDPOINTS, the first endpoint; default
    tcp://127.0.0.1:5557; --accounting overrides it).

    gw-report [--period today|yesterday|week|month|all] [--from DATE --to DATE]
              [--by none|model|day|key|provider] [--key ID] [--json]
              [--accounting tcp://host:port] [--timeout-ms N]
    DATE is YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC). Prints a table, or the
    JSON report with --json. Exit status 0, or 1 with the error on stderr. */
#include "gw_env.h"
#include "gw_proto.h"
#include "gw_time.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static int
s_usage (void)
{
    fprintf (stderr, "usage: gw-report [--period today|yesterday|week|month|all] [--from DATE --to DATE]\n"
                     "                 [--by none|model|day|key|provider] [--key ID] [--json]\n"
                     "                 [--accounting ENDPOINT] [--timeout-ms N]\n");
    return 1;
}

static void
s_print_table (json_t *report)
{
    printf ("usage %s", json_string_value (json_object_get (report, "period")));
    if (!strcmp (json_string_value (json_object_get (report, "period")), "all"))
        printf (" time");
    else if (json_is_string (json_object_get (report, "from")))
        printf (" [%s, %s)", json_string_value (json_object_get (report, "from")),
                json_string_value (json_object_get (report, "to")));
    printf (", cost in %s\n\n", json_string_value (json_object_get (report, "currency")));
    printf ("%-24s %9s %9s %12s %12s %12s %12s %18s\n", "group", "requests", "calls", "cache_hit", "cache_miss",
            "completion", "reasoning", "cost");
    json_t *rows = json_object_get (report, "data");
    json_t *total = json_object_get (report, "total");
    for (size_t i = 0; i <= json_array_size (rows); i++) {
        json_t *r = i < json_array_size (rows) ? json_array_get (rows, i) : total;
        const char *group = i < json_array_size (rows) ? json_string_value (json_object_get (r, "group")) : "TOTAL";
        printf ("%-24s %9lld %9lld %12lld %12lld %12lld %12lld %18s\n", group,
                (long long) json_integer_value (json_object_get (r, "requests")),
                (long long) json_integer_value (json_object_get (r, "calls")),
                (long long) json_integer_value (json_object_get (r, "cache_hit_tokens")),
                (long long) json_integer_value (json_object_get (r, "cache_miss_tokens")),
                (long long) json_integer_value (json_object_get (r, "completion_tokens")),
                (long long) json_integer_value (json_object_get (r, "reasoning_tokens")),
                json_string_value (json_object_get (r, "cost")));
    }
}

int
main (int argc, char **argv)
{
    gw_report_request_t req = { .correlation = 1, .period = "today", .group_by = "none", .api_key_id = "" };
    //  The same variable the ingresses read; its first endpoint is asked.
    char endpoint_buf[256];
    snprintf (endpoint_buf, sizeof endpoint_buf, "%s", gw_env_str ("GW_CONTROL_ENDPOINTS", "tcp://127.0.0.1:5557"));
    endpoint_buf[strcspn (endpoint_buf, ", ")] = 0;
    const char *endpoint = endpoint_buf;
    bool as_json = false;
    int timeout_ms = 10000;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t ms;
        if (!strcmp (arg, "--json"))
            as_json = true;
        else if (!val)
            return s_usage ();
        else if (!strcmp (arg, "--period"))
            req.period = (char *) val, i++;
        else if (!strcmp (arg, "--by"))
            req.group_by = (char *) val, i++;
        else if (!strcmp (arg, "--key"))
            req.api_key_id = (char *) val, i++;
        else if (!strcmp (arg, "--accounting"))
            endpoint = val, i++;
        else if (!strcmp (arg, "--timeout-ms"))
            timeout_ms = atoi (val), i++;
        else if ((!strcmp (arg, "--from") || !strcmp (arg, "--to")) && gw_time_parse_ms (val, &ms) == 0) {
            *(arg[2] == 'f' ? &req.from_ms : &req.to_ms) = (uint64_t) ms;
            req.period = "custom";
            i++;
        }
        else
            return s_usage ();
    }
    void *ctx = zmq_ctx_new ();
    void *dealer = zmq_socket (ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt (dealer, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt (dealer, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    int rc = 1;
    gw_msg_t msg = { .id = GW_MSG_REPORT_REQUEST, .report_request = req }, reply;
    if (zmq_connect (dealer, endpoint) || gw_msg_send (dealer, NULL, 0, &msg))
        fprintf (stderr, "gw-report: cannot reach accounting at %s\n", endpoint);
    else {
        //  Blocking receive with a timeout: this is a one-shot tool.
        zmq_pollitem_t item = { dealer, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, timeout_ms) <= 0
            || gw_msg_recv (dealer, NULL, NULL, &reply) != GW_DECODE_OK || reply.id != GW_MSG_REPORT_REPLY)
            fprintf (stderr, "gw-report: no answer from accounting at %s within %d ms\n", endpoint, timeout_ms);
        else {
            json_t *body = json_loadb ((const char *) reply.report_reply.body.data, reply.report_reply.body.size, 0, NULL);
            if (reply.report_reply.status != 200 || !body)
                fprintf (stderr, "gw-report: %.*s\n", (int) reply.report_reply.body.size,
                         (const char *) reply.report_reply.body.data);
            else {
                if (as_json)
                    printf ("%.*s\n", (int) reply.report_reply.body.size, (const char *) reply.report_reply.body.data);
                else
                    s_print_table (body);
                rc = 0;
            }
            json_decref (body);
            gw_msg_clear (&reply);
        }
    }
    zmq_close (dealer);
    zmq_ctx_term (ctx);
    return rc;
}
