/*  chat_request.h: validation of a /chat/completions body before it is queued.

    The gateway checks what it must know (model, stream, usage option) and what
    DeepSeek would refuse anyway, so bad input is answered at once with a clear
    400 instead of costing a trip upstream. The body itself travels unchanged.
*/
#ifndef CHAT_REQUEST_H_INCLUDED
#define CHAT_REQUEST_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char model[128];
    bool stream;
    bool client_usage;  //  stream_options.include_usage was set by the client
    uint64_t prompt_tokens;  //  estimated before the call (see chat_request.c)
    uint64_t max_tokens;  //  max_tokens / max_completion_tokens, 0 when absent
    bool deterministic;  //  temperature 0: what a key's response cache opt-in covers
    //  On error: the OpenAI-style error body (caller frees) and its status.
    int status;
    char *error;
} chat_request_t;

/*  Validates body. Returns 0 and fills req, or -1 with req->status/error set. */
int chat_request_parse (const char *body, size_t size, chat_request_t *req);

void chat_request_test (bool verbose);

#endif
