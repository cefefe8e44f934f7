/*  gw_env.h: configuration from environment variables, with defaults. */
#ifndef GW_ENV_H_INCLUDED
#define GW_ENV_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

/*  Value of name, or dflt when unset or empty. Borrowed. */
const char *gw_env_str (const char *name, const char *dflt);

/*  Integer value of name, or dflt when unset. A value that is not an integer in
    [min, max] is reported once on stderr and replaced by dflt. */
int64_t gw_env_int (const char *name, int64_t dflt, int64_t min, int64_t max);

/*  "1", "true", "yes", "on" are true; "0", "false", "no", "off" false; unset
    is dflt, and so is anything else, reported like gw_env_int's bad values. */
bool gw_env_bool (const char *name, bool dflt);

void gw_env_test (bool verbose);

#endif
