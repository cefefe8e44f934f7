/*  gw_loop.c: epoll + timers + libzmq sockets in one thread. */
#include "gw_loop.h"
#include "gw_log.h"

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

struct gw_timer_t {
    int64_t due_ms;
    size_t heap_index;  //  position in the heap, or SIZE_MAX when not armed
    gw_timer_fn *fn;
    void *arg;
};

typedef struct {
    gw_fd_fn *fn;
    void *arg;
} s_watch_t;

typedef struct {
    void *socket;
    gw_socket_fn *fn;
    void *arg;
} s_socket_t;

struct gw_loop_t {
    int epfd;
    int sigfd;
    bool stopped;
    s_watch_t *watches;  //  indexed by fd
    size_t nwatches;
    s_socket_t sockets[16];
    size_t nsockets;
    gw_timer_t **heap;
    size_t heap_size, heap_cap;
    gw_prepare_fn *prepare;
    void *prepare_arg;
};

int64_t
gw_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
gw_now_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
gw_wall_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
gw_loop_catch_signals (void)
{
    sigset_t set;
    sigemptyset (&set);
    sigaddset (&set, SIGINT);
    sigaddset (&set, SIGTERM);
    sigprocmask (SIG_BLOCK, &set, NULL);
    signal (SIGPIPE, SIG_IGN);
}

void
gw_loop_raise_fd_limit (void)
{
    struct rlimit rl;
    if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit (RLIMIT_NOFILE, &rl);
    }
}

gw_loop_t *
gw_loop_new (void)
{
    gw_loop_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->epfd = epoll_create1 (EPOLL_CLOEXEC);
    sigset_t set;
    sigemptyset (&set);
    sigaddset (&set, SIGINT);
    sigaddset (&set, SIGTERM);
    self->sigfd = signalfd (-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (self->epfd < 0 || self->sigfd < 0) {
        gw_loop_destroy (&self);
        return NULL;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = self->sigfd };
    epoll_ctl (self->epfd, EPOLL_CTL_ADD, self->sigfd, &ev);
    return self;
}

void
gw_loop_leave_signals (gw_loop_t *self)
{
    if (self->sigfd < 0)
        return;
    epoll_ctl (self->epfd, EPOLL_CTL_DEL, self->sigfd, NULL);
    close (self->sigfd);
    self->sigfd = -1;
}

void
gw_loop_destroy (gw_loop_t **self_p)
{
    gw_loop_t *self = *self_p;
    if (!self)
        return;
    if (self->epfd >= 0)
        close (self->epfd);
    if (self->sigfd >= 0)
        close (self->sigfd);
    free (self->watches);
    free (self->heap);
    free (self);
    *self_p = NULL;
}

int
gw_loop_watch (gw_loop_t *self, int fd, uint32_t events, gw_fd_fn *fn, void *arg)
{
    assert (fd >= 0);
    if ((size_t) fd >= self->nwatches) {
        size_t n = (size_t) fd * 2 + 64;
        s_watch_t *w = realloc (self->watches, n * sizeof *w);
        if (!w)
            return -1;
        memset (w + self->nwatches, 0, (n - self->nwatches) * sizeof *w);
        self->watches = w;
        self->nwatches = n;
    }
    bool known = self->watches[fd].fn != NULL;
    struct epoll_event ev = { .events = events, .data.fd = fd };
    if (epoll_ctl (self->epfd, known ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev)) {
        //  The fd may have been closed and reused behind our back (libcurl does
        //  this); retry as the other operation before giving up.
        if (epoll_ctl (self->epfd, known ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev)) {
            gw_error ("loop", "epoll_ctl failed fd=%d errno=%d", fd, errno);
            return -1;
        }
    }
    self->watches[fd] = (s_watch_t) { fn, arg };
    return 0;
}

void
gw_loop_unwatch (gw_loop_t *self, int fd)
{
    if (fd < 0 || (size_t) fd >= self->nwatches || !self->watches[fd].fn)
        return;
    epoll_ctl (self->epfd, EPOLL_CTL_DEL, fd, NULL);
    self->watches[fd] = (s_watch_t) { NULL, NULL };
}

static void
s_socket_ready (gw_loop_t *loop, int fd, uint32_t events, void *arg)
{
    //  Nothing to do here: the loop polls ZMQ_EVENTS of every socket each turn.
    (void) loop, (void) fd, (void) events, (void) arg;
}

int
gw_loop_add_socket (gw_loop_t *self, void *socket, gw_socket_fn *fn, void *arg)
{
    assert (self->nsockets < sizeof self->sockets / sizeof self->sockets[0]);
    int fd;
    size_t len = sizeof fd;
    if (zmq_getsockopt (socket, ZMQ_FD, &fd, &len))
        return -1;
    if (gw_loop_watch (self, fd, EPOLLIN, s_socket_ready, NULL))
        return -1;
    self->sockets[self->nsockets++] = (s_socket_t) { socket, fn, arg };
    return 0;
}

void
gw_loop_remove_socket (gw_loop_t *self, void *socket)
{
    if (!self || !socket)
        return;
    for (size_t i = 0; i < self->nsockets; i++) {
        if (self->sockets[i].socket != socket)
            continue;
        int fd;
        size_t len = sizeof fd;
        if (zmq_getsockopt (socket, ZMQ_FD, &fd, &len) == 0)
            gw_loop_unwatch (self, fd);
        memmove (&self->sockets[i], &self->sockets[i + 1], (self->nsockets - i - 1) * sizeof self->sockets[0]);
        self->nsockets--;
        return;
    }
}

void
gw_loop_set_prepare (gw_loop_t *self, gw_prepare_fn *fn, void *arg)
{
    self->prepare = fn;
    self->prepare_arg = arg;
}

/* ---- timers: a binary min-heap on due_ms ---- */

gw_timer_t *
gw_timer_new (gw_timer_fn *fn, void *arg)
{
    gw_timer_t *self = calloc (1, sizeof *self);
    if (self) {
        self->heap_index = SIZE_MAX;
        self->fn = fn;
        self->arg = arg;
    }
    return self;
}

void
gw_timer_destroy (gw_loop_t *loop, gw_timer_t **self_p)
{
    if (!*self_p)
        return;
    gw_timer_stop (loop, *self_p);
    free (*self_p);
    *self_p = NULL;
}

bool
gw_timer_active (const gw_timer_t *self)
{
    return self->heap_index != SIZE_MAX;
}

static void
s_heap_set (gw_loop_t *self, size_t i, gw_timer_t *t)
{
    self->heap[i] = t;
    t->heap_index = i;
}

static void
s_heap_up (gw_loop_t *self, size_t i)
{
    gw_timer_t *t = self->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap[parent]->due_ms <= t->due_ms)
            break;
        s_heap_set (self, i, self->heap[parent]);
        i = parent;
    }
    s_heap_set (self, i, t);
}

static void
s_heap_down (gw_loop_t *self, size_t i)
{
    gw_timer_t *t = self->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= self->heap_size)
            break;
        if (child + 1 < self->heap_size && self->heap[child + 1]->due_ms < self->heap[child]->due_ms)
            child++;
        if (self->heap[child]->due_ms >= t->due_ms)
            break;
        s_heap_set (self, i, self->heap[child]);
        i = child;
    }
    s_heap_set (self, i, t);
}

void
gw_timer_stop (gw_loop_t *loop, gw_timer_t *self)
{
    size_t i = self->heap_index;
    if (i == SIZE_MAX)
        return;
    self->heap_index = SIZE_MAX;
    gw_timer_t *last = loop->heap[--loop->heap_size];
    if (i < loop->heap_size) {
        s_heap_set (loop, i, last);
        s_heap_up (loop, i);
        s_heap_down (loop, last->heap_index);
    }
}

void
gw_timer_start (gw_loop_t *loop, gw_timer_t *self, int64_t delay_ms)
{
    gw_timer_stop (loop, self);
    if (loop->heap_size == loop->heap_cap) {
        size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
        gw_timer_t **h = realloc (loop->heap, cap * sizeof *h);
        //  Out of memory here leaves nothing sane to do: a lost timer is a hang.
        assert (h);
        loop->heap = h;
        loop->heap_cap = cap;
    }
    self->due_ms = gw_now_ms () + (delay_ms > 0 ? delay_ms : 0);
    s_heap_set (loop, loop->heap_size++, self);
    s_heap_up (loop, self->heap_index);
}

static void
s_fire_timers (gw_loop_t *self)
{
    int64_t now = gw_now_ms ();
    //  A bound per turn keeps a timer that re-arms itself with 0 from starving I/O.
    for (int fired = 0; self->heap_size && fired < 1024; fired++) {
        gw_timer_t *t = self->heap[0];
        if (t->due_ms > now)
            break;
        gw_timer_stop (self, t);
        t->fn (self, t, t->arg);
    }
}

/* ---- the loop ---- */

void
gw_loop_stop (gw_loop_t *self)
{
    self->stopped = true;
}

int
gw_loop_run (gw_loop_t *self)
{
    struct epoll_event events[256];
    self->stopped = false;
    while (!self->stopped) {
        bool busy = false;
        for (size_t i = 0; i < self->nsockets; i++) {
            s_socket_t *s = &self->sockets[i];
            uint32_t zevents = 0;
            size_t len = sizeof zevents;
            if (zmq_getsockopt (s->socket, ZMQ_EVENTS, &zevents, &len) == 0
                && (zevents & ZMQ_POLLIN)) {
                s->fn (self, s->socket, s->arg);
                busy = true;
            }
        }
        int timeout = -1;
        if (self->prepare) {
            timeout = self->prepare (self, self->prepare_arg);
            //  The hook may have sent on a socket, which can swallow the edge of
            //  its ZMQ_FD: look again rather than sleep on a waiting message.
            for (size_t i = 0; i < self->nsockets && !busy; i++) {
                uint32_t zevents = 0;
                size_t len = sizeof zevents;
                busy = zmq_getsockopt (self->sockets[i].socket, ZMQ_EVENTS, &zevents, &len) == 0
                       && (zevents & ZMQ_POLLIN);
            }
        }
        if (self->heap_size) {
            int64_t wait = self->heap[0]->due_ms - gw_now_ms ();
            if (wait < 0)
                wait = 0;
            if (timeout < 0 || wait < timeout)
                timeout = (int) (wait > 60000 ? 60000 : wait);
        }
        if (busy)
            timeout = 0;
        if (self->stopped)
            break;
        int n = epoll_wait (self->epfd, events, 256, timeout);
        if (n < 0 && errno != EINTR) {
            gw_error ("loop", "epoll_wait failed errno=%d", errno);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == self->sigfd) {
                struct signalfd_siginfo si;
                if (read (self->sigfd, &si, sizeof si) > 0)
                    gw_info ("loop", "signal received signo=%u, stopping", si.ssi_signo);
                self->stopped = true;
                continue;
            }
            //  Looked up now, not stored in the event: an earlier callback in this
            //  batch may have unwatched the fd.
            if ((size_t) fd < self->nwatches && self->watches[fd].fn)
                self->watches[fd].fn (self, fd, events[i].events, self->watches[fd].arg);
        }
        s_fire_timers (self);
    }
    return 0;
}

typedef struct {
    bool (*done) (void *arg);
    void *arg;
    int64_t deadline_ms;
} s_until_t;

static void
s_until_check (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    s_until_t *until = arg;
    if (until->done (until->arg) || gw_now_ms () >= until->deadline_ms)
        gw_loop_stop (loop);
    else
        gw_timer_start (loop, timer, 20);
}

bool
gw_loop_run_until (gw_loop_t *self, bool (*done) (void *arg), void *arg, int64_t timeout_ms)
{
    s_until_t until = { done, arg, gw_now_ms () + timeout_ms };
    gw_timer_t *check = gw_timer_new (s_until_check, &until);
    gw_timer_start (self, check, 0);
    gw_loop_run (self);
    gw_timer_destroy (self, &check);
    return done (arg);
}

/* ---- selftest ---- */

static int s_fired[8];

static void
s_test_record (gw_loop_t *loop, gw_timer_t *timer, void *arg)
{
    (void) timer;
    s_fired[s_fired[0]++ + 1] = (int) (intptr_t) arg;
    if (s_fired[0] == 4)
        gw_loop_stop (loop);
}

static void
s_test_socket (gw_loop_t *loop, void *socket, void *arg)
{
    (void) arg;
    char buf[8];
    if (zmq_recv (socket, buf, sizeof buf, ZMQ_DONTWAIT) == 1)
        s_fired[4] = 1;
    gw_loop_stop (loop);
}

void
gw_loop_test (bool verbose)
{
    if (verbose)
        printf (" * gw_loop: ");
    gw_loop_t *loop = gw_loop_new ();
    assert (loop);
    //  Timers fire in due order, whatever order they were started in, and a
    //  stopped timer never fires.
    gw_timer_t *t[5];
    int delays[5] = { 30, 10, 20, 5, 15 };
    for (int i = 0; i < 5; i++) {
        t[i] = gw_timer_new (s_test_record, (void *) (intptr_t) delays[i]);
        gw_timer_start (loop, t[i], delays[i]);
    }
    gw_timer_stop (loop, t[4]);
    assert (!gw_timer_active (t[4]));
    gw_loop_run (loop);
    assert (s_fired[0] == 4);
    assert (s_fired[1] == 5 && s_fired[2] == 10 && s_fired[3] == 20 && s_fired[4] == 30);
    for (int i = 0; i < 5; i++)
        gw_timer_destroy (loop, &t[i]);
    gw_timer_destroy (loop, &t[0]);

    //  A zmq socket with a waiting message is served.
    void *ctx = zmq_ctx_new ();
    void *a = zmq_socket (ctx, ZMQ_PAIR), *b = zmq_socket (ctx, ZMQ_PAIR);
    zmq_bind (a, "inproc://gw_loop_test");
    zmq_connect (b, "inproc://gw_loop_test");
    zmq_send (b, "x", 1, 0);
    memset (s_fired, 0, sizeof s_fired);
    s_fired[0] = 3;
    gw_timer_t *guard = gw_timer_new (s_test_record, (void *) 99);
    gw_timer_start (loop, guard, 2000);
    gw_loop_add_socket (loop, a, s_test_socket, NULL);
    gw_loop_run (loop);
    assert (s_fired[4] == 1);  //  the socket, not the guard timer
    //  A removed socket is no longer served: its message waits, and the
    //  guard timer ends the run.
    gw_loop_remove_socket (loop, a);
    zmq_send (b, "y", 1, 0);
    s_fired[0] = 3;
    s_fired[4] = 0;
    gw_timer_start (loop, guard, 50);
    gw_loop_run (loop);
    assert (s_fired[4] == 99);  //  the guard timer; the socket's handler did not run
    gw_timer_destroy (loop, &guard);
    zmq_close (a);
    zmq_close (b);
    zmq_ctx_term (ctx);
    gw_loop_destroy (&loop);
    gw_loop_destroy (&loop);
    if (verbose)
        printf ("OK\n");
}
