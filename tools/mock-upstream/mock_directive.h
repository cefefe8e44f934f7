//  mock_directive - per-request fault and shaping settings from X-Mock or [[mock ...]].

#ifndef MOCK_DIRECTIVE_H_INCLUDED
#define MOCK_DIRECTIVE_H_INCLUDED

#define MOCK_DIRECTIVE_ID_MAX 64

//  A value type embedded in each request rather than a heap class: it is
//  filled once per request on the hot path and never outlives the request.
//  -1 in a field means "not given, use the configured or built-in default".
typedef struct {
    int status;             //  status=N, 0 when no status fault
    int retry_after;        //  retry_after=S, Retry-After header on the fault
    int times;              //  times=N, faults only for the first N requests of id
    char id [MOCK_DIRECTIVE_ID_MAX];    //  id=STR, "" when absent
    int first_byte_ms;      //  first_byte_ms=N, headers now, first data after N ms
    int hold_ms;            //  hold_ms=N, nothing at all for N ms
    int keepalive_ms;       //  keepalive_ms=N, overrides MOCK_KEEPALIVE_MS
    int token_ms;           //  token_ms=N, overrides MOCK_TOKEN_DELAY_MS
    int tokens;             //  tokens=N, content tokens (default 16)
    int reasoning;          //  reasoning=N, reasoner's reasoning tokens (default 8)
    int cache;              //  cache=N, prompt cache hit tokens (default 0)
    int drop_after;         //  drop_after=N, abort after N token chunks
    int malformed;          //  malformed=1, invalid JSON in the answer
    int usage;              //  usage=final|separate, a mock_usage_mode_t
} mock_directive_t;

//  Resets every field to "not given".
void mock_directive_init (mock_directive_t *self);

//  Applies a list of key=value pairs separated by spaces, commas or
//  semicolons, as found in X-Mock or inside [[mock ...]]. Later keys win.
//  Returns 0, or -1 with a message in err for an unknown key or bad value.
int mock_directive_apply (mock_directive_t *self, const char *text, size_t len,
                          char *err, size_t errsize);

//  Applies every [[mock ...]] found in text, in order. Returns 0 or -1 as
//  mock_directive_apply, also for an unterminated [[mock.
int mock_directive_scan (mock_directive_t *self, const char *text, size_t len,
                         char *err, size_t errsize);

//  Checks combinations once every source was applied (times needs id).
int mock_directive_check (mock_directive_t *self, char *err, size_t errsize);

//  True when the request asks for any fault that times=N may switch off.
bool mock_directive_has_fault (mock_directive_t *self);

//  Removes the faults (status, hold, first byte, drop, malformed) and keeps
//  the shaping keys; used once times=N is used up for the id.
void mock_directive_clear_faults (mock_directive_t *self);

//  Selftest.
void mock_directive_test (bool verbose);

#endif
