/*  gw_apikey.c: gateway API keys (see gw_apikey.h). */
#include "gw_apikey.h"

#include <assert.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static const char s_hex[] = "0123456789abcdef";

int
gw_apikey_generate (char out[GW_APIKEY_LEN + 1])
{
    unsigned char raw[32];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom (raw + got, sizeof raw - got, 0);
        if (n < 0)
            return -1;
        got += (size_t) n;
    }
    memcpy (out, GW_APIKEY_PREFIX, 6);
    for (size_t i = 0; i < sizeof raw; i++) {
        out[6 + 2 * i] = s_hex[raw[i] >> 4];
        out[7 + 2 * i] = s_hex[raw[i] & 15];
    }
    out[GW_APIKEY_LEN] = 0;
    return 0;
}

void
gw_apikey_hash (const char *key, size_t len, char hex[65])
{
    //  libsodium's SHA-256, not OpenSSL's: libsodium is mapped in every
    //  process already (libzmq links it), while OpenSSL's first digest costs
    //  a process 2 MB of memory for its initialisation (bench/RESULTS.md).
    unsigned char md[crypto_hash_sha256_BYTES];
    crypto_hash_sha256 (md, (const unsigned char *) key, len);
    for (size_t i = 0; i < sizeof md; i++) {
        hex[2 * i] = s_hex[md[i] >> 4];
        hex[2 * i + 1] = s_hex[md[i] & 15];
    }
    hex[64] = 0;
}

bool
gw_apikey_equal (const char *a, size_t alen, const char *b, size_t blen)
{
    //  Compare digests: equal length inputs whatever was presented, and no
    //  early exit on the first differing byte.
    char ha[65], hb[65];
    gw_apikey_hash (a, alen, ha);
    gw_apikey_hash (b, blen, hb);
    unsigned diff = 0;
    for (int i = 0; i < 64; i++)
        diff |= (unsigned) (ha[i] ^ hb[i]);
    return diff == 0;
}

void
gw_apikey_test (bool verbose)
{
    if (verbose)
        printf (" * gw_apikey: ");
    char a[GW_APIKEY_LEN + 1], b[GW_APIKEY_LEN + 1];
    assert (gw_apikey_generate (a) == 0 && gw_apikey_generate (b) == 0);
    assert (strlen (a) == GW_APIKEY_LEN && strncmp (a, GW_APIKEY_PREFIX, 6) == 0);
    assert (strcmp (a, b) != 0);
    char h[65];
    //  Known answer: SHA-256("abc").
    gw_apikey_hash ("abc", 3, h);
    assert (strcmp (h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    assert (gw_apikey_equal (a, strlen (a), a, strlen (a)));
    assert (!gw_apikey_equal (a, strlen (a), b, strlen (b)));
    assert (!gw_apikey_equal ("abc", 3, "abcd", 4));
    if (verbose)
        printf ("OK\n");
}
