//  mock_completion - one chat answer and its wire forms: the JSON body and the SSE frames.

#ifndef MOCK_COMPLETION_H_INCLUDED
#define MOCK_COMPLETION_H_INCLUDED

//  Largest SSE frame mock_completion_frame writes; every field is bounded
//  (uuid, known model names, integers), so a fixed buffer is enough.
#define MOCK_FRAME_MAX 1024

//  A value type embedded in each request: everything needed to render the
//  answer at any moment, so stream frames are produced on demand instead of
//  being buffered for thousands of concurrent streams.
typedef struct {
    char id [MOCK_UUID_STR_LEN + 1];
    long long created;                  //  unix seconds
    const char *model;                  //  borrowed, a validated model name
    bool reasoner;                      //  answer carries reasoning_content
    long prompt_tokens;
    long cache_hit;                     //  prompt_cache_hit_tokens
    mock_plan_t plan;                   //  reasoning/content tokens, truncation
    mock_usage_mode_t usage_mode;
    bool include_usage;                 //  stream_options.include_usage
    bool malformed;                     //  break the JSON on purpose
    char prefix [256];                  //  frame start up to "choices":[, same for every chunk
    size_t prefix_len;
} mock_completion_t;

typedef enum {
    MOCK_FRAME_ROLE,        //  first delta with the role
    MOCK_FRAME_MALFORMED,   //  invalid JSON, only with malformed
    MOCK_FRAME_TOKEN,       //  one reasoning or content token
    MOCK_FRAME_FINAL,       //  empty delta with finish_reason
    MOCK_FRAME_USAGE,       //  choices:[] with usage, separate mode only
    MOCK_FRAME_DONE,        //  data: [DONE]
    MOCK_FRAME_END          //  past the end of the stream
} mock_frame_kind_t;

typedef struct {
    mock_frame_kind_t kind;
    int tokens;             //  token frames up to and including this frame
} mock_frame_t;

//  Sets up an answer with a fresh id and the current time. cache is the
//  wanted cache hit, capped to the prompt.
void mock_completion_init (mock_completion_t *self, const char *model, bool reasoner,
                           long prompt_tokens, long cache, const mock_plan_t *plan);

//  Returns the non-streaming chat.completion body as a fresh string and its
//  length in *len_p; with malformed, only the first half of it. NULL if
//  out of memory.
char *mock_completion_body (mock_completion_t *self, size_t *len_p);

//  Describes frame index (0-based) of the stream.
void mock_completion_frame_info (mock_completion_t *self, int index, mock_frame_t *frame);

//  Writes frame index as "data: ...\n\n" into buf (at least MOCK_FRAME_MAX
//  bytes). Returns its length, 0 past the end of the stream.
size_t mock_completion_frame (mock_completion_t *self, int index, char *buf, size_t size);

//  Total completion tokens of the answer.
int mock_completion_tokens (mock_completion_t *self);

//  Selftest.
void mock_completion_test (bool verbose);

#endif
