/*  gw_error.h: error bodies in the OpenAI/DeepSeek shape, for JSON and SSE. */
#ifndef GW_ERROR_H_INCLUDED
#define GW_ERROR_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

/*  Returns a fresh string {"error":{"message","type","param","code"}} owned by the
    caller; param and code may be NULL (JSON null). NULL only when out of memory. */
char *gw_error_json (const char *type, const char *code, const char *param, const char *fmt, ...)
    __attribute__ ((format (printf, 4, 5)));

/*  The same error as the tail of an SSE stream: an error event then [DONE]. */
char *gw_error_sse (const char *type, const char *code, const char *fmt, ...)
    __attribute__ ((format (printf, 3, 4)));

void gw_error_test (bool verbose);

#endif
