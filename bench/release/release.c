/* bench_release: does unloading a real model give its memory back to the OS?
 *
 * Runs N load / use / unload cycles of two real engines in-process: a PocketSphinx
 * decoder with the en-us model (about 90 MB) and a Tesseract engine with "eng". Each
 * variant runs in a fresh child process so that the variants do not share a heap:
 * with malloc_trim(0) after every unload (what larder does) and without it (what most
 * hand-written model managers do). It reports the process RSS before the first load,
 * while loaded, after the first unload and after the last, and the growth of RSS over
 * the cycles as a ratio (after last / after first) for both variants.
 *
 * Usage: bench_release [-n CYCLES] [-e pocketsphinx|tesseract|all]
 *                      [--hmm DIR --lm FILE --dict FILE] [--tessdata DIR]
 * OMP_THREAD_LIMIT=1 is put in the environment (the program re-executes itself when it
 * is not), as Tesseract's OpenMP runtime reads it once at start-up.
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pocketsphinx.h>
#include <tesseract/capi.h>

#include "probe.h"

#define PS_MODEL "/usr/share/pocketsphinx/model/en-us"

struct config {
    int cycles;
    const char *engine;
    const char *hmm;
    const char *lm;
    const char *dict;
    const char *tessdata; /* NULL: Tesseract's own default */
};

struct engine {
    const char *name;
    void *(*load)(const struct config *c);
    int (*use)(void *model);
    void (*unload)(void *model);
};

/* What one variant measured, sent from the child to the parent through a pipe. */
struct result {
    int ok;
    uint64_t base;        /* RSS before the first load */
    uint64_t loaded;      /* RSS after the first load and use */
    uint64_t after_first; /* RSS after the first unload */
    uint64_t after_last;  /* RSS after the last unload */
    double load_ms;       /* mean load time */
};

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- PocketSphinx ---------------------------------------------------------------------- */

static void *ps_load(const struct config *c)
{
    cmd_ln_t *cfg = cmd_ln_init(NULL, ps_args(), TRUE, "-hmm", c->hmm, "-lm", c->lm, "-dict",
                                c->dict, "-logfn", "/dev/null", NULL);
    ps_decoder_t *ps;

    if (!cfg)
        return NULL;
    ps = ps_init(cfg);
    cmd_ln_free_r(cfg); /* the decoder holds its own reference */
    return ps;
}

/* Decodes one second of quiet noise, as a request would. */
static int ps_use(void *model)
{
    static int16 audio[16000];
    unsigned seed = 12345;
    int32 score;

    for (size_t i = 0; i < sizeof(audio) / sizeof(audio[0]); i++) {
        seed = seed * 1103515245u + 12345u;
        audio[i] = (int16)((int)(seed >> 16) % 200 - 100);
    }
    if (ps_start_utt(model) < 0 ||
        ps_process_raw(model, audio, sizeof(audio) / sizeof(audio[0]), FALSE, TRUE) < 0 ||
        ps_end_utt(model) < 0)
        return -1;
    ps_get_hyp(model, &score);
    return 0;
}

static void ps_unload(void *model)
{
    ps_free(model);
}

/* ---- Tesseract --------------------------------------------------------------------------- */

static void *tess_load(const struct config *c)
{
    TessBaseAPI *api = TessBaseAPICreate();

    if (api && TessBaseAPIInit3(api, c->tessdata, "eng") != 0) {
        TessBaseAPIDelete(api);
        return NULL;
    }
    return api;
}

/* Recognizes a small synthetic page: white, with dark bars where text would be. */
static int tess_use(void *model)
{
    enum { W = 320, H = 96 };
    static unsigned char img[W * H];
    char *text;

    memset(img, 255, sizeof(img));
    for (int y = 30; y < 60; y++)
        for (int x = 20; x < W - 20; x++)
            if ((x / 12) % 2 == 0 && (y < 36 || x % 12 < 3))
                img[y * W + x] = 0;
    TessBaseAPISetImage(model, img, W, H, 1, W);
    text = TessBaseAPIGetUTF8Text(model);
    if (!text)
        return -1;
    TessDeleteText(text);
    return 0;
}

static void tess_unload(void *model)
{
    TessBaseAPIEnd(model);
    TessBaseAPIDelete(model);
}

static const struct engine engines[] = {
    {"pocketsphinx", ps_load, ps_use, ps_unload},
    {"tesseract", tess_load, tess_use, tess_unload},
};

/* ---- one variant, in a child ----------------------------------------------------------- */

static int cycle(const struct engine *e, const struct config *c, bool trim, struct result *r,
                 int i)
{
    double t0 = now_ms();
    void *model = e->load(c);

    if (!model)
        return -1;
    r->load_ms += now_ms() - t0;
    if (e->use(model) < 0) {
        e->unload(model);
        return -1;
    }
    if (i == 0)
        r->loaded = larder__rss_bytes();
    e->unload(model);
    if (trim)
        malloc_trim(0);
    if (i == 0)
        r->after_first = larder__rss_bytes();
    return 0;
}

static struct result run_variant(const struct engine *e, const struct config *c, bool trim)
{
    struct result r = {0};

    r.base = larder__rss_bytes();
    for (int i = 0; i < c->cycles; i++)
        if (cycle(e, c, trim, &r, i) < 0)
            return r;
    r.after_last = larder__rss_bytes();
    r.load_ms /= c->cycles;
    r.ok = 1;
    return r;
}

static int run_in_child(const struct engine *e, const struct config *c, bool trim,
                        struct result *ret)
{
    int fds[2], status;
    pid_t pid;
    ssize_t n;

    if (pipe(fds) < 0)
        return -errno;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        struct result r = run_variant(e, c, trim);
        close(fds[0]);
        _exit(write(fds[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
    }
    close(fds[1]);
    n = read(fds[0], ret, sizeof(*ret));
    close(fds[0]);
    waitpid(pid, &status, 0);
    if (n != (ssize_t)sizeof(*ret) || !ret->ok)
        return -EIO;
    return 0;
}

/* ---- report ------------------------------------------------------------------------------ */

static double mib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0);
}

static double growth(const struct result *r)
{
    return r->after_first ? (double)r->after_last / (double)r->after_first : 0.0;
}

static void print_row(const char *name, bool trim, const struct result *r)
{
    printf("%-13s %-5s %9.1f %10.1f %11.1f %11.1f %8.2fx %9.0f\n", name, trim ? "yes" : "no",
           mib(r->base), mib(r->loaded), mib(r->after_first), mib(r->after_last), growth(r),
           r->load_ms);
}

static int bench_engine(const struct engine *e, const struct config *c)
{
    struct result with, without;

    if (run_in_child(e, c, true, &with) < 0 || run_in_child(e, c, false, &without) < 0) {
        fprintf(stderr, "bench_release: %s: the model failed to load or run\n", e->name);
        return -1;
    }
    print_row(e->name, true, &with);
    print_row(e->name, false, &without);
    printf("%s: growth with trim %.2fx, without %.2fx; after the last unload %.1f MiB with "
           "trim vs %.1f MiB without (%.2fx)\n\n",
           e->name, growth(&with), growth(&without), mib(with.after_last),
           mib(without.after_last),
           with.after_last ? (double)without.after_last / (double)with.after_last : 0.0);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, struct config *c)
{
    static const struct option longopts[] = {
        {"cycles", required_argument, NULL, 'n'}, {"engine", required_argument, NULL, 'e'},
        {"hmm", required_argument, NULL, 'H'},    {"lm", required_argument, NULL, 'L'},
        {"dict", required_argument, NULL, 'D'},   {"tessdata", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "n:e:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'n': c->cycles = atoi(optarg); break;
        case 'e': c->engine = optarg; break;
        case 'H': c->hmm = optarg; break;
        case 'L': c->lm = optarg; break;
        case 'D': c->dict = optarg; break;
        case 'T': c->tessdata = optarg; break;
        default: return -1;
        }
    }
    return c->cycles >= 2 && optind == argc ? 0 : -1;
}

/* OpenMP reads OMP_THREAD_LIMIT when libgomp is loaded, before main(): set it, re-exec. */
static void ensure_omp_limit(char **argv)
{
    const char *v = getenv("OMP_THREAD_LIMIT");

    if (v && strcmp(v, "1") == 0)
        return;
    setenv("OMP_THREAD_LIMIT", "1", 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "bench_release: cannot re-execute with OMP_THREAD_LIMIT=1: %s\n",
            strerror(errno));
}

int main(int argc, char **argv)
{
    struct config c = {20, "all", PS_MODEL "/en-us", PS_MODEL "/en-us.lm.bin",
                       PS_MODEL "/cmudict-en-us.dict", NULL};
    int ran = 0, failed = 0;

    ensure_omp_limit(argv);
    if (parse_args(argc, argv, &c) < 0) {
        fprintf(stderr, "usage: bench_release [-n CYCLES>=2] [-e pocketsphinx|tesseract|all] "
                        "[--hmm DIR --lm FILE --dict FILE] [--tessdata DIR]\n");
        return 2;
    }
    printf("bench_release: %d load/use/unload cycles per engine, each variant in a fresh "
           "process\n", c.cycles);
    printf("RSS in MiB; growth = RSS after the last unload / after the first\n\n");
    printf("%-13s %-5s %9s %10s %11s %11s %9s %9s\n", "engine", "trim", "before", "loaded",
           "after 1st", "after last", "growth", "load ms");
    for (size_t i = 0; i < sizeof(engines) / sizeof(engines[0]); i++) {
        if (strcmp(c.engine, "all") != 0 && strcmp(c.engine, engines[i].name) != 0)
            continue;
        ran++;
        failed += bench_engine(&engines[i], &c) < 0;
    }
    if (!ran)
        fprintf(stderr, "bench_release: unknown engine \"%s\"\n", c.engine);
    return !ran || failed ? 1 : 0;
}
