//  mock_faults - per-id request counters behind times=N, in a bounded table.

#include "mock_upstream.h"
#include <pthread.h>

//  Only requests that carry id=... reach this table, a handful per test, so
//  a linear scan under one mutex is simpler than a hash and fast enough.
//  Slots are reused in FIFO order so that a long run cannot grow memory.
typedef struct {
    char id [MOCK_DIRECTIVE_ID_MAX];
    long count;
} s_slot_t;

struct _mock_faults_t {
    pthread_mutex_t mutex;
    s_slot_t *slots;
    size_t capacity;
    size_t used;            //  slots in use, <= capacity
    size_t next;            //  slot to reuse once full
};

mock_faults_t *
mock_faults_new (size_t capacity)
{
    assert (capacity > 0);
    mock_faults_t *self = calloc (1, sizeof (mock_faults_t));
    if (!self)
        return NULL;
    self->slots = calloc (capacity, sizeof (s_slot_t));
    if (!self->slots) {
        free (self);
        return NULL;
    }
    self->capacity = capacity;
    pthread_mutex_init (&self->mutex, NULL);
    return self;
}

void
mock_faults_destroy (mock_faults_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        mock_faults_t *self = *self_p;
        pthread_mutex_destroy (&self->mutex);
        free (self->slots);
        free (self);
        *self_p = NULL;
    }
}

long
mock_faults_hit (mock_faults_t *self, const char *id)
{
    assert (self && id);
    assert (strlen (id) < MOCK_DIRECTIVE_ID_MAX);
    pthread_mutex_lock (&self->mutex);
    long before = 0;
    size_t i;
    for (i = 0; i < self->used; i++)
        if (strcmp (self->slots [i].id, id) == 0)
            break;
    if (i < self->used)
        before = self->slots [i].count++;
    else {
        if (self->used < self->capacity)
            i = self->used++;
        else {
            i = self->next;
            self->next = (self->next + 1) % self->capacity;
        }
        strcpy (self->slots [i].id, id);
        self->slots [i].count = 1;
    }
    pthread_mutex_unlock (&self->mutex);
    return before;
}

void
mock_faults_reset (mock_faults_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->mutex);
    self->used = 0;
    self->next = 0;
    pthread_mutex_unlock (&self->mutex);
}

void
mock_faults_test (bool verbose)
{
    (void) verbose;
    mock_faults_t *faults = mock_faults_new (2);
    mock_check (faults);
    mock_check (mock_faults_hit (faults, "a") == 0);
    mock_check (mock_faults_hit (faults, "a") == 1);
    mock_check (mock_faults_hit (faults, "b") == 0);
    mock_check (mock_faults_hit (faults, "a") == 2);
    //  Full: "c" takes the oldest slot, "a", which then starts over
    mock_check (mock_faults_hit (faults, "c") == 0);
    mock_check (mock_faults_hit (faults, "b") == 1);
    mock_check (mock_faults_hit (faults, "a") == 0);
    mock_faults_reset (faults);
    mock_check (mock_faults_hit (faults, "b") == 0);
    mock_faults_destroy (&faults);
    mock_check (faults == NULL);
    mock_faults_destroy (&faults);
}
