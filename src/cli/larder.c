/* larder: the command-line front end of larderd.
 *
 *   larder serve --config FILE [--listen HOST:PORT] ...   run the daemon (as larderd)
 *   larder ps [--all] [--url URL]                          models loaded (or all)
 *   larder load NAME [--url URL] [--token TOKEN]           load a model now
 *   larder unload NAME [--url URL] [--token TOKEN]         drain and unload a model
 *   larder check CONFIG                                    validate a config, load nothing
 *
 * The admin token comes from --token or $LARDER_TOKEN; the URL from --url or $LARDER_URL,
 * default http://127.0.0.1:8377.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "client.h"
#include "config.h"
#include "daemon.h"

#define DEFAULT_URL "http://127.0.0.1:8377"
#define TIMEOUT_MS 600000

struct cli {
    const char *url;
    const char *token;
    bool all;
    struct larder__url u;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: larder serve --config FILE [--listen HOST:PORT] [--log-format text|json]\n"
               "       larder ps [--all] [--url URL]\n"
               "       larder load NAME [--url URL] [--token TOKEN]\n"
               "       larder unload NAME [--url URL] [--token TOKEN]\n"
               "       larder check CONFIG\n"
               "The admin token may also come from $LARDER_TOKEN, the URL from $LARDER_URL\n"
               "(default " DEFAULT_URL ").\n");
}

/* Prints the daemon's error reply, or the transport error. Returns 1. */
static int report(const char *what, int r, const struct larder__http_response *resp)
{
    if (r < 0) {
        fprintf(stderr, "larder: %s: %s\n", what, strerror(-r));
        return 1;
    }
    json_t *o = json_loads(resp->body, 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    fprintf(stderr, "larder: %s: HTTP %d: %s\n", what, resp->status, msg ? msg : resp->body);
    json_decref(o);
    return 1;
}

static int call(struct cli *c, const char *method, const char *path,
                struct larder__http_response *resp)
{
    char auth[600];
    const char *headers[2] = {NULL, NULL};
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        headers[0] = auth;
    }
    return larder__http_request(&c->u, method, path, headers, NULL, NULL, 0, TIMEOUT_MS, resp);
}

/* ---- ps ---------------------------------------------------------------------------------- */

static void fmt_expires(json_t *m, char *buf, size_t len)
{
    const char *state = json_string_value(json_object_get(m, "state"));
    json_int_t ttl = json_integer_value(json_object_get(m, "ttl_ms"));
    json_int_t exp = json_integer_value(json_object_get(m, "expires_in_ms"));
    if (!state || strcmp(state, "ready") != 0)
        snprintf(buf, len, "-");
    else if (json_is_true(json_object_get(m, "pin")) || ttl < 0)
        snprintf(buf, len, "never");
    else if (exp < 0)
        snprintf(buf, len, "in use");
    else if (exp < 60000)
        snprintf(buf, len, "%lld seconds from now", (long long)(exp + 999) / 1000);
    else
        snprintf(buf, len, "%lld minutes from now", (long long)(exp + 59999) / 60000);
}

static void print_model(json_t *m)
{
    char mem[32], inst[32], exp[48];
    json_t *in = json_object_get(m, "instances");
    json_t *memory = json_object_get(m, "memory");
    larder__format_size((uint64_t)json_integer_value(json_object_get(memory, "reserved_bytes")),
                        mem, sizeof mem);
    json_int_t max = json_integer_value(json_object_get(in, "max"));
    snprintf(inst, sizeof inst, "%lld/%lld",
             (long long)json_integer_value(json_object_get(in, "busy")),
             (long long)json_integer_value(json_object_get(in, "created")));
    if (max)
        snprintf(inst + strlen(inst), sizeof inst - strlen(inst), " (max %lld)", (long long)max);
    else if (!json_integer_value(json_object_get(in, "created")))
        snprintf(inst, sizeof inst, "shared (%lld)", (long long)json_integer_value(
                                                         json_object_get(m, "leases")));
    fmt_expires(m, exp, sizeof exp);
    printf("%-24s %-10s %-14s %-12s %s\n", json_string_value(json_object_get(m, "name")),
           json_string_value(json_object_get(m, "state")), inst, mem, exp);
}

static int cmd_ps(struct cli *c)
{
    struct larder__http_response resp = {0};
    int r = call(c, "GET", "/v1/models", &resp);
    if (r < 0 || resp.status != 200) {
        r = report("ps", r, &resp);
        larder__http_response_clear(&resp);
        return r;
    }
    json_t *o = json_loads(resp.body, 0, NULL);
    json_t *models = json_object_get(o, "models"), *m;
    size_t i;
    printf("%-24s %-10s %-14s %-12s %s\n", "NAME", "STATE", "INSTANCES", "MEMORY", "EXPIRES");
    json_array_foreach(models, i, m) {
        const char *state = json_string_value(json_object_get(m, "state"));
        if (c->all || (state && strcmp(state, "unloaded") != 0))
            print_model(m);
    }
    json_decref(o);
    larder__http_response_clear(&resp);
    return o ? 0 : 1;
}

/* ---- load / unload ------------------------------------------------------------------------ */

static int cmd_admin(struct cli *c, const char *verb, const char *name)
{
    char path[512];
    struct larder__http_response resp = {0};
    if (!c->token) {
        fprintf(stderr, "larder: %s needs an admin token (--token or $LARDER_TOKEN)\n", verb);
        return 1;
    }
    snprintf(path, sizeof path, "/v1/models/%s/%s", name, verb);
    int r = call(c, "POST", path, &resp);
    if (r < 0 || resp.status / 100 != 2) {
        char what[300];
        snprintf(what, sizeof what, "%s %s", verb, name);
        r = report(what, r, &resp);
        larder__http_response_clear(&resp);
        return r;
    }
    json_t *o = json_loads(resp.body, 0, NULL);
    json_t *ms = json_object_get(o, "load_ms");
    if (ms)
        printf("%s: %s (%s, %.0f ms)\n", name, json_string_value(json_object_get(o, "state")),
               json_is_true(json_object_get(o, "cold_start")) ? "loaded now" : "already loaded",
               json_number_value(ms));
    else
        printf("%s: %s\n", name, json_string_value(json_object_get(o, "state")));
    json_decref(o);
    larder__http_response_clear(&resp);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static int parse_common(int argc, char **argv, struct cli *c)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'}, {"token", required_argument, NULL, 't'},
        {"all", no_argument, NULL, 'a'},       {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "u:t:ah", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': c->url = optarg; break;
        case 't': c->token = optarg; break;
        case 'a': c->all = true; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (larder__url_parse(c->url, &c->u) < 0) {
        fprintf(stderr, "larder: bad URL '%s' (http://HOST:PORT)\n", c->url);
        return -1;
    }
    return optind;
}

int main(int argc, char **argv)
{
    struct cli c = {.url = getenv("LARDER_URL"), .token = getenv("LARDER_TOKEN")};
    if (!c.url || !*c.url)
        c.url = DEFAULT_URL;
    if (c.token && !*c.token)
        c.token = NULL;
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return larder__daemon_main("larder serve", argc - 1, argv + 1);
    if (strcmp(cmd, "check") == 0) {
        if (argc != 3) {
            usage(stderr);
            return 2;
        }
        int errors = larder__check_config(argv[2], stdout);
        if (errors < 0)
            fprintf(stderr, "larder: %s: %s\n", argv[2], strerror(-errors));
        return errors == 0 ? 0 : 1;
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    int first = parse_common(argc - 1, argv + 1, &c);
    if (first < 0)
        return 2;
    int rest = argc - 1 - first;
    char **args = argv + 1 + first;
    if (strcmp(cmd, "ps") == 0 && rest == 0)
        return cmd_ps(&c);
    if ((strcmp(cmd, "load") == 0 || strcmp(cmd, "unload") == 0) && rest == 1)
        return cmd_admin(&c, cmd, args[0]);
    usage(stderr);
    return 2;
}
