/* Sizes and budgets written by people: "512MiB", "1.5G", "100kB", "75%".
 *
 * Grammar (surrounding blanks allowed, unit letters in any case):
 *   size    = number [blanks] [unit]
 *   number  = digits ["." digits]
 *   unit    = "B" | P | P "B" | P "iB" | P "i"    with P one of k, M, G, T, P
 * A prefix alone ("512M", "4k") is binary (1024^n), as in most command-line tools;
 * "kB", "MB", "GB" are decimal (1000^n); "KiB", "MiB", "GiB" are binary.
 * Fractions are exact to 6 decimal places and rounded down to whole bytes.
 */
#include "larder/larder.h"
#include "probe.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#define FRAC_DIGITS_MAX 6

/* A decimal number split into whole * 10^scale + frac, frac < 10^scale. */
struct decimal {
    uint64_t whole;
    uint64_t frac;
    uint64_t scale; /* 10^(digits kept after the point); 1 when there is no point */
};

static const char *skip_blanks(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

static int parse_decimal(const char **p, struct decimal *ret)
{
    const char *s = *p;
    struct decimal d = {0, 0, 1};

    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned digit = (unsigned)(*s - '0');
        if (d.whole > (UINT64_MAX - digit) / 10)
            return -ERANGE;
        d.whole = d.whole * 10 + digit;
    }
    if (*s == '.') {
        s++;
        if (!isdigit((unsigned char)*s))
            return -EINVAL;
        for (unsigned n = 0; isdigit((unsigned char)*s); s++, n++) {
            if (n >= FRAC_DIGITS_MAX)
                continue; /* finer than a millionth: dropped (rounds down) */
            d.frac = d.frac * 10 + (uint64_t)(*s - '0');
            d.scale *= 10;
        }
    }
    *p = s;
    *ret = d;
    return 0;
}

static uint64_t power(uint64_t base, unsigned n)
{
    uint64_t v = 1;
    while (n--)
        v *= base;
    return v;
}

/* Reads the unit at *p into a multiplier. An empty unit is 1. */
static int parse_unit(const char **p, uint64_t *ret_mult)
{
    static const char prefixes[] = "kmgtp";
    const char *s = *p;
    const char *at;
    uint64_t mult = 1;

    if (*s && (at = strchr(prefixes, tolower((unsigned char)*s))) != NULL) {
        unsigned n = (unsigned)(at - prefixes) + 1;
        s++;
        if (tolower((unsigned char)*s) == 'i') {
            s++;
            if (tolower((unsigned char)*s) == 'b')
                s++;
            mult = power(1024, n);
        } else if (tolower((unsigned char)*s) == 'b') {
            s++;
            mult = power(1000, n);
        } else {
            mult = power(1024, n);
        }
    } else if (tolower((unsigned char)*s) == 'b') {
        s++;
    }
    *p = s;
    *ret_mult = mult;
    return 0;
}

/* whole * mult + frac * mult / scale, without overflow, rounded down. */
static int scale_decimal(const struct decimal *d, uint64_t mult, uint64_t *ret)
{
    uint64_t v, part;

    if (mult != 0 && d->whole > UINT64_MAX / mult)
        return -ERANGE;
    v = d->whole * mult;
    /* frac < scale <= 10^6 and mult <= 1024^5 < 2^51: split mult to stay in 64 bits */
    part = (mult / d->scale) * d->frac + (mult % d->scale) * d->frac / d->scale;
    if (v > UINT64_MAX - part)
        return -ERANGE;
    *ret = v + part;
    return 0;
}

int larder_parse_size(const char *s, uint64_t *ret_bytes)
{
    struct decimal d;
    uint64_t mult, bytes;
    int r;

    if (!s || !ret_bytes)
        return -EINVAL;
    s = skip_blanks(s);
    r = parse_decimal(&s, &d);
    if (r < 0)
        return r;
    s = skip_blanks(s);
    parse_unit(&s, &mult);
    if (*skip_blanks(s) != '\0')
        return -EINVAL;
    r = scale_decimal(&d, mult, &bytes);
    if (r < 0)
        return r;
    *ret_bytes = bytes;
    return 0;
}

/* limit x (whole + frac / scale) / 100, exact and rounded down; percent <= 100. */
static uint64_t percent_of(uint64_t limit, const struct decimal *d)
{
    uint64_t num = d->whole * d->scale + d->frac; /* <= 100 * 10^6 */
    uint64_t den = 100 * d->scale;                /* <= 10^8 */

    return (limit / den) * num + (limit % den) * num / den;
}

int larder__parse_budget(const char *s, uint64_t limit, uint64_t *ret)
{
    const char *p;
    struct decimal d;
    int r;

    if (!s || !ret)
        return -EINVAL;
    p = strchr(s, '%');
    if (!p)
        return larder_parse_size(s, ret);
    if (*skip_blanks(p + 1) != '\0' || limit == 0)
        return -EINVAL;
    s = skip_blanks(s);
    r = parse_decimal(&s, &d);
    if (r < 0)
        return r;
    if (skip_blanks(s) != p)
        return -EINVAL;
    if (d.whole > 100 || (d.whole == 100 && d.frac != 0))
        return -ERANGE;
    *ret = percent_of(limit, &d);
    return 0;
}
