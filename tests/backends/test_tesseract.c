/* The tesseract plugin, built, on the real eng model and examples/ocr.png. */
#include "harness.h"
#include "png_header.h"

#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <leptonica/allheaders.h>
#include <omp.h>
#include <pthread.h>

#define WORKERS 4

static const char *const sentence_words[] = {"quick", "brown", "fox", "jumps", "lazy", "dog"};

struct fixture {
    const struct larder_backend_ops *ops;
    void *model;
    void *instance;
    unsigned char *png;
    size_t png_len;
};

static int setup(void **state)
{
    static struct fixture f;

    f.ops = harness_open("LARDER_PLUGIN", NULL);
    f.png = harness_read_example("ocr.png", &f.png_len);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->instance)
        f->ops->instance_free(f->model, f->instance);
    f->ops->unload(f->model);
    free(f->png);
    return 0;
}

/* Asserts that the reply has every word of the sample sentence and a good confidence. */
static void assert_sentence(json_t *reply)
{
    const char *text = json_string_value(json_object_get(reply, "text"));
    json_t *conf = json_object_get(reply, "confidence");

    assert_non_null(text);
    for (size_t i = 0; i < N_OPTS(sentence_words); i++)
        if (!strstr(text, sentence_words[i]))
            fail_msg("'%s' not in recognized text '%s'", sentence_words[i], text);
    assert_true(json_is_integer(conf));
    assert_in_range(json_integer_value(conf), 70, 100);
}

/* The sample image re-encoded by Leptonica in another format. */
static unsigned char *reencode(const struct fixture *f, int format, size_t *ret_len)
{
    PIX *pix = pixReadMem(f->png, f->png_len);
    l_uint8 *data = NULL;
    unsigned char *copy;
    size_t len = 0;

    assert_non_null(pix);
    assert_int_equal(pixWriteMem(&data, &len, pix, format), 0);
    pixDestroy(&pix);
    copy = malloc(len);
    assert_non_null(copy);
    memcpy(copy, data, len);
    lept_free(data);
    *ret_len = len;
    return copy;
}

static void test_abi(void **state)
{
    struct fixture *f = *state;

    assert_string_equal(f->ops->name, "tesseract");
    assert_non_null(f->ops->instance_new);
    assert_non_null(f->ops->estimate);
    assert_true(harness_has_option(f->ops, "language"));
    assert_true(harness_has_option(f->ops, "psm"));
    assert_true(harness_has_option(f->ops, "path"));
    assert_null(harness_entry_with_major("LARDER_PLUGIN", LARDER_BACKEND_ABI_MAJOR + 1));
}

static void test_check_good(void **state)
{
    struct fixture *f = *state;
    const struct larder_option full[] = {
        {"language", "eng"}, {"psm", "6"}, {"path", "/usr/share/tesseract-ocr/5/tessdata"},
        {"max_pixels", "1000000"}};

    assert_int_equal(harness_check(f->ops, NULL, 0), 0);
    assert_int_equal(harness_check(f->ops, full, N_OPTS(full)), 0);
}

static void test_check_bad(void **state)
{
    struct fixture *f = *state;
    static const struct {
        struct larder_option opt;
        int code;
    } cases[] = {
        {{"language", "xx"}, LARDER_BACKEND_EMODEL},
        {{"language", "../eng"}, LARDER_BACKEND_EOPTION},
        {{"language", "eng+"}, LARDER_BACKEND_EOPTION},
        {{"psm", "0"}, LARDER_BACKEND_EOPTION},
        {{"psm", "2"}, LARDER_BACKEND_EOPTION},
        {{"psm", "14"}, LARDER_BACKEND_EOPTION},
        {{"psm", "six"}, LARDER_BACKEND_EOPTION},
        {{"path", "/nonexistent"}, LARDER_BACKEND_EMODEL},
        {{"path", "/etc/hostname"}, LARDER_BACKEND_EMODEL},
        {{"max_pixels", "0"}, LARDER_BACKEND_EOPTION},
        {{"colour", "yes"}, LARDER_BACKEND_EOPTION},
    };

    for (size_t i = 0; i < N_OPTS(cases); i++) {
        int rc = harness_check(f->ops, &cases[i].opt, 1);

        if (rc != cases[i].code)
            fail_msg("%s = %s: got %d, expected %d", cases[i].opt.key, cases[i].opt.value,
                     rc, cases[i].code);
    }
}

/* psm 1 (orientation and script detection) needs osd.traineddata beside the language:
 * checked in a tessdata directory made here, with eng and first without osd, whatever the
 * machine has installed. */
static void test_check_needs_osd(void **state)
{
    char dir[] = "/tmp/larder-tessdata-XXXXXX", eng[4096], link_eng[4200], link_osd[4200];
    const char *prefix = getenv("TESSDATA_PREFIX");
    const struct larder_backend_ops *f_ops = ((struct fixture *)*state)->ops;
    char err[512] = "";

    snprintf(eng, sizeof eng, "%s/eng.traineddata",
             prefix && *prefix ? prefix : "/usr/share/tesseract-ocr/5/tessdata");
    assert_non_null(mkdtemp(dir));
    snprintf(link_eng, sizeof link_eng, "%s/eng.traineddata", dir);
    snprintf(link_osd, sizeof link_osd, "%s/osd.traineddata", dir);
    assert_int_equal(symlink(eng, link_eng), 0);
    {
        const struct larder_option o[] = {{"path", dir}, {"language", "eng"}, {"psm", "1"}};
        const struct larder_option plain[] = {{"path", dir}, {"language", "eng"},
                                              {"psm", "3"}};

        assert_int_equal(harness_check(f_ops, plain, 3), 0);
        assert_int_equal(f_ops->check(o, 3, err, sizeof err), LARDER_BACKEND_EMODEL);
        assert_non_null(strstr(err, "osd.traineddata"));
        /* with the file there, the same options pass */
        assert_int_equal(symlink(eng, link_osd), 0);
        assert_int_equal(harness_check(f_ops, o, 3), 0);
    }
    unlink(link_osd);
    unlink(link_eng);
    rmdir(dir);
}

static void test_estimate(void **state)
{
    struct fixture *f = *state;
    const struct larder_option bad[] = {{"language", "xx"}};
    uint64_t bytes = 0;

    assert_int_equal(f->ops->estimate(NULL, 0, &bytes), 0);
    /* eng.traineddata is about 4 MB; one engine takes several times that. */
    assert_in_range(bytes, 8u << 20, 256u << 20);
    assert_true(f->ops->estimate(bad, 1, &bytes) < 0);
}

static void test_load_failures(void **state)
{
    struct fixture *f = *state;
    const struct larder_option bad[] = {{"language", "xx"}};
    char err[256] = "";
    void *model = (void *)1;

    assert_int_equal(f->ops->load(bad, 1, &model, err, sizeof(err)), LARDER_BACKEND_EMODEL);
    assert_ptr_equal(model, (void *)1); /* untouched on failure */
    assert_non_null(strstr(err, "xx.traineddata"));
}

static void test_load_and_recognize(void **state)
{
    struct fixture *f = *state;
    const bool omp_unset = getenv("OMP_THREAD_LIMIT") == NULL;
    json_t *reply;

    f->model = harness_load(f->ops, NULL, 0);
    assert_int_equal(f->ops->instance_new(f->model, &f->instance, NULL, 0), 0);
    assert_non_null(f->instance);
    assert_int_equal(harness_infer(f->ops, f->model, f->instance, f->png, f->png_len,
                                   "image/png", &reply), 0);
    assert_sentence(reply);
    json_decref(reply);
    if (omp_unset) {
        /* The plugin limited OpenMP itself: the variable, and no parallel regions on the
         * thread that ran OCR. */
        assert_string_equal(getenv("OMP_THREAD_LIMIT"), "1");
        assert_int_equal(omp_get_max_active_levels(), 0);
    }
}

static void test_other_formats(void **state)
{
    struct fixture *f = *state;
    static const struct {
        int format;
        const char *type;
    } formats[] = {
        {IFF_JFIF_JPEG, "image/jpeg"}, {IFF_TIFF_G4, "image/tiff"}, {IFF_TIFF_ZIP, NULL},
        {IFF_PNM, "image/x-portable-graymap"}, {IFF_PNG, "application/octet-stream"},
    };

    for (size_t i = 0; i < N_OPTS(formats); i++) {
        size_t len;
        unsigned char *img = reencode(f, formats[i].format, &len);
        json_t *reply;

        assert_int_equal(harness_infer(f->ops, f->model, f->instance, img, len,
                                       formats[i].type, &reply), 0);
        assert_sentence(reply);
        json_decref(reply);
        free(img);
    }
}

static void test_bad_input(void **state)
{
    struct fixture *f = *state;
    unsigned char *noise = harness_noise(4096, 7);
    size_t bmp_len, jpeg_len, tiff_len;
    unsigned char *bmp = reencode(f, IFF_BMP, &bmp_len);
    unsigned char *jpeg = reencode(f, IFF_JFIF_JPEG, &jpeg_len);
    unsigned char *tiff = reencode(f, IFF_TIFF_ZIP, &tiff_len);
    json_t *reply = NULL;
    void *inst = f->instance, *model = f->model;

    assert_int_equal(harness_infer(f->ops, model, inst, noise, 4096, "image/png", &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(harness_infer(f->ops, model, inst, "", 0, "image/png", &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(harness_infer(f->ops, model, inst, NULL, 0, NULL, &reply),
                     LARDER_BACKEND_EINPUT);
    /* Images cut short: the header is readable, the pixels are not. */
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, 200, "image/png", &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(harness_infer(f->ops, model, inst, jpeg, jpeg_len / 2, "image/jpeg",
                                   &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(harness_infer(f->ops, model, inst, tiff, tiff_len / 2, "image/tiff",
                                   &reply),
                     LARDER_BACKEND_EINPUT);
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "audio/wav",
                                   &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_int_equal(harness_infer(f->ops, model, inst, bmp, bmp_len, "image/bmp", &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_int_equal(harness_infer(f->ops, model, inst, bmp, bmp_len, NULL, &reply),
                     LARDER_BACKEND_EMEDIA);
    assert_int_equal(harness_infer(f->ops, model, NULL, f->png, f->png_len, NULL, &reply),
                     LARDER_BACKEND_EINTERNAL);
    assert_null(reply);
    free(noise);
    free(bmp);
    free(jpeg);
    free(tiff);
}

static void test_max_pixels(void **state)
{
    struct fixture *f = *state;
    const struct larder_option opts[] = {{"max_pixels", "1000"}};
    void *model = harness_load(f->ops, opts, 1);
    void *inst = NULL;
    json_t *reply;

    assert_int_equal(f->ops->instance_new(model, &inst, NULL, 0), 0);
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "image/png",
                                   &reply),
                     LARDER_BACKEND_EINPUT);
    f->ops->instance_free(model, inst);
    f->ops->unload(model);
}

struct worker {
    const struct fixture *f;
    void *instance;
    int rc;
    char text[512];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct larder_infer_request req = {.body = w->f->png, .body_len = w->f->png_len,
                                       .content_type = "image/png"};
    struct larder_infer_result res = {0};
    char err[256];

    w->rc = w->f->ops->infer(w->f->model, w->instance, &req, &res, err, sizeof(err));
    if (w->rc == 0) {
        json_t *reply = json_loads(res.json, 0, NULL);

        snprintf(w->text, sizeof(w->text), "%s",
                 json_string_value(json_object_get(reply, "text")));
        json_decref(reply);
        w->f->ops->result_free(&res);
    }
    return NULL;
}

/* Four threads, each with its own instance (the first one is load's engine), recognize
 * at the same time. */
static void test_concurrent_instances(void **state)
{
    struct fixture *f = *state;
    struct worker w[WORKERS];
    pthread_t tid[WORKERS];

    w[0] = (struct worker){.f = f, .instance = f->instance};
    for (int i = 1; i < WORKERS; i++) {
        w[i] = (struct worker){.f = f};
        assert_int_equal(f->ops->instance_new(f->model, &w[i].instance, NULL, 0), 0);
        assert_ptr_not_equal(w[i].instance, f->instance);
    }
    for (int i = 0; i < WORKERS; i++)
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(w[i].rc, 0);
        assert_non_null(strstr(w[i].text, "lazy dog"));
        if (i > 0)
            f->ops->instance_free(f->model, w[i].instance);
    }
}

static void test_null_tolerance(void **state)
{
    struct fixture *f = *state;

    f->ops->unload(NULL);
    f->ops->instance_free(f->model, NULL);
    f->ops->result_free(NULL);
}

/* An image whose header says it decodes past max_image_bytes is refused before decoding;
 * an accepted one reports its decoded size to the host, which may refuse it too. */
static void test_max_image_bytes(void **state)
{
    struct fixture *f = *state;
    const struct larder_option bad[] = {{"max_image_bytes", "lots"}};
    unsigned char bomb[PNG_HEADER_LEN];
    size_t bomb_len = sizeof(bomb);
    void *model = harness_load(f->ops, NULL, 0);
    void *inst = NULL;
    json_t *reply = NULL;

    png_header_only(bomb, 6000, 6000);
    assert_int_equal(harness_check(f->ops, bad, 1), LARDER_BACKEND_EOPTION);
    assert_true(harness_has_option(f->ops, "max_image_bytes"));
    assert_int_equal(f->ops->instance_new(model, &inst, NULL, 0), 0);
    harness_reserved(0);
    assert_int_equal(harness_infer(f->ops, model, inst, bomb, bomb_len, "image/png", &reply),
                     LARDER_BACKEND_ETOOBIG);
    assert_int_equal(harness_reserved(0), 0);
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "image/png",
                                   &reply), 0);
    json_decref(reply);
    assert_true(harness_reserved(1000) > 1000);
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "image/png",
                                   &reply), LARDER_BACKEND_ETOOBIG);
    harness_reserved(0);
    f->ops->instance_free(model, inst);
    f->ops->unload(model);
}

/* Recognition stops at the host's cancel check, and the engine reads the next page. */
static void test_cancelled_recognition(void **state)
{
    struct fixture *f = *state;
    void *model = harness_load(f->ops, NULL, 0);
    void *inst = NULL;
    json_t *reply = NULL;

    assert_int_equal(f->ops->instance_new(model, &inst, NULL, 0), 0);
    for (unsigned at = 1; at <= 3; at++) { /* before recognition, then inside it */
        harness_cancel_at(at);
        assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "image/png",
                                       &reply), LARDER_BACKEND_ECANCELED);
    }
    harness_cancel_at(0);
    assert_int_equal(harness_infer(f->ops, model, inst, f->png, f->png_len, "image/png",
                                   &reply), 0);
    assert_sentence(reply);
    /* before, after, and Tesseract's monitor in between */
    assert_true(harness_last_checks() > 2);
    json_decref(reply);
    f->ops->instance_free(model, inst);
    f->ops->unload(model);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abi),
        cmocka_unit_test(test_check_good),
        cmocka_unit_test(test_check_bad),
        cmocka_unit_test(test_check_needs_osd),
        cmocka_unit_test(test_estimate),
        cmocka_unit_test(test_load_failures),
        cmocka_unit_test(test_load_and_recognize),
        cmocka_unit_test(test_other_formats),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_max_pixels),
        cmocka_unit_test(test_max_image_bytes),
        cmocka_unit_test(test_cancelled_recognition),
        cmocka_unit_test(test_concurrent_instances),
        cmocka_unit_test(test_null_tolerance),
    };

    return cmocka_run_group_tests_name("backend-tesseract", tests, setup, teardown);
}
