/*  gw_id.c: random identifiers from a fast generator seeded by the kernel. */
#include "gw_id.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

//  Per thread: an ingress runs its local dispatcher on a second thread, and the
//  generator's steps are not atomic.
static __thread uint64_t s_state[2];

static uint64_t
s_next (void)
{
    //  xorshift128+: ids only need to be unique, and this costs nanoseconds.
    uint64_t s1 = s_state[0];
    const uint64_t s0 = s_state[1];
    s_state[0] = s0;
    s1 ^= s1 << 23;
    s_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return s_state[1] + s0;
}

void
gw_id_uuid (char out[37])
{
    if (!s_state[0] && !s_state[1]) {
        if (getrandom (s_state, sizeof s_state, 0) != sizeof s_state) {
            s_state[0] = (uint64_t) time (NULL) ^ ((uint64_t) getpid () << 32);
            s_state[1] = (uint64_t) clock ();
        }
        s_state[0] |= 1;
    }
    uint64_t a = s_next (), b = s_next ();
    a = (a & 0xffffffffffff0fffull) | 0x4000ull;  //  version 4
    b = (b & 0x3fffffffffffffffull) | 0x8000000000000000ull;  //  variant 10
    snprintf (out, 37, "%08x-%04x-%04x-%04x-%012llx", (unsigned) (a >> 32), (unsigned) (a >> 16) & 0xffff,
              (unsigned) a & 0xffff, (unsigned) (b >> 48), (unsigned long long) (b & 0xffffffffffffull));
}

void
gw_id_test (bool verbose)
{
    if (verbose)
        printf (" * gw_id: ");
    char a[37], b[37];
    gw_id_uuid (a);
    gw_id_uuid (b);
    assert (strlen (a) == 36 && a[14] == '4' && strchr ("89ab", a[19]));
    assert (strcmp (a, b) != 0);
    if (verbose)
        printf ("OK\n");
}
