//  mock_selftest - runs the selftest of every class, or of one by name.

#include "mock_upstream.h"

static int s_failures;

void
mock_check_failed (const char *expr, const char *file, int line)
{
    fprintf (stderr, "selftest: FAILED %s at %s:%d\n", expr, file, line);
    s_failures++;
}

//  In dependency order, so that the first failure points at the lowest layer.
static const struct {
    const char *name;
    void (*test) (bool verbose);
} s_tests [] = {
    { "mock_config",     mock_config_test },
    { "mock_directive",  mock_directive_test },
    { "mock_tokens",     mock_tokens_test },
    { "mock_uuid",       mock_uuid_test },
    { "mock_completion", mock_completion_test },
    { "mock_errors",     mock_errors_test },
    { "mock_faults",     mock_faults_test },
    { "mock_timer",      mock_timer_test },
    { "mock_server",     mock_server_test },
};

int
mock_selftest_run (const char *name, bool verbose)
{
    bool found = false;
    s_failures = 0;
    for (size_t i = 0; i < sizeof s_tests / sizeof s_tests [0]; i++) {
        if (name && strcmp (name, s_tests [i].name) != 0)
            continue;
        found = true;
        int before = s_failures;
        s_tests [i].test (verbose);
        fprintf (stderr, "selftest: %s %s\n", s_tests [i].name, s_failures == before ? "OK" : "FAILED");
    }
    if (!found) {
        fprintf (stderr, "selftest: no test named %s\n", name);
        return -1;
    }
    return s_failures ? -1 : 0;
}
