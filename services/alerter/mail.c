/*  mail.c: the email of an alert notice, and the address lists of its envelope. */
#include "mail.h"
#include "gw_buf.h"

#include <assert.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  RFC 5322 asks for lines of at most 78 characters; RFC 2047 for lines with
//  encoded-words of at most 76, and encoded-words of at most 75.
#define LINE_SOFT 78
#define EW_LINE 76
#define EW_MAX 75
#define EW_OVERHEAD 12  //  "=?UTF-8?B?" and "?="
//  57 bytes are one 76-character base64 line (RFC 2045 §6.8).
#define B64_LINE_BYTES 57

/* ---- address lists ---- */

static bool
s_printable (const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] > 0x7e)
            return false;
    return true;
}

/*  A bare addr-spec: local@domain, no spaces, no characters that would need
    quoting. Deliberately stricter than RFC 5321: alert recipients are plain. */
static bool
s_valid_addr (const char *s, size_t n)
{
    if (!s_printable (s, n))
        return false;
    size_t at = n;
    for (size_t i = 0; i < n; i++) {
        if (strchr (" <>()[],;:\\\"", s[i]))
            return false;
        if (s[i] == '@') {
            if (at != n)
                return false;
            at = i;
        }
    }
    return at > 0 && at + 1 < n;
}

static void
s_trim (const char **s, size_t *n)
{
    while (*n && (**s == ' ' || **s == '\t'))
        (*s)++, (*n)--;
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/*  Parses one trimmed entry into its header and envelope forms. */
static int
s_parse_entry (const char *s, size_t n, char **header, char **envelope, char *error, size_t error_size)
{
    const char *open = memchr (s, '<', n);
    const char *addr = s;
    size_t addr_len = n;
    size_t display_len = 0;
    if (open) {
        if (s[n - 1] != '>') {
            snprintf (error, error_size, "address without closing '>': %.*s", (int) n, s);
            return -1;
        }
        addr = open + 1;
        addr_len = (size_t) (s + n - 1 - addr);
        display_len = (size_t) (open - s);
        const char *d = s;
        s_trim (&d, &display_len);
        if (!s_printable (d, display_len) || memchr (d, '>', display_len) || memchr (d, '"', display_len)) {
            snprintf (error, error_size, "display name must be plain ASCII without quotes: %.*s", (int) n, s);
            return -1;
        }
    }
    if (!s_valid_addr (addr, addr_len)) {
        snprintf (error, error_size, "not an email address: %.*s", (int) n, s);
        return -1;
    }
    *header = strndup (s, open ? n : addr_len);
    *envelope = malloc (addr_len + 3);
    if (!*header || !*envelope) {
        snprintf (error, error_size, "out of memory");
        return -1;
    }
    snprintf (*envelope, addr_len + 3, "<%.*s>", (int) addr_len, addr);
    return 0;
}

int
mail_addresses_parse (mail_addresses_t *self, const char *list, char *error, size_t error_size)
{
    *self = (mail_addresses_t) { 0 };
    size_t max = 1;
    for (const char *p = list; *p; p++)
        max += *p == ',';
    self->header = calloc (max, sizeof *self->header);
    self->envelope = calloc (max, sizeof *self->envelope);
    if (!self->header || !self->envelope) {
        snprintf (error, error_size, "out of memory");
        goto error;
    }
    const char *p = list;
    while (true) {
        const char *comma = strchr (p, ',');
        size_t n = comma ? (size_t) (comma - p) : strlen (p);
        const char *entry = p;
        s_trim (&entry, &n);
        if (n) {
            if (s_parse_entry (entry, n, &self->header[self->count], &self->envelope[self->count], error,
                               error_size)) {
                self->count++;  //  so that the partial entry is freed
                goto error;
            }
            self->count++;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    if (self->count == 0) {
        snprintf (error, error_size, "no address given");
        goto error;
    }
    return 0;
error:
    mail_addresses_free (self);
    return -1;
}

void
mail_addresses_free (mail_addresses_t *self)
{
    for (size_t i = 0; i < self->count; i++) {
        free (self->header[i]);
        free (self->envelope[i]);
    }
    free (self->header);
    free (self->envelope);
    *self = (mail_addresses_t) { 0 };
}

/* ---- building blocks ---- */

static int
s_printf (gw_buf_t *buf, const char *fmt, ...) __attribute__ ((format (printf, 2, 3)));

static int
s_printf (gw_buf_t *buf, const char *fmt, ...)
{
    va_list ap;
    va_start (ap, fmt);
    char *s = NULL;
    int n = vasprintf (&s, fmt, ap);
    va_end (ap);
    if (n < 0)
        return -1;
    int rc = gw_buf_append (buf, s, (size_t) n);
    free (s);
    return rc;
}

/*  data in base64, on one line. */
static int
s_base64 (gw_buf_t *buf, const void *data, size_t size)
{
    //  Chunks of a multiple of 3 bytes encode to pieces that simply concatenate.
    unsigned char out[4 * (B64_LINE_BYTES / 3) + 1];
    const unsigned char *p = data;
    for (size_t off = 0; off < size; off += B64_LINE_BYTES) {
        size_t n = size - off < B64_LINE_BYTES ? size - off : B64_LINE_BYTES;
        int len = EVP_EncodeBlock (out, p + off, (int) n);
        if (gw_buf_append (buf, out, (size_t) len))
            return -1;
    }
    return 0;
}

/*  data as base64 lines of 76 characters, each ending in CRLF. */
static int
s_base64_lines (gw_buf_t *buf, const char *data, size_t size)
{
    for (size_t off = 0; off < size; off += B64_LINE_BYTES) {
        size_t n = size - off < B64_LINE_BYTES ? size - off : B64_LINE_BYTES;
        if (s_base64 (buf, data + off, n) || gw_buf_append (buf, "\r\n", 2))
            return -1;
    }
    return 0;
}

/*  Text in canonical form (RFC 2045 §6.8: line breaks are CRLF before a text
    part is base64-encoded). */
static int
s_canonical_text (gw_buf_t *buf, const char *text)
{
    for (const char *p = text; *p; p++) {
        if (*p == '\n' && (p == text || p[-1] != '\r')) {
            if (gw_buf_append (buf, "\r\n", 2))
                return -1;
        }
        else if (gw_buf_append (buf, p, 1))
            return -1;
    }
    return buf->data ? 0 : gw_buf_append (buf, "", 0);
}

/* ---- headers ---- */

char *
mail_header_encode (const char *value, size_t name_len)
{
    char *clean = strdup (value);
    if (!clean)
        return NULL;
    //  A title is one line: a CR or LF here would end the header and start
    //  another one of the sender's choosing.
    bool ascii = strstr (clean, "=?") == NULL;
    for (unsigned char *p = (unsigned char *) clean; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            *p = ' ';
        if (*p > 0x7e)
            ascii = false;
    }
    gw_buf_t out = { 0 };
    size_t len = strlen (clean);
    size_t line = name_len + 2;
    int rc = gw_buf_append (&out, "", 0);
    if (ascii) {
        //  Folds before a space when the line would grow past 78: unfolding
        //  (dropping the CRLF) gives back the value byte for byte.
        size_t pos = 0;
        while (pos < len && rc == 0) {
            const char *space = strchr (clean + pos + 1, ' ');
            size_t seg = space ? (size_t) (space - clean) - pos : len - pos;
            //  Never before a lone space: a folded line must not be all blanks.
            if (clean[pos] == ' ' && seg > 1 && line + seg > LINE_SOFT) {
                rc |= gw_buf_append (&out, "\r\n", 2);
                line = 0;
            }
            rc |= gw_buf_append (&out, clean + pos, seg);
            line += seg;
            pos += seg;
        }
    }
    else {
        size_t pos = 0;
        while (pos < len && rc == 0) {
            size_t room = EW_LINE - (pos ? 1 : line);
            if (room > EW_MAX)
                room = EW_MAX;
            size_t max = room > EW_OVERHEAD + 8 ? (room - EW_OVERHEAD) / 4 * 3 : 6;
            size_t n = len - pos < max ? len - pos : max;
            //  An encoded-word holds whole characters (RFC 2047 §5): back up
            //  to the start of the one that would be split.
            if (pos + n < len) {
                size_t whole = n;
                while (whole && ((unsigned char) clean[pos + whole] & 0xc0) == 0x80)
                    whole--;
                if (whole)
                    n = whole;
            }
            if (pos)
                rc |= gw_buf_append (&out, "\r\n ", 3);
            rc |= gw_buf_append (&out, "=?UTF-8?B?", 10);
            rc |= s_base64 (&out, clean + pos, n);
            rc |= gw_buf_append (&out, "?=", 2);
            pos += n;
        }
    }
    free (clean);
    if (rc) {
        gw_buf_free (&out);
        return NULL;
    }
    return gw_buf_take (&out);
}

/*  RFC 5322 date in UTC, with English names whatever the locale. */
static void
s_format_date (int64_t date_ms, char *out, size_t size)
{
    static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    time_t t = (time_t) (date_ms / 1000);
    struct tm tm;
    gmtime_r (&t, &tm);
    snprintf (out, size, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday], tm.tm_mday,
              months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/*  The alert id as the left part of a Message-ID: characters outside atext
    (RFC 5322 §3.2.3) and '.' become '_'. */
static char *
s_id_part (const char *alert_id)
{
    char *id = strdup (*alert_id ? alert_id : "_");
    if (!id)
        return NULL;
    for (char *p = id; *p; p++)
        if (!(((unsigned char) *p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')
              || (*p && strchr ("!#$%&'*+-/=?^_`{|}~.", *p))))
            *p = '_';
    return id;
}

/*  A header value that must stay one short token (the severity). */
static void
s_token (const char *value, char *out, size_t size)
{
    size_t n = 0;
    for (const char *p = value; *p && n + 1 < size && n < 32; p++)
        if ((unsigned char) *p > 0x20 && (unsigned char) *p < 0x7f)
            out[n++] = *p;
    out[n] = 0;
}

/* ---- the message ---- */

char *
mail_html_from_text (const char *text)
{
    gw_buf_t out = { 0 };
    int rc = s_printf (&out, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>"
                             "<body><pre style=\"font-family: monospace; white-space: pre-wrap\">");
    for (const char *p = text; *p && rc == 0; p++) {
        switch (*p) {
            case '&': rc = s_printf (&out, "&amp;"); break;
            case '<': rc = s_printf (&out, "&lt;"); break;
            case '>': rc = s_printf (&out, "&gt;"); break;
            case '"': rc = s_printf (&out, "&quot;"); break;
            case '\'': rc = s_printf (&out, "&#39;"); break;
            default: rc = gw_buf_append (&out, p, 1);
        }
    }
    rc |= s_printf (&out, "</pre></body></html>\n");
    if (rc) {
        gw_buf_free (&out);
        return NULL;
    }
    return gw_buf_take (&out);
}

/*  One part of the multipart/alternative body. */
static int
s_part (gw_buf_t *out, const char *boundary, const char *type, const char *content)
{
    gw_buf_t canon = { 0 };
    int rc = s_canonical_text (&canon, content);
    rc |= s_printf (out, "--%s\r\nContent-Type: %s; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                    boundary, type);
    if (rc == 0)
        rc = s_base64_lines (out, canon.data, canon.len);
    gw_buf_free (&canon);
    return rc;
}

char *
mail_message_new (const notice_t *n, const char *from, const mail_addresses_t *to, int64_t date_ms)
{
    assert (n->alert_id && n->severity && n->title && n->text);
    assert (to->count > 0);
    gw_buf_t out = { 0 };
    char *subject = mail_header_encode (n->title, strlen ("Subject"));
    char *id = s_id_part (n->alert_id);
    char *html = n->html ? NULL : mail_html_from_text (n->text);
    int rc = subject && id && (n->html || html) ? 0 : -1;

    char date[64];
    s_format_date (date_ms, date, sizeof date);
    //  The boundary starts with "=_", which cannot occur in base64 text.
    uint64_t hash = 14695981039346656037ULL;
    for (const char *p = n->alert_id; *p; p++)
        hash = (hash ^ (unsigned char) *p) * 1099511628211ULL;
    hash = (hash ^ (uint64_t) date_ms) * 1099511628211ULL;
    char boundary[40];
    snprintf (boundary, sizeof boundary, "=_gw_%016llx", (unsigned long long) hash);
    char severity[40];
    s_token (n->severity, severity, sizeof severity);

    rc |= s_printf (&out, "From: %s\r\nTo: ", from);
    size_t line = 4;
    for (size_t i = 0; i < to->count; i++) {
        size_t len = strlen (to->header[i]);
        if (i && line + 2 + len > LINE_SOFT) {
            rc |= s_printf (&out, ",\r\n %s", to->header[i]);
            line = 1 + len;
        }
        else {
            rc |= s_printf (&out, "%s%s", i ? ", " : "", to->header[i]);
            line += (i ? 2 : 0) + len;
        }
    }
    rc |= s_printf (&out,
                    "\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <alert-%s@gateway>\r\nMIME-Version: 1.0\r\n"
                    "Auto-Submitted: auto-generated\r\nX-Gateway-Severity: %s\r\n"
                    "Content-Type: multipart/alternative; boundary=\"%s\"\r\n\r\n",
                    subject ? subject : "", date, id ? id : "", severity, boundary);
    rc |= s_part (&out, boundary, "text/plain", n->text);
    rc |= s_part (&out, boundary, "text/html", n->html ? n->html : html ? html : "");
    rc |= s_printf (&out, "--%s--\r\n", boundary);
    free (subject);
    free (id);
    free (html);
    if (rc) {
        gw_buf_free (&out);
        return NULL;
    }
    return gw_buf_take (&out);
}

/* ---- selftest ---- */

/*  Decodes one base64 run; returns its length. */
static size_t
s_test_unbase64 (const char *in, size_t len, char *out)
{
    int n = EVP_DecodeBlock ((unsigned char *) out, (const unsigned char *) in, (int) len);
    assert (n >= 0);
    while (len && in[len - 1] == '=')
        len--, n--;
    return (size_t) n;
}

/*  Unfolds an encoded Subject and decodes its encoded-words, checking line
    lengths on the way. */
static void
s_test_decode_subject (const char *encoded, size_t name_len, char *out)
{
    size_t line = name_len + 2, n = 0;
    for (const char *p = encoded; *p;) {
        if (p[0] == '\r') {
            assert (p[1] == '\n' && p[2] == ' ');
            p += 3, line = 1;
            continue;
        }
        assert (strncmp (p, "=?UTF-8?B?", 10) == 0);
        const char *end = strstr (p + 10, "?=");
        assert (end);
        size_t word = (size_t) (end + 2 - p);
        assert (word <= EW_MAX && line + word <= EW_LINE);
        n += s_test_unbase64 (p + 10, (size_t) (end - p - 10), out + n);
        line += word;
        p = end + 2;
    }
    out[n] = 0;
}

/*  The decoded content of the part whose Content-Type starts with type. */
static void
s_test_part (const char *msg, const char *type, char *out)
{
    char header[64];
    snprintf (header, sizeof header, "Content-Type: %s;", type);
    const char *p = strstr (msg, header);
    assert (p);
    p = strstr (p, "\r\n\r\n") + 4;
    size_t n = 0;
    while (*p != '-') {
        const char *eol = strstr (p, "\r\n");
        assert (eol && eol - p <= 76);
        n += s_test_unbase64 (p, (size_t) (eol - p), out + n);
        p = eol + 2;
    }
    out[n] = 0;
}

void
mail_test (bool verbose)
{
    if (verbose)
        printf (" * mail: ");
    char error[256];
    mail_addresses_t to;
    assert (mail_addresses_parse (&to, " ops@example.com,, On Call <oncall@example.com> ", error, sizeof error) == 0);
    assert (to.count == 2);
    assert (strcmp (to.header[0], "ops@example.com") == 0 && strcmp (to.envelope[0], "<ops@example.com>") == 0);
    assert (strcmp (to.header[1], "On Call <oncall@example.com>") == 0);
    assert (strcmp (to.envelope[1], "<oncall@example.com>") == 0);
    const char *bad[] = { "", " , ", "ops", "ops@", "@x", "a b@x", "a@b@c", "x <a@b", "a@b\r\nBcc: c@d",
                          "\"Q\" <a@b>", "Zoë <a@b>" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mail_addresses_t none;
        assert (mail_addresses_parse (&none, bad[i], error, sizeof error) == -1);
        assert (none.count == 0 && none.header == NULL);
    }

    //  Plain ASCII stays; CR and LF cannot start a header of their own.
    char *s = mail_header_encode ("[warning] Disk 80% full", 7);
    assert (strcmp (s, "[warning] Disk 80% full") == 0);
    free (s);
    s = mail_header_encode ("a\r\nBcc: x@y", 7);
    assert (strcmp (s, "a  Bcc: x@y") == 0);
    free (s);
    //  Long ASCII folds at spaces; unfolding gives it back.
    const char *long_title = "[critical] Daily budget 100% used: key web-team (CNY 100.02 of 100.00) on every "
                             "ingress of the production gateway cluster";
    s = mail_header_encode (long_title, 7);
    assert (strstr (s, "\r\n "));
    char unfolded[512] = "";
    size_t line = 9;
    for (const char *p = s; *p; p++) {
        if (*p == '\r') {
            assert (line <= LINE_SOFT);
            line = 0, p++;
            continue;
        }
        strncat (unfolded, p, 1);
        line++;
    }
    assert (line <= LINE_SOFT);
    assert (strcmp (unfolded, long_title) == 0);
    free (s);
    //  "=?" in ASCII would read as an encoded-word: encode it.
    s = mail_header_encode ("=?x?=", 7);
    assert (strcmp (s, "=?UTF-8?B?PT94Pz0=?=") == 0);
    free (s);
    //  Non-ASCII: one encoded-word (vector from Python's base64 module).
    s = mail_header_encode ("[critical] 预算", 7);
    assert (strcmp (s, "=?UTF-8?B?W2NyaXRpY2FsXSDpooTnrpc=?=") == 0);
    free (s);
    //  Long Chinese: several words, whole characters each, lines within 76.
    const char *zh = "[critical] 每日预算已用尽：密钥 web-team 已花费 100.02 元，上限 100.00 元，请尽快处理";
    s = mail_header_encode (zh, 7);
    char decoded[512];
    s_test_decode_subject (s, 7, decoded);
    assert (strcmp (decoded, zh) == 0);
    for (const char *w = strstr (s, "?B?"); w; w = strstr (w + 3, "?B?")) {
        char part[128];
        const char *end = strstr (w, "?=");
        size_t n = s_test_unbase64 (w + 3, (size_t) (end - w - 3), part);
        assert (n > 0 && ((unsigned char) part[0] & 0xc0) != 0x80);  //  starts on a character
    }
    free (s);

    char *html = mail_html_from_text ("a < b & \"c\"\n");
    assert (strstr (html, "<pre style=\"font-family: monospace; white-space: pre-wrap\">"
                          "a &lt; b &amp; &quot;c&quot;\n</pre>"));
    free (html);

    //  The whole message.
    notice_t n = {
        .alert_id = "budget-day/web team",
        .severity = "critical",
        .title = "[critical] 预算",
        .text = "Key web-team used 100%.\n.\n..dots stay\n",
    };
    char *msg = mail_message_new (&n, "Gateway <gateway@localhost>", &to, 1735689600123);
    assert (msg);
    const char *head = "From: Gateway <gateway@localhost>\r\nTo: ops@example.com, On Call <oncall@example.com>\r\n"
                       "Subject: =?UTF-8?B?W2NyaXRpY2FsXSDpooTnrpc=?=\r\nDate: Wed, 01 Jan 2025 00:00:00 +0000\r\n"
                       "Message-ID: <alert-budget-day/web_team@gateway>\r\nMIME-Version: 1.0\r\n"
                       "Auto-Submitted: auto-generated\r\nX-Gateway-Severity: critical\r\n"
                       "Content-Type: multipart/alternative; boundary=\"=_gw_";
    assert (strncmp (msg, head, strlen (head)) == 0);
    for (const char *p = msg; *p; p++)
        assert (*p != '\n' || (p > msg && p[-1] == '\r'));
    char part[1024];
    s_test_part (msg, "text/plain", part);
    assert (strcmp (part, "Key web-team used 100%.\r\n.\r\n..dots stay\r\n") == 0);
    s_test_part (msg, "text/html", part);
    assert (strstr (part, "<pre style=\"font-family: monospace; white-space: pre-wrap\">Key web-team used 100%.\r\n"));
    assert (strlen (msg) > 2 && strcmp (msg + strlen (msg) - 2, "\r\n") == 0);
    const char *b = strstr (msg, "boundary=\"") + 10;
    char closing[64];
    snprintf (closing, sizeof closing, "\r\n--%.*s--\r\n", (int) (strchr (b, '"') - b), b);
    assert (strstr (msg, closing));
    free (msg);
    //  Given HTML is used as it is.
    n.html = "<p>hi</p>";
    msg = mail_message_new (&n, "gateway@localhost", &to, 0);
    s_test_part (msg, "text/html", part);
    assert (strcmp (part, "<p>hi</p>") == 0);
    assert (strstr (msg, "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
    free (msg);
    mail_addresses_free (&to);
    mail_addresses_free (&to);  //  safe twice
    if (verbose)
        printf ("OK\n");
}
