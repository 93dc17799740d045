/* larder's fuzz harnesses: what every harness defines, and helpers they share.
 *
 * Each harness is one .c file defining LLVMFuzzerTestOneInput() (and, when it needs
 * set-up, LLVMFuzzerInitialize()). Built with -fsanitize=fuzzer it is a libFuzzer
 * program; linked with replay.c instead it is a plain program that runs every file (or
 * every file of every directory) named on its command line through the harness once:
 * that is how `meson test` replays the corpora, regression inputs included. */
#ifndef LARDER_FUZZ_H
#define LARDER_FUZZ_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A harness's own check failed: print why and abort, so libFuzzer keeps the input. */
#define FUZZ_ASSERT(cond)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* True when LARDER_FUZZ_VERBOSE is set: harnesses then say what each input came to, for
 * whoever is writing seeds (`LARDER_FUZZ_VERBOSE=1 build/tests/fuzz/fuzz-replay-wav F`). */
static inline int fuzz_verbose(void)
{
    static int v = -1;
    if (v < 0)
        v = getenv("LARDER_FUZZ_VERBOSE") != NULL;
    return v;
}

/* A malloc'd copy of exactly len bytes (NULL for 0), so that the sanitizers see any read
 * past the end of a body as the overflow it is. */
static inline uint8_t *fuzz_exact_copy(const uint8_t *p, size_t len)
{
    uint8_t *b = len ? malloc(len) : NULL;
    if (b)
        memcpy(b, p, len);
    return b;
}

/* The one file of a harness that feeds a loader that reads a named file: NAME in a
 * private temporary directory (under $TMPDIR, else /tmp), both removed at exit. */
static char fuzz_temp_dir[4000];
static char fuzz_temp_file[4096];

static inline void fuzz_temp_cleanup(void)
{
    unlink(fuzz_temp_file);
    rmdir(fuzz_temp_dir);
}

static inline const char *fuzz_temp_path(const char *name)
{
    if (fuzz_temp_file[0])
        return fuzz_temp_file;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 3900)
        tmp = "/tmp";
    snprintf(fuzz_temp_dir, sizeof fuzz_temp_dir, "%s/larder-fuzz-XXXXXX", tmp);
    if (!mkdtemp(fuzz_temp_dir)) {
        perror("mkdtemp");
        abort();
    }
    snprintf(fuzz_temp_file, sizeof fuzz_temp_file, "%s/%.60s", fuzz_temp_dir, name);
    atexit(fuzz_temp_cleanup);
    return fuzz_temp_file;
}

/* Replaces the temporary file's contents with data. */
static inline void fuzz_temp_write(const char *name, const uint8_t *data, size_t size)
{
    const char *path = fuzz_temp_path(name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_ASSERT(fd >= 0);
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n < 0 && errno == EINTR)
            continue;
        FUZZ_ASSERT(n > 0);
        off += (size_t)n;
    }
    FUZZ_ASSERT(close(fd) == 0);
}

/* An input of the backend harnesses, "CONTENT-TYPE\nBODY": the first line is the
 * request's content type ("-" for none), the rest its body. An input with no newline is
 * all body, with no content type. Both are malloc'd copies: ct NUL-terminated (or NULL),
 * body exactly len bytes. */
struct fuzz_request {
    char *ct;
    uint8_t *body;
    size_t len;
};

static inline void fuzz_request_split(struct fuzz_request *in, const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t n = nl ? (size_t)(nl - data) : 0;
    in->ct = NULL;
    if (nl && !(n == 1 && data[0] == '-')) {
        in->ct = malloc(n + 1);
        FUZZ_ASSERT(in->ct);
        memcpy(in->ct, data, n);
        in->ct[n] = 0;
    }
    in->len = nl ? size - n - 1 : size;
    in->body = fuzz_exact_copy(nl ? nl + 1 : data, in->len);
    FUZZ_ASSERT(in->body || !in->len);
}

static inline void fuzz_request_free(struct fuzz_request *in)
{
    free(in->ct);
    free(in->body);
}

#endif
