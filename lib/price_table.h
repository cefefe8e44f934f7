/*  price_table.h: upstream token prices with effective dates and time-of-day windows,
    and the exact integer cost of one call.

    The data file is prices/prices.csv (format in prices/README.md): one row per
    provider, upstream model, currency, effective_from and optional UTC window.

    Units. No floating point anywhere:
      price   micro-units of currency (1e-6) per 1,000,000 tokens: ¥0.2/1M is 200000.
      cost    pico-units of currency (1e-12): tokens × price, exact, no division.
              1,000,000 cache-hit tokens at ¥0.2/1M cost 200,000,000,000 pico = ¥0.2.
    A uint64_t cost holds up to ~18.4 million currency units, far above one call;
    sums over many calls belong in PostgreSQL numeric (sum(bigint) is numeric).

    Reasoning tokens are billed as output: DeepSeek counts them inside
    completion_tokens, so pass completion_tokens as output_tokens and never add
    reasoning_tokens on top.

    The table is immutable once loaded, so lookups from several threads are safe.
*/
#ifndef PRICE_TABLE_H_INCLUDED
#define PRICE_TABLE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  Prices of one (provider, model, currency) at one moment, in micro-units of
    currency per 1M tokens. */
typedef struct {
    uint64_t hit;  //  prompt tokens served from the context cache
    uint64_t miss;  //  prompt tokens not in the cache
    uint64_t output;  //  completion tokens, reasoning included
} price_t;

typedef struct price_table_t price_table_t;

/*  Loads and validates the CSV file at path. Returns NULL when the file cannot be
    read or any row is malformed, with "path:line: reason" in err (errlen bytes). */
price_table_t *price_table_load (const char *path, char *err, size_t errlen);

/*  Destroys the table and nulls the caller's pointer; safe to call twice. */
void price_table_destroy (price_table_t **self_p);

/*  Prices in effect for a call that started at started_ms (unix ms, UTC): the row
    with the latest effective_from <= started_ms, its time window if one covers the
    time of day, else its all-day row. Returns 0, or -1 when no price applies:
    unknown provider, model or currency, before the first effective date, or in a
    period the file marks as unpriced. Names and currency match exactly. */
int price_table_lookup (price_table_t *self, const char *provider, const char *model, const char *currency,
                        int64_t started_ms, price_t *out);

/*  Cost in pico-units of one call, priced as price_table_lookup finds. Returns 0
    with *cost_pico set, or -1 (cost untouched) when no price applies or the cost
    does not fit 64 bits. */
int price_table_cost (price_table_t *self, const char *provider, const char *model, const char *currency,
                      int64_t started_ms, uint64_t hit_tokens, uint64_t miss_tokens, uint64_t output_tokens,
                      uint64_t *cost_pico);

/*  Highest prices of a public model in currency at at_ms, over every provider
    and every row in force then (the all-day row and each time window of the
    period in effect), in micro-units per 1M tokens; input is the higher of the
    cache-hit and cache-miss prices. Bounds what one call may cost before it is
    made. Returns 0, or -1 (outputs untouched) when nothing prices the model. */
int price_table_max_rates (price_table_t *self, const char *model, const char *currency, int64_t at_ms,
                           uint64_t *input, uint64_t *output);

/*  Cost in pico-units of the given tokens at price. Returns 0, or -1 on overflow. */
int price_cost (const price_t *price, uint64_t hit_tokens, uint64_t miss_tokens, uint64_t output_tokens,
                uint64_t *cost_pico);

/*  Parses a non-negative decimal ("2", "0.028", "1.10") into micro-units exactly.
    At most 6 integer digits and 6 decimal places; no sign, exponent, spaces or a
    bare point. Returns 0, or -1 (micro untouched) when the text is not such a number. */
int price_parse_micro (const char *text, uint64_t *micro);

/*  Formats a pico amount as an exact decimal in currency units, with at least 6 and
    at most 12 decimal places ("0.000006", "5.261724", "0.000000123456"). The string
    belongs to the caller; NULL only when out of memory. */
char *price_format_pico (uint64_t pico);

/*  Rounds a pico amount to micro-units, half up (500,000 pico rounds up), for display
    and for reports that do not need sub-micro precision. */
uint64_t price_pico_to_micro (uint64_t pico);

void price_table_test (bool verbose);

#endif
