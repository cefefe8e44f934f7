//  mock_config - settings of the mock upstream, read from MOCK_* environment variables.

#ifndef MOCK_CONFIG_H_INCLUDED
#define MOCK_CONFIG_H_INCLUDED

typedef struct {
    char *host;                     //  MOCK_HOST, address to bind
    int port;                       //  MOCK_PORT, 0 picks a free port
    char *api_key;                  //  MOCK_API_KEY, expected bearer token
    int token_delay_ms;             //  MOCK_TOKEN_DELAY_MS, default delay per streamed token
    int keepalive_ms;               //  MOCK_KEEPALIVE_MS, keep-alive interval while "queued", 0 none
    mock_usage_mode_t usage_mode;   //  MOCK_USAGE_MODE, final or separate
    int threads;                    //  MOCK_THREADS, MHD polling threads
} mock_config_t;

//  Creates a configuration holding the documented defaults.
mock_config_t *mock_config_new (void);

//  Destroys the configuration and nulls the caller's pointer.
void mock_config_destroy (mock_config_t **self_p);

//  Overrides defaults from the environment. Returns 0, or -1 with a
//  description of the first bad variable in err.
int mock_config_load_env (mock_config_t *self, char *err, size_t errsize);

//  Selftest.
void mock_config_test (bool verbose);

#endif
