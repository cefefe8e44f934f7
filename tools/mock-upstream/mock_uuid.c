//  mock_uuid - random version 4 UUID strings for response ids, as DeepSeek uses.

#include "mock_upstream.h"
#include <sys/random.h>
#include <time.h>

//  Ids only need to be unique, not unguessable, and one getrandom() per
//  response would cost a syscall on the hot path: each thread seeds a
//  xorshift generator from the kernel once and draws from it.
static __thread uint64_t s_state;

static uint64_t
s_next (void)
{
    if (s_state == 0) {
        if (getrandom (&s_state, sizeof s_state, 0) != sizeof s_state || s_state == 0) {
            struct timespec ts;
            clock_gettime (CLOCK_MONOTONIC, &ts);
            s_state = ((uint64_t) ts.tv_nsec << 32) ^ (uint64_t) ts.tv_sec ^ (uintptr_t) &s_state;
            s_state |= 1;
        }
    }
    //  xorshift64*
    s_state ^= s_state >> 12;
    s_state ^= s_state << 25;
    s_state ^= s_state >> 27;
    return s_state * 0x2545F4914F6CDD1DULL;
}

void
mock_uuid_generate (char *buf)
{
    static const char hex [] = "0123456789abcdef";
    uint8_t bytes [16];
    uint64_t a = s_next (), b = s_next ();
    memcpy (bytes, &a, 8);
    memcpy (bytes + 8, &b, 8);
    bytes [6] = (uint8_t) ((bytes [6] & 0x0f) | 0x40);     //  version 4
    bytes [8] = (uint8_t) ((bytes [8] & 0x3f) | 0x80);     //  RFC 4122 variant
    char *out = buf;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *out++ = '-';
        *out++ = hex [bytes [i] >> 4];
        *out++ = hex [bytes [i] & 15];
    }
    *out = 0;
}

void
mock_uuid_test (bool verbose)
{
    (void) verbose;
    char one [MOCK_UUID_STR_LEN + 1], two [MOCK_UUID_STR_LEN + 1];
    mock_uuid_generate (one);
    mock_uuid_generate (two);
    mock_check (strlen (one) == MOCK_UUID_STR_LEN);
    mock_check (strcmp (one, two) != 0);
    mock_check (one [8] == '-' && one [13] == '-' && one [18] == '-' && one [23] == '-');
    mock_check (one [14] == '4');
    mock_check (strchr ("89ab", one [19]));
}
