/* Child processes of larderd (see children.h). */
#include "children.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PASS_FDS 16

struct spawn_req {
    const struct larder__child_spec *spec;
    struct larder__child *child;
    int rc;
    char *err;
    size_t errlen;
    bool done;
    struct spawn_req *next;
};

struct larder__child {
    struct larder__children *s;
    pid_t pid;
    int pidfd;
    bool exited;
    bool in_cb;
    int status;
    char *record;               /* record path, or NULL */
    larder__child_exit_fn on_exit;
    void *on_exit_ctx;
    struct larder__child *next; /* supervisor's list */
};

struct larder__children {
    pthread_mutex_t mu;
    pthread_cond_t cond;        /* spawn done, child exited, callback returned */
    pthread_t thread;
    int wake;                   /* eventfd */
    bool quit;
    unsigned refs;              /* 1 for the supervisor + 1 per child object */
    char *dir;                  /* <state_dir>/children or NULL */
    struct spawn_req *reqs;
    struct larder__child *list;
    pid_t self_pid;
    uint64_t self_start;
};

static void unref(struct larder__children *s)
{
    pthread_mutex_lock(&s->mu);
    bool last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    if (s->wake >= 0)
        close(s->wake);
    free(s->dir);
    free(s);
}

static void wake(struct larder__children *s)
{
    uint64_t one = 1;
    ssize_t n = write(s->wake, &one, sizeof one);
    (void)n;
}

/* ---- /proc ---- */

/* Reads /proc/PID/stat fields after the command: state, ppid, pgrp, starttime. */
static int proc_stat(pid_t pid, char *state, pid_t *ppid, pid_t *pgrp, uint64_t *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');      /* the command may hold spaces and parentheses */
    if (!p)
        return -EIO;
    char st;
    int pp, pg;
    unsigned long long t = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime stime cutime cstime priority nice threads itrealvalue starttime */
    if (sscanf(p + 1, " %c %d %d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
               "%*d %*d %llu", &st, &pp, &pg, &t) != 4)
        return -EIO;
    if (state)
        *state = st;
    if (ppid)
        *ppid = pp;
    if (pgrp)
        *pgrp = pg;
    if (start)
        *start = t;
    return 0;
}

uint64_t larder__proc_start_time(pid_t pid)
{
    uint64_t t = 0;
    return proc_stat(pid, NULL, NULL, NULL, &t) == 0 ? t : 0;
}

/* Adds one process's Rss and Pss. */
static void proc_mem(pid_t pid, struct larder__child_mem *m)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "re");
    bool rss_seen = false;
    if (f) {
        while (fgets(line, sizeof line, f)) {
            unsigned long long kb;
            if (sscanf(line, "Rss: %llu kB", &kb) == 1) {
                m->rss += kb * 1024;
                rss_seen = true;
            } else if (sscanf(line, "Pss: %llu kB", &kb) == 1) {
                m->pss += kb * 1024;
            }
        }
        fclose(f);
    }
    if (rss_seen)
        return;
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    f = fopen(path, "re");
    if (f) {
        unsigned long long size, res;
        if (fscanf(f, "%llu %llu", &size, &res) == 2)
            m->rss += res * (uint64_t)sysconf(_SC_PAGESIZE);
        fclose(f);
    }
}

int larder__proc_tree(pid_t root, pid_t **ret_pids, size_t *ret_n)
{
    char st;
    if (proc_stat(root, &st, NULL, NULL, NULL) < 0 || st == 'Z')
        return -ESRCH;
    /* every process's parent, then the descendants of root level by level */
    size_t n = 0, cap = 256;
    pid_t (*pp)[2] = malloc(cap * sizeof *pp);
    if (!pp)
        return -ENOMEM;
    DIR *d = opendir("/proc");
    if (!d) {
        int e = -errno;
        free(pp);
        return e;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        pid_t ppid;
        if (*end || pid <= 0 || proc_stat((pid_t)pid, NULL, &ppid, NULL, NULL) < 0)
            continue;
        if (n == cap) {
            void *np = realloc(pp, 2 * cap * sizeof *pp);
            if (!np)
                break;
            pp = np;
            cap *= 2;
        }
        pp[n][0] = (pid_t)pid;
        pp[n][1] = ppid;
        n++;
    }
    closedir(d);
    pid_t *tree = malloc((n + 1) * sizeof *tree);
    if (!tree) {
        free(pp);
        return -ENOMEM;
    }
    size_t nt = 0;
    tree[nt++] = root;
    for (size_t i = 0; i < nt; i++)
        for (size_t j = 0; j < n; j++)
            if (pp[j][1] == tree[i] && pp[j][0] != root && nt <= n)
                tree[nt++] = pp[j][0];
    free(pp);
    *ret_pids = tree;
    *ret_n = nt;
    return 0;
}

int larder__proc_tree_memory(pid_t root, struct larder__child_mem *m)
{
    memset(m, 0, sizeof *m);
    pid_t *tree = NULL;
    size_t nt = 0;
    int rc = larder__proc_tree(root, &tree, &nt);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < nt; i++) {
        proc_mem(tree[i], m);
        m->procs++;
    }
    free(tree);
    return 0;
}

int larder__proc_tree_gpu(larder *mgr, pid_t root, struct larder__tree_gpu *g)
{
    memset(g, 0, sizeof *g);
    if (!mgr)
        return -EINVAL;
    if (larder_gpu_process_bytes(mgr, NULL, 0, g->bytes, LARDER_MAX_GPUS) <= 0)
        return -ENOTSUP; /* no GPU: the process tree is not walked */
    pid_t *tree = NULL;
    size_t nt = 0;
    int rc = larder__proc_tree(root, &tree, &nt);
    if (rc < 0)
        return rc;
    int *pids = malloc(nt * sizeof *pids);
    if (!pids) {
        free(tree);
        return -ENOMEM;
    }
    for (size_t i = 0; i < nt; i++)
        pids[i] = (int)tree[i];
    free(tree);
    rc = larder_gpu_process_bytes(mgr, pids, nt, g->bytes, LARDER_MAX_GPUS);
    free(pids);
    if (rc < 0)
        return rc;
    if (rc == 0)
        return -ENOTSUP; /* no GPU, no NVML: unknown, not zero */
    g->n_gpus = (unsigned)rc;
    for (unsigned i = 0; i < g->n_gpus; i++)
        g->total += g->bytes[i];
    return 0;
}

/* ---- records ---- */

static int write_record(struct larder__children *s, struct larder__child *c,
                        const char *label)
{
    if (!s->dir)
        return 0;
    char path[PATH_MAX], tmp[PATH_MAX];
    snprintf(path, sizeof path, "%s/%d", s->dir, (int)c->pid);
    snprintf(tmp, sizeof tmp, "%s/.%d.tmp", s->dir, (int)c->pid);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return -errno;
    char clean[128] = "";
    if (label) {
        snprintf(clean, sizeof clean, "%s", label);
        for (char *p = clean; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    fprintf(f, "pid %d\npgid %d\nstart %llu\nlarderd %d\nlarderd_start %llu\nlabel %s\n",
            (int)c->pid, (int)c->pid, (unsigned long long)larder__proc_start_time(c->pid),
            (int)s->self_pid, (unsigned long long)s->self_start, clean);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        int e = -errno;
        unlink(tmp);
        return e;
    }
    c->record = strdup(path);
    return 0;
}

struct record {
    long long pid, pgid, larderd;
    unsigned long long start, larderd_start;
};

static bool read_record(const char *path, struct record *r)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    memset(r, 0, sizeof *r);
    char line[256];
    int seen = 0;
    while (fgets(line, sizeof line, f)) {
        seen += sscanf(line, "pid %lld", &r->pid) == 1;
        seen += sscanf(line, "pgid %lld", &r->pgid) == 1;
        seen += sscanf(line, "start %llu", &r->start) == 1;
        seen += sscanf(line, "larderd %lld", &r->larderd) == 1;
        seen += sscanf(line, "larderd_start %llu", &r->larderd_start) == 1;
    }
    fclose(f);
    return seen == 5 && r->pid > 1 && r->pgid > 1 && r->pid <= INT_MAX && r->pgid <= INT_MAX;
}

/* True while pid is a live process (not a zombie) started at `start`. */
static bool same_process(pid_t pid, uint64_t start)
{
    char st;
    uint64_t t;
    return proc_stat(pid, &st, NULL, NULL, &t) == 0 && st != 'Z' && t == start;
}

/* True when pid is the zombie of the process started at `start`. */
static bool leader_corpse(pid_t pid, uint64_t start)
{
    char st;
    uint64_t t;
    return proc_stat(pid, &st, NULL, NULL, &t) == 0 && st == 'Z' && t == start;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Ends what dead daemons left recorded in s->dir. */
static unsigned reap_stale(struct larder__children *s)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return 0;
    unsigned ended = 0;
    pid_t waitfor[64];
    uint64_t waitstart[64];
    size_t nwait = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[PATH_MAX];
        if (e->d_name[0] == '.') {
            if (strstr(e->d_name, ".tmp")) {
                snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
                unlink(path);
            }
            continue;
        }
        snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
        struct record r;
        if (!read_record(path, &r)) {
            unlink(path);
            continue;
        }
        /* a larderd that still runs owns its children */
        if (r.larderd != s->self_pid && r.larderd > 0 && r.larderd <= INT_MAX &&
            same_process((pid_t)r.larderd, r.larderd_start))
            continue;
        pid_t pid = (pid_t)r.pid, pgid = (pid_t)r.pgid;
        if (same_process(pid, r.start)) {
            kill(-pgid, SIGKILL);
            kill(pid, SIGKILL);
            ended++;
            if (nwait < 64) {
                waitfor[nwait] = pid;
                waitstart[nwait++] = r.start;
            }
        } else if ((kill(pid, 0) < 0 && errno == ESRCH) || leader_corpse(pid, r.start)) {
            /* the leader is gone (or only its zombie is left, where nothing reaps
             * orphans): its pid cannot have been handed to a new process group while
             * the old group lives, so whatever answers -pgid is left of it */
            if (kill(-pgid, SIGKILL) == 0)
                ended++;
        }
        unlink(path);
    }
    closedir(d);
    /* they are not our children: wait (bounded) until each is gone or a zombie */
    for (int round = 0; round < 200; round++) {
        bool any = false;
        for (size_t i = 0; i < nwait; i++)
            any |= same_process(waitfor[i], waitstart[i]);
        if (!any)
            break;
        sleep_ms(10);
    }
    return ended;
}

/* ---- spawn (on the supervisor thread) ---- */

static char *find_in_path(const char *name)
{
    if (strchr(name, '/'))
        return strdup(name);
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        char full[PATH_MAX];
        if (snprintf(full, sizeof full, "%.*s/%s", (int)len, len ? path : ".", name) <
                (int)sizeof full &&
            access(full, X_OK) == 0)
            return strdup(full);
        path += len;
        if (*path == ':')
            path++;
    }
    return NULL;
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void child_exec(const char *path, char *const *argv, char *const *envp,
                       const char *workdir, const int *src, int nsrc, int npass,
                       int errfd, pid_t parent)
{
    int e;
    sigset_t none;
    sigemptyset(&none);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        _exit(126);
    /* src[0..2]: stdio (-1 keeps), src[3..]: passed fds. Lift every source above all
     * targets first, so that no dup2 overwrites a source still to be moved. */
    int high = 3 + npass + 1;
    int tmp[3 + MAX_PASS_FDS];
    for (int i = 0; i < nsrc; i++)
        tmp[i] = src[i] < 0 ? -1 : fcntl(src[i], F_DUPFD_CLOEXEC, high);
    int err2 = fcntl(errfd, F_DUPFD_CLOEXEC, high);
    for (int i = 0; i < nsrc; i++)
        if (tmp[i] >= 0 && dup2(tmp[i], i) < 0)
            goto fail;
    if (err2 < 0 || dup3(err2, 3 + npass, O_CLOEXEC) < 0)
        _exit(127);
    errfd = 3 + npass;
    close_range((unsigned)errfd + 1, ~0U, 0);
    if (workdir && chdir(workdir) < 0)
        goto fail;
    execve(path, argv, envp);
fail:
    e = errno;
    ssize_t n = write(errfd, &e, sizeof e);
    (void)n;
    _exit(127);
}

static int do_spawn(struct larder__children *s, const struct larder__child_spec *sp,
                    struct larder__child **ret, char *err, size_t errlen)
{
    if (!sp->argv || !sp->argv[0]) {
        snprintf(err, errlen, "no command to start");
        return -EINVAL;
    }
    if (sp->n_pass_fds > MAX_PASS_FDS) {
        snprintf(err, errlen, "too many fds to pass (%zu, at most %d)", sp->n_pass_fds,
                 MAX_PASS_FDS);
        return -EINVAL;
    }
    char *path = find_in_path(sp->argv[0]);
    if (!path) {
        snprintf(err, errlen, "%s: not found in PATH", sp->argv[0]);
        return -ENOENT;
    }
    int src[3 + MAX_PASS_FDS];
    int devnull = -1, pipefd[2] = {-1, -1}, rc = 0;
    int nsrc = 3 + (int)sp->n_pass_fds;
    for (int i = 0; i < 3; i++)
        src[i] = sp->stdio[i];
    if (src[0] < 0) {
        devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        src[0] = devnull;
    }
    for (size_t i = 0; i < sp->n_pass_fds; i++)
        src[3 + i] = sp->pass_fds[i];
    struct larder__child *c = calloc(1, sizeof *c);
    if (!c || pipe2(pipefd, O_CLOEXEC) < 0) {
        rc = c ? -errno : -ENOMEM;
        snprintf(err, errlen, "cannot start %s: %s", sp->argv[0], strerror(-rc));
        goto out;
    }
    extern char **environ;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = -errno;
        snprintf(err, errlen, "fork: %s", strerror(errno));
        goto out;
    }
    if (pid == 0)
        child_exec(path, (char *const *)sp->argv,
                   sp->envp ? (char *const *)sp->envp : environ, sp->workdir, src, nsrc,
                   (int)sp->n_pass_fds, pipefd[1], parent);
    close(pipefd[1]);
    pipefd[1] = -1;
    /* the group is set in the child too; setting it here closes the race with a kill */
    setpgid(pid, pid);
    int e = 0;
    ssize_t n;
    do
        n = read(pipefd[0], &e, sizeof e);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof e) {
        waitpid(pid, NULL, 0);
        rc = e == ENOENT || e == EACCES || e == ENOEXEC ? -ENOENT : -e;
        snprintf(err, errlen, "cannot execute %s: %s", path, strerror(e));
        goto out;
    }
    c->s = s;
    c->pid = pid;
    c->pidfd = pidfd_open(pid, 0);
    c->on_exit = sp->on_exit;
    c->on_exit_ctx = sp->on_exit_ctx;
    if (c->pidfd < 0) {
        rc = -errno;
        kill(-pid, SIGKILL);
        waitpid(pid, NULL, 0);
        snprintf(err, errlen, "pidfd_open: %s", strerror(-rc));
        goto out;
    }
    write_record(s, c, sp->label ? sp->label : sp->argv[0]);
    *ret = c;
    c = NULL;
out:
    free(c);
    free(path);
    if (devnull >= 0)
        close(devnull);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    return rc;
}

/* ---- the supervisor thread ---- */

static void reap(struct larder__children *s, struct larder__child *c)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    /* the leader stays a zombie here, so its pgid still names only its own group */
    if (waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOWAIT | WNOHANG) < 0 || si.si_pid == 0)
        return;
    kill(-c->pid, SIGKILL);
    if (c->record) {
        unlink(c->record);
        free(c->record);
        c->record = NULL;
    }
    int status = 0;
    /* reaped under the lock: larder__child_signal never sees a freed pid as running */
    pthread_mutex_lock(&s->mu);
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
        ;
    close(c->pidfd);
    c->pidfd = -1;
    c->exited = true;
    c->status = status;
    c->in_cb = c->on_exit != NULL;
    /* Without a callback, c may be freed as soon as the lock goes: read nothing of it. */
    larder__child_exit_fn on_exit = c->on_exit;
    void *ctx = c->on_exit_ctx;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    if (on_exit) {
        on_exit(ctx, c, status);
        pthread_mutex_lock(&s->mu);
        c->in_cb = false;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
    }
}

static void *supervise(void *arg)
{
    struct larder__children *s = arg;
    struct pollfd *pfd = NULL;
    struct larder__child **who = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* spawns first */
        while (s->reqs) {
            struct spawn_req *r = s->reqs;
            s->reqs = r->next;
            pthread_mutex_unlock(&s->mu);
            r->rc = do_spawn(s, r->spec, &r->child, r->err, r->errlen);
            pthread_mutex_lock(&s->mu);
            if (r->rc == 0) {
                r->child->next = s->list;
                s->list = r->child;
                s->refs++;
            }
            r->done = true;
            pthread_cond_broadcast(&s->cond);
        }
        size_t n = 1;
        for (struct larder__child *c = s->list; c; c = c->next)
            n += !c->exited && c->pidfd >= 0;
        if (s->quit && n == 1) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        if (n > cap) {
            size_t ncap = n * 2;
            void *a = realloc(pfd, ncap * sizeof *pfd), *b = NULL;
            if (a) {
                pfd = a;
                b = realloc(who, ncap * sizeof *who);
            }
            if (!a || !b) {
                pthread_mutex_unlock(&s->mu);
                sleep_ms(10);
                continue;
            }
            who = b;
            cap = ncap;
        }
        size_t k = 0;
        pfd[k].fd = s->wake;
        pfd[k].events = POLLIN;
        who[k++] = NULL;
        for (struct larder__child *c = s->list; c; c = c->next)
            if (!c->exited && c->pidfd >= 0) {
                pfd[k].fd = c->pidfd;
                pfd[k].events = POLLIN;
                who[k++] = c;
            }
        pthread_mutex_unlock(&s->mu);
        if (poll(pfd, k, -1) < 0)
            continue;
        if (pfd[0].revents) {
            uint64_t v;
            ssize_t r = read(s->wake, &v, sizeof v);
            (void)r;
        }
        /* a child in the array is not freed before it was reaped here (child_free waits) */
        for (size_t i = 1; i < k; i++)
            if (pfd[i].revents)
                reap(s, who[i]);
    }
    free(pfd);
    free(who);
    return NULL;
}

int larder__children_open(const char *state_dir, struct larder__children **ret,
                          unsigned *ret_reaped, char *err, size_t errlen)
{
    struct larder__children *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->refs = 1;
    s->self_pid = getpid();
    s->self_start = larder__proc_start_time(s->self_pid);
    s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    int rc = 0;
    if (s->wake < 0) {
        rc = -errno;
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    if (state_dir && *state_dir) {
        if (asprintf(&s->dir, "%s/children", state_dir) < 0) {
            s->dir = NULL;
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        mkdir(state_dir, 0700);
        if (mkdir(s->dir, 0700) < 0 && errno != EEXIST) {
            rc = -errno;
            snprintf(err, errlen, "cannot create %s: %s", s->dir, strerror(errno));
            goto fail;
        }
        unsigned n = reap_stale(s);
        if (ret_reaped)
            *ret_reaped = n;
    } else if (ret_reaped) {
        *ret_reaped = 0;
    }
    rc = -pthread_create(&s->thread, NULL, supervise, s);
    if (rc < 0) {
        snprintf(err, errlen, "cannot start the child supervisor: %s", strerror(-rc));
        goto fail;
    }
    *ret = s;
    return 0;
fail:
    unref(s);
    return rc;
}

static struct timespec deadline_in(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

void larder__children_close(struct larder__children *s, int stop_timeout_ms)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    for (struct larder__child *c = s->list; c; c = c->next)
        if (!c->exited)
            kill(-c->pid, SIGTERM);
    struct timespec until = deadline_in(stop_timeout_ms > 0 ? stop_timeout_ms : 0);
    for (;;) {
        bool running = false;
        for (struct larder__child *c = s->list; c; c = c->next)
            running |= !c->exited;
        if (!running || pthread_cond_timedwait(&s->cond, &s->mu, &until) == ETIMEDOUT)
            break;
    }
    for (struct larder__child *c = s->list; c; c = c->next)
        if (!c->exited)
            kill(-c->pid, SIGKILL);
    s->quit = true;
    pthread_mutex_unlock(&s->mu);
    wake(s);
    pthread_join(s->thread, NULL);
    unref(s);
}

int larder__child_spawn(struct larder__children *s, const struct larder__child_spec *spec,
                        struct larder__child **ret, char *err, size_t errlen)
{
    struct spawn_req r = {.spec = spec, .err = err, .errlen = errlen};
    pthread_mutex_lock(&s->mu);
    if (s->quit) {
        pthread_mutex_unlock(&s->mu);
        snprintf(err, errlen, "larderd is stopping");
        return -ESHUTDOWN;
    }
    r.next = s->reqs;
    s->reqs = &r;
    pthread_mutex_unlock(&s->mu);
    wake(s);
    pthread_mutex_lock(&s->mu);
    while (!r.done)
        pthread_cond_wait(&s->cond, &s->mu);
    pthread_mutex_unlock(&s->mu);
    if (r.rc == 0)
        *ret = r.child;
    return r.rc;
}

pid_t larder__child_pid(const struct larder__child *c)
{
    return c->pid;
}

int larder__child_signal(struct larder__child *c, int sig)
{
    struct larder__children *s = c->s;
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    /* under the lock: a child not yet marked exited is at most a zombie, whose pid
     * still holds the group id */
    if (c->exited)
        rc = -ESRCH;
    else if (kill(-c->pid, sig) < 0)
        rc = -errno;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

bool larder__child_wait(struct larder__child *c, int timeout_ms, int *status)
{
    struct larder__children *s = c->s;
    struct timespec until = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&s->mu);
    while (!c->exited && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&s->cond, &s->mu);
        else if (pthread_cond_timedwait(&s->cond, &s->mu, &until) == ETIMEDOUT)
            break;
    }
    bool done = c->exited;
    if (done && status)
        *status = c->status;
    pthread_mutex_unlock(&s->mu);
    return done;
}

int larder__child_stop(struct larder__child *c, int timeout_ms)
{
    int status = 0;
    larder__child_signal(c, SIGTERM);
    if (!larder__child_wait(c, timeout_ms < 0 ? 0 : timeout_ms, &status)) {
        larder__child_signal(c, SIGKILL);
        larder__child_wait(c, -1, &status);
    }
    return status;
}

struct larder__child *larder__child_free(struct larder__child *c)
{
    if (!c)
        return NULL;
    struct larder__children *s = c->s;
    pthread_mutex_lock(&s->mu);
    if (!c->exited)
        kill(-c->pid, SIGKILL);
    while (!c->exited || c->in_cb)
        pthread_cond_wait(&s->cond, &s->mu);
    for (struct larder__child **p = &s->list; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    free(c->record);
    free(c);
    unref(s);
    return NULL;
}

int larder__child_memory(const struct larder__child *c, struct larder__child_mem *m)
{
    struct larder__children *s = c->s;
    pthread_mutex_lock(&s->mu);
    int rc = c->exited ? -ESRCH : larder__proc_tree_memory(c->pid, m);
    pthread_mutex_unlock(&s->mu);
    if (rc == -ESRCH)
        memset(m, 0, sizeof *m);
    return rc;
}

void larder__child_status_text(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d (SIG%s)%s", WTERMSIG(status),
                 sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?",
                 WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, len, "ended with status %d", status);
}

uint64_t larder__children_memory(struct larder__children *s)
{
    uint64_t sum = 0;
    if (!s)
        return 0;
    pthread_mutex_lock(&s->mu);
    for (struct larder__child *c = s->list; c; c = c->next) {
        struct larder__child_mem m;
        if (!c->exited && larder__proc_tree_memory(c->pid, &m) == 0)
            sum += m.pss ? m.pss : m.rss;
    }
    pthread_mutex_unlock(&s->mu);
    return sum;
}
