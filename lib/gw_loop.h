/*  gw_loop.h: the single-threaded event loop every service runs on.

    epoll for file descriptors (HTTP daemon, libcurl sockets, signals), a min-heap of
    one-shot timers, and libzmq sockets. A zmq socket's ZMQ_FD only says "events may
    have changed", so the loop asks ZMQ_EVENTS for every registered socket before it
    blocks, and never sleeps while one of them has a message waiting.
*/
#ifndef GW_LOOP_H_INCLUDED
#define GW_LOOP_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

typedef struct gw_loop_t gw_loop_t;
typedef struct gw_timer_t gw_timer_t;

typedef void (gw_fd_fn) (gw_loop_t *loop, int fd, uint32_t events, void *arg);
typedef void (gw_timer_fn) (gw_loop_t *loop, gw_timer_t *timer, void *arg);
/*  Called when a zmq socket has input; should receive at most a batch and return. */
typedef void (gw_socket_fn) (gw_loop_t *loop, void *socket, void *arg);
/*  Called before each wait; returns the longest the loop may sleep in ms, or -1. */
typedef int (gw_prepare_fn) (gw_loop_t *loop, void *arg);

/*  Blocks SIGINT and SIGTERM (delivered to the loop through a signalfd) and ignores
    SIGPIPE. Call first in main, before any thread (libzmq's included) starts. */
void gw_loop_catch_signals (void);

/*  Raises the open-files limit to the hard maximum: every client connection and
    every upstream transfer is a descriptor. */
void gw_loop_raise_fd_limit (void);

gw_loop_t *gw_loop_new (void);
void gw_loop_destroy (gw_loop_t **self_p);

/*  This loop no longer reads SIGINT/SIGTERM: another loop of the process does
    (one signal is read by one signalfd only, so two loops would race for it). */
void gw_loop_leave_signals (gw_loop_t *self);

/*  Watches fd for events (EPOLLIN/EPOLLOUT); calling again changes the events. */
int gw_loop_watch (gw_loop_t *self, int fd, uint32_t events, gw_fd_fn *fn, void *arg);
void gw_loop_unwatch (gw_loop_t *self, int fd);

/*  Registers a raw libzmq socket. */
int gw_loop_add_socket (gw_loop_t *self, void *socket, gw_socket_fn *fn, void *arg);
/*  Forgets a socket added above; call before closing it (the loop may run on
    after its owner is gone: an ingress's loop runs for its releases). */
void gw_loop_remove_socket (gw_loop_t *self, void *socket);

void gw_loop_set_prepare (gw_loop_t *self, gw_prepare_fn *fn, void *arg);

/*  Timers are owned by the caller, one-shot, and can be restarted from anywhere,
    their own callback included. */
gw_timer_t *gw_timer_new (gw_timer_fn *fn, void *arg);
void gw_timer_destroy (gw_loop_t *loop, gw_timer_t **self_p);
void gw_timer_start (gw_loop_t *loop, gw_timer_t *self, int64_t delay_ms);
void gw_timer_stop (gw_loop_t *loop, gw_timer_t *self);
bool gw_timer_active (const gw_timer_t *self);

/*  Runs until gw_loop_stop() or SIGINT/SIGTERM. Returns 0. */
int gw_loop_run (gw_loop_t *self);

/*  Runs the loop again until done(arg) is true, timeout_ms has passed, or a
    signal comes: a service's shutdown grace period. Returns whether done(arg)
    came true. */
bool gw_loop_run_until (gw_loop_t *self, bool (*done) (void *arg), void *arg, int64_t timeout_ms);
void gw_loop_stop (gw_loop_t *self);

/*  Monotonic clock in ms and µs; wall clock in ms. */
int64_t gw_now_ms (void);
int64_t gw_now_us (void);
int64_t gw_wall_ms (void);

void gw_loop_test (bool verbose);

#endif
