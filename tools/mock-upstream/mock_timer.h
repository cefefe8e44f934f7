//  mock_timer - one thread and a min-heap of deadlines that wake suspended connections.

#ifndef MOCK_TIMER_H_INCLUDED
#define MOCK_TIMER_H_INCLUDED

typedef struct _mock_timer_t mock_timer_t;

//  Called once per entry when its deadline passes, from the timer thread,
//  without the timer's lock held (so it may call into other locked code).
typedef void (mock_timer_fn) (void *arg);

//  Returns the monotonic clock in milliseconds.
uint64_t mock_clock_ms (void);

//  Creates a timer and starts its thread; fire is called for due entries.
//  NULL if the thread cannot start.
mock_timer_t *mock_timer_new (mock_timer_fn *fire);

//  Stops the timer (see mock_timer_stop), frees it, nulls the pointer.
void mock_timer_destroy (mock_timer_t **self_p);

//  Schedules fire (arg) at due_ms (mock_clock_ms time). Returns 0, or -1
//  once the timer is stopped or out of memory; the caller must then deal
//  with arg itself. Thread-safe.
int mock_timer_add (mock_timer_t *self, uint64_t due_ms, void *arg);

//  Joins the thread, then fires every entry still pending at once from the
//  caller's thread, so nothing waits on a timer that will never ring.
//  Later adds fail. Safe to call twice.
void mock_timer_stop (mock_timer_t *self);

//  Returns the number of pending entries. Thread-safe.
size_t mock_timer_pending (mock_timer_t *self);

//  Selftest.
void mock_timer_test (bool verbose);

#endif
