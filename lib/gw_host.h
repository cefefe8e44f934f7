/*  gw_host.h: how busy this host is: CPU, memory, a file system (Linux /proc). */
#ifndef GW_HOST_H_INCLUDED
#define GW_HOST_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t cpu_permille;  //  busy since the previous sample of this process (0 the first time)
    uint32_t mem_permille;  //  (MemTotal - MemAvailable) / MemTotal
    uint32_t disk_permille;  //  used / (used + available to unprivileged users) of path's file system
    char name[64];  //  host name
} gw_host_t;

/*  Samples the host; path names a directory on the file system to measure.
    Figures that cannot be read are 0. */
void gw_host_sample (const char *path, gw_host_t *out);

void gw_host_test (bool verbose);

#endif
