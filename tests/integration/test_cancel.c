/* Inference that outlives its welcome: a client that hangs up cancels its request's work,
 * a model's infer_timeout answers 504, and either way the instance goes back to the pool
 * for the next request. Every model here has one instance, and requests that would hold it
 * for a minute: the next request is served only because the first one stopped. Last, an
 * image that would decode to far more than its body is refused (413) before decoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../backends/png_header.h"

#ifndef EXAMPLES_DIR
#error "EXAMPLES_DIR must name the examples directory"
#endif

/* `timeout = 30s` bounds every wait for the one instance: a request that finds it still
 * held by cancelled work fails with 503 after 30 s instead of hanging for the minute. */
static const char models[] =
    "[model.slow]\n"
    "backend = synthetic-pooled\n"
    "infer_ms = 60000\n"
    "instances = 1\n"
    "timeout = 30s\n"
    "\n"
    "[model.deadline]\n"
    "backend = synthetic-pooled\n"
    "infer_ms = 60000\n"
    "instances = 1\n"
    "timeout = 30s\n"
    "infer_timeout = 500ms\n"
    "\n"
    "[model.asr]\n"
    "backend = pocketsphinx\n"
    "instances = 1\n"
    "timeout = 30s\n"
    "infer_timeout = 1s\n"
    "\n"
    "[model.ocr]\n"
    "backend = tesseract\n"
    "\n"
    "[model.ocr-roomy]\n"
    "backend = tesseract\n"
    "max_pixels = 200000000\n"
    "max_image_bytes = 1GiB\n";

static struct daemon d;

static int group_setup(void **state)
{
    char config[2048];
    snprintf(config, sizeof config,
             "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n%s", models);
    return daemon_start(&d, config);
}

static int group_teardown(void **state)
{
    return daemon_stop(&d) == 0 ? 0 : -1;
}

static void pause_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls until the model's `field` of GET /v1/models/NAME equals want; at most 30 s. */
static bool wait_field(const char *name, const char *field, long long want)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s", name);
    for (int i = 0; i < 3000; i++) {
        if (json_field(&d, path, field) == want)
            return true;
        pause_ms(10);
    }
    return false;
}

/* Sends an infer request on a connection of its own and returns the socket, unread. */
static int send_infer(const char *path)
{
    int fd = larder__http_connect(&d.url, 30000);
    assert_true(fd >= 0);
    assert_int_equal(larder__http_send(fd, &d.url, "POST", path, NULL, "text/plain", "x", 1),
                     0);
    return fd;
}

static void test_client_gone_frees_the_instance(void **state)
{
    int fd = send_infer("/v1/models/slow/infer");
    assert_true(wait_field("slow", "leases", 1)); /* the minute-long request is running */
    close(fd);
    /* The next request needs the one instance: served once the first one stopped. */
    struct larder__http_response r = {0};
    int st = http(&d, "POST", "/v1/models/slow/infer?sleep_ms=0", "text/plain", "y", 1, false,
                  &r);
    if (st != 200)
        daemon_dump_log(&d);
    assert_int_equal(st, 200);
    larder__http_response_clear(&r);
    /* the same instance served it: the cancelled one came back to the pool */
    assert_int_equal(json_field(&d, "/v1/models/slow", "instances.created"), 1);
    assert_true(daemon_log_has(&d, "client gone"));
    assert_true(wait_field("slow", "leases", 0));
}

static void test_infer_timeout_answers_504(void **state)
{
    struct larder__http_response r = {0};
    int st = http(&d, "POST", "/v1/models/deadline/infer", "text/plain", "x", 1, false, &r);
    assert_int_equal(st, 504);
    assert_string_equal(error_code(&r), "infer_timeout");
    larder__http_response_clear(&r);
    st = http(&d, "POST", "/v1/models/deadline/infer?sleep_ms=0", "text/plain", "y", 1, false,
              &r);
    assert_int_equal(st, 200);
    larder__http_response_clear(&r);
    assert_int_equal(json_field(&d, "/v1/models/deadline", "instances.created"), 1);
    /* counted, by its reason */
    assert_int_equal(http(&d, "GET", "/metrics", NULL, NULL, 0, false, &r), 200);
    if (!strstr(r.body, "larder_infer_cancelled_total{reason=\"deadline\"} 1\n"))
        fail_msg("/metrics does not count the cancelled inference");
    larder__http_response_clear(&r);
}

/* examples/speech.wav's samples repeated for `seconds` of 16 kHz audio, as a WAV. */
static char *long_wav(const char *wav, size_t wav_len, unsigned seconds, size_t *ret_len)
{
    size_t data = (size_t)seconds * 16000 * 2, have = wav_len - 44;
    char *out = malloc(44 + data);
    assert_non_null(out);
    memcpy(out, wav, 44);
    for (size_t at = 0; at < data; at += have)
        memcpy(out + 44 + at, wav + 44, data - at < have ? data - at : have);
    uint32_t riff = (uint32_t)(36 + data), n = (uint32_t)data;
    for (int i = 0; i < 4; i++) {
        out[4 + i] = (char)(riff >> (8 * i));
        out[40 + i] = (char)(n >> (8 * i));
    }
    *ret_len = 44 + data;
    return out;
}

static void test_long_speech_times_out(void **state)
{
    size_t wav_len, big_len;
    char *wav = read_file(EXAMPLES_DIR "/speech.wav", &wav_len);
    assert_non_null(wav);
    assert_true(wav_len > 44 && memcmp(wav + 36, "data", 4) == 0);
    char *big = long_wav(wav, wav_len, 300, &big_len); /* five minutes */
    struct larder__http_response r = {0};
    int st = http(&d, "POST", "/v1/models/asr/infer", "audio/wav", big, big_len, false, &r);
    if (st != 504)
        daemon_dump_log(&d);
    assert_int_equal(st, 504);
    assert_string_equal(error_code(&r), "infer_timeout");
    larder__http_response_clear(&r);
    st = http(&d, "POST", "/v1/models/asr/infer", "audio/wav", wav, wav_len, false, &r);
    assert_int_equal(st, 200);
    assert_non_null(strstr(r.body, "weather"));
    larder__http_response_clear(&r);
    free(big);
    free(wav);
}

/* A 6000x6000 8-bit RGB PNG that is all header (144 MB decoded): 413 before decoding. */
static void test_image_bomb_refused(void **state)
{
    unsigned char png[PNG_HEADER_LEN];
    png_header_only(png, 6000, 6000);
    struct larder__http_response r = {0};
    int st = http(&d, "POST", "/v1/models/ocr/infer", "image/png", png, sizeof png, false, &r);
    assert_int_equal(st, 413);
    assert_string_equal(error_code(&r), "input_too_large");
    assert_non_null(strstr(r.body, "max_image_bytes"));
    larder__http_response_clear(&r);
}

/* A 12000x12000 image its model would take (576 MB decoded, under its max_image_bytes)
 * but the server's request memory (256 MiB) cannot: 503 request_memory, nothing decoded,
 * and the memory is free again for the next request. */
static void test_image_past_request_memory(void **state)
{
    unsigned char png[PNG_HEADER_LEN];
    png_header_only(png, 12000, 12000);
    struct larder__http_response r = {0};
    int st = http(&d, "POST", "/v1/models/ocr-roomy/infer", "image/png", png, sizeof png, false,
                  &r);
    assert_int_equal(st, 503);
    assert_string_equal(error_code(&r), "request_memory");
    larder__http_response_clear(&r);
    assert_true(json_field(&d, "/v1/memory", "requests.refused") >= 1);
    WAIT_UNTIL(json_field(&d, "/v1/memory", "requests.in_flight_bytes") == 0);
    assert_int_equal(json_field(&d, "/v1/memory", "requests.in_flight_bytes"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_gone_frees_the_instance),
        cmocka_unit_test(test_infer_timeout_answers_504),
        cmocka_unit_test(test_long_speech_times_out),
        cmocka_unit_test(test_image_bomb_refused),
        cmocka_unit_test(test_image_past_request_memory),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
