/* The pocketsphinx plugin, built, on the real en-us model and examples/speech.wav. */
#include "harness.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <pthread.h>

#define MODEL_DIR "/usr/share/pocketsphinx/model/en-us"
#define SPOKEN "what is the weather like today"

/* Offsets of fields in the canonical 44-byte WAV header that examples/speech.wav has. */
#define WAV_FORMAT 20
#define WAV_CHANNELS 22
#define WAV_RATE 24
#define WAV_BITS 34
#define WAV_DATA 36

struct fixture {
    const struct larder_backend_ops *ops;
    void *model;
    void *instance;
    unsigned char *wav;
    size_t wav_len;
    const unsigned char *pcm; /* samples inside wav */
    size_t pcm_len;
};

static int setup(void **state)
{
    static struct fixture f;

    f.ops = harness_open("LARDER_PLUGIN", NULL);
    f.wav = harness_read_example("speech.wav", &f.wav_len);
    assert_true(f.wav_len > 44);
    assert_memory_equal(f.wav + WAV_DATA, "data", 4);
    f.pcm = f.wav + 44;
    f.pcm_len = f.wav_len - 44;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->instance)
        f->ops->instance_free(f->model, f->instance);
    f->ops->unload(f->model);
    free(f->wav);
    return 0;
}

static void assert_spoken(json_t *reply)
{
    const char *text = json_string_value(json_object_get(reply, "text"));

    assert_non_null(text);
    assert_string_equal(text, SPOKEN);
}

/* A copy of the sample WAV with one 16-bit (or 32-bit) header field changed. */
static unsigned char *wav_with(const struct fixture *f, size_t offset, uint32_t value,
                               int width)
{
    unsigned char *w = malloc(f->wav_len);

    assert_non_null(w);
    memcpy(w, f->wav, f->wav_len);
    for (int i = 0; i < width; i++)
        w[offset + (size_t)i] = (unsigned char)(value >> (8 * i));
    return w;
}

static void test_abi(void **state)
{
    struct fixture *f = *state;

    assert_string_equal(f->ops->name, "pocketsphinx");
    assert_non_null(f->ops->instance_new);
    assert_true(harness_has_option(f->ops, "path"));
    assert_true(harness_has_option(f->ops, "dict"));
    assert_true(harness_has_option(f->ops, "lm"));
    assert_null(harness_entry_with_major("LARDER_PLUGIN", 0));
}

static void test_check(void **state)
{
    struct fixture *f = *state;
    const struct larder_option full[] = {{"path", MODEL_DIR "/en-us"},
                                         {"dict", MODEL_DIR "/cmudict-en-us.dict"},
                                         {"lm", MODEL_DIR "/en-us.lm.bin"}};
    static const struct {
        struct larder_option opt;
        int code;
    } bad[] = {
        {{"path", "/nonexistent"}, LARDER_BACKEND_EMODEL},
        {{"path", MODEL_DIR}, LARDER_BACKEND_EMODEL}, /* a directory, but no mdef */
        {{"path", MODEL_DIR "/en-us/mdef"}, LARDER_BACKEND_EMODEL},
        {{"dict", "/nonexistent.dict"}, LARDER_BACKEND_EMODEL},
        {{"lm", MODEL_DIR}, LARDER_BACKEND_EMODEL},
        {{"samprate", "8000"}, LARDER_BACKEND_EOPTION},
    };

    assert_int_equal(harness_check(f->ops, NULL, 0), 0);
    assert_int_equal(harness_check(f->ops, full, N_OPTS(full)), 0);
    for (size_t i = 0; i < N_OPTS(bad); i++) {
        int rc = harness_check(f->ops, &bad[i].opt, 1);

        if (rc != bad[i].code)
            fail_msg("%s = %s: got %d, expected %d", bad[i].opt.key, bad[i].opt.value, rc,
                     bad[i].code);
    }
}

/* A model directory whose mdef is not a model file is refused by check() and load(),
 * before sphinxbase could end the process on it. */
static void test_check_signatures(void **state)
{
    struct fixture *f = *state;
    static const char *const linked[] = {"means", "variances", "transition_matrices",
                                         "feat.params", "noisedict", "sendump"};
    char dir[] = "/tmp/larder-hmm-XXXXXX";
    char path[256], target[256];
    const struct larder_option opt = {"path", dir};
    char err[256] = "";
    void *model = NULL;
    FILE *junk;

    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < N_OPTS(linked); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, linked[i]);
        snprintf(target, sizeof(target), MODEL_DIR "/en-us/%s", linked[i]);
        assert_int_equal(symlink(target, path), 0);
    }
    snprintf(path, sizeof(path), "%s/mdef", dir);
    junk = fopen(path, "wb");
    assert_non_null(junk);
    fputs("this is not a model definition\n", junk);
    fclose(junk);
    assert_int_equal(harness_check(f->ops, &opt, 1), LARDER_BACKEND_EMODEL);
    assert_int_equal(f->ops->load(&opt, 1, &model, err, sizeof(err)), LARDER_BACKEND_EMODEL);
    assert_non_null(strstr(err, "mdef"));
    for (size_t i = 0; i < N_OPTS(linked); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, linked[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/mdef", dir);
    unlink(path);
    rmdir(dir);
}

static void test_estimate(void **state)
{
    struct fixture *f = *state;
    uint64_t bytes = 0;

    assert_int_equal(f->ops->estimate(NULL, 0, &bytes), 0);
    /* The model files are about 35 MB; a decoder takes about 90 MiB. */
    assert_in_range(bytes, 40u << 20, 400u << 20);
}

static void test_load_and_decode(void **state)
{
    struct fixture *f = *state;
    json_t *reply;

    f->model = harness_load(f->ops, NULL, 0);
    assert_int_equal(f->ops->instance_new(f->model, &f->instance, NULL, 0), 0);
    assert_int_equal(harness_infer(f->ops, f->model, f->instance, f->wav, f->wav_len,
                                   "audio/wav", &reply), 0);
    assert_spoken(reply);
    json_decref(reply);
}

/* Without a content type, "RIFF" bytes are read as WAV: an 8 kHz WAV is refused by the
 * WAV checks, where raw samples would have been decoded. */
static void test_sniffed_wav(void **state)
{
    struct fixture *f = *state;
    unsigned char *w = malloc(f->wav_len);
    char err[256] = "";
    struct larder_infer_request req = {.body = w, .body_len = f->wav_len};
    struct larder_infer_result res;

    assert_non_null(w);
    memcpy(w, f->wav, f->wav_len);
    w[WAV_RATE] = 0x40; /* 16000 = 0x3E80 -> 8000 = 0x1F40 */
    w[WAV_RATE + 1] = 0x1F;
    assert_int_equal(f->ops->infer(f->model, f->instance, &req, &res, err, sizeof(err)),
                     LARDER_BACKEND_EINPUT);
    assert_non_null(strstr(err, "8000 Hz"));
    free(w);
}

static void expect_input_error(const struct fixture *f, const void *body, size_t len,
                               const char *type, const char *why)
{
    json_t *reply = NULL;
    int rc = harness_infer(f->ops, f->model, f->instance, body, len, type, &reply);

    if (rc != LARDER_BACKEND_EINPUT)
        fail_msg("%s: got %d, expected LARDER_BACKEND_EINPUT", why, rc);
    assert_null(reply);
}

static void test_bad_wav(void **state)
{
    struct fixture *f = *state;
    unsigned char *noise = harness_noise(8192, 3);
    static const struct {
        size_t offset;
        uint32_t value;
        int width;
        const char *why;
    } edits[] = {
        {WAV_RATE, 8000, 4, "8 kHz"},         {WAV_CHANNELS, 2, 2, "stereo"},
        {WAV_BITS, 8, 2, "8 bits"},           {WAV_FORMAT, 3, 2, "float samples"},
        {WAV_DATA, 0x61746164u ^ 0x20, 4, "no data chunk"}, /* "data" renamed */
        {12, 0x20202020u, 4, "no fmt chunk"},                /* "fmt " renamed */
        {8, 0x45564157u ^ 0x20, 4, "not WAVE"},
    };

    for (size_t i = 0; i < N_OPTS(edits); i++) {
        unsigned char *w = wav_with(f, edits[i].offset, edits[i].value, edits[i].width);

        expect_input_error(f, w, f->wav_len, "audio/wav", edits[i].why);
        free(w);
    }
    expect_input_error(f, noise, 8192, "audio/wav", "noise as WAV");
    expect_input_error(f, f->wav, 30, "audio/x-wav", "header cut short");
    expect_input_error(f, f->wav, 44, "audio/wav", "no samples");
    expect_input_error(f, "", 0, "audio/wav", "empty body");
    expect_input_error(f, NULL, 0, NULL, "no body");
    expect_input_error(f, f->pcm, 3, "audio/L16", "odd byte count");
    expect_input_error(f, f->pcm, f->pcm_len, "audio/L16;rate=8000", "8 kHz raw");
    free(noise);
}

static void test_bad_media_and_instance(void **state)
{
    struct fixture *f = *state;
    json_t *reply = NULL;

    assert_int_equal(harness_infer(f->ops, f->model, f->instance, f->wav, f->wav_len,
                                   "image/png", &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_int_equal(harness_infer(f->ops, f->model, f->instance, f->wav, f->wav_len,
                                   "audio/mpeg", &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_int_equal(harness_infer(f->ops, f->model, NULL, f->wav, f->wav_len, "audio/wav",
                                   &reply),
                     LARDER_BACKEND_EINTERNAL);
    assert_null(reply);
}

struct worker {
    const struct fixture *f;
    void *instance;
    const void *body;
    size_t len;
    const char *type;
    int rc;
    json_t *reply;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    w->rc = harness_infer(w->f->ops, w->f->model, w->instance, w->body, w->len, w->type,
                          &w->reply);
    return NULL;
}

/* Two decoders at the same time: the first one (built by load) on the WAV, a second one
 * (built by instance_new) on the same samples sent raw as audio/L16. */
static void test_two_decoders_at_once(void **state)
{
    struct fixture *f = *state;
    struct worker w[2] = {
        {.f = f, .instance = f->instance, .body = f->wav, .len = f->wav_len,
         .type = "audio/wav"},
        {.f = f, .body = f->pcm, .len = f->pcm_len,
         .type = "audio/L16; rate=16000; channels=1"},
    };
    pthread_t tid[2];

    assert_int_equal(f->ops->instance_new(f->model, &w[1].instance, NULL, 0), 0);
    assert_ptr_not_equal(w[1].instance, f->instance);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(w[i].rc, 0);
        assert_spoken(w[i].reply);
        json_decref(w[i].reply);
    }
    f->ops->instance_free(f->model, w[1].instance);
}

static void test_load_failure(void **state)
{
    struct fixture *f = *state;
    const struct larder_option bad[] = {{"lm", "/nonexistent.lm"}};
    char err[256] = "";
    void *model = (void *)1;

    assert_int_equal(f->ops->load(bad, 1, &model, err, sizeof(err)), LARDER_BACKEND_EMODEL);
    assert_ptr_equal(model, (void *)1);
    assert_non_null(strstr(err, "/nonexistent.lm"));
}

static void test_null_tolerance(void **state)
{
    struct fixture *f = *state;

    f->ops->unload(NULL);
    f->ops->instance_free(f->model, NULL);
    f->ops->result_free(NULL);
}

/* Forty seconds of speech (decoded a second at a time) stop at the host's cancel check;
 * the decoder then recognizes the next utterance as well as ever. */
static void test_cancelled_decode(void **state)
{
    struct fixture *f = *state;
    const size_t head = 44, len = 40 * 16000 * 2;
    unsigned char *big = malloc(head + len);
    void *model = harness_load(f->ops, NULL, 0);
    void *inst = NULL;
    json_t *reply = NULL;

    assert_non_null(big);
    memcpy(big, f->wav, head);
    for (size_t at = 0; at < len; at += f->pcm_len)
        memcpy(big + head + at, f->pcm, len - at < f->pcm_len ? len - at : f->pcm_len);
    for (int i = 0; i < 4; i++) {
        big[4 + i] = (unsigned char)((36 + len) >> (8 * i));
        big[WAV_DATA + 4 + i] = (unsigned char)(len >> (8 * i));
    }
    assert_int_equal(f->ops->instance_new(model, &inst, NULL, 0), 0);
    harness_cancel_at(5);
    assert_int_equal(harness_infer(f->ops, model, inst, big, head + len, "audio/wav", &reply),
                     LARDER_BACKEND_ECANCELED);
    harness_cancel_at(0);
    assert_int_equal(harness_infer(f->ops, model, inst, f->wav, f->wav_len, "audio/wav", &reply),
                     0);
    assert_spoken(reply);
    json_decref(reply);
    free(big);
    f->ops->instance_free(model, inst);
    f->ops->unload(model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abi),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_check_signatures),
        cmocka_unit_test(test_estimate),
        cmocka_unit_test(test_load_and_decode),
        cmocka_unit_test(test_sniffed_wav),
        cmocka_unit_test(test_bad_wav),
        cmocka_unit_test(test_bad_media_and_instance),
        cmocka_unit_test(test_two_decoders_at_once),
        cmocka_unit_test(test_load_failure),
        cmocka_unit_test(test_null_tolerance),
        cmocka_unit_test(test_cancelled_decode),
    };

    return cmocka_run_group_tests_name("backend-pocketsphinx", tests, setup, teardown);
}
