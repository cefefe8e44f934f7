/*  balance_probe.h: the provider account's balance, asked now and then.

    DeepSeek answers GET /user/balance with the account's balance; only a
    dispatcher holds the key that may ask. A thread of its own asks every
    GW_BALANCE_POLL_MS (default 300000; 0: never) with a blocking libcurl call,
    so the dispatcher's loop never waits on it, and keeps the last answer for
    the STATUS messages (and so for the alerter's balance rule).
*/
#ifndef BALANCE_PROBE_H_INCLUDED
#define BALANCE_PROBE_H_INCLUDED

#include "provider_table.h"
#include <stdbool.h>

typedef struct balance_probe_t balance_probe_t;

typedef struct {
    bool known;
    bool available;  //  is_available
    char provider[64];
    char currency[8];
    char total[32];  //  total_balance, a decimal string
} balance_t;

/*  Probes provider (borrowed, must outlive the probe) every interval_ms,
    preferring the balance in currency when there are several. */
balance_probe_t *balance_probe_new (const provider_t *provider, int interval_ms, const char *currency);
void balance_probe_destroy (balance_probe_t **self_p);

/*  The last answer (known is false until one came). */
void balance_probe_get (balance_probe_t *self, balance_t *out);

/*  Reads a /user/balance answer into out. Returns 0, or -1 when malformed. */
int balance_parse (const char *body, size_t size, const char *currency, balance_t *out);

void balance_probe_test (bool verbose);

#endif
