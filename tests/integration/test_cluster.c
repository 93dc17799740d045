/* Scale-out: three larderd nodes behind HAProxy with the configuration that
 * `larder cluster haproxy` prints (consistent hashing on the model name).
 *
 * Each node runs in a network namespace of its own, made here (`ip netns add`, a veth
 * pair to this namespace with an address on each end). Runs side by side hold distinct
 * slots (a lock each) that own their addresses, namespace and link names, so they never
 * collide; every namespace and link is removed at exit, also after a failed assertion or
 * a crash, and those of a run that was killed go with the next run. Where namespaces
 * cannot be made (not root, no CAP_NET_ADMIN, LARDER_TEST_NO_NETNS=1) the nodes listen
 * on loopback addresses of the slot instead. HAProxy listens on one of the slot's
 * loopback addresses. The test skips only when HAProxy is not installed.
 *
 * Checks: one model's requests always reach the same node, for the path routes and for
 * the OpenAI / Ollama routes that name the model in the body; real OCR and ASR models
 * spread over the nodes answer correctly through HAProxy; the per-model gauges an
 * inference gateway reads; and when a node is killed during a run, every request gets
 * an answer (none lost beyond those in flight on it), only its models move, and the
 * other nodes' models stay loaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define NODES 3
#define SYNTH 12
#define CLIENTS 4
#define ROUNDS 50
#define SPOKEN "what is the weather like today"

static struct daemon nodes[NODES];
static char node_host[NODES][64];
static char netns[NODES][64];
static char veth[NODES][16];
static bool use_netns;
static pid_t haproxy_pid;
static char lb_dir[64];
static struct larder__url lb;
static char owner[SYNTH][80]; /* the node each synthetic model was served by */
static char *png, *wav;
static size_t png_len, wav_len;

/* ---- namespaces ------------------------------------------------------------------------ */

__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " >/dev/null 2>&1", sizeof cmd - strlen(cmd) - 1);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void netns_cleanup(void)
{
    for (int i = 0; i < NODES; i++) {
        if (netns[i][0])
            sh("ip netns del %s", netns[i]);
        if (veth[i][0])
            sh("ip link del %s", veth[i]);
        netns[i][0] = veth[i][0] = 0;
    }
}

/* ---- this run's addresses ------------------------------------------------------------ */

/* Runs of this test side by side (several build directories, CI) each hold a slot, a
 * lock on /tmp/larder-cluster-slots/N.lock kept until the process ends (the kernel drops
 * it even after SIGKILL). A slot owns 16 addresses, 198.18.0.0/15 (set aside for network
 * tests) with namespaces, 127.100.0.0/15 on loopback, and the names of its namespaces
 * and links: nothing of another run's can be taken. The slot is looked for from this
 * process's id onwards. */
#define SLOTS 8192
#define SLOT_DIR "/tmp/larder-cluster-slots"
static int slot = -1, slot_fd = -1;

static bool slot_lock(int s, int *fd)
{
    char path[64];
    if (mkdir(SLOT_DIR, 0777) == 0)
        chmod(SLOT_DIR, 01777); /* any user's runs share it, umask aside */
    snprintf(path, sizeof path, SLOT_DIR "/%d.lock", s);
    *fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644); /* flock needs no write */
    if (*fd < 0)
        return false;
    if (flock(*fd, LOCK_EX | LOCK_NB) == 0)
        return true;
    close(*fd);
    *fd = -1;
    return false;
}

/* Address k (0..15) of the slot: A.B.C.D in buf. */
static void slot_addr(char *buf, size_t len, bool ns, int k)
{
    unsigned at = (unsigned)slot * 16 + (unsigned)k;
    snprintf(buf, len, "%u.%u.%u.%u", ns ? 198 : 127, (ns ? 18 : 100) + (at >> 16),
             (at >> 8) & 255, at & 255);
}

static void slot_names(int s, int i, char *ns, size_t ns_len, char *host, char *peer)
{
    snprintf(ns, ns_len, "larder-it-%d-%d", s, i);
    if (host)
        snprintf(host, 16, "ldr%dh%d", s, i);
    if (peer)
        snprintf(peer, 16, "ldr%dn%d", s, i);
}

/* What a run that died left of slot s (its lock is free, so its process is gone). */
static void slot_clear(int s)
{
    for (int i = 0; i < NODES; i++) {
        char ns[64], host[16];
        slot_names(s, i, ns, sizeof ns, host, NULL);
        sh("ip netns del %s", ns);
        sh("ip link del %s", host);
    }
}

/* Slots of earlier runs that died without cleaning up: their namespaces go, each slot's
 * under its lock, so a run that takes it meanwhile loses nothing. */
static void netns_reap_stale(void)
{
    FILE *p = popen("ip netns list 2>/dev/null", "r");
    char line[256];
    int found[64], n = 0;
    while (p && fgets(line, sizeof line, p)) {
        int s, i;
        if (sscanf(line, "larder-it-%d-%d", &s, &i) == 2 && s >= 0 && s < SLOTS &&
            s != slot && n < 64 && (n == 0 || found[n - 1] != s))
            found[n++] = s;
    }
    if (p)
        pclose(p);
    for (int k = 0; k < n; k++) {
        int fd;
        if (slot_lock(found[k], &fd)) {
            slot_clear(found[k]);
            close(fd);
        }
    }
}

/* True when this host has an address in the slot's 16 (someone else's network). */
static bool slot_in_use_here(void)
{
    char first[32], cmd[128], line[256];
    slot_addr(first, sizeof first, true, 0);
    snprintf(cmd, sizeof cmd, "ip -4 -o addr show to %s/28 2>/dev/null", first);
    FILE *p = popen(cmd, "r");
    bool used = !p || fgets(line, sizeof line, p) != NULL;
    if (p)
        pclose(p);
    return used;
}

static bool slot_take(bool ns)
{
    unsigned from = (unsigned)getpid() % SLOTS;
    for (unsigned k = 0; k < SLOTS; k++) {
        int s = (int)((from + k) % SLOTS), fd;
        if (!slot_lock(s, &fd))
            continue;
        slot = s;
        slot_fd = fd;
        if (!ns)
            return true;
        slot_clear(s); /* a dead run's namespaces of this slot */
        if (!slot_in_use_here())
            return true;
        close(fd);
        slot = slot_fd = -1;
    }
    return false;
}

/* One /30 per node within the slot: .4i+1 here, .4i+2 in the node's namespace. */
static bool netns_setup(void)
{
    if (getenv("LARDER_TEST_NO_NETNS") || sh("ip netns list") != 0 || !slot_take(true))
        return false;
    netns_reap_stale();
    for (int i = 0; i < NODES; i++) {
        char peer[16], here[32];
        slot_names(slot, i, netns[i], sizeof netns[i], veth[i], peer);
        slot_addr(here, sizeof here, true, 4 * i + 1);
        slot_addr(node_host[i], sizeof node_host[i], true, 4 * i + 2);
        if (sh("ip netns add %s", netns[i]) != 0) {
            netns[i][0] = 0;
            return false;
        }
        if (sh("ip link add %s type veth peer name %s", veth[i], peer) != 0) {
            veth[i][0] = 0;
            return false;
        }
        if (sh("ip link set %s netns %s", peer, netns[i]) ||
            sh("ip addr add %s/30 dev %s", here, veth[i]) || sh("ip link set %s up", veth[i]) ||
            sh("ip netns exec %s ip addr add %s/30 dev %s", netns[i], node_host[i], peer) ||
            sh("ip netns exec %s ip link set %s up", netns[i], peer) ||
            sh("ip netns exec %s ip link set lo up", netns[i]))
            return false;
    }
    return true;
}

/* ---- HAProxy ------------------------------------------------------------------------------ */

static const char *haproxy_path(void)
{
    static const char *const where[] = {"/usr/sbin/haproxy", "/usr/local/sbin/haproxy",
                                        "/usr/bin/haproxy", NULL};
    for (int i = 0; where[i]; i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    return NULL;
}

/* A free port on address host (of this run's slot: no other run binds it). */
static unsigned free_port(const char *host)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t len = sizeof a;
    unsigned port = 0;
    if (fd >= 0 && inet_pton(AF_INET, host, &a.sin_addr) == 1 &&
        bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void haproxy_stop(void)
{
    if (haproxy_pid > 0) {
        kill(haproxy_pid, SIGKILL);
        waitpid(haproxy_pid, NULL, 0);
        haproxy_pid = 0;
    }
}

static void cleanup(void)
{
    haproxy_stop();
    for (int i = 0; i < NODES; i++)
        daemon_stop(&nodes[i]);
    netns_cleanup();
    if (lb_dir[0] && getenv("LARDER_TEST_KEEP"))
        fprintf(stderr, "HAProxy's configuration and log kept in %s\n", lb_dir);
    else if (lb_dir[0])
        sh("rm -rf '%s'", lb_dir);
    lb_dir[0] = 0;
}

static void on_fatal(int sig)
{
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A request through HAProxy. Returns the status (or a negative errno); the node that
 * answered goes to node (when not NULL). */
static int lb_request(const char *method, const char *path, const char *ct, const void *body,
                      size_t len, char *node, size_t node_len, struct larder__http_response *ret)
{
    struct larder__http_response r = {0};
    if (node)
        node[0] = 0;
    int e = larder__http_request(&lb, method, path, NULL, ct, body, len, 120000, &r);
    if (e < 0)
        return e;
    if (node && !larder__http_header(&r, "X-Larder-Node", node, node_len))
        node[0] = 0;
    int status = r.status;
    if (ret)
        *ret = r;
    else
        larder__http_response_clear(&r);
    return status;
}

/* Every node answers through HAProxy by name (/node/NAME/...), so HAProxy has all of them
 * up. */
static bool all_nodes_up(void)
{
    for (int i = 0; i < NODES; i++) {
        char path[64], node[80], want[16];
        snprintf(path, sizeof path, "/node/n%d/health", i);
        snprintf(want, sizeof want, "n%d", i);
        if (lb_request("GET", path, NULL, NULL, 0, node, sizeof node, NULL) != 200 ||
            strcmp(node, want) != 0)
            return false;
    }
    return true;
}

static int haproxy_start(void)
{
    char cmd[2048], cfg[128], log[128];
    char host[32];
    slot_addr(host, sizeof host, false, 14);
    unsigned port = free_port(host);
    snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", lb_dir);
    snprintf(log, sizeof log, "%s/haproxy.log", lb_dir);
    int n = snprintf(cmd, sizeof cmd, "%s cluster haproxy --bind %s:%u", LARDER_CLI_PATH, host,
                     port);
    for (int i = 0; i < NODES; i++)
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " n%d=%s:%u", i, nodes[i].host,
                      nodes[i].port);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " > %s", cfg);
    if (system(cmd) != 0)
        return -1;
    pid_t parent = getpid();
    haproxy_pid = fork();
    if (haproxy_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(haproxy_path(), "haproxy", "-db", "-f", cfg, (char *)NULL);
        _exit(127);
    }
    char u[64];
    snprintf(u, sizeof u, "%s:%u", host, port);
    larder__url_parse(u, &lb);
    bool up = false;
    WAIT_UNTIL(waitpid(haproxy_pid, NULL, WNOHANG) == 0 && (up = all_nodes_up()));
    if (!up) {
        snprintf(cmd, sizeof cmd, "cat %s >&2", log);
        if (system(cmd) != 0)
            fprintf(stderr, "no HAProxy log\n");
    }
    return up ? 0 : -1;
}

/* ---- the cluster ---------------------------------------------------------------------- */

static void node_config(char *buf, size_t len, int i)
{
    int n = snprintf(buf, len,
                     "[server]\nlisten = %s:0\nadmin_tokens = admin.tokens\nnode_name = n%d\n"
                     "max_connections_per_client = 1024\n\n"
                     "[memory]\nbudget = 2GiB\nttl = never\nwatch_pressure = no\n\n"
                     "[model.ocr-a]\nbackend = tesseract\nlanguage = eng\n\n"
                     "[model.ocr-b]\nbackend = tesseract\nlanguage = eng\n\n"
                     "[model.asr-a]\nbackend = pocketsphinx\n\n"
                     "[model.asr-b]\nbackend = pocketsphinx\n\n"
                     "[model.gauge]\nbackend = synthetic-pooled\ninstances = 1\n\n",
                     node_host[i], i);
    for (int m = 0; m < SYNTH; m++)
        n += snprintf(buf + n, len - (size_t)n,
                      "[model.s%02d]\nbackend = synthetic\nsize = 1MiB\ninfer_ms = 10\n\n", m);
}

static int group_setup(void **state)
{
    static char config[8192];
    signal(SIGABRT, on_fatal);
    signal(SIGSEGV, on_fatal);
    signal(SIGTERM, on_fatal);
    signal(SIGINT, on_fatal);
    atexit(cleanup);
    png = read_file(EXAMPLES_DIR "/ocr.png", &png_len);
    wav = read_file(EXAMPLES_DIR "/speech.wav", &wav_len);
    snprintf(lb_dir, sizeof lb_dir, "/tmp/larder-lb-XXXXXX");
    if (!png || !wav || !mkdtemp(lb_dir))
        return -1;
    use_netns = netns_setup();
    if (!use_netns) {
        netns_cleanup();
        fprintf(stderr, "network namespaces unavailable: nodes on loopback addresses\n");
        if (slot < 0 && !slot_take(false))
            return -1;
        for (int i = 0; i < NODES; i++)
            slot_addr(node_host[i], sizeof node_host[i], false, 4 * i + 2);
    }
    fprintf(stderr, "nodes: %s, %s, %s (%s, slot %d)\n", node_host[0], node_host[1],
            node_host[2], use_netns ? "one network namespace each" : "loopback", slot);
    for (int i = 0; i < NODES; i++) {
        node_config(config, sizeof config, i);
        if (daemon_start_at(&nodes[i], config, use_netns ? netns[i] : NULL, node_host[i]) < 0)
            return -1;
    }
    return haproxy_start();
}

static int group_teardown(void **state)
{
    cleanup();
    free(png);
    free(wav);
    return 0;
}

static int node_index(const char *name)
{
    for (int i = 0; i < NODES; i++) {
        char want[16];
        snprintf(want, sizeof want, "n%d", i);
        if (strcmp(name, want) == 0)
            return i;
    }
    return -1;
}

static char *model_path(char *buf, size_t len, const char *model, const char *what)
{
    snprintf(buf, len, "/v1/models/%s%s%s", model, what ? "/" : "", what ? what : "");
    return buf;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_same_model_same_node(void **state)
{
    char path[128], node[80];
    bool used[NODES] = {false};
    for (int m = 0; m < SYNTH; m++) {
        char name[8];
        snprintf(name, sizeof name, "s%02d", m);
        model_path(path, sizeof path, name, "infer");
        for (int k = 0; k < 4; k++) {
            assert_int_equal(lb_request("POST", path, "text/plain", "x", 1, node, sizeof node,
                                        NULL), 200);
            if (k == 0)
                snprintf(owner[m], sizeof owner[m], "%s", node);
            assert_string_equal(node, owner[m]);
        }
        int at = node_index(owner[m]);
        assert_true(at >= 0);
        used[at] = true;
        /* loaded on its node only */
        model_path(path, sizeof path, name, NULL);
        for (int i = 0; i < NODES; i++)
            assert_int_equal(json_field(&nodes[i], path, "loads"), i == at ? 1 : 0);
    }
    assert_true(used[0] + used[1] + used[2] >= 2);
}

/* The OpenAI and Ollama routes carry the model in the body: HAProxy reads it there. Each
 * request reaches the node its model's path routes go to, whatever that node answers. */
static void test_body_routes_follow_the_model(void **state)
{
    static const char *const routes[] = {"/v1/chat/completions", "/v1/completions",
                                         "/v1/embeddings", "/api/chat", "/api/generate",
                                         "/api/embed"};
    char body[256], node[80];
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++)
        for (int m = 0; m < SYNTH; m += 3) {
            int n = snprintf(body, sizeof body,
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                             "\"model\":\"s%02d\",\"prompt\":\"hi\",\"input\":\"hi\"}",
                             m);
            assert_true(lb_request("POST", routes[r], "application/json", body, (size_t)n,
                                   node, sizeof node, NULL) > 0);
            if (strcmp(node, owner[m]) != 0)
                fail_msg("%s for s%02d reached %s, not %s", routes[r], m, node, owner[m]);
        }
}

static void test_real_engines_through_haproxy(void **state)
{
    static const char *const words[] = {"quick", "brown", "fox", "jumps", "lazy", "dog"};
    static const char *const models[] = {"ocr-a", "ocr-b", "asr-a", "asr-b"};
    bool used[NODES] = {false};
    char path[128], node[80];
    for (int k = 0; k < 4; k++) {
        struct larder__http_response r = {0};
        bool ocr = k < 2;
        model_path(path, sizeof path, models[k], "infer");
        assert_int_equal(lb_request("POST", path, ocr ? "image/png" : "audio/wav",
                                    ocr ? png : wav, ocr ? png_len : wav_len, node,
                                    sizeof node, &r),
                         200);
        json_t *o = json_loads(r.body, 0, NULL);
        const char *text = json_string_value(json_object_get(o, "text"));
        assert_non_null(text);
        if (ocr) {
            for (size_t w = 0; w < sizeof words / sizeof words[0]; w++)
                if (!strstr(text, words[w]))
                    fail_msg("%s: '%s' not in '%s'", models[k], words[w], text);
        } else {
            assert_string_equal(text, SPOKEN);
        }
        json_decref(o);
        larder__http_response_clear(&r);
        assert_true(node_index(node) >= 0);
        used[node_index(node)] = true;
        fprintf(stderr, "%s answered by %s\n", models[k], node);
    }
    assert_true(used[0] + used[1] + used[2] >= 2);
}

/* The value of the metric line that starts with `series` ("name{labels}") in a node's
 * /metrics, or -1. */
static double metric(struct daemon *d, const char *series)
{
    struct larder__http_response r = {0};
    double v = -1;
    if (http(d, "GET", "/metrics", NULL, NULL, 0, false, &r) == 200) {
        char want[256];
        snprintf(want, sizeof want, "\n%s ", series);
        const char *at = strstr(r.body, want);
        if (at)
            v = strtod(at + strlen(want), NULL);
    }
    larder__http_response_clear(&r);
    return v;
}

/* An inference left running on node d: the socket, whose closing cancels it. */
static int start_infer(struct daemon *d, const char *model, const char *query)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/models/%s/infer?%s", model, query);
    int fd = larder__http_connect(&d->url, 10000);
    assert_true(fd >= 0);
    assert_int_equal(larder__http_send(fd, &d->url, "POST", path, NULL, "text/plain", "x", 1), 0);
    return fd;
}

/* What an inference gateway reads: requests running and waiting per model. The model has
 * one instance: the first request holds it, the second waits for it. */
static void test_gateway_gauges(void **state)
{
    struct daemon *d = &nodes[0];
    const char *run = "vllm:num_requests_running{model_name=\"gauge\"}";
    const char *wait = "vllm:num_requests_waiting{model_name=\"gauge\"}";
    assert_true(metric(d, run) == 0 && metric(d, wait) == 0);
    int first = start_infer(d, "gauge", "sleep_ms=600000");
    WAIT_UNTIL(metric(d, run) == 1);
    assert_true(metric(d, run) == 1);
    int second = start_infer(d, "gauge", "sleep_ms=600000");
    WAIT_UNTIL(metric(d, wait) == 1);
    assert_true(metric(d, wait) == 1);
    assert_true(metric(d, "larder_requests_waiting") == 1);
    assert_true(metric(d, "larder_requests_running") >= 1);
    assert_true(metric(d, "larder_budget_usage_ratio") > 0);
    assert_true(metric(d, "vllm:kv_cache_usage_perc") == -1); /* no KV cache, none served */
    close(first); /* cancelled: the second gets the instance */
    WAIT_UNTIL(metric(d, wait) == 0 && metric(d, run) == 1);
    assert_true(metric(d, wait) == 0 && metric(d, run) == 1);
    close(second);
    WAIT_UNTIL(metric(d, run) == 0);
    assert_true(metric(d, run) == 0);
}

/* Routes that are not per model reach one named node through HAProxy. */
static void test_per_node_routes(void **state)
{
    struct larder__http_response r = {0};
    char node[80];
    assert_int_equal(lb_request("GET", "/node/n2/metrics", NULL, NULL, 0, node, sizeof node, &r),
                     200);
    assert_string_equal(node, "n2");
    assert_non_null(strstr(r.body, "vllm:num_requests_waiting{model_name=\"s00\"} "));
    larder__http_response_clear(&r);
    assert_int_equal(lb_request("GET", "/node/n1/v1/memory", NULL, NULL, 0, node, sizeof node,
                                NULL),
                     200);
    assert_string_equal(node, "n1");
}

struct client {
    pthread_t thread;
    int index;
    int failed;
};

static atomic_int completed;

static void *client_run(void *arg)
{
    struct client *c = arg;
    char path[64];
    for (int i = 0; i < ROUNDS; i++) {
        snprintf(path, sizeof path, "/v1/models/s%02d/infer", (c->index * 5 + i) % SYNTH);
        int st = lb_request("POST", path, "text/plain", "x", 1, NULL, 0, NULL);
        if (st != 200) {
            fprintf(stderr, "client %d: %s answered %d\n", c->index, path, st);
            c->failed++;
        }
        atomic_fetch_add(&completed, 1);
    }
    return NULL;
}

static void test_node_dies(void **state)
{
    int count[NODES] = {0}, victim = 0;
    char path[128], node[80], name[8];
    for (int m = 0; m < SYNTH; m++)
        count[node_index(owner[m])]++;
    for (int i = 1; i < NODES; i++)
        if (count[i] > count[victim])
            victim = i;
    struct client clients[CLIENTS];
    for (int k = 0; k < CLIENTS; k++) {
        clients[k] = (struct client){.index = k};
        assert_int_equal(pthread_create(&clients[k].thread, NULL, client_run, &clients[k]), 0);
    }
    WAIT_UNTIL(atomic_load(&completed) >= CLIENTS * ROUNDS / 4);
    fprintf(stderr, "killing n%d (%d of the %d models) after %d requests\n", victim,
            count[victim], SYNTH, atomic_load(&completed));
    daemon_kill(&nodes[victim]);
    int failed = 0;
    for (int k = 0; k < CLIENTS; k++) {
        pthread_join(clients[k].thread, NULL);
        failed += clients[k].failed;
    }
    /* at most the requests in flight on the killed node: one per client */
    assert_true(failed <= CLIENTS);
    for (int m = 0; m < SYNTH; m++) {
        struct larder__http_response r = {0};
        snprintf(name, sizeof name, "s%02d", m);
        model_path(path, sizeof path, name, "infer");
        assert_int_equal(lb_request("POST", path, "text/plain", "x", 1, node, sizeof node, &r),
                         200);
        int was = node_index(owner[m]), now = node_index(node);
        assert_true(now >= 0 && now != victim);
        if (was != victim) {
            /* not moved, and still loaded: no load since the first */
            assert_int_equal(now, was);
            json_t *o = json_loads(r.body, 0, NULL);
            assert_false(json_is_true(json_object_get(o, "cold_start")));
            json_decref(o);
            model_path(path, sizeof path, name, NULL);
            assert_int_equal(json_field(&nodes[was], path, "loads"), 1);
        }
        larder__http_response_clear(&r);
        /* and its new node keeps it */
        model_path(path, sizeof path, name, "infer");
        char again[80];
        assert_int_equal(lb_request("POST", path, "text/plain", "x", 1, again, sizeof again,
                                    NULL),
                         200);
        assert_string_equal(again, node);
    }
}

int main(void)
{
    if (!haproxy_path()) {
        fprintf(stderr, "skipped: HAProxy is not installed (Debian's haproxy package, "
                        "listed in scripts/packages.txt)\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_model_same_node),
        cmocka_unit_test(test_body_routes_follow_the_model),
        cmocka_unit_test(test_real_engines_through_haproxy),
        cmocka_unit_test(test_gateway_gauges),
        cmocka_unit_test(test_per_node_routes),
        cmocka_unit_test(test_node_dies),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
