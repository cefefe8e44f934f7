//  mock_server - the HTTP side of the mock: routes, auth, validation, faults and timed answers on libmicrohttpd.

#ifndef MOCK_SERVER_H_INCLUDED
#define MOCK_SERVER_H_INCLUDED

typedef struct _mock_server_t mock_server_t;

//  Binds config->host:config->port and starts serving. The configuration is
//  borrowed and must outlive the server. NULL, with a log line, on failure.
mock_server_t *mock_server_new (mock_config_t *config);

//  Stops serving: every held or streaming request is cut, every connection
//  closed and everything freed. Nulls the caller's pointer.
void mock_server_destroy (mock_server_t **self_p);

//  Returns the bound port (useful when config->port is 0).
int mock_server_port (mock_server_t *self);

//  Selftest: starts a server on a free port and talks HTTP to it.
void mock_server_test (bool verbose);

#endif
