/*  gw_log.c: one-line log records on stderr. */
#include "gw_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static gw_log_level_t s_level = GW_LOG_INFO;
static const char *s_service = "gw";
static __thread const char *s_thread_service;  //  overrides s_service on its thread

void
gw_log_init (const char *service)
{
    s_service = service;
    const char *lvl = getenv ("GW_LOG_LEVEL");
    if (!lvl)
        return;
    if (strcmp (lvl, "debug") == 0)
        s_level = GW_LOG_DEBUG;
    else if (strcmp (lvl, "warn") == 0)
        s_level = GW_LOG_WARN;
    else if (strcmp (lvl, "error") == 0)
        s_level = GW_LOG_ERROR;
}

void
gw_log_thread_service (const char *service)
{
    s_thread_service = service;
}

const char *
gw_log_service (void)
{
    return s_thread_service ? s_thread_service : s_service;
}

void
gw_log (gw_log_level_t level, const char *module, const char *fmt, ...)
{
    if (level < s_level)
        return;
    static const char *names[] = { "DEBUG", "INFO", "WARN", "ERROR" };
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r (&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf (line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s %s: ",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, ts.tv_nsec / 1000000, names[level], gw_log_service (), module);
    va_list ap;
    va_start (ap, fmt);
    if (n > 0 && (size_t) n < sizeof line)
        n += vsnprintf (line + n, sizeof line - (size_t) n, fmt, ap);
    va_end (ap);
    if (n < 0)
        return;
    if ((size_t) n >= sizeof line - 1)
        n = sizeof line - 2;
    line[n++] = '\n';
    //  One write per record so lines from several processes never interleave.
    fwrite (line, 1, (size_t) n, stderr);
}
