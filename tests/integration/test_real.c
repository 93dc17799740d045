/* larderd serving the real models of the quick start (Tesseract, PocketSphinx, XGBoost)
 * with the sample inputs of examples/. */
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

#ifndef EXAMPLES_DIR
#error "EXAMPLES_DIR must name the examples directory"
#endif

#define SPOKEN "what is the weather like today"

static const char models[] =
    "[model.ocr-eng]\n"
    "backend = tesseract\n"
    "language = eng\n"
    "instances = 2\n"
    "\n"
    "[model.asr-en]\n"
    "backend = pocketsphinx\n"
    "\n"
    "[model.tabular]\n"
    "backend = xgboost\n"
    "path = " EXAMPLES_DIR "/tabular.ubj\n";

static struct daemon d;
static char *png, *wav, *rows;
static size_t png_len, wav_len, rows_len;

static int group_setup(void **state)
{
    png = read_file(EXAMPLES_DIR "/ocr.png", &png_len);
    wav = read_file(EXAMPLES_DIR "/speech.wav", &wav_len);
    rows = read_file(EXAMPLES_DIR "/rows.json", &rows_len);
    if (!png || !wav || !rows)
        return -1;
    char config[2048];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "[memory]\nbudget = 2GiB\n%s", models);
    return daemon_start(&d, config);
}

static int group_teardown(void **state)
{
    free(png);
    free(wav);
    free(rows);
    return daemon_stop(&d) == 0 ? 0 : -1;
}

static json_t *infer(const char *model, const char *ct, const char *body, size_t len,
                     int want_status)
{
    char path[128];
    struct larder__http_response r = {0};
    snprintf(path, sizeof path, "/v1/models/%s/infer", model);
    int st = http(&d, "POST", path, ct, body, len, false, &r);
    if (st != want_status)
        fail_msg("%s: HTTP %d, wanted %d: %s", model, st, want_status, r.body ? r.body : "");
    json_t *o = json_loads(r.body, 0, NULL);
    larder__http_response_clear(&r);
    assert_non_null(o);
    return o;
}

static void assert_ocr_text(json_t *o)
{
    static const char *const words[] = {"quick", "brown", "fox", "jumps", "lazy", "dog"};
    const char *text = json_string_value(json_object_get(o, "text"));
    assert_non_null(text);
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strstr(text, words[i]))
            fail_msg("'%s' not in '%s'", words[i], text);
}

static void test_ocr_cold_then_warm(void **state)
{
    /* start-up loaded nothing: the plugin is not even mapped yet */
    assert_int_equal(json_field(&d, "/v1/models/ocr-eng", "loads"), 0);
    assert_false(daemon_log_has(&d, "backend opened"));
    json_t *o = infer("ocr-eng", "image/png", png, png_len, 200);
    assert_true(json_is_true(json_object_get(o, "cold_start")));
    assert_string_equal(json_string_value(json_object_get(o, "served_by")), "ocr-eng");
    assert_true(json_number_value(json_object_get(o, "load_ms")) > 0);
    assert_ocr_text(o);
    json_decref(o);
    o = infer("ocr-eng", "image/png", png, png_len, 200);
    assert_true(json_is_false(json_object_get(o, "cold_start")));
    assert_ocr_text(o);
    json_decref(o);
    assert_int_equal(json_field(&d, "/v1/models/ocr-eng", "loads"), 1);
    assert_true(json_field(&d, "/v1/models/ocr-eng", "memory.reserved_bytes") > 0);
}

static void test_asr(void **state)
{
    json_t *o = infer("asr-en", "audio/wav", wav, wav_len, 200);
    assert_string_equal(json_string_value(json_object_get(o, "text")), SPOKEN);
    json_decref(o);
}

static void test_tabular(void **state)
{
    json_t *o = infer("tabular", "application/json", rows, rows_len, 200);
    json_t *p = json_object_get(o, "predictions");
    assert_true(json_is_array(p));
    assert_int_equal(json_array_size(p), 6);
    assert_true(json_is_number(json_array_get(p, 0)));
    json_decref(o);
}

static void test_bad_inputs(void **state)
{
    static const char garbage[] = "\x89PNG\r\n\x1a\nthis is not an image at all";
    json_t *o = infer("ocr-eng", "image/png", garbage, sizeof garbage - 1, 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
                        "bad_input");
    json_decref(o);
    o = infer("ocr-eng", "text/plain", "hello", 5, 415);
    json_decref(o);
    o = infer("asr-en", "audio/wav", "RIFF....WAVE", 12, 400);
    json_decref(o);
    o = infer("tabular", "application/json", "{\"rows\": [[1, 2", 15, 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "error"), "code")),
                        "invalid_json");
    json_decref(o);
    o = infer("tabular", "application/json", "{\"nope\": 1}", 11, 400);
    json_decref(o);
    assert_int_equal(http_get(&d, "/health"), 200);
}

/* A budget that holds either model but not both: serving both evicts, and both are
 * still served. The budget is set from the sizes measured in this very run. */
static void test_budget_for_one(void **state)
{
    long long ocr = json_field(&d, "/v1/models/ocr-eng", "memory.reserved_bytes");
    long long asr = json_field(&d, "/v1/models/asr-en", "memory.reserved_bytes");
    assert_true(ocr > 0 && asr > 0);
    long long budget = (ocr > asr ? ocr : asr) + (ocr < asr ? ocr : asr) / 2;
    char config[2048];
    /* both are loaded (by the tests before) and fit the large budget */
    assert_true(json_field(&d, "/v1/memory", "reserved_bytes") >= ocr + asr);
    int fd = larder__http_connect(&d.url, 30000);
    assert_true(fd >= 0);
    assert_int_equal(larder__http_send(fd, &d.url, "GET", "/v1/events", NULL, NULL, NULL, 0), 0);
    char buf[32768];
    size_t used = 0;
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, ": larder events", 30000) > 0);
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n"
             "[memory]\nbudget = %lld\n%s", budget, models);
    assert_int_equal(daemon_write_config(&d, config), 0);
    assert_int_equal(http(&d, "POST", "/v1/reload", NULL, NULL, 0, true, NULL), 200);
    assert_int_equal(json_field(&d, "/v1/memory", "budget_bytes"), budget);
    json_t *o = infer("ocr-eng", "image/png", png, png_len, 200);
    assert_ocr_text(o);
    json_decref(o);
    o = infer("asr-en", "audio/wav", wav, wav_len, 200);
    assert_string_equal(json_string_value(json_object_get(o, "text")), SPOKEN);
    json_decref(o);
    assert_true(larder__http_read_until(fd, buf, sizeof buf, &used, "event: evict", 60000) > 0);
    close(fd);
    assert_true(json_field(&d, "/v1/memory", "reserved_bytes") <= budget);
    assert_true(json_field(&d, "/v1/models/ocr-eng", "evictions") +
                    json_field(&d, "/v1/models/asr-en", "evictions") >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ocr_cold_then_warm),
        cmocka_unit_test(test_asr),
        cmocka_unit_test(test_tabular),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_budget_for_one),
    };
    return cmocka_run_group_tests_name("larderd real models", tests, group_setup,
                                       group_teardown);
}
