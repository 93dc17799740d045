/* Validation of a config, and `larder check CONFIG` (see check.h). */
#include "check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "plugin.h"

#define FILE_FACTOR 1.2
#define MSGLEN 1024

/* ---- reports ----------------------------------------------------------------------------- */

struct larder__report *larder__report_new(size_t n_estimates)
{
    struct larder__report *r = calloc(1, sizeof *r);
    if (r && !(r->estimates = calloc(n_estimates + 1, sizeof *r->estimates))) {
        free(r);
        return NULL;
    }
    if (r)
        r->n_estimates = n_estimates;
    return r;
}

struct larder__report *larder__report_free(struct larder__report *r)
{
    if (!r)
        return NULL;
    for (size_t i = 0; i < r->n_findings; i++) {
        struct larder__finding *f = &r->findings[i];
        free(f->file);
        free(f->section);
        free(f->key);
        free(f->message);
    }
    free(r->findings);
    free(r->estimates);
    free(r);
    return NULL;
}

static char *dup_or_null(const char *s, bool *ok)
{
    char *d = s ? strdup(s) : NULL;
    *ok = *ok && (d || !s);
    return d;
}

int larder__report_add(struct larder__report *r, enum larder__severity severity, bool soft,
                       const char *file, unsigned line, const char *section, const char *key,
                       const char *fmt, ...)
{
    if (r->n_findings == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 8;
        struct larder__finding *more = realloc(r->findings, cap * sizeof *more);
        if (!more)
            return -ENOMEM;
        r->findings = more;
        r->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    bool ok = n >= 0;
    struct larder__finding f = {severity, soft, dup_or_null(file, &ok), line,
                                dup_or_null(section, &ok), dup_or_null(key, &ok),
                                n >= 0 ? msg : NULL};
    if (!ok) {
        free(f.file);
        free(f.section);
        free(f.key);
        free(f.message);
        return -ENOMEM;
    }
    r->findings[r->n_findings++] = f;
    return 0;
}

enum larder__severity larder__finding_severity(const struct larder__finding *f, bool strict)
{
    return f->soft && !strict && f->severity == LARDER__SEV_ERROR ? LARDER__SEV_WARNING
                                                                  : f->severity;
}

size_t larder__report_errors(const struct larder__report *r, bool strict)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_findings; i++)
        n += larder__finding_severity(&r->findings[i], strict) == LARDER__SEV_ERROR;
    return n;
}

void larder__finding_format(const struct larder__finding *f, char *buf, size_t len)
{
    size_t at = 0;
#define PUT(...) at += (size_t)snprintf(buf + at, at < len ? len - at : 0, __VA_ARGS__)
    *buf = 0;
    if (f->file && f->line)
        PUT("%s:%u: ", f->file, f->line);
    else if (f->file)
        PUT("%s: ", f->file);
    if (f->section)
        PUT("[%s] ", f->section);
    if (f->key)
        PUT("%s: ", f->key);
    PUT("%s", f->message);
#undef PUT
}

/* ---- did you mean ------------------------------------------------------------------------ */

/* The key nearest to `key` among larderd's model keys, then the backend's (larderd's
 * winning a tie), for a "did you mean". */
static const char *suggest_model_key(const char *key, const char *const *backend_keys)
{
    const char *all[128];
    size_t n = 0;
    const char *const *own = larder__config_model_keys();
    for (size_t i = 0; own[i] && n < 127; i++)
        all[n++] = own[i];
    for (size_t i = 0; backend_keys && backend_keys[i] && n < 127; i++)
        all[n++] = backend_keys[i];
    all[n] = NULL;
    return larder__config_suggest(key, all);
}

void larder__report_config_error(void *report, const struct larder__config_error *e)
{
    larder__report_add(report, LARDER__SEV_ERROR, false, e->file, e->line, e->section, e->key,
                       "%s", e->message);
}

/* ---- memory ------------------------------------------------------------------------------ */

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

static uint64_t ram_bytes(void)
{
    return (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t budget_of(const struct larder__config *c, const char **ret_basis)
{
    if (c->budget_bytes) {
        *ret_basis = "[memory] budget";
        return c->budget_bytes;
    }
    double fraction = c->budget_fraction > 0 ? c->budget_fraction : 0.75;
    uint64_t ram = ram_bytes(), cg = cgroup_limit();
    *ret_basis = cg && cg < ram ? "of the cgroup limit" : "of physical memory";
    return (uint64_t)((double)(cg && cg < ram ? cg : ram) * fraction);
}

/* A budget the machine cannot give: eviction would start only after the kernel's OOM
 * killer had. */
static int check_budget(struct larder__report *r, const struct larder__config *c)
{
    char b1[32], b2[32];
    uint64_t ram = ram_bytes(), cg = cgroup_limit();
    int e = 0;
    if (!c->budget_bytes)
        return 0;
    larder__format_size(c->budget_bytes, b1, sizeof b1);
    if (ram && c->budget_bytes > ram) {
        larder__format_size(ram, b2, sizeof b2);
        e = larder__report_add(r, LARDER__SEV_ERROR, true, c->file, 0, "memory", "budget",
                               "%s is more than this machine's memory (%s)", b1, b2);
    }
    if (e == 0 && cg && cg < ram && c->budget_bytes > cg) {
        larder__format_size(cg, b2, sizeof b2);
        e = larder__report_add(r, LARDER__SEV_ERROR, true, c->file, 0, "memory", "budget",
                               "%s is more than this cgroup's memory.max (%s)", b1, b2);
    }
    return e;
}

/* ---- models ------------------------------------------------------------------------------ */

static char *model_section(const struct larder__model_conf *m, char *buf, size_t len)
{
    snprintf(buf, len, "model.%s", m->name);
    return buf;
}

static struct larder__estimate estimate_model(struct larder__backend *be,
                                              const struct larder__model_conf *m)
{
    struct larder__estimate e = {0};
    const struct larder_backend_ops *ops = be ? larder__backend_ops(be) : NULL;
    struct stat st;
    if (m->memory_bytes)
        e = (struct larder__estimate){m->memory_bytes, "memory"};
    else if (ops && ops->estimate && larder__backend_estimate(be, m, &e.bytes) == 0 && e.bytes)
        e.source = "backend";
    else if (m->path && stat(m->path, &st) == 0 && S_ISREG(st.st_mode))
        e = (struct larder__estimate){(uint64_t)((double)st.st_size * FILE_FACTOR), "file"};
    return e;
}

static bool word_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

/* True when msg names `word` as a whole word. */
static bool names_word(const char *msg, const char *word)
{
    size_t n = strlen(word);
    for (const char *at = msg; n && (at = strstr(at, word)); at++)
        if ((at == msg || !word_char(at[-1])) && !word_char(at[n]))
            return true;
    return false;
}

/* The option of m that a plugin's message names (the longest such key), or -1. */
static int named_option(const struct larder__model_conf *m, const char *msg)
{
    int best = -1;
    for (size_t i = 0; i < m->n_opts; i++)
        if (names_word(msg, m->opts[i].key) &&
            (best < 0 || strlen(m->opts[i].key) > strlen(m->opts[best].key)))
            best = (int)i;
    return best;
}

static unsigned option_line(const struct larder__model_conf *m, size_t i)
{
    return m->opt_lines[i] ? m->opt_lines[i] : m->path_line;
}

/* Each backend option key the plugin does not list is an error of its own. */
static int check_keys(struct larder__report *r, struct larder__backend *be,
                      const struct larder__config *c, const struct larder__model_conf *m,
                      int *errors)
{
    char sec[160];
    const struct larder_backend_ops *ops = larder__backend_ops(be);
    for (size_t i = 0; i < m->n_opts; i++) {
        const char *key = m->opts[i].key;
        if (larder__backend_has_key(be, key))
            continue;
        const char *near = suggest_model_key(key, ops->option_keys);
        char hint[96] = "";
        if (near)
            snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
        (*errors)++;
        if (larder__report_add(r, LARDER__SEV_ERROR, false, c->file, option_line(m, i),
                               model_section(m, sec, sizeof sec), key,
                               "unknown key for backend '%s'%s", larder__backend_name(be),
                               hint) < 0)
            return -ENOMEM;
    }
    return 0;
}

/* The plugin's own check; its error names the line of the key it mentions, else the
 * model's header line. */
static int check_plugin(struct larder__report *r, struct larder__backend *be,
                        const struct larder__config *c, const struct larder__model_conf *m,
                        int *errors)
{
    char msg[MSGLEN], sec[160];
    if (larder__backend_check(be, m, msg, sizeof msg) == 0)
        return 0;
    (*errors)++;
    int k = named_option(m, msg);
    return larder__report_add(r, LARDER__SEV_ERROR, false, c->file,
                              k >= 0 ? option_line(m, (size_t)k) : m->line,
                              model_section(m, sec, sizeof sec), k >= 0 ? m->opts[k].key : NULL,
                              "%s", msg);
}

static int unknown_backend(struct larder__report *r, struct larder__backends *bs,
                           const struct larder__config *c, const struct larder__model_conf *m,
                           const char *msg)
{
    char sec[160], hint[96] = "";
    const char *near = larder__config_suggest(m->backend, larder__backends_names(bs));
    if (near)
        snprintf(hint, sizeof hint, " (did you mean '%s'?)", near);
    return larder__report_add(r, LARDER__SEV_ERROR, false, c->file, m->backend_line,
                              model_section(m, sec, sizeof sec), "backend", "%s%s", msg, hint);
}

/* True when cmd (a path, or a name looked up in PATH) names an executable file; a relative
 * path counts from dir. */
static bool executable(const char *cmd, const char *dir)
{
    char buf[4096];
    struct stat st;
    if (strchr(cmd, '/')) {
        snprintf(buf, sizeof buf, "%s%s%s", cmd[0] == '/' ? "" : dir, cmd[0] == '/' ? "" : "/",
                 cmd);
        return stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        size_t n = strcspn(p, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, n ? p : ".", cmd);
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0)
            return true;
        p += n + (p[n] == ':');
    }
    return false;
}

/* An external model: its working directory, and a command that can be run. */
static int check_external(struct larder__report *r, const struct larder__config *c,
                          const struct larder__model_conf *m)
{
    char sec[160];
    struct stat st;
    const char *dir = m->ext.workdir ? m->ext.workdir : c->dir;
    model_section(m, sec, sizeof sec);
    if (m->ext.workdir && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        return larder__report_add(r, LARDER__SEV_ERROR, false, c->file, m->line, sec, "workdir",
                                  "%s: not a directory", dir);
    if (m->ext.argv && !strstr(m->ext.argv[0], "${") && !executable(m->ext.argv[0], dir))
        return larder__report_add(r, LARDER__SEV_ERROR, false, c->file, m->ext.command_line,
                                  sec, "command", "'%s' is not an executable file%s",
                                  m->ext.argv[0], strchr(m->ext.argv[0], '/') ? ""
                                                                             : " found in PATH");
    return 0;
}

/* Checks one model and estimates it. */
static int check_model(struct larder__report *r, struct larder__backends *bs,
                       const struct larder__config *c, size_t idx)
{
    const struct larder__model_conf *m = &c->models[idx];
    char msg[MSGLEN], sec[160];
    if (m->isolation == LARDER__ISOLATION_EXTERNAL) {
        r->estimates[idx] = estimate_model(NULL, m);
        return check_external(r, c, m);
    }
    struct larder__backend *be = NULL;
    int errors = 0, e = 0;
    if (m->path && access(m->path, R_OK) != 0) {
        errors++;
        e = larder__report_add(r, LARDER__SEV_ERROR, false, c->file, m->path_line,
                               model_section(m, sec, sizeof sec), "path", "%s: %s", m->path,
                               strerror(errno));
    }
    if (e == 0 && larder__backend_get(bs, m->backend, &be, msg, sizeof msg) < 0) {
        errors++;
        be = NULL;
        e = unknown_backend(r, bs, c, m, msg);
    } else if (e == 0 && larder__backend_open(be, msg, sizeof msg) < 0) {
        errors++;
        be = NULL;
        e = larder__report_add(r, LARDER__SEV_ERROR, false, c->file, m->backend_line,
                               model_section(m, sec, sizeof sec), "backend", "%s", msg);
    }
    if (e == 0 && be)
        e = check_keys(r, be, c, m, &errors);
    if (e == 0 && be && !errors)
        e = check_plugin(r, be, c, m, &errors);
    r->estimates[idx] = estimate_model(errors ? NULL : be, m);
    return e;
}

static int check_tokens(struct larder__report *r, const char *path)
{
    char err[MSGLEN];
    struct larder__tokens *t = NULL;
    if (!path)
        return 0;
    if (larder__tokens_load(path, &t, err, sizeof err) < 0)
        return larder__report_add(r, LARDER__SEV_ERROR, false, NULL, 0, NULL, NULL, "%s", err);
    larder__tokens_free(t);
    return 0;
}

/* ---- sizes against the budget ------------------------------------------------------------ */

static int check_model_size(struct larder__report *r, const struct larder__config *c,
                            const struct larder__model_conf *m, uint64_t bytes)
{
    char b[32], sec[160];
    larder__format_size(bytes, b, sizeof b);
    model_section(m, sec, sizeof sec);
    if (bytes > r->budget && m->fallback)
        return larder__report_add(r, LARDER__SEV_NOTE, false, c->file, m->line, sec, NULL,
                                  "needs %s, more than the whole budget: its fallback '%s' "
                                  "serves its requests", b, m->fallback);
    if (bytes > r->budget)
        return larder__report_add(r, LARDER__SEV_ERROR, true, c->file, m->line, sec, NULL,
                                  "needs %s, more than the whole budget", b);
    uint64_t gb = m->gpu >= 0 ? c->gpu_budget[m->gpu] : 0;
    if (gb && m->gpu_bytes > gb && !m->fallback) {
        larder__format_size(m->gpu_bytes, b, sizeof b);
        return larder__report_add(r, LARDER__SEV_ERROR, true, c->file, m->line, sec, NULL,
                                  "needs %s of GPU %d, more than its budget", b, m->gpu);
    }
    return 0;
}

static int check_sizes(struct larder__report *r, const struct larder__config *c)
{
    char b[32];
    uint64_t resident = 0, all = 0;
    int e = check_budget(r, c);
    r->budget = budget_of(c, &r->budget_basis);
    for (size_t i = 0; e == 0 && i < c->n_models; i++) {
        const struct larder__model_conf *m = &c->models[i];
        uint64_t bytes = r->estimates[i].bytes;
        all += bytes;
        if ((m->pin || m->preload) && bytes <= r->budget)
            resident += bytes;
        e = check_model_size(r, c, m, bytes);
    }
    if (e == 0 && resident > r->budget) {
        larder__format_size(resident, b, sizeof b);
        e = larder__report_add(r, LARDER__SEV_ERROR, true, NULL, 0, NULL, NULL,
                               "pinned and preloaded models need %s together, over the budget",
                               b);
    }
    if (e == 0 && all > r->budget) {
        larder__format_size(all, b, sizeof b);
        e = larder__report_add(r, LARDER__SEV_NOTE, false, NULL, 0, NULL, NULL,
                               "all models together need %s; the least valuable idle ones "
                               "will be evicted when room is needed", b);
    }
    return e;
}

int larder__validate(const struct larder__config *c, struct larder__report **ret_report)
{
    struct larder__report *r = larder__report_new(c->n_models);
    struct larder__backends *bs = NULL;
    if (!r || larder__backends_new(larder__backend_dir(c), &bs) < 0) {
        larder__report_free(r);
        return -ENOMEM;
    }
    int e = check_tokens(r, c->admin_tokens);
    if (e == 0)
        e = check_tokens(r, c->infer_tokens);
    for (size_t i = 0; e == 0 && i < c->n_models; i++)
        e = check_model(r, bs, c, i);
    if (e == 0)
        e = check_sizes(r, c);
    if (e == 0 && !c->admin_tokens)
        e = larder__report_add(r, LARDER__SEV_NOTE, false, NULL, 0, NULL, NULL,
                               "no [server] admin_tokens: admin routes are refused");
    larder__backends_free(bs);
    if (e < 0) {
        larder__report_free(r);
        return e;
    }
    *ret_report = r;
    return 0;
}

/* ---- larder check ------------------------------------------------------------------------ */

static void print_findings(const struct larder__report *r, FILE *out)
{
    static const char *const label[] = {"note", "warning", "error"};
    char line[2 * MSGLEN];
    for (size_t i = 0; i < r->n_findings; i++) {
        const struct larder__finding *f = &r->findings[i];
        larder__finding_format(f, line, sizeof line);
        fprintf(out, "%s: %s\n", label[larder__finding_severity(f, true)], line);
    }
}

static void print_models(const struct larder__config *c, const struct larder__report *r,
                         FILE *out)
{
    char b[32];
    larder__format_size(r->budget, b, sizeof b);
    fprintf(out, "budget: %s (%s)\n", b, r->budget_basis);
    for (size_t i = 0; i < c->n_models; i++) {
        const struct larder__estimate *e = &r->estimates[i];
        larder__format_size(e->bytes, b, sizeof b);
        fprintf(out, "model %-24s %-14s %12s  (%s)\n", c->models[i].name,
                c->models[i].backend ? c->models[i].backend : "external",
                e->source ? b : "?", e->source ? e->source : "unknown until loaded");
    }
}

struct printed {
    FILE *out;
    int errors;
};

/* Every error of the file itself, before any model is checked. */
static void print_config_error(void *ud, const struct larder__config_error *e)
{
    struct printed *p = ud;
    fprintf(p->out, "error: %s\n", e->text);
    p->errors++;
}

int larder__check_config(const char *file, FILE *out)
{
    struct larder__config *c = NULL;
    struct larder__report *r = NULL;
    larder__log_setup(LARDER__LOG_TEXT, LARDER__LOG_WARN, 2);
    struct printed p = {out, 0};
    int e = larder__config_load_all(file, &c, print_config_error, &p);
    if (e == -EINVAL) {
        fprintf(out, "%s: %d error%s\n", file, p.errors, p.errors == 1 ? "" : "s");
        return p.errors;
    }
    if (e < 0)
        return e; /* printed: the file cannot be read */
    if ((e = larder__validate(c, &r)) < 0) {
        larder__config_free(c);
        return e;
    }
    fprintf(out, "backends: %s\n", larder__backend_dir(c));
    print_models(c, r, out);
    print_findings(r, out);
    int errors = (int)larder__report_errors(r, true);
    fprintf(out, "%s: %zu model%s, %d error%s\n", file, c->n_models, c->n_models == 1 ? "" : "s",
            errors, errors == 1 ? "" : "s");
    larder__report_free(r);
    larder__config_free(c);
    return errors;
}
