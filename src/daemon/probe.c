/* larderd's probe child and the daemon's side of it (see probe.h). */
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

extern char **environ;

#define DEFAULT_TIMEOUT_MS 60000
#define STDERR_KEEP (64u << 10)
#define MAX_WORDS 8

static const char *const severity_names[] = {"note", "warning", "error"};

/* ---- the document ------------------------------------------------------------------------ */

static json_t *finding_json(const struct larder__finding *f)
{
    return json_pack("{s:s,s:b,s:s*,s:I,s:s*,s:s*,s:s}", "severity",
                     severity_names[f->severity], "soft", f->soft, "file", f->file, "line",
                     (json_int_t)f->line, "section", f->section, "key", f->key, "message",
                     f->message);
}

static json_t *report_json(const struct larder__config *c, const struct larder__report *r)
{
    json_t *findings = json_array(), *models = json_object();
    for (size_t i = 0; i < r->n_findings; i++)
        json_array_append_new(findings, finding_json(&r->findings[i]));
    for (size_t i = 0; c && i < c->n_models && i < r->n_estimates; i++) {
        const struct larder__estimate *e = &r->estimates[i];
        if (e->source)
            json_object_set_new(models, c->models[i].name,
                                json_pack("{s:I,s:s}", "bytes", (json_int_t)e->bytes, "source",
                                          e->source));
    }
    return json_pack("{s:o,s:o}", "findings", findings, "models", models);
}

/* One document, in as few writes as the pipe allows (json_dumpfd writes per token). */
static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The child's half, after fork or exec: validates c and writes the document on fd; with
 * c NULL (loading it failed), the document holds the config errors of errs. 0 once
 * written. */
static int write_document(const struct larder__config *c, struct larder__report *errs, int fd)
{
    struct larder__report *r = NULL;
    int e = c ? larder__validate(c, &r) : -EINVAL;
    char msg[256] = "the config could not be loaded";
    if (c && e < 0)
        snprintf(msg, sizeof msg, "validation: %s", strerror(-e));
    json_t *doc = r ? report_json(c, r) : errs && errs->n_findings ? report_json(NULL, errs) : NULL;
    if (!doc)
        doc = json_pack("{s:[{s:s,s:b,s:I,s:s}],s:{}}", "findings", "severity", "error", "soft",
                        0, "line", (json_int_t)0, "message", msg, "models");
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    larder__report_free(r);
    e = text ? write_all(fd, text, strlen(text)) : -ENOMEM;
    free(text);
    return e;
}

/* What a probe child does first: dies with the daemon, is told apart from it in ps,
 * and logs only what matters (to stderr, which the daemon logs). */
static void child_setup(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    prctl(PR_SET_NAME, "larderd-probe");
    larder__log_setup(LARDER__LOG_TEXT, LARDER__LOG_WARN, 2);
}

int larder__probe_main(const char *file)
{
    struct larder__config *c = NULL;
    child_setup();
    struct larder__report *errs = larder__report_new(0);
    larder__config_load_all(file, &c, errs ? larder__report_config_error : NULL, errs);
    int r = write_document(c, errs, 1);
    larder__report_free(errs);
    larder__config_free(c);
    return r == 0 ? 0 : 1;
}

static enum larder__severity parse_severity(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, severity_names[i]) == 0)
            return (enum larder__severity)i;
    return LARDER__SEV_ERROR;
}

static int add_finding(struct larder__report *r, json_t *f)
{
    const char *sev = NULL, *file = NULL, *section = NULL, *key = NULL, *msg = NULL;
    json_int_t line = 0;
    int soft = 0;
    if (json_unpack(f, "{s:s,s?b,s?s,s?I,s?s,s?s,s:s}", "severity", &sev, "soft", &soft, "file",
                    &file, "line", &line, "section", &section, "key", &key, "message",
                    &msg) < 0)
        return -EBADMSG;
    return larder__report_add(r, parse_severity(sev), soft, file,
                              line > 0 && line < (json_int_t)UINT32_MAX ? (unsigned)line : 0,
                              section, key, "%s", msg);
}

static void set_estimate(struct larder__estimate *e, json_t *m)
{
    static const char *const sources[] = {"memory", "backend", "file"};
    json_int_t bytes = json_integer_value(json_object_get(m, "bytes"));
    const char *src = json_string_value(json_object_get(m, "source"));
    for (int i = 0; src && bytes > 0 && i < 3; i++)
        if (strcmp(src, sources[i]) == 0)
            *e = (struct larder__estimate){(uint64_t)bytes, sources[i]};
}

static int report_from_json(const struct larder__config *c, json_t *doc,
                            struct larder__report **ret_report)
{
    json_t *findings = json_object_get(doc, "findings"), *models = json_object_get(doc, "models");
    if (!json_is_array(findings) || !json_is_object(models))
        return -EBADMSG;
    struct larder__report *r = larder__report_new(c->n_models);
    int e = r ? 0 : -ENOMEM;
    size_t i;
    json_t *f;
    json_array_foreach(findings, i, f) {
        if (e == 0)
            e = add_finding(r, f);
    }
    for (i = 0; e == 0 && i < c->n_models; i++)
        set_estimate(&r->estimates[i], json_object_get(models, c->models[i].name));
    if (e < 0) {
        larder__report_free(r);
        return e;
    }
    *ret_report = r;
    return 0;
}

/* ---- the child --------------------------------------------------------------------------- */

struct larder__probe {
    pid_t pid;
    int64_t timeout_ms;
    int64_t started_ms;
    bool forked;
    int out, errfd;       /* read ends; -1 once closed */
    char *buf;            /* stdout */
    size_t len, cap;
    char errbuf[STDERR_KEEP];
    size_t errlen;
};

/* Two pipes (stdout, stderr of the child), close-on-exec. */
static int open_pipes(int out[2], int err[2])
{
    if (pipe2(out, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(err, O_CLOEXEC) == 0)
        return 0;
    int r = -errno;
    close(out[0]);
    close(out[1]);
    return r;
}

static int spawn_probe(const char *prog, const char *file, const int out[2], const int err[2],
                       pid_t *ret_pid)
{
    char words[256], *argv[MAX_WORDS + 3], *save = NULL;
    int argc = 0;
    snprintf(words, sizeof words, "%s", prog);
    for (char *w = strtok_r(words, " ", &save); w && argc < MAX_WORDS;
         w = strtok_r(NULL, " ", &save))
        argv[argc++] = w;
    argv[argc++] = "--probe";
    argv[argc++] = (char *)file;
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    sigaddset(&dflt, SIGPIPE);
    sigaddset(&dflt, SIGTERM);
    sigaddset(&dflt, SIGINT);
    sigaddset(&dflt, SIGHUP);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    posix_spawnattr_init(&at);
    /* The daemon blocks its signals for sigtimedwait and ignores SIGPIPE: not the probe. */
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dflt);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int r = -posix_spawn(ret_pid, "/proc/self/exe", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    return r;
}

/* A plain fork of a process that runs no other thread: the child validates the config
 * the daemon has parsed, with no exec and no second parse, and exits. */
static int fork_probe(const struct larder__config *c, const int out[2], const int err[2],
                      pid_t *ret_pid)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0) {
        *ret_pid = pid;
        return 0;
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0 && null != 0)
        dup2(null, 0);
    dup2(err[1], 2);
    close(out[0]);
    close(err[0]);
    child_setup();
    _exit(write_document(c, NULL, out[1]) == 0 ? 0 : 1);
}

/* Starts the child: forked when single_threaded, else larderd itself with --probe. */
static int start_child(const char *prog, const struct larder__config *c, bool single_threaded,
                       struct larder__probe *ch)
{
    int out[2], err[2];
    int r = open_pipes(out, err);
    if (r < 0)
        return r;
    r = single_threaded ? fork_probe(c, out, err, &ch->pid)
                        : spawn_probe(prog, c->file, out, err, &ch->pid);
    close(out[1]);
    close(err[1]);
    if (r < 0) {
        close(out[0]);
        close(err[0]);
        return r;
    }
    ch->out = out[0];
    ch->errfd = err[0];
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t probe_timeout_ms(void)
{
    const char *s = getenv("LARDER_PROBE_TIMEOUT");
    int64_t ms;
    if (s && *s && larder__parse_duration(s, &ms) == 0 && ms > 0)
        return ms;
    return DEFAULT_TIMEOUT_MS;
}

/* Reads what is there on one pipe; 0 at EOF (fd closed), 1 more to come, -EFBIG over
 * the limit. */
static int drain(struct larder__probe *ch, bool is_out)
{
    char tmp[65536];
    int *fd = is_out ? &ch->out : &ch->errfd;
    ssize_t n = read(*fd, tmp, sizeof tmp);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return 1;
    if (n <= 0) {
        close(*fd);
        *fd = -1;
        return 0;
    }
    if (!is_out) {
        size_t k = (size_t)n < STDERR_KEEP - 1 - ch->errlen ? (size_t)n
                                                              : STDERR_KEEP - 1 - ch->errlen;
        memcpy(ch->errbuf + ch->errlen, tmp, k);
        ch->errlen += k;
        return 1;
    }
    if (ch->len + (size_t)n > LARDER__PROBE_MAX_OUTPUT)
        return -EFBIG;
    if (ch->len + (size_t)n + 1 > ch->cap) {
        size_t cap = ch->cap ? ch->cap : 65536;
        while (cap < ch->len + (size_t)n + 1)
            cap *= 2;
        char *more = realloc(ch->buf, cap);
        if (!more)
            return -ENOMEM;
        ch->buf = more;
        ch->cap = cap;
    }
    memcpy(ch->buf + ch->len, tmp, (size_t)n);
    ch->len += (size_t)n;
    ch->buf[ch->len] = 0;
    return 1;
}

/* Collects both pipes until EOF or the deadline. */
static int collect(struct larder__probe *ch, int64_t timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    while (ch->out >= 0 || ch->errfd >= 0) {
        struct pollfd p[2] = {{ch->out, POLLIN, 0}, {ch->errfd, POLLIN, 0}};
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        int n = poll(p, 2, left > 1000 ? 1000 : (int)left);
        if (n < 0 && errno != EINTR)
            return -errno;
        for (int i = 0; n > 0 && i < 2; i++) {
            if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int r = drain(ch, i == 0);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int reap(pid_t pid, int *ret_status)
{
    while (waitpid(pid, ret_status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

static void log_stderr(struct larder__probe *ch)
{
    ch->errbuf[ch->errlen] = 0;
    char *save = NULL;
    for (char *l = strtok_r(ch->errbuf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        larder__log(LARDER__LOG_WARN, "probe",
                    json_pack("{s:i,s:s}", "pid", (int)ch->pid, "stderr", l));
}

/* Why a probe failed, in err. */
static int failed(int r, int status, int64_t timeout_ms, char *err, size_t errlen)
{
    if (r == -ETIMEDOUT)
        snprintf(err, errlen, "the config probe did not finish within %.1f s: killed",
                 (double)timeout_ms / 1000.0);
    else if (r == -EFBIG)
        snprintf(err, errlen, "the config probe wrote more than %u bytes: killed",
                 LARDER__PROBE_MAX_OUTPUT);
    else if (r < 0)
        snprintf(err, errlen, "the config probe failed: %s", strerror(-r));
    else if (WIFSIGNALED(status))
        snprintf(err, errlen, "the config probe was killed by signal %d (%s)",
                 WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status) && WEXITSTATUS(status))
        snprintf(err, errlen, "the config probe exited with status %d", WEXITSTATUS(status));
    else
        return 0;
    return r < 0 ? r : -ECHILD;
}

/* Collects and reaps the child (killed first when it overran); its stderr is logged. */
static int run_child(struct larder__probe *ch, char *err, size_t errlen)
{
    int status = 0, r = collect(ch, ch->timeout_ms);
    if (r < 0)
        kill(ch->pid, SIGKILL);
    if (ch->out >= 0)
        close(ch->out);
    if (ch->errfd >= 0)
        close(ch->errfd);
    int w = reap(ch->pid, &status);
    log_stderr(ch);
    return failed(r < 0 ? r : w, status, ch->timeout_ms, err, errlen);
}

/* Reads the child's document into a report for c. */
static int read_document(struct larder__probe *ch, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen)
{
    json_error_t je;
    json_t *doc = json_loadb(ch->buf ? ch->buf : "", ch->len, 0, &je);
    int r = doc ? report_from_json(c, doc, ret_report) : -EBADMSG;
    if (!doc)
        snprintf(err, errlen, "the config probe wrote no JSON document: %s", je.text);
    else if (r < 0)
        snprintf(err, errlen, "the config probe's document: %s", strerror(-r));
    json_decref(doc);
    return r;
}

int larder__probe_start(const char *prog, const struct larder__config *c, bool single_threaded,
                        struct larder__probe **ret_probe, char *err, size_t errlen)
{
    *ret_probe = NULL;
    if (c->n_models == 0)
        return 0; /* nothing to open: finish validates in this process */
    struct larder__probe *ch = calloc(1, sizeof *ch);
    if (!ch)
        return -ENOMEM;
    *ch = (struct larder__probe){.out = -1, .errfd = -1, .timeout_ms = probe_timeout_ms(),
                                 .started_ms = now_ms(), .forked = single_threaded};
    int r = start_child(prog, c, single_threaded, ch);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the config probe: %s", strerror(-r));
        free(ch);
        return r;
    }
    *ret_probe = ch;
    return 0;
}

int larder__probe_finish(struct larder__probe *ch, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen)
{
    if (!ch) {
        int r = larder__validate(c, ret_report); /* opens nothing: c has no models */
        if (r < 0)
            snprintf(err, errlen, "%s", strerror(-r));
        return r;
    }
    int r = run_child(ch, err, errlen);
    if (r == 0)
        r = read_document(ch, c, ret_report, err, errlen);
    if (r == 0)
        larder__log(LARDER__LOG_DEBUG, "probed",
                    json_pack("{s:s,s:i,s:s,s:I,s:I}", "config", c->file, "pid", (int)ch->pid,
                              "how", ch->forked ? "fork" : "exec", "bytes", (json_int_t)ch->len,
                              "ms", (json_int_t)(now_ms() - ch->started_ms)));
    free(ch->buf);
    free(ch);
    return r;
}

int larder__probe_config(const char *prog, const struct larder__config *c,
                         struct larder__report **ret_report, char *err, size_t errlen)
{
    struct larder__probe *ch = NULL;
    int r = larder__probe_start(prog, c, false, &ch, err, errlen);
    return r < 0 ? r : larder__probe_finish(ch, c, ret_report, err, errlen);
}
