/* larder backend: Tesseract OCR (LSTM engine).
 *
 * Request: an image (PNG, JPEG, PNM or TIFF; the bytes decide the format, Leptonica sniffs
 * them). Reply: {"text": "...", "confidence": N} with the recognized UTF-8 text (trailing
 * white space removed) and Tesseract's mean word confidence (0-100).
 *
 * Options:
 *   language    traineddata name(s), "eng" or "eng+deu"; default "eng"
 *   psm         page segmentation mode, 1 or 3-13; default 3 (fully automatic)
 *   path        tessdata directory; default $TESSDATA_PREFIX, else the system one
 *   max_pixels  largest image accepted, width x height; default 40000000
 *   max_image_bytes  largest decoded image accepted, width x height x bytes per pixel
 *               (1 for gray or fewer bits, 2 for 16-bit, 4 for color), read from the
 *               header before decoding; "64MiB", "1G" or bytes; default 64MiB. A bigger
 *               image is refused with LARDER_BACKEND_ETOOBIG (413), and the decoded size
 *               of an accepted one is reported to the host (reserve_request_bytes)
 *
 * Cancellation: recognition runs under a Tesseract monitor whose cancel function asks the
 * host's cancel check (ABI minor 1), so a cancelled request stops between two words and
 * returns LARDER_BACKEND_ECANCELED; the engine is cleared for the next request.
 *
 * Model and instances: the model is the validated configuration; each instance is one
 * TessBaseAPI (the engine is not thread-safe, one per concurrent request). load() builds
 * the first engine right away, so that a broken language file fails the load and the load
 * is what costs; the first instance_new() takes that engine, later ones build their own.
 *
 * Process-wide settings made once, on the first load:
 *   - OMP_THREAD_LIMIT=1 when unset: Tesseract's OpenMP threads make OCR many times slower
 *     on a busy host. The variable takes effect only if it is set before the OpenMP
 *     runtime is mapped (larderd sets it at start-up, before any plugin is opened); when
 *     the plugin has to set it, infer also turns OpenMP parallel regions off on the thread
 *     it runs on, which has the same effect.
 *   - Leptonica's messages sent to the host's debug log, Tesseract's to /dev/null.
 * Engines are created one at a time (a plugin-wide lock): Tesseract's start-up writes
 * process-wide parameters.
 */
#include <larder/backend.h>

#include "../common/plugin-util.h"

#include <leptonica/allheaders.h>
#include <tesseract/capi.h>

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The name of this backend, in its log lines and its operations table. */
#define BACKEND_NAME "tesseract"

#define SYSTEM_TESSDATA "/usr/share/tesseract-ocr/5/tessdata"
#define DEFAULT_LANGUAGE "eng"
#define DEFAULT_PSM 3
#define DEFAULT_MAX_PIXELS 40000000ULL
#define DEFAULT_MAX_IMAGE_BYTES (64ULL << 20)
/* Bytes at the end of a JPEG searched for its end marker. */
#define JPEG_TAIL 4096
/* Resident bytes of one engine, after its first page, per byte of traineddata (eng: 4.1 MB
 * of data, 20.7 MiB resident; see docs/backends.md). */
#define ESTIMATE_FACTOR 5.5

struct config {
    char *datapath;       /* tessdata directory, resolved */
    char *language;
    int psm;
    unsigned long long max_pixels;
    unsigned long long max_image_bytes;
};

struct model {
    struct config cfg;
    pthread_mutex_t lock; /* guards spare */
    TessBaseAPI *spare;   /* the engine load() built, until an instance takes it */
};

static const struct larder_host *g_host;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_create_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_serial_omp; /* set once by global_setup */

static const char *const option_keys[] = {"language", "psm", "path", "max_pixels",
                                          "max_image_bytes", NULL};

/* ---- configuration ---------------------------------------------------------------------- */

static void config_clear(struct config *c)
{
    free(c->datapath);
    free(c->language);
    memset(c, 0, sizeof(*c));
}

static const char *default_datapath(void)
{
    const char *env = getenv("TESSDATA_PREFIX");

    return env && *env ? env : SYSTEM_TESSDATA;
}

/* One language name: letters, digits, '_', '-', and '/' for the script/ subfolder. */
static bool language_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > 64 || s[0] == '/' || s[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (!isalnum(c) && c != '_' && c != '-' && c != '/')
            return false;
    }
    return true;
}

/* Checks each '+'-separated language of cfg and adds up the traineddata sizes. */
static int check_languages(const struct config *cfg, uint64_t *ret_bytes, char *err,
                           size_t errlen)
{
    const char *p = cfg->language;
    uint64_t total = 0;

    for (;;) {
        size_t len = strcspn(p, "+");
        char file[PATH_MAX];
        struct stat st;

        if (!language_name_ok(p, len))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "bad language '%s'",
                                  cfg->language);
        snprintf(file, sizeof(file), "%s/%.*s.traineddata", cfg->datapath, (int)len, p);
        if (stat(file, &st) != 0 || access(file, R_OK) != 0)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "language file %s: %s", file,
                                  strerror(errno));
        if (!S_ISREG(st.st_mode))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                                  "language file %s: not a file", file);
        total += (uint64_t)st.st_size;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    if (ret_bytes)
        *ret_bytes = total;
    return 0;
}

static int parse_psm(const char *s, int *ret, char *err, size_t errlen)
{
    unsigned long long v;

    if (!s) {
        *ret = DEFAULT_PSM;
        return 0;
    }
    if (!larder_pu_parse_ull(s, 1, PSM_COUNT - 1, &v) || v == PSM_AUTO_ONLY)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "psm '%s': expected 1 or 3-%d (0 and 2 produce no text)", s,
                              PSM_COUNT - 1);
    *ret = (int)v;
    return 0;
}

/* Fills cfg from opts and checks every file it names. Cheap: reads no model data. */
static int config_parse(const struct larder_option *opts, size_t n, struct config *cfg,
                        uint64_t *ret_data_bytes, char *err, size_t errlen)
{
    const char *path = larder_pu_opt_get(opts, n, "path");
    const char *lang = larder_pu_opt_get(opts, n, "language");
    const char *maxp = larder_pu_opt_get(opts, n, "max_pixels");
    const char *maxb = larder_pu_opt_get(opts, n, "max_image_bytes");
    struct stat st;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    if ((rc = larder_pu_check_keys(opts, n, option_keys, err, errlen)) < 0)
        return rc;
    if ((rc = parse_psm(larder_pu_opt_get(opts, n, "psm"), &cfg->psm, err, errlen)) < 0)
        return rc;
    cfg->max_pixels = DEFAULT_MAX_PIXELS;
    if (maxp && !larder_pu_parse_ull(maxp, 1, 1ULL << 40, &cfg->max_pixels))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "max_pixels '%s': not a count",
                              maxp);
    cfg->max_image_bytes = DEFAULT_MAX_IMAGE_BYTES;
    if (maxb && !larder_pu_parse_bytes(maxb, &cfg->max_image_bytes))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "max_image_bytes '%s': not a size (\"64MiB\", \"1G\", bytes)", maxb);
    if (!path || !*path)
        path = default_datapath();
    if (stat(path, &st) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "tessdata directory (path) %s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "tessdata (path) %s: not a directory", path);
    cfg->datapath = strdup(path);
    cfg->language = strdup(lang && *lang ? lang : DEFAULT_LANGUAGE);
    if (!cfg->datapath || !cfg->language) {
        config_clear(cfg);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    }
    rc = check_languages(cfg, ret_data_bytes, err, errlen);
    if (rc == 0 && (cfg->psm == PSM_AUTO_OSD || cfg->psm == PSM_SPARSE_TEXT_OSD)) {
        struct config osd = {.datapath = cfg->datapath, .language = "osd"};

        rc = check_languages(&osd, NULL, err, errlen);
    }
    if (rc < 0)
        config_clear(cfg);
    return rc;
}

/* ---- engines ------------------------------------------------------------------------------ */

/* Leptonica's diagnostics (decoding errors of bad uploads) go to the host's debug log. */
static void leptonica_message(const char *msg)
{
    size_t len = strlen(msg);

    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "leptonica: %.*s", (int)len, msg);
}

/* Process-wide settings, once, before the first engine exists. */
static void global_setup(void)
{
    TessBaseAPI *probe;

    if (!getenv("OMP_THREAD_LIMIT")) {
        /* The OpenMP runtime read its environment when it was mapped (with this plugin),
         * so the variable alone comes too late: infer also turns parallel regions off on
         * its own thread, which is what a thread limit of 1 does. */
        setenv("OMP_THREAD_LIMIT", "1", 0);
        g_serial_omp = true;
        larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_INFO,
                      "OMP_THREAD_LIMIT was unset: OCR runs on 1 thread per request");
    }
    setMsgSeverity(L_SEVERITY_NONE);
    leptSetStderrHandler(leptonica_message);
    /* Tesseract prints diagnostics through one process-wide file that it opens lazily on
     * the first message. Point it at /dev/null and have that first message happen here,
     * on one thread, so concurrent engines never race to open it. */
    probe = TessBaseAPICreate();
    if (!probe)
        return;
    TessBaseAPISetVariable(probe, "debug_file", "/dev/null");
    TessBaseAPIInit2(probe, "/nonexistent-tessdata", "larder-none", OEM_LSTM_ONLY);
    TessBaseAPIEnd(probe);
    TessBaseAPIDelete(probe);
}

/* Builds one engine for cfg. */
static int engine_new(const struct config *cfg, TessBaseAPI **ret, char *err, size_t errlen)
{
    TessBaseAPI *api;
    int rc;

    pthread_once(&g_once, global_setup);
    pthread_mutex_lock(&g_create_lock);
    api = TessBaseAPICreate();
    rc = api ? TessBaseAPIInit2(api, cfg->datapath, cfg->language, OEM_LSTM_ONLY) : -1;
    pthread_mutex_unlock(&g_create_lock);
    if (!api)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM,
                              "cannot create a Tesseract engine");
    if (rc != 0) {
        TessBaseAPIDelete(api);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "Tesseract could not load language '%s' from %s (LSTM data needed)",
                              cfg->language, cfg->datapath);
    }
    TessBaseAPISetPageSegMode(api, (TessPageSegMode)cfg->psm);
    *ret = api;
    return 0;
}

static void engine_free(TessBaseAPI *api)
{
    if (!api)
        return;
    TessBaseAPIEnd(api);
    TessBaseAPIDelete(api);
}

/* ---- operations ------------------------------------------------------------------------- */

static int tess_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config cfg;
    int rc = config_parse(opts, n, &cfg, NULL, err, errlen);

    if (rc == 0)
        config_clear(&cfg);
    return rc;
}

static int tess_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    struct config cfg;
    uint64_t data = 0;
    int rc = config_parse(opts, n, &cfg, &data, NULL, 0);

    if (rc < 0)
        return rc;
    config_clear(&cfg);
    *ret_bytes = (uint64_t)((double)data * ESTIMATE_FACTOR);
    return 0;
}

static int tess_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                     size_t errlen)
{
    struct model *m = calloc(1, sizeof(*m));
    int rc;

    if (!m)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    rc = config_parse(opts, n, &m->cfg, NULL, err, errlen);
    if (rc == 0)
        rc = engine_new(&m->cfg, &m->spare, err, errlen);
    if (rc < 0) {
        config_clear(&m->cfg);
        free(m);
        return rc;
    }
    pthread_mutex_init(&m->lock, NULL);
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "loaded language %s from %s, psm %d",
                  m->cfg.language, m->cfg.datapath, m->cfg.psm);
    *ret_model = m;
    return 0;
}

static void tess_unload(void *model)
{
    struct model *m = model;

    if (!m)
        return;
    engine_free(m->spare);
    pthread_mutex_destroy(&m->lock);
    config_clear(&m->cfg);
    free(m);
}

static int tess_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    struct model *m = model;
    TessBaseAPI *api;
    int rc;

    pthread_mutex_lock(&m->lock);
    api = m->spare;
    m->spare = NULL;
    pthread_mutex_unlock(&m->lock);
    if (!api && (rc = engine_new(&m->cfg, &api, err, errlen)) < 0)
        return rc;
    *ret_instance = api;
    return 0;
}

static void tess_instance_free(void *model, void *instance)
{
    engine_free(instance);
}

/* Leptonica's name for the image formats it sniffs that this backend accepts. */
static bool format_accepted(l_int32 format)
{
    switch (format) {
    case IFF_PNG:
    case IFF_JFIF_JPEG:
    case IFF_PNM:
    case IFF_TIFF:
    case IFF_TIFF_PACKBITS:
    case IFF_TIFF_RLE:
    case IFF_TIFF_G3:
    case IFF_TIFF_G4:
    case IFF_TIFF_LZW:
    case IFF_TIFF_ZIP:
    case IFF_TIFF_JPEG:
        return true;
    default:
        return false;
    }
}

static bool content_type_accepted(const char *ct)
{
    static const char *const types[] = {
        "application/octet-stream", "image/png", "image/jpeg", "image/jpg", "image/pjpeg",
        "image/tiff", "image/x-portable-anymap", "image/x-portable-bitmap",
        "image/x-portable-graymap", "image/x-portable-greymap", "image/x-portable-pixmap",
        NULL};

    if (!ct || !*ct)
        return true;
    for (size_t i = 0; types[i]; i++)
        if (larder_pu_media_is(ct, types[i]))
            return true;
    return false;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* True when a PNG's chunks are all within the body, up to IEND. */
static bool png_complete(const unsigned char *b, size_t len)
{
    size_t off = 8;

    while (off + 12 <= len) {
        uint32_t clen = be32(b + off);

        if (clen > len - off - 12)
            return false;
        if (memcmp(b + off + 4, "IEND", 4) == 0)
            return true;
        off += 12 + (size_t)clen;
    }
    return false;
}

/* True when a JPEG has its end marker (trailing bytes after it are allowed). */
static bool jpeg_complete(const unsigned char *b, size_t len)
{
    size_t stop = len > JPEG_TAIL ? len - JPEG_TAIL : 0;

    for (size_t i = len - 1; i > stop; i--)
        if (b[i - 1] == 0xFF && b[i] == 0xD9)
            return true;
    return false;
}

/* Catches truncated uploads before the codecs see them: libpng and libjpeg report those
 * on standard error. */
static bool body_complete(l_int32 format, const unsigned char *b, size_t len)
{
    if (format == IFF_PNG)
        return png_complete(b, len);
    if (format == IFF_JFIF_JPEG)
        return jpeg_complete(b, len);
    return true;
}

/* Refuses, from its header alone, an image that would decode past max_image_bytes, and
 * reports the decoded size of an accepted one to the host. bits: bits per pixel. */
static int image_bytes_ok(const struct model *m, const struct larder_infer_request *req,
                          l_int32 w, l_int32 h, l_int32 bits, char *err, size_t errlen)
{
    unsigned long long per_pixel = bits <= 8 ? 1 : bits <= 16 ? 2 : 4;
    unsigned long long bytes = (unsigned long long)w * (unsigned long long)h * per_pixel;

    if (bytes > m->cfg.max_image_bytes)
        return larder_pu_fail(err, errlen,
                              g_host && g_host->abi_minor >= 1 ? LARDER_BACKEND_ETOOBIG
                                                               : LARDER_BACKEND_EINPUT,
                              "image %dx%d decodes to %llu bytes, over max_image_bytes %llu",
                              w, h, bytes, m->cfg.max_image_bytes);
    return larder_pu_reserve(g_host, req, bytes, err, errlen);
}

/* Decodes the request body into a Pix, with the right error for each kind of bad input. */
static int decode_image(const struct model *m, const struct larder_infer_request *req,
                        PIX **ret_pix, char *err, size_t errlen)
{
    l_uint8 head[16] = {0};
    l_int32 format = IFF_UNKNOWN, w = 0, h = 0, bps = 0, spp = 0;
    PIX *pix;
    int rc;

    if (!content_type_accepted(req->content_type))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "content type '%s' not accepted: send PNG, JPEG, PNM or TIFF",
                              req->content_type);
    if (!req->body || req->body_len < 12)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "body too short to be an image");
    memcpy(head, req->body, 12);
    if (findFileFormatBuffer(head, &format) != 0 || format == IFF_UNKNOWN)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "body is not a known image format");
    if (!format_accepted(format))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "image format %s not accepted: send PNG, JPEG, PNM or TIFF",
                              getFormatExtension(format));
    if (!body_complete(format, req->body, req->body_len))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "%s image is truncated",
                              getFormatExtension(format));
    if (pixReadHeaderMem(req->body, req->body_len, NULL, &w, &h, &bps, &spp, NULL) != 0 ||
        w <= 0 || h <= 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "cannot read the image header");
    if ((unsigned long long)w * (unsigned long long)h > m->cfg.max_pixels)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "image %dx%d is over max_pixels %llu", w, h, m->cfg.max_pixels);
    if ((rc = image_bytes_ok(m, req, w, h, bps * spp, err, errlen)) < 0)
        return rc;
    pix = pixReadMem(req->body, req->body_len);
    if (!pix)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "cannot decode the image");
    *ret_pix = pix;
    return 0;
}

/* Builds the reply object; takes ownership of nothing. */
static int reply_json(const char *text, int confidence, char **ret_json, char *err,
                      size_t errlen)
{
    size_t len = strlen(text);
    json_t *obj;
    char *out;

    while (len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    obj = json_pack("{s:s%,s:i}", "text", text, len, "confidence", confidence);
    if (!obj)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "recognized text is not UTF-8");
    out = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!out)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    *ret_json = out;
    return 0;
}

/* Tesseract's cancel function: asks the host whether the request should stop. */
static bool monitor_cancel(void *cancel_this, int words)
{
    (void)words;
    return larder_pu_cancelled(g_host, cancel_this);
}

/* Recognizes the image set on api under a monitor that the host's cancel check can stop
 * (a host of ABI minor 0 gets none). 0, -1 for a failure, LARDER_BACKEND_ECANCELED. */
static int recognize(TessBaseAPI *api, const struct larder_infer_request *req)
{
    ETEXT_DESC *monitor = NULL;
    int rc;

    if (g_host && g_host->abi_minor >= 1 && g_host->cancelled &&
        (monitor = TessMonitorCreate())) {
        TessMonitorSetCancelFunc(monitor, monitor_cancel);
        TessMonitorSetCancelThis(monitor, (void *)req);
    }
    rc = larder_pu_cancelled(g_host, req) ? LARDER_BACKEND_ECANCELED
                                          : TessBaseAPIRecognize(api, monitor);
    /* A recognition the monitor stopped may still return 0, with the words it got to. */
    if (rc != LARDER_BACKEND_ECANCELED && larder_pu_cancelled(g_host, req))
        rc = LARDER_BACKEND_ECANCELED;
    if (monitor)
        TessMonitorDelete(monitor);
    return rc;
}

static int tess_infer(void *model, void *instance, const struct larder_infer_request *req,
                      struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *m = model;
    TessBaseAPI *api = instance;
    PIX *pix = NULL;
    char *text;
    int rc, confidence;

    if (!m || !api || !req || !res)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "called without model or instance");
    if ((rc = decode_image(m, req, &pix, err, errlen)) < 0)
        return rc;
    if (g_serial_omp)
        omp_set_max_active_levels(0); /* a per-thread setting */
    TessBaseAPISetImage2(api, pix);
    rc = recognize(api, req);
    text = rc == 0 ? TessBaseAPIGetUTF8Text(api) : NULL;
    confidence = text ? TessBaseAPIMeanTextConf(api) : 0;
    TessBaseAPIClear(api);
    pixDestroy(&pix);
    if (rc == LARDER_BACKEND_ECANCELED)
        return larder_pu_fail(err, errlen, rc, "recognition cancelled");
    if (!text)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "Tesseract failed to recognize");
    memset(res, 0, sizeof(*res));
    rc = reply_json(text, confidence, &res->json, err, errlen);
    TessDeleteText(text);
    return rc;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = "Tesseract OCR (LSTM): image in, UTF-8 text and confidence out",
    .option_keys = option_keys,
    .check = tess_check,
    .estimate = tess_estimate,
    .load = tess_load,
    .unload = tess_unload,
    .instance_new = tess_instance_new,
    .instance_free = tess_instance_free,
    .measure = NULL,
    .infer = tess_infer,
    .result_free = larder_pu_result_free,
};

/* The plugin's entry: returns its operations, or NULL for a host of another ABI major. */
const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
