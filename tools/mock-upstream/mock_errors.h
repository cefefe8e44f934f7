//  mock_errors - DeepSeek/OpenAI style error bodies: {"error":{"message","type","param","code"}}.

#ifndef MOCK_ERRORS_H_INCLUDED
#define MOCK_ERRORS_H_INCLUDED

//  Returns an error body as a fresh string; message is escaped as needed. NULL if out of memory.
char *mock_errors_body (const char *message, const char *type);

//  Returns the body DeepSeek sends for status (402 Insufficient Balance,
//  429 Rate Limit Reached, 503 Server Overloaded, ...), used for status=N.
char *mock_errors_for_status (int status);

//  Returns the 401 body naming the last four characters of the given key.
char *mock_errors_auth (const char *api_key);

//  Selftest.
void mock_errors_test (bool verbose);

#endif
