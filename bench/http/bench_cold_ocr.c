/* The first OCR request on a cold model, through larderd, against the same work done by
 * a standalone program that uses libtesseract directly: start, load the English model,
 * recognize examples/ocr.png, exit. Both run in this process's children, alternating,
 * in the same run; the ratio is larderd's first-request time over the standalone time.
 *
 * usage: bench_cold_ocr [LARDERD]   (bench_cold_ocr --standalone PNG runs the baseline) */
#include <leptonica/allheaders.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <tesseract/capi.h>
#include <unistd.h>

#include "common.h"

#define RUNS 5
#define TESSDATA "/usr/share/tesseract-ocr/5/tessdata"

static int standalone(const char *png_path)
{
    size_t len = 0;
    char *png = bench_read_file(png_path, &len);
    TessBaseAPI *api = TessBaseAPICreate();
    if (!png || !api || TessBaseAPIInit2(api, TESSDATA, "eng", OEM_LSTM_ONLY) != 0)
        return 1;
    TessBaseAPISetPageSegMode(api, PSM_AUTO);
    PIX *pix = pixReadMem((const l_uint8 *)png, len);
    if (!pix)
        return 1;
    TessBaseAPISetImage2(api, pix);
    char *text = TessBaseAPIGetUTF8Text(api);
    int ok = text && strstr(text, "lazy dog");
    TessDeleteText(text);
    pixDestroy(&pix);
    TessBaseAPIEnd(api);
    TessBaseAPIDelete(api);
    free(png);
    return ok ? 0 : 2;
}

static double time_standalone(const char *self, const char *png)
{
    double t0 = bench_now();
    pid_t pid = fork();
    if (pid == 0) {
        execl(self, self, "--standalone", png, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? bench_now() - t0 : -1;
}

static double time_daemon(const char *larderd, const char *png, size_t png_len)
{
    struct bench_daemon d;
    if (bench_prepare(&d, "[server]\nlisten = 127.0.0.1:0\n"
                          "[model.ocr-eng]\nbackend = tesseract\nlanguage = eng\n") < 0 ||
        bench_start(&d, larderd) < 0) {
        bench_stop(&d);
        return -1;
    }
    struct larder__http_response r = {0};
    double t0 = bench_now();
    int e = larder__http_request(&d.url, "POST", "/v1/models/ocr-eng/infer", NULL, "image/png",
                                 png, png_len, 120000, &r);
    double t = bench_now() - t0;
    bool ok = e == 0 && r.status == 200 && strstr(r.body, "lazy dog") &&
              strstr(r.body, "\"cold_start\":true");
    larder__http_response_clear(&r);
    bench_stop(&d);
    return ok ? t : -1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--standalone") == 0)
        return standalone(argv[2]);
    const char *larderd = argc > 1 ? argv[1] : LARDERD_PATH;
    const char *png_path = EXAMPLES_DIR "/ocr.png";
    size_t png_len = 0;
    char *png = bench_read_file(png_path, &png_len);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (!png || n <= 0) {
        fprintf(stderr, "bench_cold_ocr: cannot read %s or find myself\n", png_path);
        return 1;
    }
    self[n] = 0;
    setenv("OMP_THREAD_LIMIT", "1", 0);
    double sa[RUNS], dm[RUNS];
    /* one of each first, so both find the files in the page cache */
    if (time_standalone(self, png_path) < 0 || time_daemon(larderd, png, png_len) < 0) {
        fprintf(stderr, "bench_cold_ocr: a warm-up run failed\n");
        return 1;
    }
    for (int i = 0; i < RUNS; i++) {
        sa[i] = time_standalone(self, png_path);
        dm[i] = time_daemon(larderd, png, png_len);
        if (sa[i] < 0 || dm[i] < 0) {
            fprintf(stderr, "bench_cold_ocr: run %d failed\n", i);
            return 1;
        }
    }
    free(png);
    double s = bench_median(sa, RUNS), d = bench_median(dm, RUNS);
    printf("cold OCR: first request on a cold model vs a standalone libtesseract program "
           "(median of %d)\n", RUNS);
    printf("  larderd first request: %.1f ms   standalone start+load+infer: %.1f ms\n",
           d * 1000, s * 1000);
    printf("ratio cold_ocr_larderd/standalone: %.2f   (target <= 1.10)\n", d / s);
    return 0;
}
