/*  http_front.h: the HTTP side of the ingress, on libmicrohttpd.

    One MHD daemon driven by the service's event loop (MHD_USE_EPOLL, no thread
    per request). A chat request is validated, handed to the dispatcher pool, and
    its connection suspended; the pool's HEAD/CHUNK/END callbacks fill a buffer and
    resume it. Streams are relayed with a content reader that suspends whenever it
    has nothing to send, so a slow upstream costs a buffer, not a thread.
*/
#ifndef HTTP_FRONT_H_INCLUDED
#define HTTP_FRONT_H_INCLUDED

#include "dispatcher_pool.h"
#include "gw_loop.h"
#include "control_client.h"
#include "key_cache.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct http_front_t http_front_t;

/*  The longest response cache TTL a request or key may ask for (30 days). */
#define CACHE_TTL_MAX_S (30 * 86400)

typedef struct {
    const char *host;       //  listen address
    int port;               //  0 picks a free port
    size_t max_body_bytes;  //  larger bodies get 413
    int idle_timeout_s;     //  idle keep-alive connections are closed after this
    size_t conn_memory_bytes;  //  GW_HTTP_CONN_MEMORY_BYTES: MHD's memory per connection (headers, buffers)
    bool auth;              //  require gateway keys (GW_AUTH=keys)
    const char *admin_key;  //  GW_ADMIN_KEY; NULL: the admin API is disabled
    const char *currency;  //  GW_CURRENCY, for the cost (0) of requests refused before any call
    uint32_t cache_ttl_s;  //  GW_CACHE_TTL_S: a request opting in to the response cache without a TTL
} http_config_t;

/*  The callbacks the dispatcher pool calls for a job's client. */
extern const pool_client_fns_t http_front_pool_fns;

/*  control and keys may be NULL only when config->auth is off and no
    accounting is configured (/v1/usage and /admin then answer 503). */
http_front_t *http_front_new (gw_loop_t *loop, dispatcher_pool_t *pool, control_client_t *control,
                              key_cache_t *keys, const http_config_t *config);
/*  Ends what is still in progress (503, or an SSE error event), then stops. */
void http_front_destroy (http_front_t **self_p);

/*  Stops accepting new connections; requests already in progress go on. */
void http_front_quiesce (http_front_t *self);

/*  Chat requests in progress. */
size_t http_front_active (http_front_t *self);

/*  The port actually bound. */
int http_front_port (http_front_t *self);

#endif
