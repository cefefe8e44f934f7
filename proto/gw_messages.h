/*  gw_messages.h: the wire protocol model, the one place every message is defined.

    Each message has a hand-numbered id and an ordered list of typed fields with a
    one-line description. The codec (gw_proto.c) and the C structs (gw_proto.h) are
    derived from these lists by X-macros, so a field is never written down twice.

    Encoding: one ZeroMQ frame holding a msgpack array
        [version (see M below), message id, field 1, field 2, ...]
    Ids are never reused; new fields go at the end and bump both the protocol
    version and the message's version (below); the message's former shape goes
    into GW_OLDER_SHAPES (at the end), so older peers can still be written to.
    A message of an older version (down to GW_PROTO_MIN_VERSION) still decodes: the fields it lacks read as
    zero, false or "" (spools written before an upgrade replay after it). A
    version newer than the reader's protocol is refused and logged.

    Field types: U32, U64 (unsigned integers), BOOL, STR (UTF-8 string, never NULL
    after decode), BIN (opaque bytes), STRLIST (array of strings).

    Sockets: each ingress binds one ROUTER ("jobs" endpoint); each dispatcher
    connects one DEALER to every ingress it is given. Usage events go from the
    dispatcher's spool to accounting (a ROUTER), which answers USAGE_ACK after commit.
    Each accounting instance also binds a second ROUTER ("control" endpoint) for
    the ingresses and operator tools: key lookups, admissions and releases,
    the admin API and reports. It is served by its own thread and database
    connection, so a large usage batch never delays an admission.
*/
#ifndef GW_MESSAGES_H_INCLUDED
#define GW_MESSAGES_H_INCLUDED

#define GW_PROTO_VERSION 5
#define GW_PROTO_MIN_VERSION 1

/*  M(NAME, id, lowercase name, version, description)

    version: the protocol version that last changed the message's fields. It
    is what a sender writes in the message's header, so a message that did not
    change still reads in an older peer (an accounting upgraded first keeps
    answering older ingresses and dispatchers). HELLO is the exception: it
    carries the sender's own GW_PROTO_VERSION, so an ingress knows whether the
    dispatcher reads its JOBs. A question's version is also the newest shape of
    its answer the asker reads (KEY_LOOKUP 4: KEY_INFO 4), so the answer goes
    out in that shape (gw_msg_send_as). */
#define GW_MESSAGES(M)                                                              \
    M (HELLO, 1, hello, GW_PROTO_VERSION, "dispatcher to ingress: I exist; here are credits and models") \
    M (HEARTBEAT, 2, heartbeat, 1, "either way: I am alive")                    \
    M (CREDIT, 3, credit, 1, "dispatcher to ingress: you may send this many more jobs") \
    M (RESET, 4, reset, 1, "ingress to dispatcher: I do not know you, say HELLO again") \
    M (JOB, 5, job, 5, "ingress to dispatcher: run one chat completion")        \
    M (CANCEL, 6, cancel, 1, "ingress to dispatcher: the client went away")     \
    M (HEAD, 7, head, 4, "dispatcher to ingress: a stream starts; status and type")    \
    M (CHUNK, 8, chunk, 1, "dispatcher to ingress: stream bytes for the client")        \
    M (END, 9, end, 4, "dispatcher to ingress: job done, returns its credit")   \
    M (USAGE, 10, usage, 4, "dispatcher to accounting: one upstream call's usage")     \
    M (BYE, 11, bye, 1, "dispatcher to ingress: stopping, send no more jobs")   \
    M (USAGE_ACK, 12, usage_ack, 1, "accounting to dispatcher: these events are committed") \
    M (REPORT_REQUEST, 13, report_request, 1, "ingress or tool to accounting: a usage report") \
    M (REPORT_REPLY, 14, report_reply, 1, "accounting to the asker: the report as JSON") \
    M (KEY_LOOKUP, 15, key_lookup, 4, "ingress to accounting: who holds this key hash?") \
    M (KEY_INFO, 16, key_info, 4, "accounting to ingress: the key, or that it is not valid") \
    M (ADMIT, 17, admit, 2, "ingress to accounting: reserve rate, concurrency and budget") \
    M (ADMIT_REPLY, 18, admit_reply, 2, "accounting to ingress: admitted, or why not")   \
    M (RELEASE, 19, release, 2, "ingress to accounting: a request admitted earlier ended") \
    M (RELEASE_ACK, 20, release_ack, 2, "accounting to ingress: these releases are durable") \
    M (INGRESS_ALIVE, 21, ingress_alive, 3, "ingress to accounting: my admissions still run") \
    M (ADMIN_REQUEST, 22, admin_request, 2, "ingress or tool to accounting: an admin API call") \
    M (ADMIN_REPLY, 23, admin_reply, 2, "accounting to the asker: the admin API answer") \
    M (ALERT_REQUEST, 24, alert_request, 2, "alerter to accounting: lease, state, claim, outbox, delivery") \
    M (ALERT_REPLY, 25, alert_reply, 2, "accounting to the alerter: the answer as JSON") \
    M (STATUS, 26, status, 3, "dispatcher to accounting: I am alive (or leaving); my spool and host") \
    M (STREAM_ACK, 27, stream_ack, 5, "ingress to dispatcher: the client has taken this much of a stream")

/*  F(TYPE, field, description) */
#define GW_HELLO_FIELDS(F)                                                          \
    F (STR, dispatcher_id, "unique id of the dispatcher instance")              \
    F (U32, credits, "jobs this ingress may send from now on (absolute)")       \
    F (STRLIST, models, "public model names the dispatcher can serve")          \
    F (STRLIST, owners, "owned_by of each model, same order as models")

#define GW_HEARTBEAT_FIELDS(F)                                                      \
    F (U64, sent_ms, "sender's wall clock in ms, for lag diagnostics")

#define GW_CREDIT_FIELDS(F)                                                         \
    F (U32, credits, "additional jobs the ingress may send")

#define GW_RESET_FIELDS(F)                                                          \
    F (STR, reason, "why the ingress does not know the dispatcher")

#define GW_JOB_FIELDS(F)                                                            \
    F (U64, job_id, "ingress-local job id, new for every dispatch")             \
    F (STR, request_id, "gateway request id, stable across re-dispatch")        \
    F (U32, dispatch, "how many times this request was dispatched before")      \
    F (STR, model, "public model name the client asked for")                    \
    F (BOOL, stream, "client asked for an SSE stream")                          \
    F (BOOL, client_usage, "client itself asked for stream_options.include_usage") \
    F (U64, queue_wait_us, "time the job waited in the ingress queue")          \
    F (BIN, body, "the client's JSON body, validated, otherwise unchanged")     \
    F (U64, api_key_id, "gateway key of the request, 0 when keys are off (v2)") \
    F (BOOL, cache_lookup, "an answer from the response cache will do (v4)")    \
    F (U32, cache_ttl_s, "keep a good answer in the cache this long; 0 do not (v4)") \
    F (U32, flow_window, "stream bytes the dispatcher may send beyond the last STREAM_ACK; 0 no limit (v5)")

#define GW_STREAM_ACK_FIELDS(F)                                                     \
    F (U64, job_id, "the streamed job")                                         \
    F (U64, bytes, "CHUNK bytes the client has taken so far, in all")
#define GW_CANCEL_FIELDS(F)                                                         \
    F (U64, job_id, "job whose client disconnected")

#define GW_HEAD_FIELDS(F)                                                           \
    F (U64, job_id, "job the stream belongs to")                                \
    F (U32, status, "HTTP status for the client")                               \
    F (STR, content_type, "Content-Type for the client")                       \
    F (BOOL, cached, "the stream replays an answer from the response cache (v4)")

#define GW_CHUNK_FIELDS(F)                                                          \
    F (U64, job_id, "job the bytes belong to")                                  \
    F (BIN, data, "whole SSE events, in order")

#define GW_END_FIELDS(F)                                                            \
    F (U64, job_id, "job that finished")                                        \
    F (U32, status, "HTTP status (if no HEAD was sent) or final upstream status")  \
    F (STR, content_type, "Content-Type of body, if no HEAD was sent")          \
    F (BIN, body, "whole response body, or the tail of a stream")               \
    F (U32, attempts, "upstream calls this dispatch made: usage events it wrote (v2)") \
    F (BOOL, cost_known, "every call of this dispatch was priced (v2)")         \
    F (U64, cost_pico, "cost of this dispatch's calls, 1e-12 currency units (v2)") \
    F (STR, currency, "currency of cost_pico (v2)")                             \
    F (BOOL, cached, "the answer came from the response cache (v4)")

#define GW_BYE_FIELDS(F)                                                            \
    F (STR, reason, "why the dispatcher stops; running jobs still finish")

#define GW_USAGE_ACK_FIELDS(F)                                                      \
    F (STRLIST, event_ids, "usage events now durable in PostgreSQL (or already were)")

#define GW_REPORT_REQUEST_FIELDS(F)                                                 \
    F (U64, correlation, "asker's id, echoed in the reply")                     \
    F (STR, period, "today, yesterday, week, month, all, or custom (from/to)")  \
    F (U64, from_ms, "custom period start, unix ms, inclusive")                 \
    F (U64, to_ms, "custom period end, unix ms, exclusive")                     \
    F (STR, group_by, "none, model, day, key or provider")                      \
    F (STR, api_key_id, "only this key's usage; empty for all (admin)")

#define GW_REPORT_REPLY_FIELDS(F)                                                   \
    F (U64, correlation, "the request's correlation id")                        \
    F (U32, status, "HTTP-like status: 200, 400 bad request, 503 database down")  \
    F (BIN, body, "JSON report, or an OpenAI-style error body")

#define GW_KEY_LOOKUP_FIELDS(F)                                                     \
    F (U64, correlation, "asker's id, echoed in the reply")                     \
    F (STR, key_hash, "lowercase hex SHA-256 of the key the client presented")

#define GW_KEY_INFO_FIELDS(F)                                                       \
    F (U64, correlation, "the lookup's correlation id")                         \
    F (U32, status, "200 valid; 401 unknown, revoked or expired; 503 database down") \
    F (U64, key_id, "the key's id (200 only)")                                  \
    F (U64, expires_ms, "unix ms after which the key is refused, 0 never")      \
    F (STRLIST, models, "models the key may use; empty for all")                \
    F (BOOL, admit, "the key has limits or budgets: each request needs ADMIT")   \
    F (U32, cache_ttl_s, "the key opts in to the response cache for this long; 0 no (v4)")

#define GW_ADMIT_FIELDS(F)                                                          \
    F (U64, correlation, "asker's id, echoed in the reply")                     \
    F (STR, request_id, "gateway request id; names the reservation")            \
    F (U64, key_id, "key the request is made with")                             \
    F (STR, ingress_id, "the asking ingress instance (its concurrency slots)")  \
    F (STR, model, "public model name the client asked for")                    \
    F (U64, prompt_tokens, "estimated prompt tokens")                           \
    F (U64, max_tokens, "client's output cap; 0: the model's maximum output")   \
    F (STRLIST, ended, "this key's requests this ingress ended, release not yet acknowledged")

#define GW_ADMIT_REPLY_FIELDS(F)                                                    \
    F (U64, correlation, "the admission's correlation id")                      \
    F (U32, status, "200 admitted; 429 limited; 401 key not valid; 503 database down") \
    F (STR, code, "why not: rate_limit_requests, rate_limit_tokens, concurrency, budget_day...") \
    F (STR, message, "human sentence for the client when not admitted")         \
    F (U64, retry_after_ms, "when asking again can succeed (429)")              \
    F (U64, reserved_pico, "budget reserved for the request, 1e-12 currency units") \
    F (U64, rpm_limit, "requests per minute of the key, 0 none")                \
    F (U64, rpm_remaining, "requests left in the window after this one")        \
    F (U64, rpm_reset_ms, "ms until the request window is whole again")         \
    F (U64, tpm_limit, "tokens per minute of the key, 0 none")                  \
    F (U64, tpm_remaining, "tokens left in the window after this one")          \
    F (U64, tpm_reset_ms, "ms until the token window is whole again")

#define GW_RELEASE_FIELDS(F)                                                        \
    F (STR, request_id, "the admitted request that ended")                      \
    F (BOOL, dispatched, "it reached a dispatcher; false: no usage will come")  \
    F (U32, dispatch, "its last dispatch number")                               \
    F (U32, attempts, "usage events that dispatch wrote: the budget settles after them")

#define GW_RELEASE_ACK_FIELDS(F)                                                    \
    F (STRLIST, request_ids, "releases now durable (or already were)")

/*  How often an ingress says INGRESS_ALIVE (accounting's TTL is longer). */
#define GW_INGRESS_ALIVE_MS 2000
#define GW_INGRESS_ALIVE_FIELDS(F)                                                  \
    F (STR, ingress_id, "the ingress instance whose concurrency slots stay held")   \
    F (STR, instance, "its stable name (GW_INGRESS_ID or host:port), for the alerter") \
    F (STR, host, "its host name")                                              \
    F (U32, cpu_permille, "host CPU busy since its last report, per mille")     \
    F (U32, mem_permille, "host memory in use (total - available), per mille")  \
    F (U32, disk_permille, "its working directory's file system in use, per mille") \
    F (BOOL, leaving, "stopping cleanly: forget this instance, it is not silent")

#define GW_ADMIN_REQUEST_FIELDS(F)                                                  \
    F (U64, correlation, "asker's id, echoed in the reply")                     \
    F (STR, method, "GET, POST, PATCH or DELETE")                               \
    F (STR, path, "/admin/keys or /admin/keys/<id>")                            \
    F (BIN, body, "JSON body (POST, PATCH), may be empty")

#define GW_ADMIN_REPLY_FIELDS(F)                                                    \
    F (U64, correlation, "the request's correlation id")                        \
    F (U32, status, "HTTP status for the admin client")                         \
    F (BIN, body, "JSON answer, or an OpenAI-style error body")

/*  The alerter's operations (op), each with a JSON body both ways; the shapes
    are in docs/alerter.md and services/accounting/alert_store.c:
      lease     {"alerter":id,"ttl_ms":n} -> {"leader":bool,"holder":id}
      state     {"window_s":n} -> spend per key and overall, budgets, error window
      claim     {"rule","subject","period","level","severity","title","text",
                 "alert":{...},"channels":[...]} -> {"alert_id":n,"fresh":bool}
      resolve   {"rule","subject"} -> {"resolved":[ids]}
      outbox    {"limit":n} -> {"deliveries":[{"id","alert_id","channel",...}]}
      delivered {"id":n,"ok":bool,"error":s,"retry_ms":n} -> {} */
#define GW_ALERT_REQUEST_FIELDS(F)                                                  \
    F (U64, correlation, "asker's id, echoed in the reply")                     \
    F (STR, op, "lease, state, claim, resolve, outbox or delivered")            \
    F (BIN, body, "the operation's JSON object")

#define GW_ALERT_REPLY_FIELDS(F)                                                    \
    F (U64, correlation, "the request's correlation id")                        \
    F (U32, status, "200, 400 bad request, 503 database down")                  \
    F (BIN, body, "the answer's JSON object, or an OpenAI-style error body")

#define GW_STATUS_FIELDS(F)                                                         \
    F (STR, kind, "dispatcher (accounting records its own)")                    \
    F (STR, instance, "the instance's id")                                      \
    F (STR, host, "its host name")                                              \
    F (U64, spool_events, "usage events in its spool not yet acknowledged")     \
    F (U64, spool_bytes, "their size in the spool")                             \
    F (U32, cpu_permille, "host CPU busy since its last report, per mille")     \
    F (U32, mem_permille, "host memory in use (total - available), per mille")  \
    F (U32, disk_permille, "the spool's file system in use, per mille")         \
    F (STR, balance_provider, "provider whose account balance follows, \"\" if none") \
    F (STR, balance_currency, "currency of balance_total")                      \
    F (STR, balance_total, "the provider's GET /user/balance total_balance")    \
    F (BOOL, balance_available, "the provider's is_available")                  \
    F (BOOL, leaving, "stopping cleanly: forget this instance, it is not silent")

#define GW_USAGE_FIELDS(F)                                                          \
    F (STR, event_id, "unique: request_id.dispatch.attempt")                    \
    F (STR, request_id, "gateway request id")                                   \
    F (U32, attempt, "upstream attempt number within this dispatch, from 1")    \
    F (U32, dispatch, "dispatch number of the request, from 0")                 \
    F (STR, provider, "provider name from configuration")                       \
    F (STR, upstream_model, "model name sent upstream")                         \
    F (STR, model, "model name the client asked for")                           \
    F (U64, cache_hit_tokens, "prompt tokens served from the upstream cache")   \
    F (U64, cache_miss_tokens, "prompt tokens not in the cache")                \
    F (U64, completion_tokens, "output tokens, reasoning included")             \
    F (U64, reasoning_tokens, "reasoning part of completion_tokens")            \
    F (U32, status, "HTTP status of the upstream call, 0 if no response")       \
    F (BOOL, usage_known, "upstream reported usage; false means tokens are 0")  \
    F (BOOL, streamed, "the call was a stream")                                 \
    F (BOOL, client_aborted, "the client went away before the end")             \
    F (U64, queue_wait_us, "time in the ingress queue before dispatch")         \
    F (U64, ttfb_us, "start of the call to first upstream body byte")           \
    F (U64, total_us, "start of the call to its end")                           \
    F (U64, started_ms, "wall clock in ms when the call started")               \
    F (U64, api_key_id, "gateway key of the request, 0 for none (v2)")         \
    F (BOOL, cached, "answered from the gateway's response cache: no call, no cost (v4)")

/*  S(NAME, version, fields): the number of fields a message had at an older
    version, for writing it to a peer that reads only that version
    (gw_msg_encode_as): an ingress sends older dispatchers the JOB they know,
    accounting answers an older ingress's KEY_LOOKUP in the KEY_INFO it knows.
    Only trailing fields are left out, so what they ask for is simply not done
    (no response cache through an older dispatcher). A message goes out as the
    newest of its shapes that the peer reads. */
#define GW_OLDER_SHAPES(S)                                                          \
    S (JOB, 2, 9)                                                                   \
    S (JOB, 4, 11)                                                                  \
    S (HEAD, 1, 3)                                                                  \
    S (END, 2, 8)                                                                   \
    S (USAGE, 2, 20)                                                                \
    S (KEY_INFO, 2, 6)

#endif
