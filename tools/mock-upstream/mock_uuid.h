//  mock_uuid - random version 4 UUID strings for response ids, as DeepSeek uses.

#ifndef MOCK_UUID_H_INCLUDED
#define MOCK_UUID_H_INCLUDED

#define MOCK_UUID_STR_LEN 36

//  Writes a random UUID v4 in canonical 8-4-4-4-12 lowercase form into buf,
//  which must hold MOCK_UUID_STR_LEN + 1 bytes. Thread-safe.
void mock_uuid_generate (char *buf);

//  Selftest.
void mock_uuid_test (bool verbose);

#endif
