/*  gw_host.c: CPU, memory and disk use of this host, from /proc and statvfs. */
#include "gw_host.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

//  The previous /proc/stat totals: CPU use is a rate between two samples. Per
//  thread, so that an ingress's reports and its local dispatcher's each measure
//  the time since their own previous sample.
static __thread uint64_t s_prev_busy, s_prev_total;

static uint32_t
s_cpu (void)
{
    FILE *f = fopen ("/proc/stat", "r");
    if (!f)
        return 0;
    uint64_t v[10] = { 0 };
    int n = fscanf (f, "cpu %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                    " %" SCNu64,
                    &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose (f);
    if (n < 4)
        return 0;
    //  user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    uint64_t total = 0;
    for (int i = 0; i < 8; i++)
        total += v[i];
    uint64_t busy = total - v[3] - v[4];
    uint32_t permille = 0;
    if (s_prev_total && total > s_prev_total && busy >= s_prev_busy)
        permille = (uint32_t) ((busy - s_prev_busy) * 1000 / (total - s_prev_total));
    s_prev_busy = busy;
    s_prev_total = total;
    return permille > 1000 ? 1000 : permille;
}

static uint32_t
s_mem (void)
{
    FILE *f = fopen ("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[128];
    uint64_t total = 0, avail = 0, kb;
    while (fgets (line, sizeof line, f)) {
        if (sscanf (line, "MemTotal: %" SCNu64, &kb) == 1)
            total = kb;
        else if (sscanf (line, "MemAvailable: %" SCNu64, &kb) == 1)
            avail = kb;
    }
    fclose (f);
    return total && avail <= total ? (uint32_t) ((total - avail) * 1000 / total) : 0;
}

static uint32_t
s_disk (const char *path)
{
    struct statvfs st;
    if (!path || statvfs (path, &st) || st.f_blocks == 0)
        return 0;
    //  As df counts: what is used over what users can have (used + available).
    uint64_t used = (uint64_t) (st.f_blocks - st.f_bfree), room = used + (uint64_t) st.f_bavail;
    return room ? (uint32_t) (used * 1000 / room) : 0;
}

void
gw_host_sample (const char *path, gw_host_t *out)
{
    memset (out, 0, sizeof *out);
    out->cpu_permille = s_cpu ();
    out->mem_permille = s_mem ();
    out->disk_permille = s_disk (path);
    if (gethostname (out->name, sizeof out->name - 1))
        snprintf (out->name, sizeof out->name, "unknown");
}

void
gw_host_test (bool verbose)
{
    if (verbose)
        printf (" * gw_host: ");
    gw_host_t h;
    gw_host_sample ("/", &h);
    assert (h.cpu_permille <= 1000 && h.mem_permille <= 1000 && h.disk_permille <= 1000);
    assert (h.mem_permille > 0 && h.disk_permille > 0 && h.name[0]);
    //  Busy work between two samples: the second one measures it.
    volatile uint64_t x = 0;
    for (uint64_t i = 0; i < 20000000; i++)
        x += i;
    gw_host_sample ("/nonexistent-path", &h);
    assert (h.cpu_permille <= 1000 && h.disk_permille == 0);
    if (verbose)
        printf ("OK\n");
}
