/* larder-espeak: text to speech with eSpeak NG (Debian's libespeak-ng and espeak-ng-data).
 *
 * Input: text/plain (UTF-8) or application/json {"text": "..."}. Output: audio/wav, 16-bit
 * mono PCM at eSpeak's sample rate (22050 Hz).
 *
 * eSpeak NG keeps process-wide state that espeak_Terminate() does not give back (its
 * voice and dictionary data stay allocated, the library stays mapped), and it cannot be
 * initialized twice in one process. So this backend runs only in a worker process
 * (`isolation = worker`), whose exit returns everything: its check refuses
 * `isolation = in-process`, and a second load in one process is refused too.
 * One engine per process: requests are serialized.
 *
 * Options: voice (default "en"), rate (words per minute, 80 to 450, default 175),
 * max_chars (the longest text accepted, default 20000), isolation (set by the host).
 */
#include <espeak-ng/speak_lib.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/plugin-util.h"

#define BACKEND_NAME "espeak"

static const struct larder_host *g_host;
static pthread_mutex_t engine_mu = PTHREAD_MUTEX_INITIALIZER;
static bool initialized;   /* espeak_Initialize ran in this process */

static const char *const option_keys[] = {"voice", "rate", "max_chars", "isolation", NULL};

struct config {
    char voice[64];
    unsigned long long rate;
    unsigned long long max_chars;
};

struct model {
    struct config cfg;
    int sample_rate;
};

/* What one synthesis collects through eSpeak's callback. */
struct synth {
    int16_t *pcm;
    size_t n, cap;
    bool oom;
    bool cancelled;
    const struct larder_infer_request *req;
};

static int parse_config(const struct larder_option *opts, size_t n, struct config *c,
                        char *err, size_t errlen)
{
    int rc = larder_pu_check_keys(opts, n, option_keys, err, errlen);
    if (rc < 0)
        return rc;
    const char *iso = larder_pu_opt_get(opts, n, "isolation");
    if (!iso || strcmp(iso, "worker") != 0)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "isolation: eSpeak NG cannot be unloaded from a process, so it "
                              "runs only in a worker: set isolation = worker (it is '%s')",
                              iso ? iso : "in-process");
    const char *voice = larder_pu_opt_get(opts, n, "voice");
    snprintf(c->voice, sizeof c->voice, "%s", voice ? voice : "en");
    if (voice && (strlen(voice) >= sizeof c->voice || !*voice))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "voice: bad name '%s'",
                              voice);
    const char *rate = larder_pu_opt_get(opts, n, "rate");
    c->rate = 175;
    if (rate && !larder_pu_parse_ull(rate, 80, 450, &c->rate))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "rate: '%s' is not a number of words per minute in 80..450",
                              rate);
    const char *mc = larder_pu_opt_get(opts, n, "max_chars");
    c->max_chars = 20000;
    if (mc && !larder_pu_parse_ull(mc, 1, 1000000, &c->max_chars))
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                              "max_chars: '%s' is not a number in 1..1000000", mc);
    return 0;
}

static int es_check(const struct larder_option *opts, size_t n, char *err, size_t errlen)
{
    struct config c;
    return parse_config(opts, n, &c, err, errlen);
}

static int es_estimate(const struct larder_option *opts, size_t n, uint64_t *ret_bytes)
{
    /* the engine, a voice and its dictionary: a few MiB beside the worker itself */
    *ret_bytes = 16u << 20;
    return 0;
}

static int es_load(const struct larder_option *opts, size_t n, void **ret_model, char *err,
                   size_t errlen)
{
    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    int rc = parse_config(opts, n, &m->cfg, err, errlen);
    pthread_mutex_lock(&engine_mu);
    if (rc == 0 && initialized)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL,
                            "eSpeak NG is already initialized in this process");
    if (rc == 0) {
        m->sample_rate = espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, NULL, 0);
        initialized = m->sample_rate > 0;
        if (m->sample_rate <= 0)
            rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EMODEL,
                                "eSpeak NG did not start (is espeak-ng-data installed?)");
    }
    if (rc == 0 && espeak_SetVoiceByName(m->cfg.voice) != EE_OK)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "voice: no voice '%s'",
                            m->cfg.voice);
    if (rc == 0)
        espeak_SetParameter(espeakRATE, (int)m->cfg.rate, 0);
    pthread_mutex_unlock(&engine_mu);
    if (rc < 0) {
        free(m);
        return rc;
    }
    larder_pu_say(g_host, BACKEND_NAME, LARDER_LOG_INFO, "voice %s, %d Hz", m->cfg.voice,
                  m->sample_rate);
    *ret_model = m;
    return 0;
}

static void es_unload(void *model)
{
    /* What espeak_Terminate leaves goes with the worker's exit. */
    pthread_mutex_lock(&engine_mu);
    espeak_Terminate();
    pthread_mutex_unlock(&engine_mu);
    free(model);
}

static int on_samples(short *wav, int numsamples, espeak_EVENT *events)
{
    struct synth *s = events ? events->user_data : NULL;
    if (!s)
        return 0;
    if (larder_pu_cancelled(g_host, s->req)) {
        s->cancelled = true;
        return 1;
    }
    if (numsamples <= 0 || !wav)
        return 0;
    if (s->n + (size_t)numsamples > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 65536;
        while (cap < s->n + (size_t)numsamples)
            cap *= 2;
        int16_t *p = realloc(s->pcm, cap * sizeof *p);
        if (!p) {
            s->oom = true;
            return 1;
        }
        s->pcm = p;
        s->cap = cap;
    }
    memcpy(s->pcm + s->n, wav, (size_t)numsamples * sizeof *wav);
    s->n += (size_t)numsamples;
    return 0;
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

/* A RIFF WAVE file of the samples (16-bit mono). */
static unsigned char *make_wav(const int16_t *pcm, size_t n, int rate, size_t *ret_len)
{
    size_t data = n * 2;
    unsigned char *w = malloc(44 + data);
    if (!w)
        return NULL;
    memcpy(w, "RIFF", 4);
    put32(w + 4, (uint32_t)(36 + data));
    memcpy(w + 8, "WAVEfmt ", 8);
    put32(w + 16, 16);
    put16(w + 20, 1);             /* PCM */
    put16(w + 22, 1);             /* mono */
    put32(w + 24, (uint32_t)rate);
    put32(w + 28, (uint32_t)rate * 2);
    put16(w + 32, 2);
    put16(w + 34, 16);
    memcpy(w + 36, "data", 4);
    put32(w + 40, (uint32_t)data);
    for (size_t i = 0; i < n; i++)
        put16(w + 44 + 2 * i, (uint16_t)pcm[i]);
    *ret_len = 44 + data;
    return w;
}

/* The text of the request, NUL-terminated (free it). */
static int request_text(const struct larder_infer_request *req, const struct config *c,
                        char **ret, char *err, size_t errlen)
{
    const char *ct = req->content_type;
    const char *text = req->body;
    size_t len = req->body_len;
    json_t *doc = NULL;
    if (ct && (larder_pu_media_is(ct, "application/json") || larder_pu_media_is(ct, "text/json"))) {
        json_error_t jerr;
        doc = json_loadb(req->body, req->body_len, 0, &jerr);
        json_t *t = doc ? json_object_get(doc, "text") : NULL;
        if (!json_is_string(t)) {
            json_decref(doc);
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                                  "send {\"text\": \"...\"} (a JSON object with a string)");
        }
        text = json_string_value(t);
        len = json_string_length(t);
    } else if (ct && *ct && !larder_pu_media_is(ct, "text/plain")) {
        return larder_pu_fail(err, errlen, LARDER_BACKEND_EMEDIA,
                              "content type '%s' not accepted: send text/plain or "
                              "application/json {\"text\"}", ct);
    }
    int rc = 0;
    if (len == 0 || memchr(text, '\0', len))
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT,
                            len ? "the text holds a NUL byte" : "no text to speak");
    else if (len > c->max_chars)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ETOOBIG,
                            "%zu bytes of text: more than max_chars %llu", len, c->max_chars);
    else if (!(*ret = strndup(text, len)))
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    json_decref(doc);
    return rc;
}

static int es_infer(void *model, void *instance, const struct larder_infer_request *req,
                    struct larder_infer_result *res, char *err, size_t errlen)
{
    struct model *m = model;
    char *text = NULL;
    int rc = request_text(req, &m->cfg, &text, err, errlen);
    if (rc < 0)
        return rc;
    /* about 2.5 s of audio per 40 characters at 175 wpm, 44 kB per second */
    if ((rc = larder_pu_reserve(g_host, req, strlen(text) * 4096ull, err, errlen)) < 0) {
        free(text);
        return rc;
    }
    struct synth s = {.req = req};
    pthread_mutex_lock(&engine_mu);
    espeak_SetSynthCallback(on_samples);
    espeak_ERROR e = espeak_Synth(text, strlen(text) + 1, 0, POS_CHARACTER, 0,
                                  espeakCHARS_UTF8, NULL, &s);
    if (e == EE_OK)
        espeak_Synchronize();
    pthread_mutex_unlock(&engine_mu);
    free(text);
    if (s.cancelled)
        rc = LARDER_BACKEND_ECANCELED;
    else if (s.oom)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
    else if (e != EE_OK)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINTERNAL, "eSpeak NG failed (%d)",
                            (int)e);
    else if (s.n == 0)
        rc = larder_pu_fail(err, errlen, LARDER_BACKEND_EINPUT, "nothing to speak in the text");
    if (rc == 0) {
        memset(res, 0, sizeof *res);
        res->bytes = make_wav(s.pcm, s.n, m->sample_rate, &res->bytes_len);
        res->content_type = strdup("audio/wav");
        if (!res->bytes || !res->content_type) {
            larder_pu_result_free(res);
            rc = larder_pu_fail(err, errlen, LARDER_BACKEND_ENOMEM, "out of memory");
        }
    }
    free(s.pcm);
    return rc;
}

static const struct larder_backend_ops ops = {
    .abi_major = LARDER_BACKEND_ABI_MAJOR,
    .abi_minor = LARDER_BACKEND_ABI_MINOR,
    .name = BACKEND_NAME,
    .description = "eSpeak NG text to speech: text in, WAV out (worker processes only)",
    .option_keys = option_keys,
    .check = es_check,
    .estimate = es_estimate,
    .load = es_load,
    .unload = es_unload,
    .infer = es_infer,
    .result_free = larder_pu_result_free,
};

const struct larder_backend_ops *larder_backend_entry(const struct larder_host *host)
{
    return larder_pu_entry(host, &g_host, &ops);
}
