/* Fuzzes the checks the Tesseract backend (backends/tesseract/tesseract.c) makes on an
 * upload before any OCR: content type, format sniffing, PNG chunk walk, JPEG end marker,
 * Leptonica's header read and, within a small pixel limit, the decode itself.
 *
 * An input is "CONTENT-TYPE\nBODY" (see fuzz.h). No engine is created: decode_image() is
 * the whole of what infer does with the bytes before it hands a Pix to Tesseract.
 * Checks, beyond "no crash, no leak, no undefined behaviour": a decoded image exists only
 * for an accepted content type, a complete body, and within max_pixels; every refusal
 * has a message. */
#include "fuzz.h"

#include "../../backends/tesseract/tesseract.c"

/* Small, so that decoding an image the fuzzer made up stays fast. */
#define FUZZ_MAX_PIXELS (256ULL * 256ULL)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static int ready;
    if (ready)
        return 0;
    ready = 1;
    /* what global_setup() does for the codecs, without an engine */
    setMsgSeverity(L_SEVERITY_NONE);
    leptSetStderrHandler(leptonica_message);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL); /* once, also where no libFuzzer calls it */
    struct fuzz_request in;
    fuzz_request_split(&in, data, size);

    /* the completeness checks on any body decode_image() could hand them */
    if (in.len >= 12) {
        (void)body_complete(IFF_PNG, in.body, in.len);
        (void)body_complete(IFF_JFIF_JPEG, in.body, in.len);
        (void)body_complete(IFF_TIFF, in.body, in.len);
    }

    struct model m = {.cfg = {.max_pixels = FUZZ_MAX_PIXELS}};
    struct larder_infer_request req = {
        .body = in.body, .body_len = in.len, .content_type = in.ct};
    char err[256] = "";
    PIX *pix = NULL;
    int rc = decode_image(&m, &req, &pix, err, sizeof err);
    if (fuzz_verbose())
        fprintf(stderr, "decode_image: %d %s\n", rc, rc ? err : "decoded");
    if (rc == 0) {
        FUZZ_ASSERT(pix && content_type_accepted(in.ct) && in.len >= 12);
        FUZZ_ASSERT((unsigned long long)pixGetWidth(pix) * pixGetHeight(pix) <=
                    FUZZ_MAX_PIXELS);
        pixDestroy(&pix);
    } else {
        FUZZ_ASSERT(!pix && err[0]);
        FUZZ_ASSERT(rc == LARDER_BACKEND_EINPUT || rc == LARDER_BACKEND_EMEDIA);
        if (rc == LARDER_BACKEND_EMEDIA)
            FUZZ_ASSERT(in.ct || in.len >= 12);
    }
    fuzz_request_free(&in);
    return 0;
}
