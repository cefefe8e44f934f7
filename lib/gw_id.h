/*  gw_id.h: random identifiers (request ids, instance ids). */
#ifndef GW_ID_H_INCLUDED
#define GW_ID_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

/*  Writes a UUID v4 string (36 chars + NUL) into out[37]. 122 random bits from a
    generator seeded once from getrandom(); not for secrets. */
void gw_id_uuid (char out[37]);

void gw_id_test (bool verbose);

#endif
