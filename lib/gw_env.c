/*  gw_env.c: configuration from environment variables, with defaults. */
#include "gw_env.h"
#include "gw_log.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *
gw_env_str (const char *name, const char *dflt)
{
    const char *v = getenv (name);
    return v && *v ? v : dflt;
}

int64_t
gw_env_int (const char *name, int64_t dflt, int64_t min, int64_t max)
{
    const char *v = getenv (name);
    if (!v || !*v)
        return dflt;
    char *end;
    errno = 0;
    long long n = strtoll (v, &end, 10);
    if (errno || *end || n < min || n > max) {
        gw_warn ("env", "invalid value name=%s value=%s range=[%lld,%lld] using=%lld", name, v,
                 (long long) min, (long long) max, (long long) dflt);
        return dflt;
    }
    return n;
}

bool
gw_env_bool (const char *name, bool dflt)
{
    const char *v = getenv (name);
    if (!v || !*v)
        return dflt;
    static const char *const truths[] = { "1", "true", "yes", "on" }, *const lies[] = { "0", "false", "no", "off" };
    for (size_t i = 0; i < sizeof truths / sizeof truths[0]; i++) {
        if (strcasecmp (v, truths[i]) == 0)
            return true;
        if (strcasecmp (v, lies[i]) == 0)
            return false;
    }
    gw_warn ("env", "invalid value name=%s value=%s (1 or 0) using=%d", name, v, dflt);
    return dflt;
}

void
gw_env_test (bool verbose)
{
    if (verbose)
        printf (" * gw_env: ");
    setenv ("GW_TEST_INT", "42", 1);
    assert (gw_env_int ("GW_TEST_INT", 7, 0, 100) == 42);
    assert (gw_env_int ("GW_TEST_INT", 7, 0, 10) == 7);
    setenv ("GW_TEST_INT", "4x", 1);
    assert (gw_env_int ("GW_TEST_INT", 7, 0, 100) == 7);
    unsetenv ("GW_TEST_INT");
    assert (gw_env_int ("GW_TEST_INT", 7, 0, 100) == 7);
    assert (strcmp (gw_env_str ("GW_TEST_INT", "d"), "d") == 0);
    setenv ("GW_TEST_BOOL", "yes", 1);
    assert (gw_env_bool ("GW_TEST_BOOL", false));
    setenv ("GW_TEST_BOOL", "Off", 1);
    assert (!gw_env_bool ("GW_TEST_BOOL", true));
    setenv ("GW_TEST_BOOL", "2", 1);  //  a typo is the default, not false
    assert (gw_env_bool ("GW_TEST_BOOL", true) && !gw_env_bool ("GW_TEST_BOOL", false));
    unsetenv ("GW_TEST_BOOL");
    assert (!gw_env_bool ("GW_TEST_BOOL", false));
    if (verbose)
        printf ("OK\n");
}
