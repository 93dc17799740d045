/* Memory probes: the process (/proc/self), the machine (/proc/meminfo), the memory
 * cgroup (v2, or the v1 memory controller), pressure stall information, and the
 * pressure watcher built on them. See probe.h. Parsers are strict: a field that is cut
 * short, has trailing garbage or lacks its unit is an error, never a guess.
 */
#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/vfs.h>
#include <unistd.h>

#define FILE_MAX (1u << 20)        /* larger /proc or cgroup files are refused */
#define V1_UNLIMITED (1ull << 62)  /* v1 reports "no limit" as about 2^63 */

/* ---- files -------------------------------------------------------------------------- */

static int join_path(char *buf, size_t len, const char *root, const char *rel)
{
    int n;

    if (!root || strcmp(root, "/") == 0)
        root = "";
    n = snprintf(buf, len, "%s%s", root, rel);

    if (n < 0 || (size_t)n >= len)
        return -ENAMETOOLONG;
    return 0;
}

static int read_fd_all(int fd, char **ret_text)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap), *tmp;

    if (!buf)
        return -ENOMEM;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = -errno;
            free(buf);
            return err;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len + 1 < cap)
            continue;
        if (cap >= FILE_MAX || !(tmp = realloc(buf, cap * 2))) {
            free(buf);
            return cap >= FILE_MAX ? -EFBIG : -ENOMEM;
        }
        buf = tmp;
        cap *= 2;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) { /* an embedded NUL would hide the rest from the parsers */
        free(buf);
        return -EBADMSG;
    }
    *ret_text = buf;
    return (int)len;
}

/* Reads a whole file into a NUL-terminated heap string. Returns its length. */
static int read_file(const char *path, char **ret_text)
{
    int fd, r;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    r = read_fd_all(fd, ret_text);
    close(fd);
    return r;
}

static int read_rooted(const char *root, const char *rel, char **ret_text)
{
    char path[PATH_MAX];
    int r = join_path(path, sizeof(path), root, rel);

    return r < 0 ? r : read_file(path, ret_text);
}

static bool exists(const char *dir, const char *name)
{
    char path[PATH_MAX];

    if (join_path(path, sizeof(path), dir, name) < 0)
        return false;
    return access(path, F_OK) == 0;
}

/* ---- parsing ------------------------------------------------------------------------ */

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static bool at_eol(const char *p)
{
    return *p == '\n' || *p == '\0';
}

static int parse_u64(const char **p, uint64_t *ret)
{
    const char *s = *p;
    uint64_t v = 0;

    if (*s < '0' || *s > '9')
        return -EBADMSG;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned digit = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return -ERANGE;
        v = v * 10 + digit;
    }
    *p = s;
    *ret = v;
    return 0;
}

/* "12.34": digits, a point, digits. Locale-independent. */
static int parse_fixed(const char **p, double *ret)
{
    uint64_t whole, frac;
    const char *s = *p, *start;
    double scale = 1;
    int r;

    if ((r = parse_u64(&s, &whole)) < 0)
        return r;
    if (*s != '.')
        return -EBADMSG;
    start = ++s;
    if ((r = parse_u64(&s, &frac)) < 0)
        return r;
    for (const char *q = start; q < s; q++)
        scale *= 10;
    *p = s;
    *ret = (double)whole + (double)frac / scale;
    return 0;
}

/* The text right after "key<sep>" at the start of a line, or NULL. */
static const char *find_key(const char *text, const char *key, char sep)
{
    size_t n = strlen(key);

    for (const char *line = text; line && *line;) {
        if (strncmp(line, key, n) == 0 && line[n] == sep)
            return line + n + 1;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return NULL;
}

/* "Key:   1234 kB" anywhere in text, as bytes. */
static int kb_field(const char *text, const char *key, uint64_t *ret)
{
    const char *p = find_key(text, key, ':');
    uint64_t kb;
    int r;

    if (!p)
        return -EBADMSG;
    p = skip_blanks(p);
    if ((r = parse_u64(&p, &kb)) < 0)
        return r;
    p = skip_blanks(p);
    if (strncmp(p, "kB", 2) != 0 || !at_eol(p + 2))
        return -EBADMSG;
    if (kb > UINT64_MAX / 1024)
        return -ERANGE;
    *ret = kb * 1024;
    return 0;
}

/* A file holding one number, or "max" when allow_max. */
static int value_text(const char *text, bool allow_max, uint64_t *ret)
{
    const char *p = text;
    uint64_t v;
    int r;

    if (allow_max && strncmp(p, "max", 3) == 0) {
        v = LARDER__UNLIMITED;
        p += 3;
    } else if ((r = parse_u64(&p, &v)) < 0) {
        return r;
    }
    if (*p == '\n')
        p++;
    if (*p != '\0')
        return -EBADMSG;
    *ret = v;
    return 0;
}

static int read_value(const char *dir, const char *name, bool allow_max, uint64_t *ret)
{
    char path[PATH_MAX], *text;
    int r;

    if ((r = join_path(path, sizeof(path), dir, name)) < 0)
        return r;
    if ((r = read_file(path, &text)) < 0)
        return r;
    r = value_text(text, allow_max, ret);
    free(text);
    return r;
}

/* Index of the key [line, line + len) in keys, or -1. */
static int key_index(const char *line, size_t len, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(keys[i]) == len && strncmp(line, keys[i], len) == 0)
            return (int)i;
    return -1;
}

/* Lines of "key value", every one of that shape (else -EBADMSG). The value of keys[i]
 * goes to vals[i], and bit i of *ret_seen says that keys[i] was there. */
static int keyed_values(const char *text, const char *const *keys, uint64_t *vals, size_t n,
                        unsigned *ret_seen)
{
    unsigned seen = 0;

    for (const char *line = text; *line;) {
        const char *sp = strpbrk(line, " \n"), *p;
        uint64_t v;
        int i, r;

        if (!sp || *sp != ' ' || sp == line)
            return -EBADMSG;
        p = sp + 1;
        if ((r = parse_u64(&p, &v)) < 0)
            return r;
        if (!at_eol(p))
            return -EBADMSG;
        if ((i = key_index(line, (size_t)(sp - line), keys, n)) >= 0) {
            vals[i] = v;
            seen |= 1u << i;
        }
        line = *p ? p + 1 : p;
    }
    *ret_seen = seen;
    return 0;
}

static int parse_events(const char *text, struct larder__cgroup_events *ret)
{
    static const char *const keys[] = {"high", "max", "oom", "oom_kill"};
    uint64_t v[4] = {0};
    unsigned seen;
    int r = keyed_values(text, keys, v, 4, &seen);

    if (r < 0)
        return r;
    if (seen != 0xf)
        return -EBADMSG;
    *ret = (struct larder__cgroup_events){.high = v[0], .max = v[1], .oom = v[2],
                                          .oom_kill = v[3]};
    return 0;
}

/* "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" after `kind`. */
static int psi_line(const char *text, const char *kind, struct larder__psi_line *ret)
{
    static const char *const names[] = {"avg10=", "avg60=", "avg300=", "total="};
    const char *p = find_key(text, kind, ' ');
    double avg[3];
    uint64_t total;
    int r;

    if (!p)
        return -EBADMSG;
    for (int i = 0; i < 4; i++) {
        p = skip_blanks(p);
        if (strncmp(p, names[i], strlen(names[i])) != 0)
            return -EBADMSG;
        p += strlen(names[i]);
        r = i < 3 ? parse_fixed(&p, &avg[i]) : parse_u64(&p, &total);
        if (r < 0)
            return r;
    }
    if (!at_eol(p))
        return -EBADMSG;
    *ret = (struct larder__psi_line){avg[0], avg[1], avg[2], total};
    return 0;
}

static int parse_psi(const char *text, struct larder__psi *ret)
{
    struct larder__psi psi;
    int r;

    if ((r = psi_line(text, "some", &psi.some)) < 0 || (r = psi_line(text, "full", &psi.full)) < 0)
        return r;
    *ret = psi;
    return 0;
}

/* ---- the process ------------------------------------------------------------------ */

static int read_status(const char *root, struct larder__proc_mem *m)
{
    char *text;
    int r;

    if ((r = read_rooted(root, "/proc/self/status", &text)) < 0)
        return r;
    if ((r = kb_field(text, "VmRSS", &m->rss)) >= 0)
        r = kb_field(text, "VmHWM", &m->hwm);
    free(text);
    return r;
}

static int read_rollup(const char *root, struct larder__proc_mem *m)
{
    char *text;
    int r;

    r = read_rooted(root, "/proc/self/smaps_rollup", &text);
    if (r == -ENOENT) {
        m->has_rollup = false;
        return 0;
    }
    if (r < 0)
        return r;
    if ((r = kb_field(text, "Rss", &m->rollup_rss)) >= 0 &&
        (r = kb_field(text, "Pss", &m->pss)) >= 0)
        r = kb_field(text, "Anonymous", &m->anon);
    free(text);
    m->has_rollup = r >= 0;
    return r;
}

int larder__probe_proc(const char *root, struct larder__proc_mem *ret_mem)
{
    struct larder__proc_mem m = {0};
    int r;

    if (!ret_mem)
        return -EINVAL;
    if ((r = read_status(root, &m)) < 0 || (r = read_rollup(root, &m)) < 0)
        return r;
    *ret_mem = m;
    return 0;
}

uint64_t larder__rss_bytes(void)
{
    char buf[128];
    const char *p = buf;
    uint64_t size, resident;
    long page = sysconf(_SC_PAGESIZE);
    ssize_t n;
    int fd;

    fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0 || page <= 0)
        return 0;
    buf[n] = '\0';
    if (parse_u64(&p, &size) < 0 || *p++ != ' ' || parse_u64(&p, &resident) < 0)
        return 0;
    return resident * (uint64_t)page;
}

int larder__peak_reset(const char *root)
{
    char path[PATH_MAX];
    int fd, r;

    if ((r = join_path(path, sizeof(path), root, "/proc/self/clear_refs")) < 0)
        return r;
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    r = write(fd, "5", 1) == 1 ? 0 : -errno;
    close(fd);
    return r;
}

/* ---- the machine ------------------------------------------------------------------ */

int larder__probe_meminfo(const char *root, struct larder__meminfo *ret_info)
{
    struct larder__meminfo mi = {0};
    char *text;
    int r;

    if (!ret_info)
        return -EINVAL;
    if ((r = read_rooted(root, "/proc/meminfo", &text)) < 0)
        return r;
    r = kb_field(text, "MemTotal", &mi.total);
    if (r >= 0 && find_key(text, "MemAvailable", ':')) {
        r = kb_field(text, "MemAvailable", &mi.available);
        mi.has_available = true;
    }
    free(text);
    if (r < 0)
        return r;
    *ret_info = mi;
    return 0;
}

/* ---- the cgroup ------------------------------------------------------------------- */

struct cgroup_paths {
    char v2[PATH_MAX]; /* "" when absent */
    char v1[PATH_MAX]; /* path of the v1 memory controller, "" when absent */
};

static bool has_controller(const char *list, size_t len, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = list, *end = list + len; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t tok = comma ? (size_t)(comma - p) : (size_t)(end - p);
        if (tok == n && strncmp(p, name, n) == 0)
            return true;
        p += tok + 1;
    }
    return false;
}

static void copy_path(char *dst, const char *src, size_t len)
{
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* One "id:controllers:path" line; the path may itself hold colons. */
static int cgroup_line(const char *line, size_t len, struct cgroup_paths *cp)
{
    const char *c1 = memchr(line, ':', len), *c2, *path;
    size_t plen;

    if (!c1 || c1 == line || !(c2 = memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - line))))
        return -EBADMSG;
    path = c2 + 1;
    plen = len - (size_t)(path - line);
    if (plen == 0 || *path != '/')
        return -EBADMSG;
    if (plen >= PATH_MAX)
        return -ENAMETOOLONG;
    if (c1 - line == 1 && line[0] == '0' && c2 == c1 + 1)
        copy_path(cp->v2, path, plen);
    else if (has_controller(c1 + 1, (size_t)(c2 - c1 - 1), "memory"))
        copy_path(cp->v1, path, plen);
    return 0;
}

static int parse_self_cgroup(const char *text, struct cgroup_paths *cp)
{
    int r;

    cp->v2[0] = cp->v1[0] = '\0';
    if (*text == '\0')
        return -EBADMSG;
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if ((r = cgroup_line(line, len, cp)) < 0)
            return r;
        line += len + (nl ? 1 : 0);
    }
    return 0;
}

/* base + path when it holds `probe`; else base itself when it does. */
static int pick_dir(const char *base, const char *path, const char *probe, char *buf,
                    size_t len)
{
    char dir[PATH_MAX];
    int r;

    if ((r = join_path(dir, sizeof(dir), base, strcmp(path, "/") ? path : "")) < 0)
        return r;
    if (!exists(dir, probe)) {
        if (!exists(base, probe))
            return -ENOENT;
        snprintf(dir, sizeof(dir), "%s", base);
    }
    if (strlen(dir) >= len)
        return -ENAMETOOLONG;
    memcpy(buf, dir, strlen(dir) + 1);
    return 0;
}

static int find_v2(const char *root, const char *path, char *buf, size_t len)
{
    static const char *const mounts[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"};
    char base[PATH_MAX];
    int r;

    for (size_t i = 0; i < 2; i++) {
        if ((r = join_path(base, sizeof(base), root, mounts[i])) < 0)
            return r;
        if (exists(base, "/cgroup.controllers"))
            return pick_dir(base, path, "/memory.current", buf, len);
    }
    return -ENOENT;
}

int larder__cgroup_find(const char *root, char *buf, size_t len, int *ret_version)
{
    struct cgroup_paths *cp;
    char base[PATH_MAX], *text;
    int r;

    if (!buf || len == 0 || !ret_version)
        return -EINVAL;
    if ((r = read_rooted(root, "/proc/self/cgroup", &text)) < 0)
        return r;
    cp = malloc(sizeof(*cp));
    r = cp ? parse_self_cgroup(text, cp) : -ENOMEM;
    free(text);
    if (r >= 0) {
        r = -ENOENT;
        if (cp->v2[0] && (r = find_v2(root, cp->v2, buf, len)) >= 0)
            *ret_version = 2;
        else if (r != -ENAMETOOLONG && cp->v1[0] &&
                 (r = join_path(base, sizeof(base), root, "/sys/fs/cgroup/memory")) >= 0 &&
                 (r = pick_dir(base, cp->v1, "/memory.usage_in_bytes", buf, len)) >= 0)
            *ret_version = 1;
    }
    free(cp);
    return r;
}

static int read_events(const char *dir, struct larder__cgroup_events *ret)
{
    char path[PATH_MAX], *text;
    int r;

    if ((r = join_path(path, sizeof(path), dir, "/memory.events")) < 0 ||
        (r = read_file(path, &text)) < 0)
        return r;
    r = parse_events(text, ret);
    free(text);
    return r;
}

static int read_v2(const char *dir, struct larder__cgroup *cg)
{
    int r;

    if ((r = read_value(dir, "/memory.current", false, &cg->current)) < 0 ||
        (r = read_value(dir, "/memory.max", true, &cg->max)) < 0 ||
        (r = read_value(dir, "/memory.high", true, &cg->high)) < 0 ||
        (r = read_events(dir, &cg->events)) < 0)
        return r;
    cg->has_events = true;
    return 0;
}

/* memory.oom_control: "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n". */
static void read_v1_oom(const char *dir, struct larder__cgroup *cg)
{
    static const char *const keys[] = {"oom_kill"};
    char path[PATH_MAX], *text;
    uint64_t v = 0;
    unsigned seen = 0;

    if (join_path(path, sizeof(path), dir, "/memory.oom_control") < 0 ||
        read_file(path, &text) < 0)
        return;
    if (keyed_values(text, keys, &v, 1, &seen) >= 0 && seen) {
        cg->has_events = true;
        cg->events.oom_kill = v;
    }
    free(text);
}

static int read_v1(const char *dir, struct larder__cgroup *cg)
{
    int r;

    if ((r = read_value(dir, "/memory.usage_in_bytes", false, &cg->current)) < 0 ||
        (r = read_value(dir, "/memory.limit_in_bytes", false, &cg->max)) < 0)
        return r;
    if (cg->max >= V1_UNLIMITED)
        cg->max = LARDER__UNLIMITED;
    cg->high = LARDER__UNLIMITED;
    read_v1_oom(dir, cg);
    return 0;
}

int larder__cgroup_read(const char *dir, int version, struct larder__cgroup *ret_cg)
{
    struct larder__cgroup cg = {.version = version};
    int r;

    if (!dir || !ret_cg || (version != 1 && version != 2))
        return -EINVAL;
    r = version == 2 ? read_v2(dir, &cg) : read_v1(dir, &cg);
    if (r < 0)
        return r;
    *ret_cg = cg;
    return 0;
}

int larder__probe_cgroup(const char *root, struct larder__cgroup *ret_cg)
{
    char dir[PATH_MAX];
    int version, r;

    if (!ret_cg)
        return -EINVAL;
    if ((r = larder__cgroup_find(root, dir, sizeof(dir), &version)) < 0)
        return r;
    return larder__cgroup_read(dir, version, ret_cg);
}

int larder__memory_limit(const char *root, uint64_t *ret_limit,
                         enum larder__limit_source *ret_source)
{
    struct larder__meminfo mi;
    struct larder__cgroup cg;
    enum larder__limit_source src = LARDER__LIMIT_RAM;
    uint64_t limit;
    int r;

    if (!ret_limit)
        return -EINVAL;
    if ((r = larder__probe_meminfo(root, &mi)) < 0)
        return r;
    limit = mi.total;
    if (larder__probe_cgroup(root, &cg) >= 0) {
        uint64_t cgl = cg.max < cg.high ? cg.max : cg.high;
        if (cgl < limit) {
            limit = cgl;
            src = LARDER__LIMIT_CGROUP;
        }
    }
    *ret_limit = limit;
    if (ret_source)
        *ret_source = src;
    return 0;
}

int larder__default_budget(const char *root, double fraction, uint64_t *ret_bytes)
{
    uint64_t limit;
    int r;

    if (!ret_bytes || !(fraction > 0.0 && fraction <= 1.0))
        return -EINVAL;
    if ((r = larder__memory_limit(root, &limit, NULL)) < 0)
        return r;
    /* fraction as a 32-bit binary fraction, applied to each half of the limit, so that no
     * 64-bit limit loses its low bits to a double; rounded down */
    uint64_t f = (uint64_t)(fraction * 4294967296.0);
    *ret_bytes = (limit >> 32) * f + (((limit & 0xffffffffu) * f) >> 32);
    return 0;
}

/* ---- PSI -------------------------------------------------------------------------- */

int larder__psi_read(const char *path, struct larder__psi *ret_psi)
{
    char *text;
    int r;

    if (!path || !ret_psi)
        return -EINVAL;
    if ((r = read_file(path, &text)) < 0)
        return r;
    r = parse_psi(text, ret_psi);
    free(text);
    return r;
}

int larder__probe_psi(const char *root, struct larder__psi *ret_psi)
{
    char path[PATH_MAX];
    int r;

    if ((r = join_path(path, sizeof(path), root, "/proc/pressure/memory")) < 0)
        return r;
    return larder__psi_read(path, ret_psi);
}

/* ---- pressure watcher -------------------------------------------------------------- */

/* Re-reads memory.events through the watcher's descriptor; the read also re-arms the
 * kernel's change notification (POLLPRI) for that descriptor. */
static int events_from_fd(int fd, struct larder__cgroup_events *ret)
{
    char *text;
    int r;

    if (lseek(fd, 0, SEEK_SET) < 0)
        return -errno;
    if ((r = read_fd_all(fd, &text)) < 0)
        return r;
    r = parse_events(text, ret);
    free(text);
    return r;
}

#define TRIGGER_DEFAULT "some 150000 1000000"
#define UNPRIV_WINDOW_US 2000000u /* windows allowed without CAP_SYS_RESOURCE */

struct larder__pressure_watch {
    larder__pressure_fn cb;
    void *ud;
    int wake_fd;
    int psi_fd;    /* -1 when PSI is not watched */
    int events_fd; /* -1 when memory.events is not watched */
    int psi_error;
    char trigger[64];
    char psi_path[PATH_MAX]; /* PSI figures for the callback; "" for none */
    char cg_dir[PATH_MAX];   /* cgroup figures for the callback; "" for none */
    struct larder__cgroup_events last;
    _Atomic uint64_t fired;
    pthread_t thread;
};

struct trigger {
    char kind[5]; /* "some" or "full" */
    uint64_t stall_us;
    uint64_t window_us;
};

static int parse_trigger(const char *s, struct trigger *ret)
{
    struct trigger t;
    const char *p;

    if (strncmp(s, "some ", 5) != 0 && strncmp(s, "full ", 5) != 0)
        return -EINVAL;
    memcpy(t.kind, s, 4);
    t.kind[4] = '\0';
    p = skip_blanks(s + 5);
    if (parse_u64(&p, &t.stall_us) < 0 || (*p != ' ' && *p != '\t'))
        return -EINVAL;
    p = skip_blanks(p);
    if (parse_u64(&p, &t.window_us) < 0)
        return -EINVAL;
    p = skip_blanks(p);
    if (*p == '\n')
        p++;
    if (*p != '\0')
        return -EINVAL;
    if (t.stall_us == 0 || t.window_us == 0 || t.stall_us > t.window_us)
        return -EINVAL;
    *ret = t;
    return 0;
}

static int write_trigger(int fd, const struct trigger *t, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s %llu %llu", t->kind, (unsigned long long)t->stall_us,
                     (unsigned long long)t->window_us);

    if (n < 0 || (size_t)n >= len)
        return -EINVAL;
    /* the kernel expects the terminating NUL to be written too */
    if (write(fd, buf, (size_t)n + 1) < 0) {
        int err = -errno;
        buf[0] = '\0';
        return err;
    }
    return 0;
}

static bool is_pressure_fs(int fd)
{
    struct statfs sf;

    if (fstatfs(fd, &sf) < 0)
        return false;
    return sf.f_type == PROC_SUPER_MAGIC || sf.f_type == CGROUP2_SUPER_MAGIC;
}

static int open_psi(struct larder__pressure_watch *w, const char *path, const char *spec)
{
    struct trigger t;
    int fd, r;

    if ((r = parse_trigger(spec, &t)) < 0)
        return r;
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    r = is_pressure_fs(fd) ? write_trigger(fd, &t, w->trigger, sizeof(w->trigger)) : -EOPNOTSUPP;
    if (r == -EINVAL && t.window_us % UNPRIV_WINDOW_US != 0) {
        uint64_t win = (t.window_us / UNPRIV_WINDOW_US + 1) * UNPRIV_WINDOW_US;
        t.stall_us = t.stall_us * win / t.window_us;
        t.window_us = win;
        r = write_trigger(fd, &t, w->trigger, sizeof(w->trigger));
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    w->psi_fd = fd;
    return 0;
}

static int open_events(struct larder__pressure_watch *w, const char *path)
{
    char *slash;
    int fd, r;

    if (strlen(path) >= sizeof(w->cg_dir))
        return -ENAMETOOLONG;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if ((r = events_from_fd(fd, &w->last)) < 0) {
        close(fd);
        return r;
    }
    memcpy(w->cg_dir, path, strlen(path) + 1);
    slash = strrchr(w->cg_dir, '/');
    if (slash)
        *slash = '\0';
    else
        memcpy(w->cg_dir, ".", 2);
    w->events_fd = fd;
    return 0;
}

static int default_events_path(const char *root, char *buf, size_t len)
{
    char dir[PATH_MAX];
    int version, r;

    if ((r = larder__cgroup_find(root, dir, sizeof(dir), &version)) < 0)
        return r;
    if (version != 2)
        return -ENOENT; /* the v1 memory controller has no memory.events */
    return join_path(buf, len, dir, "/memory.events");
}

static void setup_psi(struct larder__pressure_watch *w, const struct larder__pressure_opts *o)
{
    char path[PATH_MAX];
    int r;

    if (o->psi_path)
        r = join_path(path, sizeof(path), "", o->psi_path);
    else
        r = join_path(path, sizeof(path), o->root, "/proc/pressure/memory");
    if (r >= 0) {
        memcpy(w->psi_path, path, strlen(path) + 1);
        r = open_psi(w, path, o->trigger ? o->trigger : TRIGGER_DEFAULT);
    }
    w->psi_error = r < 0 ? r : 0;
}

/* Opens what opts asks for. Returns the mask of open sources, or why there is none. */
static int setup_sources(struct larder__pressure_watch *w, const struct larder__pressure_opts *o)
{
    bool want_psi = !o->psi_path || *o->psi_path;
    bool want_events = !o->events_path || *o->events_path;
    char path[PATH_MAX];
    int mask = 0, events_error = -EINVAL, r;

    if (want_psi)
        setup_psi(w, o);
    if (want_events) {
        if (o->events_path)
            r = join_path(path, sizeof(path), "", o->events_path);
        else
            r = default_events_path(o->root, path, sizeof(path));
        events_error = r < 0 ? r : open_events(w, path);
    }
    mask |= w->psi_fd >= 0 ? LARDER__PRESSURE_PSI : 0;
    mask |= w->events_fd >= 0 ? LARDER__PRESSURE_EVENTS : 0;
    if (mask)
        return mask;
    return want_psi ? w->psi_error : events_error;
}

static uint64_t grown(uint64_t now, uint64_t before)
{
    return now >= before ? now - before : now; /* a smaller value: the counter restarted */
}

/* memory.events changed: returns LARDER__PRESSURE_EVENTS when a counter grew. */
static unsigned on_events(struct larder__pressure_watch *w, struct pollfd *pfd,
                          struct larder__cgroup_events *delta)
{
    struct larder__cgroup_events now;

    if ((pfd->revents & POLLNVAL) || events_from_fd(pfd->fd, &now) < 0) {
        pfd->fd = -1; /* gone (the cgroup was removed): stop listening to it */
        return 0;
    }
    delta->high = grown(now.high, w->last.high);
    delta->max = grown(now.max, w->last.max);
    delta->oom = grown(now.oom, w->last.oom);
    delta->oom_kill = grown(now.oom_kill, w->last.oom_kill);
    w->last = now;
    if (!delta->high && !delta->max && !delta->oom && !delta->oom_kill)
        return 0;
    return LARDER__PRESSURE_EVENTS;
}

/* A PSI trigger fired: returns LARDER__PRESSURE_PSI. A live trigger never reports
 * POLLERR; the kernel does when the trigger or its cgroup is gone, and would keep doing
 * so: that source is dropped. */
static unsigned on_psi(struct larder__pressure_watch *w, struct pollfd *pfd,
                       struct larder__pressure *p)
{
    if ((pfd->revents & (POLLERR | POLLHUP | POLLNVAL)) ||
        larder__psi_read(w->psi_path, &p->psi) < 0) {
        pfd->fd = -1;
        return 0;
    }
    p->has_psi = true;
    return LARDER__PRESSURE_PSI;
}

static void notify(struct larder__pressure_watch *w, struct larder__pressure *p)
{
    if (!p->has_psi && w->psi_path[0])
        p->has_psi = larder__psi_read(w->psi_path, &p->psi) >= 0;
    if (w->cg_dir[0] && larder__cgroup_read(w->cg_dir, 2, &p->cgroup) >= 0) {
        p->has_cgroup = true;
        p->cgroup.events = w->last;
    }
    atomic_fetch_add(&w->fired, 1);
    w->cb(w->ud, p);
}

static void *watch_main(void *arg)
{
    struct larder__pressure_watch *w = arg;
    struct pollfd pfd[3] = {
        {w->wake_fd, POLLIN, 0}, {w->psi_fd, POLLPRI, 0}, {w->events_fd, POLLPRI, 0}};

    for (;;) {
        struct larder__pressure p = {0};
        const short wake = POLLPRI | POLLERR | POLLHUP | POLLNVAL;

        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR || errno == ENOMEM)
                continue;
            break;
        }
        if (pfd[0].revents)
            break;
        if (pfd[1].revents & wake)
            p.fired |= on_psi(w, &pfd[1], &p);
        if (pfd[2].revents & wake)
            p.fired |= on_events(w, &pfd[2], &p.delta);
        if (p.fired)
            notify(w, &p);
    }
    return NULL;
}

static int start_thread(struct larder__pressure_watch *w)
{
    sigset_t all, old;
    int r;

    w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->wake_fd < 0)
        return -errno;
    /* the thread takes no signals: they go to the application's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = pthread_create(&w->thread, NULL, watch_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -r;
}

static void close_watch(struct larder__pressure_watch *w)
{
    if (w->psi_fd >= 0)
        close(w->psi_fd); /* closing the descriptor removes the trigger */
    if (w->events_fd >= 0)
        close(w->events_fd);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    free(w);
}

int larder__pressure_watch_start(const struct larder__pressure_opts *opts,
                                 struct larder__pressure_watch **ret_watch)
{
    struct larder__pressure_watch *w;
    int mask, r;

    if (!opts || !opts->cb || !ret_watch)
        return -EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->cb = opts->cb;
    w->ud = opts->ud;
    w->wake_fd = w->psi_fd = w->events_fd = -1;
    atomic_init(&w->fired, 0);
    mask = setup_sources(w, opts);
    r = mask > 0 ? start_thread(w) : mask;
    if (r < 0) {
        close_watch(w);
        return r;
    }
    *ret_watch = w;
    return mask;
}

struct larder__pressure_watch *larder__pressure_watch_stop(struct larder__pressure_watch *w)
{
    uint64_t one = 1;
    ssize_t n;

    if (!w)
        return NULL;
    do
        n = write(w->wake_fd, &one, sizeof(one));
    while (n < 0 && errno == EINTR);
    pthread_join(w->thread, NULL);
    close_watch(w);
    return NULL;
}

int larder__pressure_watch_psi_error(const struct larder__pressure_watch *w)
{
    return w ? w->psi_error : -EINVAL;
}

const char *larder__pressure_watch_trigger(const struct larder__pressure_watch *w)
{
    return w && w->psi_fd >= 0 ? w->trigger : "";
}

uint64_t larder__pressure_watch_fired(const struct larder__pressure_watch *w)
{
    return w ? atomic_load(&w->fired) : 0;
}

/* ---- summary ---------------------------------------------------------------------- */

struct out {
    char *buf;
    size_t len;
    size_t off; /* what was wanted so far, as snprintf counts */
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    size_t room = o->off < o->len ? o->len - o->off : 0;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(room ? o->buf + o->off : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->off += (size_t)n;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void put_cgroup(struct out *o, const struct larder__pressure *p)
{
    static const char *const names[] = {"high", "max", "oom", "oom_kill"};
    const uint64_t d[] = {p->delta.high, p->delta.max, p->delta.oom, p->delta.oom_kill};

    if (p->has_cgroup) {
        put(o, "%scgroup %.1f MiB", o->off ? "; " : "", mib(p->cgroup.current));
        if (p->cgroup.max != LARDER__UNLIMITED)
            put(o, " of %.1f MiB", mib(p->cgroup.max));
    }
    for (int i = 0; i < 4; i++)
        if (d[i])
            put(o, "%s+%llu %s", o->off ? ", " : "", (unsigned long long)d[i], names[i]);
}

int larder__pressure_summary(const struct larder__pressure *p, char *buf, size_t len)
{
    struct out o = {buf, len, 0};

    if (!p || !buf || len == 0)
        return -EINVAL;
    buf[0] = '\0';
    if (p->has_psi)
        put(&o, "psi some avg10=%.2f full avg10=%.2f", p->psi.some.avg10, p->psi.full.avg10);
    put_cgroup(&o, p);
    if (o.off == 0)
        put(&o, "memory pressure");
    return o.off > INT_MAX ? INT_MAX : (int)o.off;
}
