/* larderd routes: readiness of preloads, query parameters, loads too big for the
 * budget, and the JSON text that listings are written with (checked against jansson's
 * own writer and parser). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "http.h"

/* ---- the JSON text writer -------------------------------------------------------------- */

/* s written by larder__text_json_string; malloc'd, NUL-terminated. */
static char *written(const char *s)
{
    struct larder__text t = {0};
    larder__text_json_string(&t, s);
    assert_false(t.failed);
    char *out = strndup(t.buf, t.len);
    larder__text_free(&t);
    return out;
}

/* The string a JSON text holds, read back by jansson; malloc'd, NULL if it does not
 * parse. */
static char *read_back(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (!v)
        return NULL;
    char *s = json_is_string(v) ? strndup(json_string_value(v), json_string_length(v)) : NULL;
    json_decref(v);
    return s;
}

/* Valid UTF-8 comes out as jansson writes it, and reads back as itself. */
static void check_same_as_jansson(const char *s)
{
    json_t *v = json_string(s);
    assert_non_null(v);
    char *want = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    json_decref(v);
    char *got = written(s);
    if (strcmp(got, want) != 0)
        fail_msg("'%s': wrote %s, jansson writes %s", s, got, want);
    char *back = read_back(got);
    assert_non_null(back);
    assert_string_equal(back, s);
    free(back);
    free(got);
    free(want);
}

static void test_json_string_escaping(void **state)
{
    static const char *const cases[] = {
        "", "plain", "with \"quotes\"", "back\\slash", "\\\"", "tab\there", "new\nline",
        "\r\b\f", "\x01\x02\x1f\x7f", "slash / stays", "caf\xc3\xa9", "\xe2\x82\xac euro",
        "\xf0\x9f\x98\x80 emoji", "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf",
        "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xe2\x80\xa8 line separator",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_same_as_jansson(cases[i]);
    /* every byte from 1 to 127 */
    char all[128];
    for (int c = 1; c < 128; c++)
        all[c - 1] = (char)c;
    all[127] = 0;
    check_same_as_jansson(all);
    /* NULL is null */
    char *n = written(NULL);
    assert_string_equal(n, "null");
    free(n);
}

static void test_json_string_invalid_utf8(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"\x80", "\xef\xbf\xbd"},                       /* lone continuation byte */
        {"a\xc3", "a\xef\xbf\xbd"},                     /* cut short at the end */
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},       /* overlong NUL */
        {"\xe0\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* overlong */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
        {"\xf4\x90\x80\x80x", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdx"}, /* > U+10FFFF */
        {"\xf5\xff", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"ok \xe2\x82 \"q\"", "ok \xef\xbf\xbd\xef\xbf\xbd \"q\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = written(cases[i].in);
        char *back = read_back(got);
        if (!back)
            fail_msg("case %zu: %s does not parse", i, got);
        assert_string_equal(back, cases[i].out);
        free(back);
        free(got);
    }
    /* Random bytes, biased towards the interesting ones: whatever goes in, what comes
     * out parses; what jansson takes as a string comes out exactly as jansson writes it. */
    static const unsigned char pick[] = {'a', '"', '\\', '\n', 0x01, 0x1f, 0x7f, 0x80, 0xbf,
                                         0xc2, 0xc3, 0xdf, 0xe0, 0xe2, 0xed, 0xef, 0xf0, 0xf4,
                                         0xf5, 0xff, 0xa0, 0x9f, 0x90, 0x8f};
    unsigned seed = 12345;
    for (int round = 0; round < 5000; round++) {
        char s[24];
        size_t len = (size_t)(round % 23);
        for (size_t k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            s[k] = (char)pick[(seed >> 16) % sizeof pick];
        }
        s[len] = 0;
        json_t *v = json_string(s);
        if (v) {
            json_decref(v);
            check_same_as_jansson(s);
            continue;
        }
        char *got = written(s);
        char *back = read_back(got);
        if (!back)
            fail_msg("round %d: %s does not parse", round, got);
        free(back);
        free(got);
    }
}

static void test_json_numbers(void **state)
{
    static const double reals[] = {0.0, -0.0, 1.0, -1.0, 186.1, 0.49, 63.3, 1e20, 1e-5,
                                   123456789.0, 1.5e300, 3.14159265358979, 1e-7, 2.5e-310,
                                   0.1, 1234567.0, 12345678.0, 99.99999999};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        json_t *v = json_real(reals[i]);
        char *want = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(7));
        json_decref(v);
        struct larder__text t = {0};
        larder__text_json_real(&t, reals[i]);
        assert_non_null(t.buf);
        if (t.len != strlen(want) || memcmp(t.buf, want, t.len) != 0)
            fail_msg("%.17g: wrote %.*s, jansson writes %s", reals[i], (int)t.len, t.buf, want);
        larder__text_free(&t);
        free(want);
    }
    struct larder__text t = {0};
    larder__text_json_int(&t, INT64_MIN);
    larder__text_lit(&t, " ");
    larder__text_json_int(&t, -1);
    larder__text_lit(&t, " ");
    larder__text_json_int(&t, 0);
    larder__text_lit(&t, " ");
    larder__text_json_uint(&t, UINT64_MAX);
    larder__text_lit(&t, " ");
    larder__text_json_real(&t, 1.0 / 0.0);
    larder__text_lit(&t, " ");
    larder__text_json_bool(&t, true);
    larder__text_lit(&t, "\0");
    assert_string_equal(t.buf, "-9223372036854775808 -1 0 18446744073709551615 null true");
    larder__text_free(&t);
}

/* A text that grows well past the point where it moves to a mapping of its own keeps
 * every byte. */
static void test_text_growth(void **state)
{
    struct larder__text t = {0};
    for (unsigned i = 0; i < 300000; i++)
        larder__text_put(&t, "%07u,", i);
    assert_false(t.failed);
    assert_true(t.mapped);
    assert_int_equal(t.len, 300000u * 8);
    for (unsigned i = 0; i < 300000; i += 7919) {
        char want[9];
        snprintf(want, sizeof want, "%07u,", i);
        assert_memory_equal(t.buf + (size_t)i * 8, want, 8);
    }
    larder__text_free(&t);
    assert_null(t.buf);
}

/* ---- helpers ------------------------------------------------------------------------- */

static json_t *get_json(struct daemon *d, const char *path, int *ret_status)
{
    struct larder__http_response r = {0};
    int st = http(d, "GET", path, NULL, NULL, 0, false, &r);
    json_t *o = st > 0 ? json_loads(r.body, 0, NULL) : NULL;
    if (st > 0 && !o)
        fail_msg("GET %s: %d, not JSON: %s", path, st, r.body);
    larder__http_response_clear(&r);
    if (ret_status)
        *ret_status = st;
    return o;
}

static int post_admin(struct daemon *d, const char *path, struct larder__http_response *r)
{
    return http(d, "POST", path, NULL, NULL, 0, true, r);
}

/* The 400 bad_parameter of one request, whose message names the parameter. */
static void expect_bad_parameter(struct daemon *d, const char *method, const char *path,
                                 const char *param)
{
    struct larder__http_response r = {0};
    int st = http(d, method, path, NULL, NULL, 0, true, &r);
    if (st != 400 || strcmp(error_code(&r), "bad_parameter") != 0)
        fail_msg("%s %s: %d %s, want 400 bad_parameter", method, path, st, r.body);
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", param);
    if (!strstr(r.body, quoted))
        fail_msg("%s %s: '%s' does not name %s", method, path, r.body, param);
    larder__http_response_clear(&r);
}

static const char *string_at(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* ---- readiness --------------------------------------------------------------------- */

/* A preload that fails keeps /ready at 503, naming it with its error, until it loads. */
static void test_ready_failed_preload(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.good]\nbackend = synthetic\npreload = yes\n"
                                      "[model.bad]\nbackend = synthetic\npreload = yes\n"
                                      "fail = first-1\nlabel = ready-bad\n"
                                      "[model.lazy]\nbackend = synthetic\n"),
                     0);
    int st = 0;
    json_t *o = NULL;
    /* wait until neither preload is pending any more */
    for (int i = 0; i < 4000; i++) {
        json_decref(o);
        o = get_json(&d, "/ready", &st);
        if (json_integer_value(json_object_get(o, "pending")) == 0)
            break;
        usleep(5000);
    }
    assert_int_equal(st, 503);
    assert_string_equal(string_at(o, "status"), "failed");
    assert_int_equal(json_array_size(json_object_get(o, "models")), 0);
    json_t *failed = json_object_get(o, "failed");
    assert_int_equal(json_array_size(failed), 1);
    json_t *f = json_array_get(failed, 0);
    assert_string_equal(string_at(f, "name"), "bad");
    json_t *le = json_object_get(f, "last_error");
    assert_int_equal(json_integer_value(json_object_get(le, "code")), -20007);
    assert_non_null(strstr(string_at(le, "message"), "synthetic load failure of 'ready-bad'"));
    json_decref(o);
    assert_int_equal(json_field(&d, "/v1/models/good", "loads"), 1);

    /* once its cooldown is over, an admin load succeeds and the daemon is ready */
    struct larder__http_response r = {0};
    for (int i = 0; i < 2000 && (st = post_admin(&d, "/v1/models/bad/load", &r)) != 200; i++) {
        assert_int_equal(st, 503);
        assert_string_equal(error_code(&r), "cooldown");
        larder__http_response_clear(&r);
        usleep(5000);
    }
    larder__http_response_clear(&r);
    assert_int_equal(st, 200);
    o = get_json(&d, "/ready", &st);
    assert_int_equal(st, 200);
    assert_string_equal(string_at(o, "status"), "ready");
    json_decref(o);
    assert_int_equal(daemon_stop(&d), 0);
}

/* A failed preload that loads on a request (after its cooldown) makes the daemon ready. */
static void test_ready_after_request(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.flaky]\nbackend = synthetic\npreload = yes\n"
                                      "fail = first-1\nlabel = ready-flaky\n"),
                     0);
    int st = 0;
    for (int i = 0; i < 4000 && json_field(&d, "/v1/models/flaky", "failures") < 1; i++)
        usleep(5000);
    assert_int_equal(http_get(&d, "/ready"), 503);
    for (int i = 0; i < 2000; i++) {
        st = http(&d, "POST", "/v1/models/flaky/infer", "text/plain", "x", 1, false, NULL);
        if (st == 200)
            break;
        assert_int_equal(st, 503); /* cooldown */
        usleep(5000);
    }
    assert_int_equal(st, 200);
    assert_int_equal(http_get(&d, "/ready"), 200);
    assert_int_equal(daemon_stop(&d), 0);
}

/* Loading a model that is not a preload does not make the daemon unready. */
static void test_ready_ignores_other_loads(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.early]\nbackend = synthetic\npreload = yes\n"
                                      "[model.lazy]\nbackend = synthetic\nload_ms = 2000\n"),
                     0);
    int st = 0;
    for (int i = 0; i < 4000 && (st = http_get(&d, "/ready")) != 200; i++)
        usleep(5000);
    assert_int_equal(st, 200);
    struct larder__http_response r = {0};
    assert_int_equal(post_admin(&d, "/v1/models/lazy/load?wait=no", &r), 202);
    larder__http_response_clear(&r);
    json_t *o = get_json(&d, "/ready", &st);
    assert_int_equal(st, 200);
    assert_string_equal(string_at(o, "status"), "ready");
    json_decref(o);
    /* the load was still running: the check above saw it */
    o = get_json(&d, "/v1/models/lazy", NULL);
    assert_string_equal(string_at(o, "state"), "loading");
    json_decref(o);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- query parameters ---------------------------------------------------------------- */

static void test_bad_query_values(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.m]\nbackend = synthetic\n"), 0);
    /* (URL-encoded) */
    static const char *const timeouts[] = {"banana", "-1", "never", "30sx", "1.5.2s", "",
                                           "99999999999999999999h", "%205s", "5s%20", "0x10",
                                           "1e3", "-5s", "+5s", "inf"};
    char path[128];
    for (size_t i = 0; i < sizeof timeouts / sizeof timeouts[0]; i++) {
        snprintf(path, sizeof path, "/v1/models/m/unload?timeout=%s", timeouts[i]);
        expect_bad_parameter(&d, "POST", path, "timeout");
        snprintf(path, sizeof path, "/v1/models/m/load?timeout=%s", timeouts[i]);
        expect_bad_parameter(&d, "POST", path, "timeout");
    }
    expect_bad_parameter(&d, "POST", "/v1/models/m/unload?timeout", "timeout");
    static const char *const bools[] = {"maybe", "", "2", "yess", "no%20", "-1"};
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
        snprintf(path, sizeof path, "/v1/models/m/load?wait=%s", bools[i]);
        expect_bad_parameter(&d, "POST", path, "wait");
    }
    expect_bad_parameter(&d, "POST", "/v1/models/m/load?wait", "wait");
    static const char *const counts[] = {"bogus", "-1", "", "10x", "+5", "1e3", "86401",
                                         "99999999999999999999999", "18446744073709551616"};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        snprintf(path, sizeof path, "/v1/memory?history=%s", counts[i]);
        expect_bad_parameter(&d, "GET", path, "history");
    }
    /* nothing was loaded or unloaded by the refused requests */
    assert_int_equal(json_field(&d, "/v1/models/m", "loads"), 0);

    /* good values still work */
    int st = 0;
    json_t *o = get_json(&d, "/v1/memory?history=0", &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(o, "history")), 0);
    json_decref(o);
    o = get_json(&d, "/v1/memory?history=86400", &st);
    assert_int_equal(st, 200);
    json_decref(o);
    struct larder__http_response r = {0};
    assert_int_equal(post_admin(&d, "/v1/models/m/load?wait=YES&timeout=30s", &r), 200);
    larder__http_response_clear(&r);
    assert_int_equal(post_admin(&d, "/v1/models/m/unload?timeout=500ms", &r), 200);
    larder__http_response_clear(&r);
    assert_int_equal(post_admin(&d, "/v1/models/m/load?wait=off", &r), 202);
    larder__http_response_clear(&r);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- too big for the budget ------------------------------------------------------------ */

static long long metric(struct daemon *d, const char *line_start)
{
    struct larder__http_response r = {0};
    long long v = INT64_MIN;
    if (http(d, "GET", "/metrics", NULL, NULL, 0, false, &r) == 200) {
        const char *p = strstr(r.body, line_start);
        if (p)
            v = strtoll(p + strlen(line_start), NULL, 10);
    }
    larder__http_response_clear(&r);
    return v;
}

static void expect_too_big(struct daemon *d, const char *path, bool admin, const char *with)
{
    struct larder__http_response r = {0};
    int st = admin ? post_admin(d, path, &r)
                   : http(d, "POST", path, "text/plain", "x", 1, false, &r);
    if (st != 503 || strcmp(error_code(&r), "too_big") != 0)
        fail_msg("POST %s: %d %s, want 503 too_big", path, st, r.body);
    static const char *const parts[] = {"1.0 GiB (1073741824 bytes)",
                                        "64.0 MiB (67108864 bytes)"};
    for (int i = 0; i < 2; i++)
        if (!strstr(r.body, parts[i]))
            fail_msg("POST %s: '%s' lacks '%s'", path, r.body, parts[i]);
    if (!strstr(r.body, with))
        fail_msg("POST %s: '%s' lacks '%s'", path, r.body, with);
    larder__http_response_clear(&r);
}

static void test_load_too_big(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[memory]\nbudget = 64MiB\n"
                                      "[model.small]\nbackend = synthetic\n"
                                      "[model.big]\nbackend = synthetic\nmemory = 1GiB\n"
                                      "fallback = small\n"
                                      "[model.huge]\nbackend = synthetic\nmemory = 1GiB\n"),
                     0);
    expect_too_big(&d, "/v1/models/huge/load", true, "it has no fallback");
    expect_too_big(&d, "/v1/models/big/load", true,
                   "its fallback 'small' would serve its requests");
    expect_too_big(&d, "/v1/models/huge/infer", false, "model 'huge' needs");
    /* requests for big are served by its fallback */
    struct larder__http_response r = {0};
    assert_int_equal(http(&d, "POST", "/v1/models/big/infer", "text/plain", "x", 1, false, &r),
                     200);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_string_equal(string_at(o, "served_by"), "small");
    json_decref(o);
    larder__http_response_clear(&r);
    /* the refusals are the component's failures, the same in /v1/models and /metrics */
    long long failures = json_field(&d, "/v1/models/huge", "failures");
    assert_true(failures >= 1);
    assert_int_equal(metric(&d, "larder_component_failures_total{name=\"huge\"} "), failures);
    assert_int_equal(json_field(&d, "/v1/models/huge", "last_error.code"), -20005);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ---- listings --------------------------------------------------------------------------- */

/* Strings a backend chose (here the failure message with a label) are escaped, and one
 * model reads the same alone and in the listing. */
static void test_listing_text(void **state)
{
    struct daemon d;
    assert_int_equal(daemon_start(&d, "[model.odd]\nbackend = synthetic\nfail = always\n"
                                      "label = na\xc3\xafve \"q\" \\ x\n"
                                      "[model.plain]\nbackend = synthetic\nfallback = odd\n"
                                      "[model.gpu]\nbackend = synthetic\ngpu = 0\n"
                                      "gpu_memory = 1MiB\n"),
                     0);
    assert_int_equal(http(&d, "POST", "/v1/models/odd/infer", "text/plain", "x", 1, false, NULL),
                     500);
    int st = 0;
    json_t *all = get_json(&d, "/v1/models", &st);
    assert_int_equal(st, 200);
    json_t *models = json_object_get(all, "models");
    assert_int_equal(json_array_size(models), 3);
    static const char *const names[] = {"gpu", "odd", "plain"};
    for (size_t i = 0; i < 3; i++) {
        json_t *m = json_array_get(models, i);
        assert_string_equal(string_at(m, "name"), names[i]);
        char path[64];
        snprintf(path, sizeof path, "/v1/models/%s", names[i]);
        json_t *one = get_json(&d, path, &st);
        assert_int_equal(st, 200);
        /* the same fields, in the same order */
        const char *k1, *k2;
        void *it1 = json_object_iter(m), *it2 = json_object_iter(one);
        for (; it1 && it2; it1 = json_object_iter_next(m, it1),
                           it2 = json_object_iter_next(one, it2)) {
            k1 = json_object_iter_key(it1);
            k2 = json_object_iter_key(it2);
            assert_string_equal(k1, k2);
        }
        assert_null(it1);
        assert_null(it2);
        json_object_del(m, "expires_in_ms");
        json_object_del(one, "expires_in_ms");
        json_object_del(m, "cooldown_ms");
        json_object_del(one, "cooldown_ms");
        assert_true(json_equal(m, one));
        json_decref(one);
    }
    json_t *odd = json_array_get(models, 1);
    json_t *le = json_object_get(odd, "last_error");
    assert_string_equal(string_at(le, "message"),
                        "synthetic load failure of 'na\xc3\xafve \"q\" \\ x'");
    assert_string_equal(string_at(json_array_get(models, 2), "fallback"), "odd");
    assert_true(json_is_null(json_object_get(json_array_get(models, 2), "gpu")));
    json_t *gpu = json_object_get(json_array_get(models, 0), "gpu");
    assert_int_equal(json_integer_value(json_object_get(gpu, "bytes")), 1 << 20);
    json_t *load_ms = json_object_get(odd, "load_ms");
    assert_true(json_is_real(json_object_get(load_ms, "last")));
    assert_true(json_is_real(json_object_get(load_ms, "avg")));
    json_decref(all);
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_string_escaping),
        cmocka_unit_test(test_json_string_invalid_utf8),
        cmocka_unit_test(test_json_numbers),
        cmocka_unit_test(test_text_growth),
        cmocka_unit_test_teardown(test_ready_failed_preload, daemon_teardown),
        cmocka_unit_test_teardown(test_ready_after_request, daemon_teardown),
        cmocka_unit_test_teardown(test_ready_ignores_other_loads, daemon_teardown),
        cmocka_unit_test_teardown(test_bad_query_values, daemon_teardown),
        cmocka_unit_test_teardown(test_load_too_big, daemon_teardown),
        cmocka_unit_test_teardown(test_listing_text, daemon_teardown),
    };
    return cmocka_run_group_tests_name("larderd routes", tests, NULL, NULL);
}
