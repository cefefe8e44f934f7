/*  gw_log.h: one-line, key=value log records on stderr, shared by every service. */
#ifndef GW_LOG_H_INCLUDED
#define GW_LOG_H_INCLUDED

typedef enum { GW_LOG_DEBUG, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR } gw_log_level_t;

/*  Reads GW_LOG_LEVEL (debug|info|warn|error, default info) and names the
    service in every line. Call once at start. */
void gw_log_init (const char *service);

/*  Names another service in the lines of the calling thread (a service run on
    a thread of another's process: the ingress's local dispatcher). */
void gw_log_thread_service (const char *service);

/*  The service the calling thread's lines name: a thread a service starts
    passes it on (gw_log_thread_service), so that its lines say the same. */
const char *gw_log_service (void);

/*  Logs "ts level service module: message" when level is enabled. */
void gw_log (gw_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__ ((format (printf, 3, 4)));

#define gw_debug(module, ...) gw_log (GW_LOG_DEBUG, module, __VA_ARGS__)
#define gw_info(module, ...) gw_log (GW_LOG_INFO, module, __VA_ARGS__)
#define gw_warn(module, ...) gw_log (GW_LOG_WARN, module, __VA_ARGS__)
#define gw_error(module, ...) gw_log (GW_LOG_ERROR, module, __VA_ARGS__)

#endif
