/* larder backend: PocketSphinx speech recognition (CMU Sphinx, 0.8 API).
 *
 * Request: 16 kHz mono 16-bit PCM, either as a WAV file (audio/wav, audio/x-wav,
 * audio/wave, audio/vnd.wave; the RIFF header is checked) or raw little-endian samples
 * (audio/L16 or application/octet-stream). Without a content type, a body starting with
 * "RIFF" is read as WAV, anything else as raw samples.
 * Reply: {"text": "..."}, the best hypothesis ("" when nothing was recognized).
 *
 * Options (defaults: the US English model of the pocketsphinx-en-us package):
 *   path  acoustic model directory (mdef, means, variances, ...)
 *   dict  pronunciation dictionary
 *   lm    language model (binary or ARPA)
 *
 * Model and instances: the model is the validated configuration; each instance is one
 * decoder (a decoder is not thread-safe). load() builds the first decoder right away, so
 * that broken model files fail the load and the load is what costs; the first
 * instance_new() takes it, later ones build their own. Decoders are created one at a time
 * (a plugin-wide lock) because their start-up touches process-wide state of sphinxbase.
 *
 * Logging: sphinxbase logs through one process-wide stream. It is switched off once, on
 * the first load (the `-logfn` option would reopen and close that stream on every decoder
 * creation, under decoders logging on other threads).
 */
#include <larder/backend.h>

#include "../common/plugin-util.h"

#include <pocketsphinx.h>
#include <sphinxbase/err.h>

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The name of this backend, in its log lines and its operations table. */
#define BACKEND_NAME "pocketsphinx"

#define MODEL_DIR "/usr/share/pocketsphinx/model/en-us"
#define DEFAULT_HMM MODEL_DIR "/en-us"
#define DEFAULT_DICT MODEL_DIR "/cmudict-en-us.dict"
#define DEFAULT_LM MODEL_DIR "/en-us.lm.bin"
#define SAMPLE_RATE 16000
/* Longest audio accepted: 10 minutes. */
#define MAX_SAMPLES ((size_t)SAMPLE_RATE * 600)
/* Resident bytes of one decoder, after its first utterance, per byte of model files (en-us:
 * 35.0 MB of files, 97.3 MiB resident; see docs/backends.md). */
#define ESTIMATE_FACTOR 2.95

struct config {
    char *hmm;
    char *dict;
    char *lm;
};

struct model {
    struct config cfg;
    pthread_mutex_t lock;  /* guards spare */
    struct decoder *spare; /* the decoder load() built, until an instance takes it */
};

struct decoder {
    cmd_ln_t *config;
    ps_decoder_t *ps;
};

/* Audio of one request: samples in host order, owned. */
struct audio {
    int16 *samples;
    size_t n;
};

static const struct larder_host *g_host;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_create_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const option_keys[] = {"path", "dict", "lm", NULL};

/* ---- small helpers -------------------------------------------------------------------- */

static uint16_t le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- configuration ---------------------------------------------------------------------- */

static void config_clear(struct config *c)
{
    free(c->hmm);
    free(c->dict);
    free(c->lm);
    memset(c, 0, sizeof(*c));
}

/* A readable regular file (dir == false) or directory (dir == true); adds its size. */
static int check_path(const char *what, const char *path, bool dir, uint64_t *size, char *err,
                      size_t errlen)
{
    struct stat st;

    if (stat(path, &st) != 0 || access(path, R_OK) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s %s: %s", what, path,
                              strerror(errno));
    if (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL, "%s %s: not a %s", what, path,
                              dir ? "directory" : "file");
    if (size)
        *size += (uint64_t)st.st_size;
    return 0;
}

/* True when the file starts with one of the two signatures (the second may be NULL). */
static bool starts_with(const char *path, const char *sig1, const char *sig2)
{
    char head[8] = {0};
    FILE *f = fopen(path, "rb");
    size_t got;

    if (!f)
        return false;
    got = fread(head, 1, sizeof(head), f);
    fclose(f);
    return (got >= strlen(sig1) && memcmp(head, sig1, strlen(sig1)) == 0) ||
           (sig2 && got >= strlen(sig2) && memcmp(head, sig2, strlen(sig2)) == 0);
}

/* Checks the acoustic model directory: the files a decoder cannot start without, and
 * their signatures. sphinxbase ends the whole process on some malformed model files, so
 * files of the wrong kind are refused here. */
static int check_hmm(const char *dir, uint64_t *size, char *err, size_t errlen)
{
    static const char *const files[][3] = {
        {"mdef", "BMDF", "0.3\n"}, {"means", "s3\n", NULL}, {"variances", "s3\n", NULL},
        {"transition_matrices", "s3\n", NULL}};
    int rc = check_path("acoustic model (path)", dir, true, NULL, err, errlen);

    for (size_t i = 0; rc == 0 && i < sizeof(files) / sizeof(files[0]); i++) {
        char file[PATH_MAX];

        snprintf(file, sizeof(file), "%s/%s", dir, files[i][0]);
        rc = check_path("acoustic model file", file, false, size, err, errlen);
        if (rc == 0 && !starts_with(file, files[i][1], files[i][2]))
            rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                                "acoustic model file %s: not a Sphinx model file", file);
    }
    return rc;
}

static char *dup_or(const char *value, const char *fallback)
{
    return strdup(value && *value ? value : fallback);
}

/* Fills cfg from opts and checks every file it names. Cheap: reads no model data. */
static int config_parse(const struct larder_option *opts, size_t n, struct config *cfg,
                        uint64_t *ret_bytes, char *err, size_t errlen)
{
    uint64_t bytes = 0;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    if ((rc = larder_pu_check_keys(opts, n, option_keys, err, errlen)) < 0)
        return rc;
    cfg->hmm = dup_or(larder_pu_opt_get(opts, n, "path"), DEFAULT_HMM);
    cfg->dict = dup_or(larder_pu_opt_get(opts, n, "dict"), DEFAULT_DICT);
    cfg->lm = dup_or(larder_pu_opt_get(opts, n, "lm"), DEFAULT_LM);
    if (!cfg->hmm || !cfg->dict || !cfg->lm)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    if (rc == 0)
        rc = check_hmm(cfg->hmm, &bytes, err, errlen);
    if (rc == 0)
        rc = check_path("dictionary (dict)", cfg->dict, false, &bytes, err, errlen);
    if (rc == 0)
        rc = check_path("language model (lm)", cfg->lm, false, &bytes, err, errlen);
    if (rc < 0)
        config_clear(cfg);
    else if (ret_bytes)
        *ret_bytes = bytes;
    return rc;
}

/* ---- decoders ------------------------------------------------------------------------------ */

static void global_setup(void)
{
    err_set_logfp(NULL);
}

static void decoder_free(struct decoder *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&g_create_lock);
    ps_free(d->ps);
    cmd_ln_free_r(d->config);
    pthread_mutex_unlock(&g_create_lock);
    free(d);
}

/* Builds one decoder with its own configuration object. */
static int decoder_new(const struct config *cfg, struct decoder **ret, char *err,
                       size_t errlen)
{
    struct decoder *d = calloc(1, sizeof(*d));

    if (!d)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    pthread_once(&g_once, global_setup);
    pthread_mutex_lock(&g_create_lock);
    d->config = cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", cfg->hmm, "-dict", cfg->dict,
                            "-lm", cfg->lm, NULL);
    if (d->config)
        d->ps = ps_init(d->config);
    pthread_mutex_unlock(&g_create_lock);
    if (!d->ps) {
        decoder_free(d);
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                              "PocketSphinx could not start with model %s, dictionary %s, "
                              "language model %s", cfg->hmm, cfg->dict, cfg->lm);
    }
    *ret = d;
    return 0;
}

/* ---- audio ------------------------------------------------------------------------------- */

/* Copies n little-endian 16-bit samples into a new buffer. */
static int samples_copy(const unsigned char *p, size_t n, struct audio *a, char *err,
                        size_t errlen)
{
    if (n == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "no audio samples");
    if (n > MAX_SAMPLES)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "audio longer than %zu s",
                              MAX_SAMPLES / SAMPLE_RATE);
    a->samples = malloc(n * sizeof(int16));
    if (!a->samples)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        a->samples[i] = (int16)le16(p + 2 * i);
    a->n = n;
    return 0;
}

/* Checks a WAV fmt chunk: PCM (plain or extensible), 1 channel, 16000 Hz, 16 bits. */
static int wav_check_fmt(const unsigned char *p, uint32_t len, char *err, size_t errlen)
{
    unsigned format, channels, bits;
    uint32_t rate;

    if (len < 16)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "WAV fmt chunk too short");
    format = le16(p);
    channels = le16(p + 2);
    rate = le32(p + 4);
    bits = le16(p + 14);
    if (format == 0xFFFE && len >= 26)
        format = le16(p + 24); /* WAVE_FORMAT_EXTENSIBLE: the sub-format's tag */
    if (format != 1)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "WAV is not PCM (format %u)",
                              format);
    if (channels != 1 || rate != SAMPLE_RATE || bits != 16)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "WAV is %u channel(s), %u Hz, %u bits: need 1 channel, 16000 Hz, "
                              "16 bits", channels, (unsigned)rate, bits);
    return 0;
}

/* Walks the RIFF chunks: fmt must come before data. A data chunk longer than the body
 * (as written by streaming recorders) is read up to the end of the body. */
static int wav_parse(const unsigned char *b, size_t len, struct audio *a, char *err,
                     size_t errlen)
{
    size_t off = 12;
    bool have_fmt = false;

    if (len < 12 || memcmp(b, "RIFF", 4) != 0 || memcmp(b + 8, "WAVE", 4) != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "not a RIFF/WAVE file");
    while (off + 8 <= len) {
        const unsigned char *chunk = b + off + 8;
        uint32_t clen = le32(b + off + 4);
        size_t avail = len - off - 8;
        int rc;

        if (memcmp(b + off, "data", 4) == 0) {
            if (!have_fmt)
                return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                                      "WAV data before fmt chunk");
            return samples_copy(chunk, (clen < avail ? clen : avail) / 2, a, err, errlen);
        }
        if (clen > avail)
            break;
        if (memcmp(b + off, "fmt ", 4) == 0) {
            if ((rc = wav_check_fmt(chunk, clen, err, errlen)) < 0)
                return rc;
            have_fmt = true;
        }
        off += 8 + (size_t)clen + (clen & 1);
    }
    return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                          have_fmt ? "WAV has no data chunk" : "WAV has no fmt chunk");
}

static bool is_wav_type(const char *ct)
{
    return larder_pu_media_is(ct, "audio/wav") || larder_pu_media_is(ct, "audio/x-wav") ||
           larder_pu_media_is(ct, "audio/wave") || larder_pu_media_is(ct, "audio/vnd.wave");
}

/* Checks the rate and channels parameters of audio/L16 when present. */
static int raw_params_ok(const char *ct)
{
    const char *rate = strcasestr(ct, "rate=");
    const char *channels = strcasestr(ct, "channels=");

    if (rate && strtol(rate + 5, NULL, 10) != SAMPLE_RATE)
        return 0;
    if (channels && strtol(channels + 9, NULL, 10) != 1)
        return 0;
    return 1;
}

/* Turns the request body into samples, per its content type. */
static int audio_from_request(const struct larder_infer_request *req, struct audio *a,
                              char *err, size_t errlen)
{
    const char *ct = req->content_type && *req->content_type ? req->content_type : NULL;
    const unsigned char *body = req->body;
    size_t len = body ? req->body_len : 0;
    bool wav;

    if (ct && !is_wav_type(ct) && !larder_pu_media_is(ct, "audio/l16") &&
        !larder_pu_media_is(ct, "application/octet-stream"))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "content type '%s' not accepted: send audio/wav or audio/L16", ct);
    if (len == 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "empty body");
    wav = ct ? is_wav_type(ct) : len >= 4 && memcmp(body, "RIFF", 4) == 0;
    if (wav)
        return wav_parse(body, len, a, err, errlen);
    if (ct && larder_pu_media_is(ct, "audio/l16") && !raw_params_ok(ct))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "audio/L16 must be 16000 Hz mono");
    if (len % 2)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                              "raw audio has an odd byte count");
    return samples_copy(body, len / 2, a, err, errlen);
}

/* ---- operations ------------------------------------------------------------------------- */

static int sphinx_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config cfg;
    int rc = config_parse(opts, n, &cfg, NULL, err, errlen);

    if (rc == 0)
        config_clear(&cfg);
    return rc;
}

static int sphinx_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    struct config cfg;
    uint64_t bytes = 0;
    int rc = config_parse(opts, n, &cfg, &bytes, NULL, 0);

    if (rc < 0)
        return rc;
    config_clear(&cfg);
    *ret_bytes = (uint64_t)((double)bytes * ESTIMATE_FACTOR);
    return 0;
}

static int sphinx_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                   size_t errlen)
{
    struct model *m = calloc(1, sizeof(*m));
    int rc;

    if (!m)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    rc = config_parse(opts, n, &m->cfg, NULL, err, errlen);
    if (rc == 0)
        rc = decoder_new(&m->cfg, &m->spare, err, errlen);
    if (rc < 0) {
        config_clear(&m->cfg);
        free(m);
        return rc;
    }
    pthread_mutex_init(&m->lock, NULL);
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_DEBUG, "loaded %s with %s and %s", m->cfg.hmm,
                  m->cfg.lm, m->cfg.dict);
    *ret_model = m;
    return 0;
}

static void sphinx_unload(void *model)
{
    struct model *m = model;

    if (!m)
        return;
    decoder_free(m->spare);
    pthread_mutex_destroy(&m->lock);
    config_clear(&m->cfg);
    free(m);
}

static int sphinx_instance_new(void *model, void **ret_instance, char *err, size_t errlen)
{
    struct model *m = model;
    struct decoder *d;
    int rc;

    pthread_mutex_lock(&m->lock);
    d = m->spare;
    m->spare = NULL;
    pthread_mutex_unlock(&m->lock);
    if (!d && (rc = decoder_new(&m->cfg, &d, err, errlen)) < 0)
        return rc;
    *ret_instance = d;
    return 0;
}

static void sphinx_instance_free(void *model, void *instance)
{
    decoder_free(instance);
}

/* Audio up to WHOLE_MAX samples (30 s at 16 kHz) is decoded in one call, as one whole
 * utterance (the most accurate mode: its cepstral mean is the utterance's own); longer
 * audio is fed DECODE_CHUNK samples (one second) at a time, live, with a cancel check
 * between two chunks, so a long recording stops within a second of its cancellation. A
 * cancelled utterance resets its decoder (ps_reinit: as long as building one), so the
 * next request decodes as it would on a new instance. */
#define WHOLE_MAX 480000
#define DECODE_CHUNK 16000

/* Brings a decoder back to the state of a new one. An utterance cut short leaves its
 * running cepstral mean behind, which would shift what the next utterance decodes to. */
static void decoder_reset(struct decoder *d)
{
    int rc;

    pthread_mutex_lock(&g_create_lock);
    rc = ps_reinit(d->ps, NULL);
    pthread_mutex_unlock(&g_create_lock);
    if (rc < 0)
        larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_WARN,
                      "could not reset a decoder after a cancelled utterance");
}

/* Feeds the audio, asking the host between chunks whether to stop. */
static int feed(struct decoder *d, const struct audio *a, const struct larder_infer_request *req,
                char *err, size_t errlen)
{
    if (a->n <= WHOLE_MAX) {
        if (larder_pu_cancelled(g_host, req))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_ECANCELED, "cancelled");
        if (ps_process_raw(d->ps, a->samples, a->n, FALSE, TRUE) < 0)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "decoding failed");
        return 0;
    }
    for (size_t at = 0; at < a->n; at += DECODE_CHUNK) {
        size_t n = a->n - at < DECODE_CHUNK ? a->n - at : DECODE_CHUNK;
        if (larder_pu_cancelled(g_host, req))
            return larder_pu_fail(err, errlen, LARDER_BACKEND_ECANCELED,
                                  "cancelled after %zu of %zu samples", at, a->n);
        if (ps_process_raw(d->ps, a->samples + at, n, FALSE, FALSE) < 0)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "decoding failed");
    }
    return 0;
}

/* Decodes one whole utterance; *ret_text is malloc'd. A cancelled or failed utterance is
 * ended all the same, so the decoder is ready for the next request. */
static int decode(struct decoder *d, const struct audio *a, const struct larder_infer_request *req,
                  char **ret_text, char *err, size_t errlen)
{
    const char *hyp;
    int32 score = 0;
    int rc;

    if (ps_start_utt(d->ps) < 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "cannot start an utterance");
    if ((rc = feed(d, a, req, err, errlen)) < 0) {
        ps_end_utt(d->ps);
        if (rc == LARDER_BACKEND_ECANCELED)
            decoder_reset(d);
        return rc;
    }
    if (ps_end_utt(d->ps) < 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "cannot end the utterance");
    hyp = ps_get_hyp(d->ps, &score);
    *ret_text = strdup(hyp ? hyp : "");
    if (!*ret_text)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    return 0;
}

static int sphinx_infer(void *model, void *instance, const struct larder_infer_request *req,
                    struct larder_infer_result *res, char *err, size_t errlen)
{
    struct audio a = {0};
    char *text = NULL;
    json_t *obj;
    int rc;

    if (!model || !instance || !req || !res)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "called without model or instance");
    if ((rc = audio_from_request(req, &a, err, errlen)) < 0)
        return rc;
    rc = decode(instance, &a, req, &text, err, errlen);
    free(a.samples);
    if (rc < 0)
        return rc;
    obj = json_pack("{s:s}", "text", text);
    free(text);
    memset(res, 0, sizeof(*res));
    res->json = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!res->json)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                              "cannot encode the hypothesis");
    return 0;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = "PocketSphinx speech recognition: 16 kHz mono speech in, text out",
    .option_keys = option_keys,
    .check = sphinx_check,
    .estimate = sphinx_estimate,
    .load = sphinx_load,
    .unload = sphinx_unload,
    .instance_new = sphinx_instance_new,
    .instance_free = sphinx_instance_free,
    .measure = NULL,
    .infer = sphinx_infer,
    .result_free = larder_pu_result_free,
};

/* The plugin's entry: returns its operations, or NULL for a host of another ABI major. */
const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
