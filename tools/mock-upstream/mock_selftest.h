//  mock_selftest - runs the selftest of every class, or of one by name.

#ifndef MOCK_SELFTEST_H_INCLUDED
#define MOCK_SELFTEST_H_INCLUDED

//  Runs the selftest named name (e.g. "mock_tokens"), or all of them when
//  name is NULL. Returns 0 when every check passed, -1 otherwise (also for
//  an unknown name).
int mock_selftest_run (const char *name, bool verbose);

#endif
