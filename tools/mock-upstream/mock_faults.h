//  mock_faults - per-id request counters behind times=N, in a bounded table.

#ifndef MOCK_FAULTS_H_INCLUDED
#define MOCK_FAULTS_H_INCLUDED

typedef struct _mock_faults_t mock_faults_t;

//  Creates a table remembering up to capacity ids; past that the oldest id
//  is forgotten (and counts from zero again if it comes back).
mock_faults_t *mock_faults_new (size_t capacity);

//  Destroys the table and nulls the caller's pointer.
void mock_faults_destroy (mock_faults_t **self_p);

//  Counts one more request carrying id and returns how many came before it
//  (0 for the first). Thread-safe.
long mock_faults_hit (mock_faults_t *self, const char *id);

//  Forgets every id. Thread-safe.
void mock_faults_reset (mock_faults_t *self);

//  Selftest.
void mock_faults_test (bool verbose);

#endif
