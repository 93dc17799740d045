/* Fuzzes larderd's config loader (src/daemon/config.c): any bytes as an INI file.
 *
 * The loader reads a named file and resolves relative paths against that file's real
 * directory, so each input is written to one file in a private temporary directory.
 * Checks, beyond "no crash, no leak, no undefined behaviour":
 *   - larder__config_load_all() returns 0 exactly when it reported no error, and then
 *     gives a config; every error has a text that starts with the file's name;
 *   - larder__config_load() agrees with it, and its error text is the first one;
 *   - a loaded config is sorted by model name, each model found by larder__config_model
 *     and equal to itself; the backend option checker runs over every model. */
#include "fuzz.h"

#include "../../src/daemon/config.c"

#define CONFIG_NAME "larder.ini"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_temp_path(CONFIG_NAME);
    return 0;
}

struct tally {
    unsigned n;
    unsigned last_line;
    char first[1024];
};

static void count_error(void *ud, const struct larder__config_error *e)
{
    struct tally *t = ud;
    FUZZ_ASSERT(e->text && e->message && e->file);
    const char *file = fuzz_temp_path(CONFIG_NAME);
    FUZZ_ASSERT(strncmp(e->text, file, strlen(file)) == 0);
    FUZZ_ASSERT(!strchr(e->text, '\n'));
    /* in order of line, whole-file errors first */
    FUZZ_ASSERT(e->line >= t->last_line);
    t->last_line = e->line;
    if (t->n++ == 0)
        snprintf(t->first, sizeof t->first, "%s", e->text);
}

static const char *const backend_keys[] = {"language", "psm", "dict", "lm", "nthread",
                                           "max_rows", "infer_ms", "load_ms", NULL};

static void check_config(const struct larder__config *c)
{
    for (size_t i = 0; i < c->n_models; i++) {
        const struct larder__model_conf *m = &c->models[i];
        FUZZ_ASSERT(m->name && m->backend);
        if (i > 0)
            FUZZ_ASSERT(strcmp(c->models[i - 1].name, m->name) < 0);
        FUZZ_ASSERT(larder__config_model(c, m->name) == m);
        FUZZ_ASSERT(larder__model_conf_equal(m, m));
        FUZZ_ASSERT(m->instances >= 1);
        larder__config_check_model_keys(c, m, backend_keys, NULL, NULL);
        larder__config_check_model_keys(c, m, NULL, NULL, NULL);
        if (m->fallback)
            FUZZ_ASSERT(larder__config_model(c, m->fallback) != NULL);
    }
    FUZZ_ASSERT(larder__config_model(c, "") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_temp_write(CONFIG_NAME, data, size);
    const char *file = fuzz_temp_path(CONFIG_NAME);

    struct tally t = {0};
    struct larder__config *c = NULL;
    int rc = larder__config_load_all(file, &c, count_error, &t);
    FUZZ_ASSERT(rc <= 0);
    FUZZ_ASSERT((rc == 0) == (t.n == 0));
    FUZZ_ASSERT((rc == 0) == (c != NULL));
    FUZZ_ASSERT(rc == 0 || rc == -EINVAL || rc == -ENOMEM);
    /* at most MAX_ERRORS, plus the one that says it stopped */
    FUZZ_ASSERT(t.n <= MAX_ERRORS + 1);
    if (c)
        check_config(c);

    char err[1024];
    struct larder__config *c2 = NULL;
    int rc2 = larder__config_load(file, &c2, err, sizeof err);
    FUZZ_ASSERT(rc2 == rc);
    if (rc2 < 0 && rc2 != -ENOMEM)
        FUZZ_ASSERT(strcmp(err, t.first) == 0);
    if (c && c2) {
        FUZZ_ASSERT(c->n_models == c2->n_models);
        for (size_t i = 0; i < c->n_models; i++)
            FUZZ_ASSERT(larder__model_conf_equal(&c->models[i], &c2->models[i]));
    }
    larder__config_free(c2);
    FUZZ_ASSERT(larder__config_free(c) == NULL);

    /* checking only, with no report function */
    FUZZ_ASSERT(larder__config_load_all(file, NULL, NULL, NULL) == rc);
    return 0;
}
