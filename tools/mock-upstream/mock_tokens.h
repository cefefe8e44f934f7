//  mock_tokens - the deterministic token rule: prompt counting and the shape of the answer.

#ifndef MOCK_TOKENS_H_INCLUDED
#define MOCK_TOKENS_H_INCLUDED

#define MOCK_TOKENS_DEFAULT_CONTENT     16
#define MOCK_TOKENS_DEFAULT_REASONING   8

//  What the mock will answer, after max_tokens was applied.
typedef struct {
    int reasoning;          //  reasoning tokens (reasoner only), come first
    int content;            //  content tokens
    bool truncated;         //  max_tokens cut the answer: finish_reason "length"
} mock_plan_t;

//  Returns the prompt tokens of a messages array: per message,
//  4 + ceil (bytes / 4) where bytes is the UTF-8 length of a string content,
//  the compact JSON length of any other content, 0 when content is absent.
long mock_tokens_prompt (json_t *messages);

//  Fills plan with the wanted reasoning and content tokens, cut to
//  max_tokens (0 means no limit) with reasoning spent first.
void mock_tokens_plan (mock_plan_t *plan, int reasoning, int content, int max_tokens);

//  Writes the text of token index (1-based) into buf, NUL-terminated:
//  "tok1", " tok2", ... for content, "think1", " think2", ... for reasoning,
//  so the joined tokens read as space-separated words. Returns the length.
size_t mock_tokens_word (char *buf, size_t size, bool reasoning, int index);

//  Returns the joined text of tokens 1..count, as a fresh string.
char *mock_tokens_text (bool reasoning, int count);

//  Selftest.
void mock_tokens_test (bool verbose);

#endif
