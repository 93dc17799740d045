/* `larder check CONFIG` (see check.h). */
#include "check.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "plugin.h"

#define FILE_FACTOR 1.2

struct estimate {
    uint64_t bytes;
    const char *source; /* "memory", "backend", "file", NULL = unknown */
};

/* cgroup v2 limit of this process, 0 when there is none. */
static uint64_t cgroup_limit(void)
{
    char line[512], path[640];
    uint64_t limit = 0;
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "0::", 3) != 0)
            continue;
        line[strcspn(line, "\n")] = 0;
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", line + 3);
        FILE *m = fopen(path, "r");
        unsigned long long v;
        if (m && fscanf(m, "%llu", &v) == 1)
            limit = v;
        if (m)
            fclose(m);
    }
    fclose(f);
    return limit;
}

static uint64_t budget_of(const struct larder__config *c, const char **ret_basis)
{
    if (c->budget_bytes) {
        *ret_basis = "[memory] budget";
        return c->budget_bytes;
    }
    double fraction = c->budget_fraction > 0 ? c->budget_fraction : 0.75;
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t cg = cgroup_limit();
    *ret_basis = cg && cg < ram ? "of the cgroup limit" : "of physical memory";
    return (uint64_t)((double)(cg && cg < ram ? cg : ram) * fraction);
}

static struct estimate estimate_model(struct larder__backend *be,
                                      const struct larder__model_conf *m)
{
    struct estimate e = {0};
    const struct larder_backend_ops *ops = be ? larder__backend_ops(be) : NULL;
    struct stat st;
    if (m->memory_bytes)
        e = (struct estimate){m->memory_bytes, "memory"};
    else if (ops && ops->estimate && larder__backend_estimate(be, m, &e.bytes) == 0)
        e.source = "backend";
    else if (m->path && stat(m->path, &st) == 0 && S_ISREG(st.st_mode))
        e = (struct estimate){(uint64_t)((double)st.st_size * FILE_FACTOR), "file"};
    return e;
}

/* Checks one model; returns its error count. */
static int check_model(struct larder__backends *bs, const struct larder__config *c,
                       const struct larder__model_conf *m, struct estimate *ret_est, FILE *out)
{
    char err[1024];
    struct larder__backend *be = NULL;
    int errors = 0;
    if (m->path && access(m->path, R_OK) != 0) {
        fprintf(out, "error: %s:%u: [model.%s] path: %s: %s\n", c->file, m->path_line, m->name,
                m->path, strerror(errno));
        errors++;
    }
    if (larder__backend_get(bs, m->backend, &be, err, sizeof err) < 0) {
        fprintf(out, "error: %s:%u: [model.%s] backend: %s\n", c->file, m->backend_line, m->name,
                err);
        errors++;
    } else if (!errors && larder__backend_check_model(be, c, m, err, sizeof err) < 0) {
        fprintf(out, "error: %s\n", err);
        errors++;
    }
    *ret_est = estimate_model(errors ? NULL : be, m);
    return errors;
}

static int check_tokens(const char *path, FILE *out)
{
    char err[1024];
    struct larder__tokens *t = NULL;
    if (!path)
        return 0;
    if (larder__tokens_load(path, &t, err, sizeof err) < 0) {
        fprintf(out, "error: %s\n", err);
        return 1;
    }
    larder__tokens_free(t);
    return 0;
}

static int check_sizes(const struct larder__config *c, const struct estimate *est, FILE *out)
{
    const char *basis;
    char b1[32], b2[32];
    uint64_t budget = budget_of(c, &basis), resident = 0, all = 0;
    int errors = 0;
    larder__format_size(budget, b1, sizeof b1);
    fprintf(out, "budget: %s (%s)\n", b1, basis);
    for (size_t i = 0; i < c->n_models; i++) {
        const struct larder__model_conf *m = &c->models[i];
        all += est[i].bytes;
        if ((m->pin || m->preload) && est[i].bytes <= budget)
            resident += est[i].bytes;
        larder__format_size(est[i].bytes, b2, sizeof b2);
        fprintf(out, "model %-24s %-14s %12s  (%s)\n", m->name, m->backend,
                est[i].source ? b2 : "?", est[i].source ? est[i].source : "unknown until loaded");
        if (est[i].bytes > budget && m->fallback) {
            fprintf(out, "note: %s:%u: [model.%s] needs %s, more than the whole budget: "
                         "its fallback '%s' serves its requests\n", c->file, m->line, m->name,
                    b2, m->fallback);
        } else if (est[i].bytes > budget) {
            fprintf(out, "error: %s:%u: [model.%s] needs %s, more than the whole budget\n",
                    c->file, m->line, m->name, b2);
            errors++;
        }
    }
    for (size_t i = 0; i < c->n_models; i++) {
        const struct larder__model_conf *m = &c->models[i];
        uint64_t gb = m->gpu >= 0 ? c->gpu_budget[m->gpu] : 0;
        if (gb && m->gpu_bytes > gb && !m->fallback) {
            larder__format_size(m->gpu_bytes, b2, sizeof b2);
            fprintf(out, "error: %s:%u: [model.%s] needs %s of GPU %d, more than its budget\n",
                    c->file, m->line, m->name, b2, m->gpu);
            errors++;
        }
    }
    if (resident > budget) {
        larder__format_size(resident, b2, sizeof b2);
        fprintf(out, "error: pinned and preloaded models need %s together, over the budget\n", b2);
        errors++;
    }
    if (all > budget) {
        larder__format_size(all, b2, sizeof b2);
        fprintf(out, "note: all models together need %s; the least valuable idle ones will be "
                     "evicted when room is needed\n", b2);
    }
    return errors;
}

int larder__check_config(const char *file, FILE *out)
{
    char err[1024];
    struct larder__config *c = NULL;
    struct larder__backends *bs = NULL;
    larder__log_setup(LARDER__LOG_TEXT, LARDER__LOG_WARN, 2);
    int r = larder__config_load(file, &c, err, sizeof err);
    if (r < 0) {
        fprintf(out, "error: %s\n", err);
        return r == -EINVAL ? 1 : r;
    }
    int errors = check_tokens(c->admin_tokens, out) + check_tokens(c->infer_tokens, out);
    struct estimate *est = calloc(c->n_models + 1, sizeof *est);
    if (!est || larder__backends_new(larder__backend_dir(c), &bs) < 0) {
        free(est);
        larder__config_free(c);
        return -ENOMEM;
    }
    fprintf(out, "backends: %s\n", larder__backend_dir(c));
    for (size_t i = 0; i < c->n_models; i++)
        errors += check_model(bs, c, &c->models[i], &est[i], out);
    errors += check_sizes(c, est, out);
    if (!c->admin_tokens)
        fprintf(out, "note: no [server] admin_tokens: admin routes are refused\n");
    fprintf(out, "%s: %zu model%s, %d error%s\n", file, c->n_models, c->n_models == 1 ? "" : "s",
            errors, errors == 1 ? "" : "s");
    free(est);
    larder__backends_free(bs);
    larder__config_free(c);
    return errors;
}
