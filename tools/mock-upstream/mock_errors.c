//  mock_errors - DeepSeek/OpenAI style error bodies: {"error":{"message","type","param","code"}}.

#include "mock_upstream.h"

//  code mirrors what DeepSeek sends: "invalid_request_error" for client
//  errors, the type for server ones; clients key on the status anyway.
char *
mock_errors_body (const char *message, const char *type)
{
    assert (message && type);
    const char *code = strcmp (type, "server_error") == 0 ? "server_error" : "invalid_request_error";
    json_t *body = json_pack ("{s:{s:s, s:s, s:n, s:s}}",
                              "error", "message", message, "type", type, "param", "code", code);
    if (!body)
        return NULL;
    char *text = json_dumps (body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (body);
    return text;
}

char *
mock_errors_for_status (int status)
{
    switch (status) {
        case 400: return mock_errors_body ("Invalid Format", "invalid_request_error");
        case 401: return mock_errors_auth ("");
        case 402: return mock_errors_body ("Insufficient Balance", "invalid_request_error");
        case 404: return mock_errors_body ("Not Found", "invalid_request_error");
        case 422: return mock_errors_body ("Invalid Parameters", "invalid_request_error");
        case 429: return mock_errors_body ("Rate Limit Reached", "rate_limit_error");
        case 500: return mock_errors_body ("Server Error", "server_error");
        case 502: return mock_errors_body ("Bad Gateway", "server_error");
        case 503: return mock_errors_body ("Server Overloaded", "server_error");
        case 504: return mock_errors_body ("Gateway Timeout", "server_error");
    }
    char message [64];
    snprintf (message, sizeof message, "Mock Status %d", status);
    return mock_errors_body (message, status >= 500 ? "server_error" : "invalid_request_error");
}

char *
mock_errors_auth (const char *api_key)
{
    assert (api_key);
    size_t len = strlen (api_key);
    char message [128];
    snprintf (message, sizeof message, "Authentication Fails, Your api key: ****%s is invalid",
              len > 4 ? api_key + len - 4 : api_key);
    return mock_errors_body (message, "authentication_error");
}

void
mock_errors_test (bool verbose)
{
    (void) verbose;
    char *body = mock_errors_auth ("sk-123abcd");
    mock_check (body && strcmp (body,
        "{\"error\":{\"message\":\"Authentication Fails, Your api key: ****abcd is invalid\","
        "\"type\":\"authentication_error\",\"param\":null,\"code\":\"invalid_request_error\"}}") == 0);
    free (body);

    body = mock_errors_for_status (429);
    json_t *json = json_loads (body, 0, NULL);
    json_t *error = json_object_get (json, "error");
    mock_check (json_object_size (json) == 1 && json_object_size (error) == 4);
    mock_check (strcmp (json_string_value (json_object_get (error, "message")), "Rate Limit Reached") == 0);
    json_decref (json);
    free (body);

    body = mock_errors_for_status (418);
    mock_check (body && strstr (body, "Mock Status 418"));
    free (body);

    //  Messages are escaped
    body = mock_errors_body ("bad \"quote\"\n", "invalid_request_error");
    json = json_loads (body, 0, NULL);
    mock_check (json);
    json_decref (json);
    free (body);
}
