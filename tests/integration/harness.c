/* Integration test harness (see harness.h). */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef LARDERD_PATH
#error "LARDERD_PATH must name the built larderd"
#endif

#define START_TIMEOUT_MS 60000
#define REQUEST_TIMEOUT_MS 120000

#ifndef LARDER_CLI_PATH
#error "LARDER_CLI_PATH must name the built larder command"
#endif

bool harness_use_cli;
const char *harness_cgroup;

/* Daemons started and not stopped yet, by value: a failed test leaves its frame. */
#define MAX_LIVE 16
static struct {
    pid_t pid;
    char dir[128];
} live[MAX_LIVE];

static void remove_dir(const char *dir);

/* Records dir (pid 0: not running) or, with dir recorded, its pid; NULL dir: forget
 * the entry of pid. */
static void live_set(const char *dir, pid_t pid)
{
    int free_slot = -1;
    for (int i = 0; i < MAX_LIVE; i++) {
        if (dir && live[i].dir[0] && strcmp(live[i].dir, dir) == 0) {
            live[i].pid = pid;
            return;
        }
        if (!dir && live[i].dir[0] && live[i].pid == pid)
            live[i].pid = 0;
        if (free_slot < 0 && !live[i].dir[0])
            free_slot = i;
    }
    if (dir && free_slot >= 0) {
        live[free_slot].pid = pid;
        snprintf(live[free_slot].dir, sizeof live[free_slot].dir, "%s", dir);
    }
}

static void live_forget(const char *dir)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].dir[0] && strcmp(live[i].dir, dir) == 0)
            live[i].dir[0] = 0;
}

int daemon_teardown(void **state)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (!live[i].dir[0])
            continue;
        if (live[i].pid > 0) {
            kill(live[i].pid, SIGKILL);
            waitpid(live[i].pid, NULL, 0);
        }
        remove_dir(live[i].dir);
        live[i].pid = 0;
        live[i].dir[0] = 0;
    }
    return 0;
}

static void teardown_at_exit(void)
{
    daemon_teardown(NULL);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

char *read_file(const char *path, size_t *ret_len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (!f)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                break;
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    if (buf)
        buf[len] = 0;
    if (ret_len)
        *ret_len = len;
    return buf;
}

int daemon_write_config(struct daemon *d, const char *config)
{
    FILE *f = fopen(d->config, "w");
    if (!f)
        return -1;
    if (!strstr(config, "[server]"))
        fprintf(f, "[server]\nlisten = 127.0.0.1:0\nadmin_tokens = admin.tokens\n\n");
    fputs(config, f);
    /* Memory pressure on a busy test host would evict idle models between requests; the
     * tests that want eviction get it from the budget, deterministically. */
    if (!strstr(config, "watch_pressure"))
        fprintf(f, "\n[memory]\nwatch_pressure = no\n");
    return fclose(f) == 0 ? 0 : -1;
}

static int write_tokens(struct daemon *d)
{
    char path[256];
    snprintf(path, sizeof path, "%s/admin.tokens", d->dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "# tokens of the integration tests\n%s\n", ADMIN_TOKEN);
    return fclose(f) == 0 ? 0 : -1;
}

/* Moves the calling process into cgroup directory dir ("0": the writer itself, in v1
 * and v2 alike). Returns 0 or -errno. */
static int join_cgroup(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = write(fd, "0", 1) == 1 ? 0 : -errno;
    close(fd);
    return r;
}

static pid_t spawn(struct daemon *d)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (d->netns[0]) {
        char path[128];
        snprintf(path, sizeof path, "/var/run/netns/%s", d->netns);
        int ns = open(path, O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNET) < 0)
            _exit(126);
        close(ns);
    }
    int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    int r = harness_cgroup ? join_cgroup(harness_cgroup) : 0;
    if (r < 0) {
        fprintf(stderr, "cannot join the cgroup %s: %s\n", harness_cgroup, strerror(-r));
        _exit(125);
    }
    if (harness_use_cli)
        execl(LARDER_CLI_PATH, "larder", "serve", "--config", d->config, (char *)NULL);
    else
        execl(LARDERD_PATH, "larderd", "--config", d->config, (char *)NULL);
    _exit(127);
}

/* The port from the daemon's "listening ... port=N" log line, or 0. */
static unsigned logged_port(struct daemon *d)
{
    char *log = read_file(d->log, NULL);
    unsigned port = 0;
    char *p = log ? strstr(log, "listening") : NULL;
    char *text = p ? strstr(p, "port=") : NULL, *json = p ? strstr(p, "\"port\":") : NULL;
    if (text)
        port = (unsigned)strtoul(text + 5, NULL, 10);
    else if (json)
        port = (unsigned)strtoul(json + 7, NULL, 10);
    free(log);
    return port;
}

static bool exited(struct daemon *d)
{
    int st;
    if (waitpid(d->pid, &st, WNOHANG) != d->pid)
        return false;
    d->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    live_set(NULL, d->pid);
    d->pid = 0;
    return true;
}

static int wait_ready(struct daemon *d)
{
    for (int waited = 0; waited < START_TIMEOUT_MS; waited += 10) {
        if (exited(d))
            return -1;
        if (!d->port && (d->port = logged_port(d))) {
            char u[96];
            snprintf(u, sizeof u, "%s:%u", d->host, d->port);
            larder__url_parse(u, &d->url);
        }
        if (d->port && http_get(d, "/health") == 200)
            return 0;
        sleep_ms(10);
    }
    return -1;
}

int daemon_start(struct daemon *d, const char *config)
{
    return daemon_start_at(d, config, NULL, "127.0.0.1");
}

int daemon_start_at(struct daemon *d, const char *config, const char *netns, const char *host)
{
    static bool registered;
    if (!registered)
        registered = atexit(teardown_at_exit) == 0;
    memset(d, 0, sizeof *d);
    snprintf(d->host, sizeof d->host, "%s", host);
    snprintf(d->netns, sizeof d->netns, "%s", netns ? netns : "");
    snprintf(d->dir, sizeof d->dir, "/tmp/larder-it-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    live_set(d->dir, 0);
    snprintf(d->config, sizeof d->config, "%s/larder.ini", d->dir);
    snprintf(d->log, sizeof d->log, "%s/larderd.log", d->dir);
    if (write_tokens(d) < 0 || daemon_write_config(d, config) < 0)
        return -1;
    d->pid = spawn(d);
    if (d->pid < 0)
        return -1;
    live_set(d->dir, d->pid);
    if (wait_ready(d) < 0) {
        fprintf(stderr, "larderd did not start; its log:\n");
        daemon_dump_log(d);
        return -1;
    }
    return 0;
}

static void remove_dir(const char *dir)
{
    char cmd[256];
    if (strncmp(dir, "/tmp/larder-it-", 15) != 0)
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

void daemon_kill(struct daemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    live_set(NULL, d->pid);
    d->pid = 0;
    d->exit_status = 0; /* the test's own doing: no log to show for it */
}

int daemon_stop(struct daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        for (int waited = 0; d->pid && waited < 60000; waited += 10)
            if (!exited(d))
                sleep_ms(10);
        if (d->pid > 0) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
            live_set(NULL, d->pid);
            d->pid = 0;
            d->exit_status = 128 + SIGKILL;
        }
    }
    if (d->dir[0]) {
        if (d->exit_status != 0)
            daemon_dump_log(d);
        remove_dir(d->dir);
        live_forget(d->dir);
        d->dir[0] = 0;
    }
    return d->exit_status;
}

void daemon_dump_log(const struct daemon *d)
{
    char *log = read_file(d->log, NULL);
    fprintf(stderr, "---- %s ----\n%s---- end ----\n", d->log, log ? log : "(none)\n");
    free(log);
}

bool daemon_log_has(const struct daemon *d, const char *needle)
{
    char *log = read_file(d->log, NULL);
    bool has = log && strstr(log, needle);
    free(log);
    return has;
}

char *daemon_read_log(const struct daemon *d)
{
    char *log = read_file(d->log, NULL);
    char *end = log ? strrchr(log, '\n') : NULL;
    if (log)
        *(end ? end + 1 : log) = 0;
    return log;
}

int daemon_log_count(const struct daemon *d, const char *needle)
{
    char *log = daemon_read_log(d);
    int n = 0;
    for (char *line = log, *eol; line && (eol = strchr(line, '\n')); line = eol + 1) {
        *eol = 0;
        n += strstr(line, needle) != NULL;
    }
    free(log);
    return n;
}

int daemon_wait_log(const struct daemon *d, const char *needle, int count)
{
    int n = 0;
    WAIT_UNTIL((n = daemon_log_count(d, needle)) >= count);
    return n;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct wait_bound wait_start(void)
{
    return (struct wait_bound){mono_ms() + WAIT_BOUND_MS};
}

bool wait_again(struct wait_bound *p)
{
    if (mono_ms() >= p->until_ms)
        return false;
    sleep_ms(5);
    return true;
}

long long wait_json_field(struct daemon *d, const char *path, const char *field,
                          long long want)
{
    long long v = INT64_MIN;
    WAIT_UNTIL((v = json_field(d, path, field)) == want);
    return v;
}

int http(struct daemon *d, const char *method, const char *path, const char *content_type,
         const void *body, size_t len, bool admin, struct larder__http_response *resp)
{
    const char *headers[] = {admin ? AUTH_HEADER : NULL, NULL};
    struct larder__http_response r = {0};
    int e = larder__http_request(&d->url, method, path, headers, content_type, body, len,
                                 REQUEST_TIMEOUT_MS, &r);
    if (e < 0)
        return e;
    int status = r.status;
    if (resp)
        *resp = r;
    else
        larder__http_response_clear(&r);
    return status;
}

int http_get(struct daemon *d, const char *path)
{
    return http(d, "GET", path, NULL, NULL, 0, false, NULL);
}

long long json_field(struct daemon *d, const char *path, const char *field)
{
    struct larder__http_response r = {0};
    long long v = INT64_MIN;
    if (http(d, "GET", path, NULL, NULL, 0, false, &r) != 200)
        return v;
    json_t *o = json_loads(r.body, 0, NULL), *at = o;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", field);
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part && at;
         part = strtok_r(NULL, ".", &save))
        at = json_object_get(at, part);
    if (json_is_integer(at))
        v = json_integer_value(at);
    else if (json_is_boolean(at))
        v = json_is_true(at);
    json_decref(o);
    larder__http_response_clear(&r);
    return v;
}

const char *error_code(const struct larder__http_response *resp)
{
    static _Thread_local char code[64];
    json_t *o = json_loads(resp->body ? resp->body : "", 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(o, "error"), "code"));
    snprintf(code, sizeof code, "%s", c ? c : "");
    json_decref(o);
    return code;
}

int run_cli(struct daemon *d, const char *args, char *out, size_t len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "LARDER_URL=http://%s:%u %s %s", d->host, d->port,
             LARDER_CLI_PATH, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
