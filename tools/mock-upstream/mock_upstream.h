//  mock_upstream.h - project header of the mock DeepSeek upstream: shared includes, types and all class APIs.

#ifndef MOCK_UPSTREAM_H_INCLUDED
#define MOCK_UPSTREAM_H_INCLUDED

//  memmem, getrandom and friends
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

//  How usage is reported on streams; see MOCK_USAGE_MODE in README.md.
typedef enum {
    MOCK_USAGE_FINAL = 0,       //  usage on the chunk carrying finish_reason
    MOCK_USAGE_SEPARATE = 1     //  OpenAI style: extra choices:[] chunk when include_usage
} mock_usage_mode_t;

//  Selftest check: a failed condition is reported and counted instead of
//  aborting, so that --selftest can run every test and exit 1 at the end.
#define mock_check(cond) \
    ((cond) ? (void) 0 : mock_check_failed (#cond, __FILE__, __LINE__))
void mock_check_failed (const char *expr, const char *file, int line);

#include "mock_config.h"
#include "mock_directive.h"
#include "mock_tokens.h"
#include "mock_uuid.h"
#include "mock_completion.h"
#include "mock_errors.h"
#include "mock_faults.h"
#include "mock_timer.h"
#include "mock_server.h"
#include "mock_selftest.h"

#endif
