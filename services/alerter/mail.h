/*  mail.h: the email of an alert notice, an RFC 5322 / MIME message as libcurl
    uploads it over SMTP, and the address lists of its envelope.

    The message: From, To, Subject (the title; RFC 2047 encoded-words when it is
    not plain ASCII), Date, Message-ID <alert-ID@gateway>, MIME-Version,
    Auto-Submitted, X-Gateway-Severity, then a multipart/alternative body with a
    text/plain and a text/html part, both UTF-8 in base64. CRLF line ends
    throughout. The message is not dot-stuffed: libcurl does that while sending
    (and no line of a base64 body can begin with a dot anyway). */
#ifndef MAIL_H_INCLUDED
#define MAIL_H_INCLUDED

#include "notifier.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  A parsed address list ("a@x, Ops <b@y>"). */
typedef struct {
    char **header;  //  each entry as the header shows it: "Ops <b@y>"
    char **envelope;  //  the address alone, as MAIL FROM / RCPT TO take it: "<b@y>"
    size_t count;
} mail_addresses_t;

/*  Parses a comma-separated list of "addr" or "Display Name <addr>" entries,
    printable ASCII only. Returns 0, or -1 with the reason in error (empty list,
    malformed entry, out of memory). */
int mail_addresses_parse (mail_addresses_t *self, const char *list, char *error, size_t error_size);
void mail_addresses_free (mail_addresses_t *self);

/*  The whole message for n, from from (one header-form entry) to to, dated
    date_ms (unix ms, written in UTC). Caller frees; NULL when out of memory. */
char *mail_message_new (const notice_t *n, const char *from, const mail_addresses_t *to, int64_t date_ms);

/*  An unstructured header value (the Subject) ready to follow a header name of
    name_len bytes plus ": ": control characters become spaces; printable ASCII
    stays as it is, folded at spaces; anything else becomes "=?UTF-8?B?...?="
    encoded-words of whole UTF-8 characters, each line at most 76 characters.
    Caller frees; NULL when out of memory. */
char *mail_header_encode (const char *value, size_t name_len);

/*  text as an HTML document: escaped, inside <pre>. Caller frees. */
char *mail_html_from_text (const char *text);

void mail_test (bool verbose);

#endif
