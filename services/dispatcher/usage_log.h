/*  usage_log.h: where usage events go until the accounting service takes them.

    Each event is one JSON line, its keys the USAGE fields of proto/gw_messages.h,
    appended to GW_USAGE_LOG (when set) and logged on stderr.
*/
#ifndef USAGE_LOG_H_INCLUDED
#define USAGE_LOG_H_INCLUDED

#include "gw_proto.h"
#include <stdbool.h>

typedef struct usage_log_t usage_log_t;

/*  path may be NULL: stderr only. */
usage_log_t *usage_log_new (const char *path);
void usage_log_destroy (usage_log_t **self_p);

/*  Records one event. Returns 0 or -1 (write failed, logged). */
int usage_log_write (usage_log_t *self, const gw_usage_t *event);

/*  The event as a JSON object string (caller frees). */
char *usage_log_json (const gw_usage_t *event);

void usage_log_test (bool verbose);

#endif
