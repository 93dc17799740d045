/* Integration test harness: starts the built larderd on a free loopback port with a
 * generated config in a temporary directory, talks to it over HTTP, and always stops it
 * (SIGTERM, then SIGKILL after a grace period; the daemon also dies with the test
 * process). The daemon's log is kept in the temporary directory and printed when a
 * test fails.
 */
#ifndef LARDER_TESTS_HARNESS_H
#define LARDER_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "client.h"

#define ADMIN_TOKEN "test-admin-token-0123456789"
#define AUTH_HEADER "Authorization: Bearer " ADMIN_TOKEN

struct daemon {
    pid_t pid;
    char dir[128];
    char config[192];
    char log[192];
    unsigned port;
    struct larder__url url;
    int exit_status;         /* after daemon_stop: the exit status, or 128 + signal */
    char host[64];           /* the address it listens on; 127.0.0.1 by default */
    char netns[64];          /* the network namespace it runs in; "" = the test's own */
};

/* Writes `config` (the [model.*] sections and anything else; the harness adds [server]
 * with listen and admin_tokens unless `config` has its own [server]) and starts
 * larderd. Waits (generously) for GET /health to answer 200. Returns 0 or -1. */
int daemon_start(struct daemon *d, const char *config);

/* daemon_start for a daemon in network namespace `netns` (made by `ip netns add`; NULL:
 * the test's own) that listens on `host`: `config` then has its own [server] section with
 * `listen = HOST:0` and `admin_tokens = admin.tokens`. Returns 0 or -1. */
int daemon_start_at(struct daemon *d, const char *config, const char *netns, const char *host);

/* When set (before daemon_start), the daemon is started as `LARDER_CLI_PATH serve`
 * instead of larderd. */
extern bool harness_use_cli;

/* When set (before daemon_start), the daemon's process joins this cgroup directory
 * (writes itself into its cgroup.procs) before exec, so that larderd runs, and reads its
 * memory figures, in that cgroup from its first instruction. The start fails, with the
 * reason in the daemon's log, when it cannot join. */
extern const char *harness_cgroup;

/* Runs a shell command line with LARDER_URL pointing at the daemon; its stdout goes to
 * out (len bytes, NUL-terminated). Returns its exit status. */
int run_cli(struct daemon *d, const char *args, char *out, size_t len);

/* Rewrites the config file (same rules as daemon_start). */
int daemon_write_config(struct daemon *d, const char *config);

/* Sends SIGTERM and waits for the exit; SIGKILL after 60 s. Removes the directory.
 * Returns the exit status. Safe to call twice. */
int daemon_stop(struct daemon *d);

/* Kills the daemon with SIGKILL (a node that dies) and reaps it; daemon_stop then only
 * removes its directory. */
void daemon_kill(struct daemon *d);

/* cmocka teardown: stops every daemon a test started and did not stop (a failed
 * assertion leaves the test before its daemon_stop), and removes its directory. The
 * same runs at exit. */
int daemon_teardown(void **state);

/* Prints the daemon's log to stderr (for failures). */
void daemon_dump_log(const struct daemon *d);

/* True when the daemon's log contains `needle`. */
bool daemon_log_has(const struct daemon *d, const char *needle);

/* The complete lines of the daemon's log (a line still being written is left out),
 * NUL-terminated; NULL when there is no log. Free it. */
char *daemon_read_log(const struct daemon *d);

/* How many complete lines of the daemon's log contain `needle`. */
int daemon_log_count(const struct daemon *d, const char *needle);

/* Waits until at least `count` complete lines of the daemon's log contain `needle`, or
 * WAIT_BOUND_MS pass. Returns how many do (fewer than count only once the bound has
 * passed). Lines written by different threads come in any order: wait for each. */
int daemon_wait_log(const struct daemon *d, const char *needle, int count);

/* Waiting for a condition. The bound is generous: it is only reached when the condition
 * will never hold, and the test's own assertion then fails. Nothing in a test waits for
 * a fixed time and then asserts. */
#define WAIT_BOUND_MS 60000

struct wait_bound {
    long long until_ms; /* CLOCK_MONOTONIC */
};

/* Starts a wait of at most WAIT_BOUND_MS. */
struct wait_bound wait_start(void);

/* Sleeps a few milliseconds and returns true, or returns false once the bound passed. */
bool wait_again(struct wait_bound *p);

/* Evaluates `cond` until it holds or the bound passes; the caller asserts it after. */
#define WAIT_UNTIL(cond)                                                                   \
    do {                                                                                   \
        struct wait_bound wait_until_bound_ = wait_start();                                \
        while (!(cond) && wait_again(&wait_until_bound_))                                  \
            ;                                                                              \
    } while (0)

/* Waits until json_field(d, path, field) is `want` (or the bound passes) and returns its
 * last value, for assert_int_equal. */
long long wait_json_field(struct daemon *d, const char *path, const char *field,
                          long long want);

/* One request. body may be NULL. Returns the HTTP status or a negative errno. The
 * response is stored in *resp when resp is not NULL (free it with
 * larder__http_response_clear). */
int http(struct daemon *d, const char *method, const char *path, const char *content_type,
         const void *body, size_t len, bool admin, struct larder__http_response *resp);

/* GET path and return the status. */
int http_get(struct daemon *d, const char *path);

/* The integer at a dotted path ("instances.created") of the JSON object of GET path,
 * or INT64_MIN. */
long long json_field(struct daemon *d, const char *path, const char *field);

/* The "error"."code" of a response body, or "" (static buffer per call site is not
 * needed: returns a pointer into a thread-local buffer). */
const char *error_code(const struct larder__http_response *resp);

/* Reads a whole file (NUL-terminated); NULL on error. */
char *read_file(const char *path, size_t *ret_len);

#endif
