/*  gw_apikey.h: gateway API keys: how they look, how they are made and hashed.

    A key is "sk-gw-" followed by 64 lowercase hex digits (256 random bits from
    getrandom). Only its SHA-256 is stored or sent between services; the key is
    shown once, when it is made. A plain hash is enough because the key is
    random and long: there is nothing to guess a dictionary against, so a slow
    password hash would only slow every lookup down.
*/
#ifndef GW_APIKEY_H_INCLUDED
#define GW_APIKEY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#define GW_APIKEY_PREFIX "sk-gw-"
#define GW_APIKEY_LEN (6 + 64)  //  without the NUL
#define GW_APIKEY_SHOWN 10  //  characters kept for display ("sk-gw-1a2b")

/*  Writes a new key (GW_APIKEY_LEN chars + NUL) into out. Returns 0 or -1. */
int gw_apikey_generate (char out[GW_APIKEY_LEN + 1]);

/*  Lowercase hex SHA-256 of any presented string (64 chars + NUL). */
void gw_apikey_hash (const char *key, size_t len, char hex[65]);

/*  Compares two strings in time that depends only on their lengths. */
bool gw_apikey_equal (const char *a, size_t alen, const char *b, size_t blen);

void gw_apikey_test (bool verbose);

#endif
