//  main - mock DeepSeek upstream: reads MOCK_* settings, serves until SIGINT/SIGTERM; --selftest runs the selftests.

#include "mock_upstream.h"
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>

//  Every stream holds a descriptor, and the default soft limit (often 1024)
//  would cap the concurrency tests long before MHD's connection limit.
static void
s_raise_fd_limit (void)
{
    struct rlimit limit;
    if (getrlimit (RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit (RLIMIT_NOFILE, &limit) != 0)
            fprintf (stderr, "mock-upstream: cannot raise fd limit to %llu\n",
                     (unsigned long long) limit.rlim_max);
    }
}

int
main (int argc, char *argv [])
{
    if (argc >= 2 && strcmp (argv [1], "--selftest") == 0)
        return mock_selftest_run (argc >= 3 ? argv [2] : NULL, false) == 0 ? 0 : 1;
    if (argc >= 2) {
        fprintf (stderr, "usage: mock-upstream [--selftest [name]]\n"
                         "settings come from MOCK_* environment variables, see README.md\n");
        return strcmp (argv [1], "--help") == 0 ? 0 : 1;
    }

    //  Block the stop signals before any thread starts, so that every
    //  thread inherits the mask and only sigwait below receives them
    sigset_t stop;
    sigemptyset (&stop);
    sigaddset (&stop, SIGINT);
    sigaddset (&stop, SIGTERM);
    pthread_sigmask (SIG_BLOCK, &stop, NULL);
    signal (SIGPIPE, SIG_IGN);
    s_raise_fd_limit ();

    char err [256];
    mock_config_t *config = mock_config_new ();
    if (!config || mock_config_load_env (config, err, sizeof err)) {
        fprintf (stderr, "mock-upstream: %s\n", config ? err : "out of memory");
        mock_config_destroy (&config);
        return 1;
    }
    mock_server_t *server = mock_server_new (config);
    if (!server) {
        mock_config_destroy (&config);
        return 1;
    }
    bool ipv6 = strchr (config->host, ':') != NULL;
    fprintf (stderr, "mock-upstream: listening on http://%s%s%s:%d\n",
             ipv6 ? "[" : "", config->host, ipv6 ? "]" : "", mock_server_port (server));

    int signal_number = 0;
    sigwait (&stop, &signal_number);
    fprintf (stderr, "mock-upstream: stopping on signal %d\n", signal_number);
    mock_server_destroy (&server);
    mock_config_destroy (&config);
    return 0;
}
