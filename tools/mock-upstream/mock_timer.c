//  mock_timer - one thread and a min-heap of deadlines that wake suspended connections.

#include "mock_upstream.h"
#include <pthread.h>
#include <time.h>

//  Due entries are handed to fire() in batches taken under the lock and
//  fired after unlocking: fire resumes MHD connections, which takes MHD's
//  own locks, and holding ours meanwhile would invite lock-order trouble.
#define MOCK_TIMER_BATCH 256

typedef struct {
    uint64_t due;
    void *arg;
} s_entry_t;

struct _mock_timer_t {
    pthread_mutex_t mutex;
    pthread_cond_t cond;            //  signalled when the earliest deadline moves or on stop
    pthread_t thread;
    bool thread_started;
    bool stopping;                  //  set by stop: thread exits, adds fail
    mock_timer_fn *fire;
    s_entry_t *heap;                //  binary min-heap on due
    size_t size;
    size_t capacity;
};

uint64_t
mock_clock_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

//  Returns where the entry settled; 0 means it is the new earliest deadline.
static size_t
s_sift_up (mock_timer_t *self, size_t i)
{
    s_entry_t entry = self->heap [i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap [parent].due <= entry.due)
            break;
        self->heap [i] = self->heap [parent];
        i = parent;
    }
    self->heap [i] = entry;
    return i;
}

static void
s_sift_down (mock_timer_t *self, size_t i)
{
    s_entry_t entry = self->heap [i];
    while (true) {
        size_t child = 2 * i + 1;
        if (child >= self->size)
            break;
        if (child + 1 < self->size && self->heap [child + 1].due < self->heap [child].due)
            child++;
        if (entry.due <= self->heap [child].due)
            break;
        self->heap [i] = self->heap [child];
        i = child;
    }
    self->heap [i] = entry;
}

static void *
s_pop (mock_timer_t *self)
{
    void *arg = self->heap [0].arg;
    self->size--;
    if (self->size > 0) {
        self->heap [0] = self->heap [self->size];
        s_sift_down (self, 0);
    }
    return arg;
}

static void *
s_timer_thread (void *args)
{
    mock_timer_t *self = args;
    void *batch [MOCK_TIMER_BATCH];
    pthread_mutex_lock (&self->mutex);
    while (!self->stopping) {
        if (self->size == 0) {
            pthread_cond_wait (&self->cond, &self->mutex);
            continue;
        }
        uint64_t now = mock_clock_ms ();
        uint64_t due = self->heap [0].due;
        if (due > now) {
            struct timespec ts = {
                .tv_sec = (time_t) (due / 1000),
                .tv_nsec = (long) (due % 1000) * 1000000
            };
            pthread_cond_timedwait (&self->cond, &self->mutex, &ts);
            continue;
        }
        size_t count = 0;
        while (self->size > 0 && self->heap [0].due <= now && count < MOCK_TIMER_BATCH)
            batch [count++] = s_pop (self);
        pthread_mutex_unlock (&self->mutex);
        for (size_t i = 0; i < count; i++)
            self->fire (batch [i]);
        pthread_mutex_lock (&self->mutex);
    }
    pthread_mutex_unlock (&self->mutex);
    return NULL;
}

mock_timer_t *
mock_timer_new (mock_timer_fn *fire)
{
    assert (fire);
    mock_timer_t *self = calloc (1, sizeof (mock_timer_t));
    if (!self)
        return NULL;
    self->fire = fire;
    self->capacity = 1024;
    self->heap = malloc (self->capacity * sizeof (s_entry_t));
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    //  Deadlines come from the monotonic clock; wall-clock jumps must not
    //  stretch or shrink a token delay
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&self->cond, &attr);
    pthread_condattr_destroy (&attr);
    pthread_mutex_init (&self->mutex, NULL);
    if (!self->heap || pthread_create (&self->thread, NULL, s_timer_thread, self) != 0) {
        mock_timer_destroy (&self);
        return NULL;
    }
    self->thread_started = true;
    return self;
}

void
mock_timer_stop (mock_timer_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->mutex);
    self->stopping = true;
    pthread_cond_signal (&self->cond);
    pthread_mutex_unlock (&self->mutex);
    if (self->thread_started) {
        pthread_join (self->thread, NULL);
        self->thread_started = false;
    }
    //  Nothing can add any more: drain without the lock held during fire
    while (true) {
        pthread_mutex_lock (&self->mutex);
        void *arg = self->size > 0 ? s_pop (self) : NULL;
        bool more = arg != NULL;
        pthread_mutex_unlock (&self->mutex);
        if (!more)
            break;
        self->fire (arg);
    }
}

void
mock_timer_destroy (mock_timer_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        mock_timer_t *self = *self_p;
        mock_timer_stop (self);
        pthread_cond_destroy (&self->cond);
        pthread_mutex_destroy (&self->mutex);
        free (self->heap);
        free (self);
        *self_p = NULL;
    }
}

int
mock_timer_add (mock_timer_t *self, uint64_t due_ms, void *arg)
{
    assert (self && arg);
    pthread_mutex_lock (&self->mutex);
    if (self->stopping) {
        pthread_mutex_unlock (&self->mutex);
        return -1;
    }
    if (self->size == self->capacity) {
        s_entry_t *heap = realloc (self->heap, 2 * self->capacity * sizeof (s_entry_t));
        if (!heap) {
            pthread_mutex_unlock (&self->mutex);
            return -1;
        }
        self->heap = heap;
        self->capacity *= 2;
    }
    self->heap [self->size] = (s_entry_t) { .due = due_ms, .arg = arg };
    //  Only a new earliest deadline changes how long the thread must sleep;
    //  with thousands of streams most adds land behind it and wake nobody
    if (s_sift_up (self, self->size++) == 0)
        pthread_cond_signal (&self->cond);
    pthread_mutex_unlock (&self->mutex);
    return 0;
}

size_t
mock_timer_pending (mock_timer_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->mutex);
    size_t size = self->size;
    pthread_mutex_unlock (&self->mutex);
    return size;
}

//  Selftest: fired entries append their tag in firing order.
static pthread_mutex_t s_test_mutex = PTHREAD_MUTEX_INITIALIZER;
static char s_test_order [64];

static void
s_test_fire (void *arg)
{
    pthread_mutex_lock (&s_test_mutex);
    strncat (s_test_order, (const char *) arg, sizeof s_test_order - strlen (s_test_order) - 1);
    pthread_mutex_unlock (&s_test_mutex);
}

void
mock_timer_test (bool verbose)
{
    (void) verbose;
    s_test_order [0] = 0;
    mock_timer_t *timer = mock_timer_new (s_test_fire);
    mock_check (timer);
    uint64_t now = mock_clock_ms ();
    mock_check (mock_timer_add (timer, now + 60, "c") == 0);
    mock_check (mock_timer_add (timer, now + 20, "a") == 0);
    mock_check (mock_timer_add (timer, now + 40, "b") == 0);
    mock_check (mock_timer_add (timer, now + 60000, "z") == 0);
    struct timespec pause = { 0, 150 * 1000000 };
    nanosleep (&pause, NULL);
    pthread_mutex_lock (&s_test_mutex);
    mock_check (strcmp (s_test_order, "abc") == 0);
    pthread_mutex_unlock (&s_test_mutex);
    mock_check (mock_timer_pending (timer) == 1);
    //  Stop fires what is left and refuses more
    mock_timer_stop (timer);
    mock_check (strcmp (s_test_order, "abcz") == 0);
    mock_check (mock_timer_add (timer, now, "x") == -1);
    mock_timer_stop (timer);

    //  Growth past the initial capacity keeps heap order
    mock_timer_destroy (&timer);
    mock_check (timer == NULL);
    timer = mock_timer_new (s_test_fire);
    s_test_order [0] = 0;
    for (int i = 0; i < 3000; i++)
        mock_check (mock_timer_add (timer, now + 100000 + (uint64_t) (i * 7919 % 3000), "") == 0);
    mock_check (mock_timer_add (timer, now + 99999, "y") == 0);
    mock_check (mock_timer_pending (timer) == 3001);
    pthread_mutex_lock (&timer->mutex);
    mock_check (timer->heap [0].due == now + 99999);
    for (size_t i = 1; i < timer->size; i++)
        mock_check (timer->heap [(i - 1) / 2].due <= timer->heap [i].due);
    pthread_mutex_unlock (&timer->mutex);
    mock_timer_destroy (&timer);
    mock_check (strcmp (s_test_order, "y") == 0);
}
