/*  selftest.c: runs every module selftest, or the ones named on the command line.
    Usage: gw-selftest [-v] [name ...]   Prints "N passed, N failed". */
#include "admin_api.h"
#include "alert_rules.h"
#include "alert_store.h"
#include "balance_probe.h"
#include "call_usage.h"
#include "chat_request.h"
#include "dispatcher_pool.h"
#include "dispatcher_service.h"
#include "key_cache.h"
#include "key_limits.h"
#include "mail.h"
#include "notifier.h"
#include "webhook.h"
#include "gw_apikey.h"
#include "gw_env.h"
#include "gw_host.h"
#include "gw_trim.h"
#include "gw_error.h"
#include "gw_id.h"
#include "gw_log.h"
#include "gw_loop.h"
#include "gw_proto.h"
#include "gw_time.h"
#include "price_table.h"
#include "provider_table.h"
#include "response_cache.h"
#include "sse_reader.h"
#include "usage_log.h"
#include "usage_spool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    void (*test) (bool verbose);
} selftest_t;

static const selftest_t s_tests[] = {
    { "gw_proto", gw_proto_test },
    { "gw_env", gw_env_test },
    { "gw_apikey", gw_apikey_test },
    { "gw_host", gw_host_test },
    { "gw_trim", gw_trim_test },
    { "gw_error", gw_error_test },
    { "gw_id", gw_id_test },
    { "gw_loop", gw_loop_test },
    { "gw_time", gw_time_test },
    { "chat_request", chat_request_test },
    { "dispatcher_pool", dispatcher_pool_test },
    { "key_cache", key_cache_test },
    { "provider_table", provider_table_test },
    { "call_usage", call_usage_test },
    { "balance_probe", balance_probe_test },
    { "sse_reader", sse_reader_test },
    { "response_cache", response_cache_test },
    { "usage_log", usage_log_test },
    { "price_table", price_table_test },
    { "usage_spool", usage_spool_test },
    { "dispatcher_service", dispatcher_service_test },
    { "key_limits", key_limits_test },
    { "admin_api", admin_api_test },
    { "alert_store", alert_store_test },
    { "alert_rules", alert_rules_test },
    { "mail", mail_test },
    { "webhook", webhook_test },
    { "notifier", notifier_test },
};

int
main (int argc, char **argv)
{
    bool verbose = false;
    int first = 1;
    if (argc > 1 && strcmp (argv[1], "-v") == 0)
        verbose = true, first = 2;
    //  Module logs are noise here unless asked for.
    if (!verbose)
        setenv ("GW_LOG_LEVEL", "error", 1);
    gw_log_init ("selftest");
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof s_tests / sizeof s_tests[0]; i++) {
        bool wanted = first >= argc;
        for (int a = first; a < argc; a++)
            wanted |= strcmp (argv[a], s_tests[i].name) == 0;
        if (!wanted)
            continue;
        //  Each selftest in its own process: a failed assert names its module and
        //  the others still run.
        fflush (stdout);
        pid_t pid = fork ();
        if (pid == 0) {
            s_tests[i].test (verbose);
            exit (0);
        }
        int status = 0;
        waitpid (pid, &status, 0);
        bool ok = WIFEXITED (status) && WEXITSTATUS (status) == 0;
        printf ("%s selftest %s\n", ok ? "PASS" : "FAIL", s_tests[i].name);
        ok ? passed++ : failed++;
    }
    printf ("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
