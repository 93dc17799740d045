/* Fuzzes what the PocketSphinx backend (backends/pocketsphinx/pocketsphinx.c) does with
 * an upload before decoding: content type, WAV chunk walk and fmt check, audio/L16
 * parameters, raw PCM. No decoder is created.
 *
 * An input is "CONTENT-TYPE\nBODY" (see fuzz.h). Checks, beyond "no crash, no leak, no
 * undefined behaviour": audio accepted has 1..MAX_SAMPLES samples, each read from
 * inside the body; every refusal has a message. */
#include "fuzz.h"

#include "../../backends/pocketsphinx/pocketsphinx.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_request in;
    fuzz_request_split(&in, data, size);

    struct larder_infer_request req = {
        .body = in.body, .body_len = in.len, .content_type = in.ct};
    struct audio a = {0};
    char err[256] = "";
    int rc = audio_from_request(&req, &a, err, sizeof err);
    if (fuzz_verbose())
        fprintf(stderr, "audio_from_request: %d %s (%zu samples)\n", rc, err, a.n);
    if (rc == 0) {
        FUZZ_ASSERT(a.samples && a.n > 0 && a.n <= MAX_SAMPLES && a.n * 2 <= in.len);
        free(a.samples);
    } else {
        FUZZ_ASSERT(!a.samples && err[0]);
        FUZZ_ASSERT(rc == LARDER_BACKEND_EINPUT || rc == LARDER_BACKEND_EMEDIA);
    }

    /* the WAV walker on its own, whatever the content type said */
    struct audio w = {0};
    err[0] = 0;
    rc = wav_parse(in.body, in.len, &w, err, sizeof err);
    if (rc == 0) {
        FUZZ_ASSERT(w.samples && w.n > 0 && in.len >= 44 && w.n * 2 <= in.len - 44);
        free(w.samples);
    } else {
        FUZZ_ASSERT(!w.samples && err[0]);
    }
    if (in.len >= 16)
        (void)wav_check_fmt(in.body, (uint32_t)in.len, err, sizeof err);
    if (in.ct)
        (void)raw_params_ok(in.ct);
    fuzz_request_free(&in);
    return 0;
}
