/*  gw_messages.h: the wire protocol model, the one place every message is defined.

    Each message has a hand-numbered id and an ordered list of typed fields with a
    one-line description. The codec (gw_proto.c) and the C structs (gw_proto.h) are
    derived from these lists by X-macros, so a field is never written down twice.

    Encoding: one ZeroMQ frame holding a msgpack array
        [GW_PROTO_VERSION, message id, field 1, field 2, ...]
    A peer that receives a different version answers nothing and logs it; ids are
    never reused, new fields go at the end and bump the version.

    Field types: U32, U64 (unsigned integers), BOOL, STR (UTF-8 string, never NULL
    after decode), BIN (opaque bytes), STRLIST (array of strings).

    Sockets: each ingress binds one ROUTER ("jobs" endpoint); each dispatcher
    connects one DEALER to every ingress it is given. Usage events go from the
    dispatcher's spool to accounting (a ROUTER), which answers USAGE_ACK after commit.
*/
#ifndef GW_MESSAGES_H_INCLUDED
#define GW_MESSAGES_H_INCLUDED

#define GW_PROTO_VERSION 1

/*  M(NAME, id, lowercase name, description) */
#define GW_MESSAGES(M)                                                              \
    M (HELLO, 1, hello, "dispatcher to ingress: I exist; here are credits and models") \
    M (HEARTBEAT, 2, heartbeat, "either way: I am alive")                           \
    M (CREDIT, 3, credit, "dispatcher to ingress: you may send this many more jobs") \
    M (RESET, 4, reset, "ingress to dispatcher: I do not know you, say HELLO again") \
    M (JOB, 5, job, "ingress to dispatcher: run one chat completion")               \
    M (CANCEL, 6, cancel, "ingress to dispatcher: the client went away")            \
    M (HEAD, 7, head, "dispatcher to ingress: a stream starts; status and type")    \
    M (CHUNK, 8, chunk, "dispatcher to ingress: stream bytes for the client")        \
    M (END, 9, end, "dispatcher to ingress: job done, returns its credit")          \
    M (USAGE, 10, usage, "dispatcher to accounting: one upstream call's usage")     \
    M (BYE, 11, bye, "dispatcher to ingress: stopping, send no more jobs")         \
    M (USAGE_ACK, 12, usage_ack, "accounting to dispatcher: these events are committed") \
    M (REPORT_REQUEST, 13, report_request, "ingress or tool to accounting: a usage report") \
    M (REPORT_REPLY, 14, report_reply, "accounting to the asker: the report as JSON")

/*  F(TYPE, field, description) */
#define GW_HELLO_FIELDS(F)                                                          \
    F (STR, dispatcher_id, "unique id of the dispatcher instance")                 \
    F (U32, credits, "jobs this ingress may send from now on (absolute)")          \
    F (STRLIST, models, "public model names the dispatcher can serve")             \
    F (STRLIST, owners, "owned_by of each model, same order as models")

#define GW_HEARTBEAT_FIELDS(F)                                                      \
    F (U64, sent_ms, "sender's wall clock in ms, for lag diagnostics")

#define GW_CREDIT_FIELDS(F)                                                         \
    F (U32, credits, "additional jobs the ingress may send")

#define GW_RESET_FIELDS(F)                                                          \
    F (STR, reason, "why the ingress does not know the dispatcher")

#define GW_JOB_FIELDS(F)                                                            \
    F (U64, job_id, "ingress-local job id, new for every dispatch")                \
    F (STR, request_id, "gateway request id, stable across re-dispatch")           \
    F (U32, dispatch, "how many times this request was dispatched before")         \
    F (STR, model, "public model name the client asked for")                      \
    F (BOOL, stream, "client asked for an SSE stream")                             \
    F (BOOL, client_usage, "client itself asked for stream_options.include_usage") \
    F (U64, queue_wait_us, "time the job waited in the ingress queue")             \
    F (BIN, body, "the client's JSON body, validated, otherwise unchanged")

#define GW_CANCEL_FIELDS(F)                                                         \
    F (U64, job_id, "job whose client disconnected")

#define GW_HEAD_FIELDS(F)                                                           \
    F (U64, job_id, "job the stream belongs to")                                   \
    F (U32, status, "HTTP status for the client")                                  \
    F (STR, content_type, "Content-Type for the client")

#define GW_CHUNK_FIELDS(F)                                                          \
    F (U64, job_id, "job the bytes belong to")                                     \
    F (BIN, data, "whole SSE events, in order")

#define GW_END_FIELDS(F)                                                            \
    F (U64, job_id, "job that finished")                                           \
    F (U32, status, "HTTP status (if no HEAD was sent) or final upstream status")  \
    F (STR, content_type, "Content-Type of body, if no HEAD was sent")             \
    F (BIN, body, "whole response body, or the tail of a stream")

#define GW_BYE_FIELDS(F)                                                            \
    F (STR, reason, "why the dispatcher stops; running jobs still finish")

#define GW_USAGE_ACK_FIELDS(F)                                                      \
    F (STRLIST, event_ids, "usage events now durable in PostgreSQL (or already were)")

#define GW_REPORT_REQUEST_FIELDS(F)                                                 \
    F (U64, correlation, "asker's id, echoed in the reply")                        \
    F (STR, period, "today, yesterday, week, month, all, or custom (from/to)")     \
    F (U64, from_ms, "custom period start, unix ms, inclusive")                   \
    F (U64, to_ms, "custom period end, unix ms, exclusive")                       \
    F (STR, group_by, "none, model, day, key or provider")                        \
    F (STR, api_key_id, "only this key's usage; empty for all (admin)")

#define GW_REPORT_REPLY_FIELDS(F)                                                   \
    F (U64, correlation, "the request's correlation id")                          \
    F (U32, status, "HTTP-like status: 200, 400 bad request, 503 database down")  \
    F (BIN, body, "JSON report, or an OpenAI-style error body")

#define GW_USAGE_FIELDS(F)                                                          \
    F (STR, event_id, "unique: request_id.dispatch.attempt")                       \
    F (STR, request_id, "gateway request id")                                      \
    F (U32, attempt, "upstream attempt number within this dispatch, from 1")       \
    F (U32, dispatch, "dispatch number of the request, from 0")                    \
    F (STR, provider, "provider name from configuration")                          \
    F (STR, upstream_model, "model name sent upstream")                            \
    F (STR, model, "model name the client asked for")                              \
    F (U64, cache_hit_tokens, "prompt tokens served from the upstream cache")      \
    F (U64, cache_miss_tokens, "prompt tokens not in the cache")                   \
    F (U64, completion_tokens, "output tokens, reasoning included")                \
    F (U64, reasoning_tokens, "reasoning part of completion_tokens")               \
    F (U32, status, "HTTP status of the upstream call, 0 if no response")          \
    F (BOOL, usage_known, "upstream reported usage; false means tokens are 0")     \
    F (BOOL, streamed, "the call was a stream")                                    \
    F (BOOL, client_aborted, "the client went away before the end")                \
    F (U64, queue_wait_us, "time in the ingress queue before dispatch")            \
    F (U64, ttfb_us, "start of the call to first upstream body byte")              \
    F (U64, total_us, "start of the call to its end")                              \
    F (U64, started_ms, "wall clock in ms when the call started")

#endif
