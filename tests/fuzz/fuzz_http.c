/* Fuzzes what larderd does with a request before any model is involved
 * (src/daemon/routes.c and http.c): the route matcher, the typed query arguments, and
 * the JSON text writer that every listing and error goes through.
 *
 * An input is up to four lines: METHOD, URL, a query argument's VALUE, then TEXT (the
 * rest, newlines included, up to its first NUL). A missing VALUE line is an absent
 * argument; a VALUE line that is exactly "\x01" is an argument without a value ("?wait").
 * Checks, beyond "no crash, no leak, no undefined behaviour":
 *   - match() agrees with a plain reference matcher on every route, and the model name
 *     it copies out is the path's part, never empty, never holding a '/';
 *   - a query argument either parses to a value within its bound or sets a 400 reply;
 *   - the JSON writer's text parses back (jansson) to the same string (or, for bytes
 *     that are not UTF-8, to some valid string), and its numbers to the same numbers. */
#include "fuzz.h"

#include <math.h>

#include "../../src/daemon/http.c"
#include "../../src/daemon/routes.c"

/* ---- a connection with one query argument ----------------------------------------------- */

static struct {
    int present;
    const char *value; /* NULL: given without a value */
} g_query;

/* The MHD call larder__request_arg_parse makes, answered from g_query. Defined here, it
 * takes the place of libmicrohttpd's for this program. */
enum MHD_Result MHD_lookup_connection_value_n(struct MHD_Connection *connection,
                                              enum MHD_ValueKind kind, const char *key,
                                              size_t key_size, const char **value_ptr,
                                              size_t *value_size_ptr)
{
    FUZZ_ASSERT(kind == MHD_GET_ARGUMENT_KIND && key && strlen(key) == key_size);
    if (!g_query.present)
        return MHD_NO;
    if (value_ptr)
        *value_ptr = g_query.value;
    if (value_size_ptr)
        *value_size_ptr = g_query.value ? strlen(g_query.value) : 0;
    return MHD_YES;
}

/* ---- routes ---------------------------------------------------------------------------- */

/* The reference: same number of '/'-separated parts, each equal, or "*" against a part of
 * 1..255 bytes. */
static int reference_match(const char *pattern, const char *path)
{
    for (;;) {
        size_t pn = strcspn(pattern, "/"), n = strcspn(path, "/");
        if (pn == 1 && pattern[0] == '*') {
            if (n == 0 || n >= 256)
                return 0;
        } else if (pn != n || memcmp(pattern, path, n) != 0) {
            return 0;
        }
        pattern += pn;
        path += n;
        if (!*pattern || !*path)
            return !*pattern && !*path;
        pattern++;
        path++;
    }
}

static void check_routes(const char *method, const char *url)
{
    const char *path = url;
    while (*path == '/')
        path++;
    size_t plen = strlen(path);
    const char *p = plen && path[plen - 1] == '/' ? "" : path;
    unsigned matched = 0;
    (void)method_bit(method);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char name[256];
        memset(name, 0x55, sizeof name);
        int m = match(routes[i].pattern, p, name, sizeof name);
        FUZZ_ASSERT(m == reference_match(routes[i].pattern, p));
        if (!m)
            continue;
        matched++;
        const char *star = strchr(routes[i].pattern, '*');
        if (!star)
            continue;
        size_t n = strnlen(name, sizeof name);
        FUZZ_ASSERT(n > 0 && n < sizeof name && !strchr(name, '/'));
        /* the pattern with the name in place of '*' is the path */
        size_t pre = (size_t)(star - routes[i].pattern);
        FUZZ_ASSERT(strncmp(p, routes[i].pattern, pre) == 0);
        FUZZ_ASSERT(strncmp(p + pre, name, n) == 0);
        FUZZ_ASSERT(strcmp(p + pre + n, star + 1) == 0);
    }
    /* patterns are distinct: a path matches at most one */
    FUZZ_ASSERT(matched <= 1);
}

/* ---- query arguments ------------------------------------------------------------------- */

static void check_reply(struct larder__request *r, bool ok)
{
    if (ok) {
        FUZZ_ASSERT(!r->resp);
        return;
    }
    FUZZ_ASSERT(r->status == 400 || r->status == 500);
    FUZZ_ASSERT(r->error_code && strcmp(r->error_code, "bad_parameter") == 0);
    if (r->resp)
        MHD_destroy_response(r->resp);
    memset(r, 0, sizeof *r);
    r->conn = (struct MHD_Connection *)&g_query;
}

static void check_args(void)
{
    static const uint64_t bounds[] = {UINT64_MAX, 86400000, 1000, 1, 0};
    struct larder__request r = {.conn = (struct MHD_Connection *)&g_query};
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
        uint64_t max = bounds[i];
        bool b = false;
        bool ok = larder__request_arg_parse(&r, "wait", LARDER__ARG_BOOL, max, &b);
        FUZZ_ASSERT(ok || g_query.present);
        check_reply(&r, ok);

        int64_t ms = -7;
        ok = larder__request_arg_parse(&r, "timeout", LARDER__ARG_DURATION, max, &ms);
        if (ok && g_query.present)
            FUZZ_ASSERT(ms >= 0 && (uint64_t)ms <= max);
        if (!g_query.present)
            FUZZ_ASSERT(ok && ms == -7);
        check_reply(&r, ok);

        uint64_t n = 12345;
        ok = larder__request_arg_parse(&r, "limit", LARDER__ARG_COUNT, max, &n);
        if (ok && g_query.present) {
            FUZZ_ASSERT(n <= max);
            char back[32];
            snprintf(back, sizeof back, "%llu", (unsigned long long)n);
            /* digits only, so the value is the number, maybe with leading zeros */
            const char *v = g_query.value;
            while (v[0] == '0' && v[1])
                v++;
            FUZZ_ASSERT(strcmp(back, v) == 0);
        }
        check_reply(&r, ok);
    }
}

/* The config parsers the same value goes through when it is a config value. */
static void check_value_parsers(const char *v)
{
    int64_t ms;
    bool b;
    char *host = NULL;
    unsigned port = 0;
    if (larder__parse_duration(v, &ms) == 0)
        FUZZ_ASSERT(ms >= -1);
    (void)larder__parse_bool(v, &b);
    if (larder__parse_listen(v, &host, &port) == 0) {
        FUZZ_ASSERT(host && port <= 65535);
        free(host);
    }
    char size[64];
    larder__format_size((uint64_t)strlen(v) << (strlen(v) % 64 / 2), size, sizeof size);
}

/* ---- JSON text --------------------------------------------------------------------------- */

static json_t *parse_text(struct larder__text *t)
{
    FUZZ_ASSERT(!t->failed && t->buf);
    json_error_t e;
    json_t *j = json_loadb(t->buf, t->len, JSON_DECODE_ANY, &e);
    if (!j)
        fprintf(stderr, "not JSON: %s: %.*s\n", e.text, (int)(t->len < 400 ? t->len : 400),
                t->buf);
    FUZZ_ASSERT(j);
    return j;
}

static void check_json_string(const char *s, bool big)
{
    struct larder__text t = {0};
    if (big)
        larder__text_reserve(&t, TEXT_MAP_MIN + 1); /* the mapped kind of text */
    larder__text_json_string(&t, s);
    json_t *j = parse_text(&t);
    FUZZ_ASSERT(json_is_string(j));
    json_t *want = json_string(s); /* NULL when s is not UTF-8 */
    if (want)
        FUZZ_ASSERT(json_equal(j, want));
    json_decref(want);
    json_decref(j);
    larder__text_free(&t);
    FUZZ_ASSERT(!t.buf && !t.len);

    larder__text_json_string(&t, NULL);
    FUZZ_ASSERT(t.len == 4 && memcmp(t.buf, "null", 4) == 0);
    larder__text_free(&t);
}

static void check_json_numbers(const uint8_t *data, size_t size)
{
    uint64_t u = 0;
    double d;
    memcpy(&u, data, size < sizeof u ? size : sizeof u);
    memcpy(&d, &u, sizeof d);

    struct larder__text t = {0};
    larder__text_json_uint(&t, u);
    json_t *j;
    if (u <= INT64_MAX) {
        j = parse_text(&t);
        FUZZ_ASSERT(json_is_integer(j) && (uint64_t)json_integer_value(j) == u);
        json_decref(j);
    } else { /* past jansson's integers: read it back as text */
        char back[32];
        FUZZ_ASSERT(t.len < sizeof back);
        memcpy(back, t.buf, t.len);
        back[t.len] = 0;
        FUZZ_ASSERT(strtoull(back, NULL, 10) == u);
    }
    larder__text_free(&t);

    larder__text_json_int(&t, (int64_t)u);
    j = parse_text(&t);
    FUZZ_ASSERT(json_is_integer(j) && json_integer_value(j) == (int64_t)u);
    json_decref(j);
    larder__text_free(&t);

    larder__text_json_real(&t, d);
    j = parse_text(&t);
    if (!isfinite(d)) {
        FUZZ_ASSERT(json_is_null(j));
    } else {
        FUZZ_ASSERT(json_is_real(j));
        double back = json_real_value(j);
        FUZZ_ASSERT(fabs(back - d) <= 1e-6 * fabs(d) + 1e-300);
        FUZZ_ASSERT(signbit(back) == signbit(d));
    }
    json_decref(j);
    larder__text_free(&t);

    larder__text_json_bool(&t, u & 1);
    j = parse_text(&t);
    FUZZ_ASSERT(json_is_boolean(j) && json_is_true(j) == (int)(u & 1));
    json_decref(j);
    larder__text_free(&t);
}

/* ---- the input ------------------------------------------------------------------------- */

/* Next line of [*p, end) as a new string; NULL at the end. */
static char *next_field(const uint8_t **p, const uint8_t *end, bool last)
{
    if (*p > end)
        return NULL;
    const uint8_t *nl = last ? NULL : memchr(*p, '\n', (size_t)(end - *p));
    size_t n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
    char *s = malloc(n + 1);
    FUZZ_ASSERT(s);
    memcpy(s, *p, n);
    s[n] = 0;
    *p = nl ? nl + 1 : end + 1;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    char *method = next_field(&p, end, false);
    char *url = next_field(&p, end, false);
    char *value = next_field(&p, end, false);
    char *text = next_field(&p, end, true);

    check_routes(method, url ? url : "");
    g_query.present = value != NULL;
    g_query.value = value && strcmp(value, "\x01") == 0 ? NULL : value;
    check_args();
    if (value)
        check_value_parsers(value);
    check_json_string(method, false);
    if (url)
        check_json_string(url, false);
    if (text)
        check_json_string(text, size % 7 == 0);
    check_json_numbers(data, size);

    free(method);
    free(url);
    free(value);
    free(text);
    return 0;
}
