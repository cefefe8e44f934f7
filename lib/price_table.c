/*  price_table.c: upstream token prices from prices/prices.csv, and exact call costs. */
#include "price_table.h"
#include "gw_env.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MICRO UINT64_C (1000000)
#define PICO_PER_UNIT UINT64_C (1000000000000)
#define MS_PER_DAY 86400000LL
#define MAX_FILE_SIZE (16 * 1024 * 1024)  //  a price list is a few kB; this stops a wrong path
#define MAX_NAME 127
#define NFIELDS 8

static const char *s_columns[NFIELDS] = { "provider",       "model",           "currency",
                                          "effective_from", "window",          "cache_hit_per_m",
                                          "cache_miss_per_m", "output_per_m" };

//  One parsed data row, before grouping.
typedef struct {
    char *provider, *model;
    char currency[4];
    int64_t from_ms;
    bool windowed;
    int start, end;  //  minutes of the UTC day, [start, end), wrapping midnight when start > end
    bool priced;  //  false: the file marks the period as having no known price
    price_t price;
    size_t line;
} row_t;

typedef struct {
    int start, end;
    price_t price;
} window_t;

//  Everything that applies from one effective_from until the next one.
typedef struct {
    int64_t from_ms;
    bool priced;
    price_t base;  //  outside every window
    size_t first_window, nwindows;
} period_t;

//  One (provider, model, currency), its periods sorted by from_ms.
typedef struct {
    char *provider, *model;
    char currency[4];
    size_t first_period, nperiods;
} series_t;

//  Three flat arrays: series sorted by key for bsearch, each owning a contiguous run
//  of periods, each owning a contiguous run of windows. One lookup is a bsearch, a
//  binary search over dates and a scan of at most a handful of windows.
struct price_table_t {
    series_t *series;
    size_t nseries;
    period_t *periods;
    size_t nperiods;
    window_t *windows;
    size_t nwindows;
};

static void s_fail (char *err, size_t errlen, const char *fmt, ...) __attribute__ ((format (printf, 3, 4)));

static void
s_fail (char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list args;
    va_start (args, fmt);
    vsnprintf (err, errlen, fmt, args);
    va_end (args);
}

static char *
s_trim (char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *end = s + strlen (s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        *--end = 0;
    return s;
}

//  Splits line on commas in place; returns the number of fields (may exceed max,
//  in which case only max are stored).
static size_t
s_split (char *line, char **fields, size_t max)
{
    size_t n = 0;
    for (char *p = line;;) {
        char *comma = strchr (p, ',');
        if (comma)
            *comma = 0;
        if (n < max)
            fields[n] = s_trim (p);
        n++;
        if (!comma)
            return n;
        p = comma + 1;
    }
}

static bool
s_digits (const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static int
s_number (const char *s, size_t n)
{
    int value = 0;
    for (size_t i = 0; i < n; i++)
        value = value * 10 + (s[i] - '0');
    return value;
}

//  Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm),
//  so that no time zone or libc state is involved.
static int64_t
s_days_from_civil (int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

//  Exactly YYYY-MM-DDTHH:MM:SSZ, a real UTC date from 1970 on, into unix ms.
static int
s_parse_time (const char *s, int64_t *ms)
{
    if (strlen (s) != 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':'
        || s[19] != 'Z')
        return -1;
    if (!s_digits (s, 4) || !s_digits (s + 5, 2) || !s_digits (s + 8, 2) || !s_digits (s + 11, 2)
        || !s_digits (s + 14, 2) || !s_digits (s + 17, 2))
        return -1;
    int year = s_number (s, 4), month = s_number (s + 5, 2), day = s_number (s + 8, 2);
    int hour = s_number (s + 11, 2), minute = s_number (s + 14, 2), second = s_number (s + 17, 2);
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1970 || month < 1 || month > 12 || day < 1)
        return -1;
    if (day > mdays[month - 1] + (month == 2 && leap))
        return -1;
    if (hour > 23 || minute > 59 || second > 59)
        return -1;
    int64_t days = s_days_from_civil (year, month, day);
    *ms = ((days * 24 + hour) * 60 + minute) * 60000LL + second * 1000LL;
    return 0;
}

static int
s_parse_clock (const char *s, int *minutes)
{
    if (!s_digits (s, 2) || s[2] != ':' || !s_digits (s + 3, 2))
        return -1;
    int hour = s_number (s, 2), minute = s_number (s + 3, 2);
    if (hour > 23 || minute > 59)
        return -1;
    *minutes = hour * 60 + minute;
    return 0;
}

//  Exactly HH:MM-HH:MM; start == end is refused because it could mean either an
//  empty window or the whole day.
static int
s_parse_window (const char *s, int *start, int *end)
{
    if (strlen (s) != 11 || s[5] != '-')
        return -1;
    if (s_parse_clock (s, start) || s_parse_clock (s + 6, end))
        return -1;
    return *start == *end ? -1 : 0;
}

static bool
s_window_covers (int start, int end, int minute)
{
    if (start < end)
        return minute >= start && minute < end;
    return minute >= start || minute < end;
}

//  Two arcs of the day circle overlap exactly when one contains the other's start.
static bool
s_windows_overlap (const row_t *a, const row_t *b)
{
    return s_window_covers (a->start, a->end, b->start) || s_window_covers (b->start, b->end, a->start);
}

static bool
s_valid_name (const char *s)
{
    size_t len = strlen (s);
    if (len == 0 || len > MAX_NAME)
        return false;
    for (const char *p = s; *p; p++)
        if (*p <= ' ' || *p > '~' || *p == '"' || *p == '#')
            return false;
    return true;
}

static bool
s_valid_currency (const char *s)
{
    return strlen (s) == 3 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z' && s[2] >= 'A'
           && s[2] <= 'Z';
}

int
price_parse_micro (const char *text, uint64_t *micro)
{
    assert (text);
    assert (micro);
    const char *p = text;
    uint64_t whole = 0, frac = 0;
    int idigits = 0, fdigits = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (++idigits > 6)
            return -1;
        whole = whole * 10 + (uint64_t) (*p - '0');
    }
    if (idigits == 0)
        return -1;
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (++fdigits > 6)
                return -1;
            frac = frac * 10 + (uint64_t) (*p - '0');
        }
        if (fdigits == 0)
            return -1;
    }
    if (*p)
        return -1;
    for (int i = fdigits; i < 6; i++)
        frac *= 10;
    *micro = whole * MICRO + frac;
    return 0;
}

static void
s_rows_free (row_t *rows, size_t nrows)
{
    for (size_t i = 0; i < nrows; i++) {
        free (rows[i].provider);
        free (rows[i].model);
    }
    free (rows);
}

//  Parses one data line (already split) into row; 0 or -1 with err set.
static int
s_parse_row (char **f, row_t *row, const char *source, size_t line, char *err, size_t errlen)
{
    if (!s_valid_name (f[0]) || !s_valid_name (f[1])) {
        s_fail (err, errlen, "%s:%zu: provider and model must be 1-%d printable characters without spaces",
                source, line, MAX_NAME);
        return -1;
    }
    if (!s_valid_currency (f[2])) {
        s_fail (err, errlen, "%s:%zu: currency \"%s\" is not a three-letter upper-case code", source, line, f[2]);
        return -1;
    }
    if (s_parse_time (f[3], &row->from_ms)) {
        s_fail (err, errlen, "%s:%zu: effective_from \"%s\" is not a UTC date-time like 2025-09-05T16:00:00Z",
                source, line, f[3]);
        return -1;
    }
    row->windowed = *f[4] != 0;
    if (row->windowed && s_parse_window (f[4], &row->start, &row->end)) {
        s_fail (err, errlen, "%s:%zu: window \"%s\" is not HH:MM-HH:MM (UTC, start != end)", source, line, f[4]);
        return -1;
    }
    row->priced = *f[5] || *f[6] || *f[7];
    if (!row->priced && row->windowed) {
        s_fail (err, errlen, "%s:%zu: a window row needs prices", source, line);
        return -1;
    }
    uint64_t *slots[3] = { &row->price.hit, &row->price.miss, &row->price.output };
    for (int i = 0; row->priced && i < 3; i++)
        if (price_parse_micro (f[5 + i], slots[i])) {
            s_fail (err, errlen,
                    "%s:%zu: %s \"%s\" is not a decimal with at most 6 integer digits and 6 decimal places",
                    source, line, s_columns[5 + i], f[5 + i]);
            return -1;
        }
    memcpy (row->currency, f[2], 4);
    row->line = line;
    row->provider = strdup (f[0]);
    row->model = strdup (f[1]);
    if (!row->provider || !row->model) {
        s_fail (err, errlen, "%s:%zu: out of memory", source, line);
        return -1;
    }
    return 0;
}

static int
s_row_compare (const void *a_, const void *b_)
{
    const row_t *a = a_, *b = b_;
    int rc = strcmp (a->provider, b->provider);
    if (!rc)
        rc = strcmp (a->model, b->model);
    if (!rc)
        rc = strcmp (a->currency, b->currency);
    if (!rc)
        rc = (a->from_ms > b->from_ms) - (a->from_ms < b->from_ms);
    if (!rc)
        rc = (int) a->windowed - (int) b->windowed;  //  the all-day row first
    if (!rc)
        rc = a->start - b->start;
    if (!rc)
        rc = (a->line > b->line) - (a->line < b->line);
    return rc;
}

static bool
s_same_series (const row_t *a, const row_t *b)
{
    return strcmp (a->provider, b->provider) == 0 && strcmp (a->model, b->model) == 0
           && strcmp (a->currency, b->currency) == 0;
}

//  Checks the rows of one period, rows[0..n) sorted, all-day row first.
static int
s_check_period (const row_t *rows, size_t n, const char *source, char *err, size_t errlen)
{
    if (rows[0].windowed) {
        s_fail (err, errlen, "%s:%zu: window row without an all-day row (empty window) for %s,%s,%s at the same "
                "effective_from", source, rows[0].line, rows[0].provider, rows[0].model, rows[0].currency);
        return -1;
    }
    if (n > 1 && !rows[1].windowed) {
        s_fail (err, errlen, "%s:%zu: second all-day row for %s,%s,%s at this effective_from (first at line %zu)",
                source, rows[1].line, rows[1].provider, rows[1].model, rows[1].currency, rows[0].line);
        return -1;
    }
    if (n > 1 && !rows[0].priced) {
        s_fail (err, errlen, "%s:%zu: an unpriced period cannot have window rows", source, rows[0].line);
        return -1;
    }
    for (size_t i = 1; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (s_windows_overlap (&rows[i], &rows[j])) {
                s_fail (err, errlen, "%s:%zu: window overlaps the window at line %zu", source, rows[j].line,
                        rows[i].line);
                return -1;
            }
    return 0;
}

//  Groups sorted rows into series, periods and windows; takes the name strings.
static price_table_t *
s_build (row_t *rows, size_t nrows, const char *source, char *err, size_t errlen)
{
    price_table_t *self = calloc (1, sizeof *self);
    if (self) {
        self->series = calloc (nrows, sizeof *self->series);
        self->periods = calloc (nrows, sizeof *self->periods);
        self->windows = calloc (nrows, sizeof *self->windows);
    }
    if (!self || !self->series || !self->periods || !self->windows) {
        s_fail (err, errlen, "%s: out of memory", source);
        goto error;
    }
    for (size_t i = 0; i < nrows;) {
        size_t j = i + 1;
        while (j < nrows && s_same_series (&rows[i], &rows[j]) && rows[j].from_ms == rows[i].from_ms)
            j++;
        if (s_check_period (rows + i, j - i, source, err, errlen))
            goto error;
        const series_t *last = self->nseries ? &self->series[self->nseries - 1] : NULL;
        if (!last || strcmp (last->provider, rows[i].provider) || strcmp (last->model, rows[i].model)
            || strcmp (last->currency, rows[i].currency)) {
            series_t *series = &self->series[self->nseries++];
            series->provider = rows[i].provider;
            series->model = rows[i].model;
            rows[i].provider = rows[i].model = NULL;
            memcpy (series->currency, rows[i].currency, 4);
            series->first_period = self->nperiods;
        }
        self->series[self->nseries - 1].nperiods++;
        period_t *period = &self->periods[self->nperiods++];
        period->from_ms = rows[i].from_ms;
        period->priced = rows[i].priced;
        period->base = rows[i].price;
        period->first_window = self->nwindows;
        period->nwindows = j - i - 1;
        for (size_t k = i + 1; k < j; k++)
            self->windows[self->nwindows++] = (window_t) { rows[k].start, rows[k].end, rows[k].price };
        i = j;
    }
    return self;

error:
    price_table_destroy (&self);
    return NULL;
}

//  Parses the whole text of a price file; source names it in errors.
static price_table_t *
s_parse (const char *text, const char *source, char *err, size_t errlen)
{
    char *copy = strdup (text);
    row_t *rows = NULL;
    size_t nrows = 0, rows_max = 0;
    price_table_t *self = NULL;
    if (!copy) {
        s_fail (err, errlen, "%s: out of memory", source);
        goto error;
    }
    bool have_header = false;
    char *line = copy;
    //  A UTF-8 byte order mark, as some spreadsheet exports add, is not part of the header.
    if (strncmp (line, "\xEF\xBB\xBF", 3) == 0)
        line += 3;
    for (size_t lineno = 1; line; lineno++) {
        char *next = strchr (line, '\n');
        if (next)
            *next++ = 0;
        char *trimmed = s_trim (line);
        line = next;
        if (*trimmed == 0 || *trimmed == '#')
            continue;
        char *fields[NFIELDS];
        size_t nfields = s_split (trimmed, fields, NFIELDS);
        if (!have_header) {
            bool ok = nfields == NFIELDS;
            for (size_t i = 0; ok && i < NFIELDS; i++)
                ok = strcmp (fields[i], s_columns[i]) == 0;
            if (!ok) {
                s_fail (err, errlen,
                        "%s:%zu: expected the header "
                        "provider,model,currency,effective_from,window,cache_hit_per_m,cache_miss_per_m,output_per_m",
                        source, lineno);
                goto error;
            }
            have_header = true;
            continue;
        }
        if (nfields != NFIELDS) {
            s_fail (err, errlen, "%s:%zu: expected %d fields, found %zu", source, lineno, NFIELDS, nfields);
            goto error;
        }
        if (nrows == rows_max) {
            size_t max = rows_max ? rows_max * 2 : 64;
            row_t *grown = realloc (rows, max * sizeof *rows);
            if (!grown) {
                s_fail (err, errlen, "%s:%zu: out of memory", source, lineno);
                goto error;
            }
            rows = grown;
            rows_max = max;
        }
        rows[nrows] = (row_t) { 0 };
        int rc = s_parse_row (fields, &rows[nrows], source, lineno, err, errlen);
        nrows++;  //  counted even on failure so that its strings are freed
        if (rc)
            goto error;
    }
    if (!have_header) {
        s_fail (err, errlen, "%s: no header line", source);
        goto error;
    }
    if (nrows == 0) {
        s_fail (err, errlen, "%s: no price rows", source);
        goto error;
    }
    qsort (rows, nrows, sizeof *rows, s_row_compare);
    self = s_build (rows, nrows, source, err, errlen);

error:
    s_rows_free (rows, nrows);
    free (copy);
    return self;
}

price_table_t *
price_table_load (const char *path, char *err, size_t errlen)
{
    assert (path);
    FILE *file = fopen (path, "rb");
    if (!file) {
        s_fail (err, errlen, "%s: %s", path, strerror (errno));
        return NULL;
    }
    char *text = malloc (MAX_FILE_SIZE + 1);
    size_t size = text ? fread (text, 1, MAX_FILE_SIZE + 1, file) : 0;
    int read_errno = ferror (file) ? (errno ? errno : EIO) : 0;
    fclose (file);
    price_table_t *self = NULL;
    if (!text)
        s_fail (err, errlen, "%s: out of memory", path);
    else if (read_errno)
        s_fail (err, errlen, "%s: %s", path, strerror (read_errno));
    else if (size > MAX_FILE_SIZE)
        s_fail (err, errlen, "%s: larger than %d bytes", path, MAX_FILE_SIZE);
    else if (memchr (text, 0, size))
        s_fail (err, errlen, "%s: contains a NUL byte", path);
    else {
        text[size] = 0;
        self = s_parse (text, path, err, errlen);
    }
    free (text);
    return self;
}

void
price_table_destroy (price_table_t **self_p)
{
    assert (self_p);
    price_table_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->nseries; i++) {
        free (self->series[i].provider);
        free (self->series[i].model);
    }
    free (self->series);
    free (self->periods);
    free (self->windows);
    free (self);
    *self_p = NULL;
}

typedef struct {
    const char *provider, *model, *currency;
} lookup_key_t;

static int
s_key_compare (const void *key_, const void *series_)
{
    const lookup_key_t *key = key_;
    const series_t *series = series_;
    int rc = strcmp (key->provider, series->provider);
    if (!rc)
        rc = strcmp (key->model, series->model);
    if (!rc)
        rc = strcmp (key->currency, series->currency);
    return rc;
}

int
price_table_lookup (price_table_t *self, const char *provider, const char *model, const char *currency,
                    int64_t started_ms, price_t *out)
{
    assert (self);
    assert (provider && model && currency);
    assert (out);
    lookup_key_t key = { provider, model, currency };
    const series_t *series = bsearch (&key, self->series, self->nseries, sizeof *series, s_key_compare);
    if (!series)
        return -1;
    //  The last period that started at or before the call: binary search for the
    //  first one that starts after it.
    const period_t *periods = self->periods + series->first_period;
    size_t lo = 0, hi = series->nperiods;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (periods[mid].from_ms <= started_ms)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || !periods[lo - 1].priced)
        return -1;
    const period_t *period = &periods[lo - 1];
    int64_t ms_of_day = started_ms % MS_PER_DAY;
    if (ms_of_day < 0)
        ms_of_day += MS_PER_DAY;
    int minute = (int) (ms_of_day / 60000);
    for (size_t i = 0; i < period->nwindows; i++) {
        const window_t *window = &self->windows[period->first_window + i];
        if (s_window_covers (window->start, window->end, minute)) {
            *out = window->price;
            return 0;
        }
    }
    *out = period->base;
    return 0;
}

/*  The period of series in effect at ms, or NULL before its first one. */
static const period_t *
s_period_at (const price_table_t *self, const series_t *series, int64_t ms)
{
    const period_t *periods = self->periods + series->first_period;
    size_t lo = 0, hi = series->nperiods;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (periods[mid].from_ms <= ms)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? &periods[lo - 1] : NULL;
}

int
price_table_max_rates (price_table_t *self, const char *model, const char *currency, int64_t at_ms,
                       uint64_t *input, uint64_t *output)
{
    assert (self);
    assert (model && currency);
    assert (input && output);
    //  A linear scan: there are a handful of series, and admissions are far
    //  rarer than the price lookups of stored usage.
    bool found = false;
    uint64_t in = 0, out = 0;
    for (size_t i = 0; i < self->nseries; i++) {
        const series_t *series = &self->series[i];
        if (strcmp (series->model, model) || strcmp (series->currency, currency))
            continue;
        const period_t *period = s_period_at (self, series, at_ms);
        if (!period || !period->priced)
            continue;
        //  Every window too: a call may start outside one and be priced inside.
        for (size_t w = 0; w <= period->nwindows; w++) {
            const price_t *p = w == 0 ? &period->base : &self->windows[period->first_window + w - 1].price;
            uint64_t prompt = p->hit > p->miss ? p->hit : p->miss;
            in = prompt > in ? prompt : in;
            out = p->output > out ? p->output : out;
        }
        found = true;
    }
    if (!found)
        return -1;
    *input = in;
    *output = out;
    return 0;
}

int
price_cost (const price_t *price, uint64_t hit_tokens, uint64_t miss_tokens, uint64_t output_tokens,
            uint64_t *cost_pico)
{
    assert (price);
    assert (cost_pico);
    uint64_t hit, miss, output, sum;
    if (__builtin_mul_overflow (hit_tokens, price->hit, &hit)
        || __builtin_mul_overflow (miss_tokens, price->miss, &miss)
        || __builtin_mul_overflow (output_tokens, price->output, &output) || __builtin_add_overflow (hit, miss, &sum)
        || __builtin_add_overflow (sum, output, &sum))
        return -1;
    *cost_pico = sum;
    return 0;
}

int
price_table_cost (price_table_t *self, const char *provider, const char *model, const char *currency,
                  int64_t started_ms, uint64_t hit_tokens, uint64_t miss_tokens, uint64_t output_tokens,
                  uint64_t *cost_pico)
{
    price_t price;
    if (price_table_lookup (self, provider, model, currency, started_ms, &price))
        return -1;
    return price_cost (&price, hit_tokens, miss_tokens, output_tokens, cost_pico);
}

char *
price_format_pico (uint64_t pico)
{
    char text[48];
    int len = snprintf (text, sizeof text, "%" PRIu64 ".%012" PRIu64, pico / PICO_PER_UNIT, pico % PICO_PER_UNIT);
    assert (len > 13 && (size_t) len < sizeof text);
    //  Down to micro-units every digit is shown, so amounts line up in reports;
    //  below that only the significant ones.
    int min_len = len - 6;
    while (len > min_len && text[len - 1] == '0')
        len--;
    text[len] = 0;
    return strdup (text);
}

uint64_t
price_pico_to_micro (uint64_t pico)
{
    return pico / MICRO + (pico % MICRO >= MICRO / 2);
}

//  --------------------------------------------------------------------------
//  Selftest

static int64_t
s_ms (const char *iso)
{
    int64_t ms;
    int rc = s_parse_time (iso, &ms);
    assert (rc == 0);
    return ms;
}

static bool
s_price_is (price_table_t *t, const char *provider, const char *model, const char *currency, int64_t ms,
            uint64_t hit, uint64_t miss, uint64_t output)
{
    price_t p;
    return price_table_lookup (t, provider, model, currency, ms, &p) == 0 && p.hit == hit && p.miss == miss
           && p.output == output;
}

static bool
s_format_is (uint64_t pico, const char *expected)
{
    char *text = price_format_pico (pico);
    bool same = text && strcmp (text, expected) == 0;
    free (text);
    return same;
}

//  A file that must be refused, at line, with a message containing words.
static void
s_expect_refused (const char *text, const char *where, const char *words)
{
    char err[256] = "";
    price_table_t *t = s_parse (text, "t.csv", err, sizeof err);
    if (t || !strstr (err, where) || !strstr (err, words))
        fprintf (stderr, "price_table: expected refusal at \"%s\" with \"%s\", got \"%s\"\n", where, words, err);
    assert (!t);
    assert (strstr (err, where));
    assert (strstr (err, words));
}

#define HEADER "provider,model,currency,effective_from,window,cache_hit_per_m,cache_miss_per_m,output_per_m\n"

void
price_table_test (bool verbose)
{
    if (verbose)
        printf (" * price_table: ");

    //  Decimals parse exactly into micro-units, or not at all.
    uint64_t micro = 42;
    assert (price_parse_micro ("0.028", &micro) == 0 && micro == 28000);
    assert (price_parse_micro ("0.2", &micro) == 0 && micro == 200000);
    assert (price_parse_micro ("2", &micro) == 0 && micro == 2000000);
    assert (price_parse_micro ("1.10", &micro) == 0 && micro == 1100000);
    assert (price_parse_micro ("0.000001", &micro) == 0 && micro == 1);
    assert (price_parse_micro ("0", &micro) == 0 && micro == 0);
    assert (price_parse_micro ("999999.999999", &micro) == 0 && micro == 999999999999ULL);
    const char *bad[] = { "",     "0.0000001", "0.1000000", "-1",  "+1",  "abc", "1e3", "1.",  ".5",  " 1",
                          "1 ",   "0x10",      "1,5",       "1.2.3", "1234567", "NaN", "inf", "¥2",  "0.2 " };
    micro = 42;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert (price_parse_micro (bad[i], &micro) == -1);
    assert (micro == 42);

    //  Formatting is exact; rounding to micro-units is half up.
    assert (s_format_is (0, "0.000000"));
    assert (s_format_is (6000000, "0.000006"));
    assert (s_format_is (123456, "0.000000123456"));
    assert (s_format_is (1, "0.000000000001"));
    assert (s_format_is (5261724000000ULL, "5.261724"));
    assert (s_format_is (1500000000000ULL, "1.500000"));
    assert (s_format_is (736641360000ULL, "0.73664136"));
    assert (s_format_is (UINT64_MAX, "18446744.073709551615"));
    assert (price_pico_to_micro (0) == 0);
    assert (price_pico_to_micro (499999) == 0);
    assert (price_pico_to_micro (500000) == 1);
    assert (price_pico_to_micro (1499999) == 1);
    assert (price_pico_to_micro (1500000) == 2);
    assert (price_pico_to_micro (736641360000ULL) == 736641);
    assert (price_pico_to_micro (UINT64_MAX) == UINT64_MAX / MICRO + 1);

    //  Costs overflow into an error, never a wrapped number.
    price_t big = { UINT64_MAX / 2, 1, 1 };
    uint64_t cost = 7;
    assert (price_cost (&big, 3, 0, 0, &cost) == -1 && cost == 7);
    assert (price_cost (&big, 2, 0, 0, &cost) == 0 && cost == UINT64_MAX - 1);
    assert (price_cost (&big, 2, 1, 1, &cost) == -1);

    //  Dates are strict UTC.
    int64_t ms;
    assert (s_parse_time ("1970-01-01T00:00:00Z", &ms) == 0 && ms == 0);
    assert (s_parse_time ("2025-09-05T16:00:00Z", &ms) == 0 && ms == 1757088000000LL);
    assert (s_parse_time ("2024-02-29T23:59:59Z", &ms) == 0 && ms == 1709251199000LL);
    const char *bad_times[] = { "2025-02-29T00:00:00Z", "2025-09-05 16:00:00Z", "2025-09-05T16:00:00+08:00",
                                "2025-13-01T00:00:00Z", "2025-09-05T24:00:00Z", "2025-09-05T16:00:00",
                                "1969-12-31T23:59:59Z", "2100-02-29T00:00:00Z", "2025-9-5T16:00:00Z" };
    for (size_t i = 0; i < sizeof bad_times / sizeof bad_times[0]; i++)
        assert (s_parse_time (bad_times[i], &ms) == -1);

    //  Malformed files are refused with the line at fault.
    s_expect_refused ("", "t.csv", "no header");
    s_expect_refused ("# only a comment\n\n", "t.csv", "no header");
    s_expect_refused (HEADER, "t.csv", "no price rows");
    s_expect_refused ("provider,model,currency\n", "t.csv:1:", "expected the header");
    s_expect_refused ("# c\n" HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2\n", "t.csv:3:", "expected 8 fields");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3,4\n", "t.csv:2:", "found 9");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,0.0000001,2,3\n", "t.csv:2:", "cache_hit_per_m");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,-2,3\n", "t.csv:2:", "cache_miss_per_m");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2,three\n", "t.csv:2:", "output_per_m");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,,3\n", "t.csv:2:", "cache_miss_per_m");
    s_expect_refused (HEADER "p,m,cny,2025-01-01T00:00:00Z,,1,2,3\n", "t.csv:2:", "currency");
    s_expect_refused (HEADER "p,m,YUAN,2025-01-01T00:00:00Z,,1,2,3\n", "t.csv:2:", "currency");
    s_expect_refused (HEADER "p,,CNY,2025-01-01T00:00:00Z,,1,2,3\n", "t.csv:2:", "provider and model");
    s_expect_refused (HEADER "p,a model,CNY,2025-01-01T00:00:00Z,,1,2,3\n", "t.csv:2:", "provider and model");
    s_expect_refused (HEADER "p,m,CNY,2025-02-30T00:00:00Z,,1,2,3\n", "t.csv:2:", "effective_from");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01,,1,2,3\n", "t.csv:2:", "effective_from");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,16:30,1,2,3\n", "t.csv:2:", "window");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,16:30-16:30,1,2,3\n", "t.csv:2:", "window");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,24:00-01:00,1,2,3\n", "t.csv:2:", "window");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,16:60-01:00,1,2,3\n", "t.csv:2:", "window");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,16:30-00:30,,,\n", "t.csv:2:", "needs prices");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,16:30-00:30,1,2,3\n", "t.csv:2:", "without an all-day");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n"
                             "q,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n"
                             "p,m,CNY,2025-01-01T00:00:00Z,,1,2,4\n",
                      "t.csv:4:", "(first at line 2)");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n"
                             "p,m,CNY,2025-01-01T00:00:00Z,16:30-00:30,1,2,3\n"
                             "p,m,CNY,2025-01-01T00:00:00Z,00:00-01:00,1,2,3\n",
                      "t.csv:3:", "overlaps the window at line 4");
    s_expect_refused (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,,,\n"
                             "p,m,CNY,2025-01-01T00:00:00Z,16:30-00:30,1,2,3\n",
                      "t.csv:2:", "unpriced period");

    //  Effective dates, windows across midnight, and an unpriced gap. Comments,
    //  blank lines, spaces around fields and CRLF line ends are accepted.
    const char *text = "# test prices\r\n" HEADER "\n"
                       "p, m ,CNY,2025-06-01T12:00:00Z,22:00-02:00,0.25,0.5,0.75\r\n"
                       "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n"
                       "p,m,CNY,2025-06-01T12:00:00Z,,0.5,1,1.5\n"
                       "p,m,CNY,2025-06-01T12:00:00Z,12:00-13:00,0.1,0.2,0.3\n"
                       "  # indented comment\n"
                       "p,m,CNY,2025-09-01T00:00:00Z,,,,\n"
                       "p,m,CNY,2025-10-01T00:00:00Z,,0.2,2,3\n"
                       "p,m,USD,2025-01-01T00:00:00Z,,0.028,0.28,0.42\n";
    char err[256] = "";
    price_table_t *t = s_parse (text, "t.csv", err, sizeof err);
    if (!t)
        fprintf (stderr, "price_table: %s\n", err);
    assert (t);
    int64_t change = s_ms ("2025-06-01T12:00:00Z");
    price_t p;
    assert (price_table_lookup (t, "p", "m", "CNY", s_ms ("2025-01-01T00:00:00Z") - 1, &p) == -1);
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-01-01T00:00:00Z"), 1000000, 2000000, 3000000));
    assert (s_price_is (t, "p", "m", "CNY", change - 1, 1000000, 2000000, 3000000));
    assert (s_price_is (t, "p", "m", "CNY", change, 100000, 200000, 300000));  //  new period, in 12:00-13:00
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-01T12:59:59Z") + 999, 100000, 200000, 300000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-01T13:00:00Z"), 500000, 1000000, 1500000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-01T21:59:59Z") + 999, 500000, 1000000, 1500000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-01T22:00:00Z"), 250000, 500000, 750000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-01T23:59:59Z"), 250000, 500000, 750000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-02T00:00:00Z"), 250000, 500000, 750000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-02T01:59:59Z") + 999, 250000, 500000, 750000));
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-06-02T02:00:00Z"), 500000, 1000000, 1500000));
    assert (price_table_lookup (t, "p", "m", "CNY", s_ms ("2025-09-01T00:00:00Z"), &p) == -1);
    assert (price_table_lookup (t, "p", "m", "CNY", s_ms ("2025-09-30T23:59:59Z"), &p) == -1);
    assert (s_price_is (t, "p", "m", "CNY", s_ms ("2025-10-01T00:00:00Z"), 200000, 2000000, 3000000));
    assert (s_price_is (t, "p", "m", "CNY", INT64_MAX, 200000, 2000000, 3000000));
    assert (s_price_is (t, "p", "m", "USD", change, 28000, 280000, 420000));
    assert (price_table_lookup (t, "p", "m", "EUR", change, &p) == -1);
    //  Highest rates of a model over providers and the windows of the period in force.
    uint64_t max_in = 0, max_out = 0;
    assert (price_table_max_rates (t, "m", "CNY", change, &max_in, &max_out) == 0);
    assert (max_in == 1000000 && max_out == 1500000);
    assert (price_table_max_rates (t, "m", "CNY", s_ms ("2025-03-01T00:00:00Z"), &max_in, &max_out) == 0);
    assert (max_in == 2000000 && max_out == 3000000);
    assert (price_table_max_rates (t, "m", "CNY", s_ms ("2025-09-02T00:00:00Z"), &max_in, &max_out) == -1);
    assert (price_table_max_rates (t, "m", "EUR", change, &max_in, &max_out) == -1);
    assert (price_table_max_rates (t, "p", "CNY", change, &max_in, &max_out) == -1);
    price_table_t *two = s_parse (HEADER "p,m,CNY,2025-01-01T00:00:00Z,,1,2,3\n"
                                         "q,m,CNY,2025-01-01T00:00:00Z,,5,4,1\n",
                                  "t.csv", err, sizeof err);
    assert (two);
    assert (price_table_max_rates (two, "m", "CNY", change, &max_in, &max_out) == 0);
    assert (max_in == 5000000 && max_out == 3000000);
    price_table_destroy (&two);

    assert (price_table_lookup (t, "p", "M", "CNY", change, &p) == -1);
    assert (price_table_lookup (t, "q", "m", "CNY", change, &p) == -1);
    assert (price_table_lookup (t, "p", "m", "CNY", INT64_MIN, &p) == -1);

    //  A sum over a million calls, half before the change at 12:00 and half after
    //  (at 13:00, outside the windows), equals the closed form exactly. Token
    //  counts cycle through 0..m-1 with m dividing 500,000, so each half holds
    //  whole cycles and sums to half of the total.
    uint64_t sum = 0;
    for (uint64_t i = 0; i < 1000000; i++) {
        int64_t at = i < 500000 ? change - 1 : change + 3600000;
        uint64_t one;
        int rc = price_table_cost (t, "p", "m", "CNY", at, i % 1000, (i * 7) % 5000, (i * 13) % 4000, &one);
        assert (rc == 0);
        sum += one;
    }
    uint64_t hit_total = 1000ULL * (999 * 1000 / 2), miss_total = 200ULL * (4999 * 5000 / 2);
    uint64_t out_total = 250ULL * (3999 * 4000 / 2);
    uint64_t closed = hit_total / 2 * (1000000 + 500000) + miss_total / 2 * (2000000 + 1000000)
                      + out_total / 2 * (3000000 + 1500000);
    assert (sum == closed);
    assert (sum == 8622750000000000ULL);
    price_table_destroy (&t);
    price_table_destroy (&t);
    assert (t == NULL);

    //  The shipped file: current, historical, off-peak and unpriced periods.
    const char *path = gw_env_str ("GW_PRICES", "prices/prices.csv");
    t = price_table_load (path, err, sizeof err);
    if (!t)
        fprintf (stderr, "price_table: %s\n", err);
    assert (t);
    int64_t v32 = s_ms ("2025-12-01T08:00:00Z");
    assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", v32, 200000, 2000000, 3000000));
    assert (s_price_is (t, "deepseek", "deepseek-reasoner", "CNY", v32, 200000, 2000000, 3000000));
    assert (s_price_is (t, "deepseek", "deepseek-chat", "USD", v32, 28000, 280000, 420000));
    assert (s_price_is (t, "deepseek", "deepseek-reasoner", "USD", v32, 28000, 280000, 420000));
    //  The hand computation: 1,000,000 cache-hit and 2,345,678 cache-miss prompt
    //  tokens, 123,456 completion tokens of which 100,000 are reasoning, at V3.2:
    //    CNY 1,000,000 × 0.2 + 2,345,678 × 2 + 123,456 × 3 = 5,261,724 µ¥ per 1M,
    //        so ¥5.261724;
    //    USD 1,000,000 × 0.028 + 2,345,678 × 0.28 + 123,456 × 0.42 = 736,641.36 µ$ per 1M,
    //        so $0.73664136.
    //  Reasoning tokens are inside the completion tokens: they are not added again.
    uint64_t completion_tokens = 123456, reasoning_tokens = 100000;
    assert (reasoning_tokens <= completion_tokens);
    assert (price_table_cost (t, "deepseek", "deepseek-reasoner", "CNY", v32, 1000000, 2345678, completion_tokens,
                              &cost)
            == 0);
    assert (cost == 5261724000000ULL);
    assert (s_format_is (cost, "5.261724"));
    assert (price_table_cost (t, "deepseek", "deepseek-chat", "USD", v32, 1000000, 2345678, completion_tokens, &cost)
            == 0);
    assert (cost == 736641360000ULL);
    assert (s_format_is (cost, "0.73664136"));
    assert (price_pico_to_micro (cost) == 736641);
    //  V3.1 from 2025-09-05T16:00Z: USD only, and the off-peak discount is gone.
    int64_t v31 = s_ms ("2025-09-05T16:00:00Z");
    assert (s_price_is (t, "deepseek", "deepseek-chat", "USD", v31, 70000, 560000, 1680000));
    assert (s_price_is (t, "deepseek", "deepseek-reasoner", "USD", v31 + 3600000, 70000, 560000, 1680000));
    assert (price_table_lookup (t, "deepseek", "deepseek-chat", "CNY", v31, &p) == -1);
    assert (price_table_lookup (t, "deepseek", "deepseek-reasoner", "CNY", s_ms ("2025-09-20T00:00:00Z"), &p)
            == -1);
    //  Just before: early 2025, at 15:59:59.999 UTC, standard price.
    assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", v31 - 1, 500000, 2000000, 8000000));
    assert (s_price_is (t, "deepseek", "deepseek-reasoner", "USD", v31 - 1, 140000, 550000, 2190000));
    //  Early 2025 off-peak, UTC 16:30-00:30, across midnight.
    const char *night[] = { "2025-03-10T16:30:00Z", "2025-03-10T23:59:59Z", "2025-03-11T00:00:00Z",
                            "2025-03-11T00:29:59Z" };
    for (size_t i = 0; i < 4; i++) {
        assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", s_ms (night[i]), 250000, 1000000, 4000000));
        assert (s_price_is (t, "deepseek", "deepseek-reasoner", "CNY", s_ms (night[i]), 250000, 1000000, 4000000));
        assert (s_price_is (t, "deepseek", "deepseek-chat", "USD", s_ms (night[i]), 35000, 135000, 550000));
        assert (s_price_is (t, "deepseek", "deepseek-reasoner", "USD", s_ms (night[i]), 35000, 135000, 550000));
    }
    const char *day[] = { "2025-03-11T00:30:00Z", "2025-03-11T12:00:00Z", "2025-03-11T16:29:59Z" };
    for (size_t i = 0; i < 3; i++) {
        assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", s_ms (day[i]), 500000, 2000000, 8000000));
        assert (s_price_is (t, "deepseek", "deepseek-reasoner", "CNY", s_ms (day[i]), 1000000, 4000000, 16000000));
        assert (s_price_is (t, "deepseek", "deepseek-chat", "USD", s_ms (day[i]), 70000, 270000, 1100000));
        assert (s_price_is (t, "deepseek", "deepseek-reasoner", "USD", s_ms (day[i]), 140000, 550000, 2190000));
    }
    //  Before the discount began, nights were at the standard price.
    assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", s_ms ("2025-02-20T18:00:00Z"), 500000, 2000000,
                        8000000));
    assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", s_ms ("2025-02-26T16:29:59Z"), 500000, 2000000,
                        8000000));
    assert (s_price_is (t, "deepseek", "deepseek-chat", "CNY", s_ms ("2025-02-26T16:30:00Z"), 250000, 1000000,
                        4000000));
    //  Before the first row, and names the file does not price.
    assert (price_table_lookup (t, "deepseek", "deepseek-chat", "CNY", s_ms ("2025-01-01T00:00:00Z"), &p) == -1);
    assert (price_table_lookup (t, "deepseek", "deepseek-chat", "EUR", v32, &p) == -1);
    assert (price_table_lookup (t, "deepseek", "deepseek-coder", "CNY", v32, &p) == -1);
    assert (price_table_lookup (t, "nobody", "deepseek-chat", "CNY", v32, &p) == -1);
    price_table_destroy (&t);

    //  A missing file names itself.
    assert (price_table_load ("/nonexistent/prices.csv", err, sizeof err) == NULL);
    assert (strstr (err, "/nonexistent/prices.csv"));

    if (verbose)
        printf ("OK\n");
}
