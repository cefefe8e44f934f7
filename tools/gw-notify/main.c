/*  gw-notify: sends one test notice on every configured alert channel, or on one,
    so that an operator sees email and webhooks arrive before an alert needs them
    (and the alerter's tests have a driver).

    gw-notify [--channel NAME] [--title T] [--text T] [--severity S] [--id ID]

    Channels come from the alerter's environment (services/alerter/notifier.h).
    Prints "<channel>: ok" or "<channel>: <error>" per channel. Exit status 0 when
    every send succeeded, 1 when one failed, 2 on bad arguments or configuration
    (no channel at all included). */
#include "gw_env.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "notifier.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FAILED 1
#define EXIT_USAGE 2

static const char s_usage_text[]
    = "usage: gw-notify [--channel NAME] [--title T] [--text T] [--severity S] [--id ID]\n"
      "\n"
      "Sends one test notice on every configured alert channel, or on NAME only\n"
      "(\"email\", \"webhook:NAME\" or just the webhook's NAME).\n"
      "  --severity S   warning (default), critical or resolved\n"
      "  --title T      subject line (default: \"[S] Test notice from gw-notify on HOST\")\n"
      "  --text T       body (default: a line saying when and where it was sent)\n"
      "  --id ID        alert id, in the Message-ID (default: test-<unix ms>)\n"
      "\n"
      "environment: the alerter's GW_ALERT_* variables (services/alerter/notifier.h)\n";

typedef struct {
    bool wanted;
    bool done;
    bool ok;
    char *error;
} result_t;

typedef struct {
    result_t *results;
    size_t count;
    size_t pending;
} run_t;

typedef struct {
    run_t *run;
    size_t i;
} send_arg_t;

static void
s_on_done (void *arg, bool ok, const char *error)
{
    send_arg_t *a = arg;
    result_t *r = &a->run->results[a->i];
    r->done = true;
    r->ok = ok;
    r->error = error ? strdup (error) : NULL;
    a->run->pending--;
}

static bool
s_all_done (void *arg)
{
    return ((run_t *) arg)->pending == 0;
}

int
main (int argc, char **argv)
{
    gw_loop_catch_signals ();
    //  The results are the output; the notifier's info lines would be noise.
    setenv ("GW_LOG_LEVEL", "warn", 0);
    gw_log_init ("gw-notify");
    const char *channel = NULL, *title = NULL, *text = NULL, *severity = "warning", *id = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = strcmp (argv[i], "--channel") == 0    ? &channel
                            : strcmp (argv[i], "--title") == 0    ? &title
                            : strcmp (argv[i], "--text") == 0     ? &text
                            : strcmp (argv[i], "--severity") == 0 ? &severity
                            : strcmp (argv[i], "--id") == 0       ? &id
                                                                  : NULL;
        if (strcmp (argv[i], "--help") == 0 || strcmp (argv[i], "-h") == 0) {
            fputs (s_usage_text, stdout);
            return 0;
        }
        if (!slot || i + 1 >= argc) {
            fprintf (stderr, "gw-notify: %s %s\n%s", slot ? "missing value for" : "unknown argument", argv[i],
                     s_usage_text);
            return EXIT_USAGE;
        }
        *slot = argv[++i];
    }
    if (strcmp (severity, "warning") && strcmp (severity, "critical") && strcmp (severity, "resolved")) {
        fprintf (stderr, "gw-notify: --severity is warning, critical or resolved\n");
        return EXIT_USAGE;
    }

    char host[256] = "localhost", when[32], id_buf[64], *title_buf = NULL, *text_buf = NULL;
    gethostname (host, sizeof host - 1);
    int64_t now = gw_wall_ms ();
    time_t secs = (time_t) (now / 1000);
    struct tm tm;
    gmtime_r (&secs, &tm);
    strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!id) {
        snprintf (id_buf, sizeof id_buf, "test-%lld", (long long) now);
        id = id_buf;
    }
    if (!title && asprintf (&title_buf, "[%s] Test notice from gw-notify on %s", severity, host) >= 0)
        title = title_buf;
    if (!text && asprintf (&text_buf, "This is a test notice, sent by gw-notify on %s at %s.\n"
                                      "If you can read it, gateway alerts on this channel reach you.\n",
                           host, when) >= 0)
        text = text_buf;
    json_t *alert = json_pack ("{s:s, s:s, s:s, s:s, s:b, s:s}", "id", id, "severity", severity, "title",
                               title ? title : "", "text", text ? text : "", "test", 1, "sent_at", when);
    char *json = alert ? json_dumps (alert, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref (alert);
    if (!title || !text || !json) {
        fprintf (stderr, "gw-notify: out of memory, or arguments that are not UTF-8\n");
        return EXIT_USAGE;
    }
    notice_t notice = { .alert_id = id, .severity = severity, .title = title, .text = text, .json = json };

    int status = 0;
    curl_global_init (CURL_GLOBAL_DEFAULT);
    gw_loop_t *loop = gw_loop_new ();
    notifier_t *notifier = notifier_new (loop);
    run_t run = { 0 };
    send_arg_t *args = NULL;
    if (!notifier) {
        fprintf (stderr, "gw-notify: invalid alert configuration (see the log above)\n");
        status = EXIT_USAGE;
        goto done;
    }
    run.count = notifier_channels (notifier);
    if (run.count == 0) {
        fprintf (stderr, "gw-notify: no alert channels configured (set GW_ALERT_EMAIL_TO or GW_ALERT_WEBHOOKS)\n");
        status = EXIT_USAGE;
        goto done;
    }
    run.results = calloc (run.count, sizeof *run.results);
    args = calloc (run.count, sizeof *args);
    if (!run.results || !args) {
        status = EXIT_USAGE;
        goto done;
    }
    int only = -1;
    if (channel) {
        char prefixed[256];
        snprintf (prefixed, sizeof prefixed, "webhook:%s", channel);
        only = notifier_channel_find (notifier, channel);
        if (only < 0)
            only = notifier_channel_find (notifier, prefixed);
        if (only < 0) {
            fprintf (stderr, "gw-notify: no channel %s; configured:", channel);
            for (size_t i = 0; i < run.count; i++)
                fprintf (stderr, " %s", notifier_channel_name (notifier, i));
            fprintf (stderr, "\n");
            status = EXIT_USAGE;
            goto done;
        }
    }
    for (size_t i = 0; i < run.count; i++) {
        if (only >= 0 && (size_t) only != i)
            continue;
        run.results[i].wanted = true;
        args[i] = (send_arg_t) { &run, i };
        if (notifier_send (notifier, i, &notice, s_on_done, &args[i]) == 0)
            run.pending++;
        else
            run.results[i] = (result_t) { .wanted = true, .done = true, .error = strdup ("could not start the send") };
    }
    //  The notifier's own timeout ends every send; the margin only guards
    //  against a bug leaving the tool hanging.
    gw_loop_run_until (loop, s_all_done, &run, notifier_timeout_ms (notifier) + 5000);
    for (size_t i = 0; i < run.count; i++) {
        result_t *r = &run.results[i];
        if (!r->wanted)
            continue;
        const char *name = notifier_channel_name (notifier, i);
        if (r->done && r->ok)
            printf ("%s: ok\n", name);
        else {
            printf ("%s: %s\n", name, !r->done ? "no outcome (interrupted or stuck)" : r->error ? r->error : "failed");
            status = EXIT_FAILED;
        }
    }
done:
    fflush (stdout);
    notifier_destroy (&notifier);
    gw_loop_destroy (&loop);
    curl_global_cleanup ();
    for (size_t i = 0; i < run.count && run.results; i++)
        free (run.results[i].error);
    free (run.results);
    free (args);
    free (json);
    free (title_buf);
    free (text_buf);
    return status;
}
