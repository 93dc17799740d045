/* Fuzzes larderd's bearer token files and checks (src/daemon/auth.c).
 *
 * An input is a token file, then optionally a NUL byte and the value of an
 * Authorization header. Checks, beyond "no crash, no leak, no undefined behaviour":
 *   - a file loads exactly when it has at least one line that is a token, and every
 *     line is blank, a comment (of any length), or a token (printable, no blanks) of at
 *     most 512 bytes on a line shorter than 519 bytes;
 *   - every token of a loaded file is accepted as "Bearer TOKEN", and "bearer  TOKEN";
 *     a token with one byte changed or one byte more is not (unless that is a token too);
 *   - the header of the input is accepted exactly when it names one of the tokens;
 *   - larder__consttime_equal is equality. */
#include "fuzz.h"

#include <ctype.h>
#include <strings.h>

#include "../../src/daemon/auth.c"

#define TOKENS_NAME "tokens"
/* Bytes of a line read at once by the loader (its buffer, less the NUL). */
#define LINE_MAX (MAX_TOKEN + 7)

/* The reference reading of a token file: its tokens, or -1 for a file with a bad line. */
struct ref {
    size_t n;
    char *tok[64];
    bool overflow; /* more tokens than kept */
};

static void ref_free(struct ref *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->tok[i]);
}

static int ref_read(const uint8_t *data, size_t size, struct ref *r)
{
    memset(r, 0, sizeof *r);
    const uint8_t *p = data, *end = data + size;
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *e = nl ? nl : end;
        const uint8_t *s = p;
        p = nl ? nl + 1 : end;
        /* a line of LINE_MAX bytes or more is a comment or an error */
        bool cut = (size_t)(e - s) >= LINE_MAX;
        if (cut)
            e = s + LINE_MAX;
        while (s < e && isspace(*s))
            s++;
        while (e > s && isspace(e[-1]))
            e--;
        if (s < e && *s == '#')
            continue;
        if (cut || (size_t)(e - s) > MAX_TOKEN)
            return -1;
        if (s == e)
            continue;
        for (const uint8_t *c = s; c < e; c++)
            if (!isprint(*c) || isspace(*c))
                return -1;
        if (r->n == sizeof r->tok / sizeof r->tok[0]) {
            r->overflow = true;
            continue;
        }
        r->tok[r->n] = strndup((const char *)s, (size_t)(e - s));
        FUZZ_ASSERT(r->tok[r->n]);
        r->n++;
    }
    return r->n ? 0 : -1;
}

static bool ref_has(const struct ref *r, const char *tok)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->tok[i], tok) == 0)
            return true;
    return false;
}

static bool check(const struct larder__tokens *t, const char *fmt, const char *tok)
{
    char h[2 * MAX_TOKEN];
    snprintf(h, sizeof h, fmt, tok);
    return larder__tokens_check(t, h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t file_len = nul ? (size_t)(nul - data) : size;
    char *header = NULL;
    if (nul) {
        size_t n = size - file_len - 1;
        header = malloc(n + 1);
        FUZZ_ASSERT(header);
        memcpy(header, nul + 1, n);
        header[n] = 0;
    }
    fuzz_temp_write(TOKENS_NAME, data, file_len);

    struct larder__tokens *t = NULL;
    char err[256] = "";
    int rc = larder__tokens_load(fuzz_temp_path(TOKENS_NAME), &t, err, sizeof err);
    struct ref r;
    int want = ref_read(data, file_len, &r);
    if (rc != 0)
        FUZZ_ASSERT(!t && err[0]);
    FUZZ_ASSERT((rc == 0) == (want == 0));

    if (t) {
        FUZZ_ASSERT(larder__tokens_count(t) >= r.n);
        FUZZ_ASSERT(r.overflow || larder__tokens_count(t) == r.n);
        for (size_t i = 0; i < r.n; i++) {
            const char *tok = r.tok[i];
            FUZZ_ASSERT(check(t, "Bearer %s", tok));
            FUZZ_ASSERT(check(t, "bearer  %s", tok));
            FUZZ_ASSERT(!check(t, "Basic %s", tok));
            char other[MAX_TOKEN + 2];
            snprintf(other, sizeof other, "%sx", tok);
            if (!ref_has(&r, other) && !r.overflow)
                FUZZ_ASSERT(!check(t, "Bearer %s", other));
            snprintf(other, sizeof other, "%s", tok);
            other[0] = other[0] == 'A' ? 'B' : 'A';
            if (!ref_has(&r, other) && !r.overflow)
                FUZZ_ASSERT(!check(t, "Bearer %s", other));
        }
        FUZZ_ASSERT(!larder__tokens_check(t, NULL));
        FUZZ_ASSERT(!larder__tokens_check(t, "Bearer "));
        if (header && !r.overflow) {
            bool ok = larder__tokens_check(t, header);
            const char *h = header;
            bool bearer = strncasecmp(h, "Bearer ", 7) == 0;
            if (bearer)
                for (h += 7; *h == ' '; h++)
                    ;
            FUZZ_ASSERT(ok == (bearer && ref_has(&r, h)));
        }
    }
    FUZZ_ASSERT(!larder__tokens_check(NULL, header));

    /* constant-time equality is equality, whichever lengths */
    size_t half = file_len / 2;
    const char *a = (const char *)data, *b = (const char *)data + half;
    size_t blen = file_len - half;
    FUZZ_ASSERT(larder__consttime_equal(a, half, b, blen) ==
                (half == blen && memcmp(a, b, half) == 0));
    FUZZ_ASSERT(larder__consttime_equal(a, half, a, half));

    larder__tokens_free(t);
    ref_free(&r);
    free(header);
    return 0;
}
