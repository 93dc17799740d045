/* larder: the command-line front end of larderd.
 *
 *   larder serve --config FILE [--listen HOST:PORT] ...   run the daemon (as larderd)
 *   larder ps [--all] [--url URL | --config FILE]         models loaded (or all)
 *   larder ps [--all] --url URL --url URL ...              the same over several nodes
 *   larder load NAME [--url URL | --config FILE] [--token TOKEN]     load a model now
 *   larder unload NAME [--url URL | --config FILE] [--token TOKEN]   drain and unload it
 *   larder check CONFIG                                    validate a config, load nothing
 *   larder cluster haproxy [--bind ADDR:PORT] NODE...      HAProxy config for these nodes
 *   larder --version | --help
 *
 * The daemon is at --url URL, else the [server] listen address of --config FILE (a
 * wildcard address taken as loopback), else $LARDER_URL, else http://127.0.0.1:8377. The
 * admin token comes from --token or $LARDER_TOKEN. Exit status: 0 done, 1 failed, 2 the
 * command line is wrong; each error is one line on stderr.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "client.h"
#include "cluster.h"
#include "config.h"
#include "daemon.h"

#define DEFAULT_URL "http://127.0.0.1:8377"
#define CONNECT_TIMEOUT_MS 10000
#define TIMEOUT_MS 600000 /* a load may take minutes */

/* The options a command may take. */
enum { OPT_URL = 1, OPT_TOKEN = 2, OPT_ALL = 4, OPT_CONFIG = 8, OPT_BIND = 16 };
#define MAX_URLS LARDER__CLUSTER_MAX_NODES

struct cli {
    const char *url_opt;  /* --url (the first) */
    const char *urls[MAX_URLS]; /* every --url, in order */
    unsigned n_urls;
    const char *bind;     /* --bind */
    const char *config;   /* --config */
    const char *token;    /* --token, else $LARDER_TOKEN */
    bool all;
    unsigned given;       /* OPT_* on the command line */
    char url[300];        /* the daemon's URL, as messages name it */
    struct larder__url u;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: larder serve --config FILE [--listen HOST:PORT] [--log-format text|json]\n"
            "                    [--log-level error|warn|info|debug]\n"
            "       larder ps [--all] [--url URL | --config FILE]\n"
            "       larder load NAME [--url URL | --config FILE] [--token TOKEN]\n"
            "       larder unload NAME [--url URL | --config FILE] [--token TOKEN]\n"
            "       larder check CONFIG\n"
            "       larder ps [--all] --url URL --url URL ...\n"
            "       larder cluster haproxy [--bind ADDR:PORT] [NAME=]HOST:PORT...\n"
            "       larder --version | --help\n"
            "\n"
            "  serve   run the daemon in the foreground, as larderd does\n"
            "  ps      the models loaded now (--all: every model of the config)\n"
            "  load    load a model now (admin)\n"
            "  unload  drain a model and unload it (admin)\n"
            "  check   validate a config as start-up does, loading nothing (exit 1 on errors)\n"
            "  cluster haproxy  print an HAProxy config that routes each model to one node\n"
            "          (consistent hashing on the model name; docs/scale-out.md)\n"
            "\n"
            "ps with several --url prints one table over those nodes, with a NODE column;\n"
            "a node that does not answer is reported and the others are still listed.\n"
            "\n"
            "The daemon is at --url URL, else [server] listen of --config FILE, else $LARDER_URL,\n"
            "else " DEFAULT_URL "; a wildcard listen address (0.0.0.0, ::) means\n"
            "loopback. The admin token is --token TOKEN, else $LARDER_TOKEN.\n");
}

/* A command-line error: one line, exit status 2. */
__attribute__((format(printf, 1, 2))) static int bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("larder: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("; try 'larder --help'\n", stderr);
    va_end(ap);
    return 2;
}

/* Prints the daemon's error reply. Returns 1. */
static int report(const char *what, const struct larder__http_response *resp)
{
    json_t *o = json_loads(resp->body, 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(o, "error"), "message"));
    fprintf(stderr, "larder: %s: HTTP %d: %s\n", what, resp->status, msg ? msg : resp->body);
    json_decref(o);
    return 1;
}

/* One request to the daemon. Returns 0 with *resp filled in (any HTTP status), or a
 * negative errno after saying which URL could not be reached. */
static int call(struct cli *c, const char *method, const char *path,
                struct larder__http_response *resp)
{
    char auth[600];
    const char *headers[2] = {NULL, NULL};
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        headers[0] = auth;
    }
    int fd = larder__http_connect(&c->u, CONNECT_TIMEOUT_MS);
    if (fd < 0) {
        fprintf(stderr, "larder: cannot reach larderd at %s: %s\n", c->url, strerror(-fd));
        return fd;
    }
    int r = larder__http_send(fd, &c->u, method, path, headers, NULL, NULL, 0);
    if (r == 0)
        r = larder__http_read(fd, TIMEOUT_MS, resp);
    close(fd);
    if (r < 0)
        fprintf(stderr, "larder: no answer from larderd at %s: %s\n", c->url, strerror(-r));
    return r;
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

static void print_model(json_t *m, const char *node)
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
    if (node)
        printf("%-16s ", node);
    printf("%-24s %-10s %-14s %-12s %s\n", json_string_value(json_object_get(m, "name")),
           json_string_value(json_object_get(m, "state")), inst, mem, exp);
}

/* GET /v1/models of the daemon at c->u: its reply parsed, or NULL after a message. The
 * node's name (X-Larder-Node, else its URL) goes to node. */
static json_t *fetch_models(struct cli *c, char *node, size_t node_len)
{
    struct larder__http_response resp = {0};
    if (call(c, "GET", "/v1/models", &resp) < 0)
        return NULL;
    if (resp.status != 200) {
        report("ps", &resp);
        larder__http_response_clear(&resp);
        return NULL;
    }
    if (!larder__http_header(&resp, "X-Larder-Node", node, node_len))
        snprintf(node, node_len, "%s", c->url);
    json_t *o = json_loads(resp.body, 0, NULL);
    larder__http_response_clear(&resp);
    if (!json_is_array(json_object_get(o, "models"))) {
        fprintf(stderr, "larder: ps: %s answered with no model list\n", c->url);
        json_decref(o);
        return NULL;
    }
    return o;
}

static void print_models(struct cli *c, json_t *o, const char *node)
{
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(o, "models"), i, m) {
        const char *state = json_string_value(json_object_get(m, "state"));
        if (c->all || (state && strcmp(state, "unloaded") != 0))
            print_model(m, node);
    }
}

static void format_url(struct cli *c);

/* ps over several nodes: one table with a NODE column. A node that cannot be reached or
 * answers with an error is said so on stderr and gets a row of its own; the exit status
 * is 1 only when no node answered. */
static int ps_fleet(struct cli *c)
{
    json_t *replies[MAX_URLS] = {NULL};
    char nodes[MAX_URLS][300];
    unsigned answered = 0;
    for (unsigned k = 0; k < c->n_urls; k++) {
        struct cli one = *c;
        if (larder__url_parse(c->urls[k], &one.u) < 0) {
            fprintf(stderr, "larder: bad URL '%s' (--url; expected http://HOST:PORT)\n",
                    c->urls[k]);
            snprintf(nodes[k], sizeof nodes[k], "%s", c->urls[k]);
            continue;
        }
        format_url(&one);
        replies[k] = fetch_models(&one, nodes[k], sizeof nodes[k]);
        if (!replies[k])
            snprintf(nodes[k], sizeof nodes[k], "%s", one.url);
        answered += replies[k] != NULL;
    }
    printf("%-16s %-24s %-10s %-14s %-12s %s\n", "NODE", "NAME", "STATE", "INSTANCES", "MEMORY",
           "EXPIRES");
    for (unsigned k = 0; k < c->n_urls; k++) {
        if (replies[k])
            print_models(c, replies[k], nodes[k]);
        else
            printf("%-16s %-24s %s\n", nodes[k], "-", "unreachable");
        json_decref(replies[k]);
    }
    return answered ? 0 : 1;
}

static int cmd_ps(struct cli *c, char **args)
{
    char node[300];
    if (c->n_urls > 1)
        return ps_fleet(c);
    json_t *o = fetch_models(c, node, sizeof node);
    if (!o)
        return 1;
    printf("%-24s %-10s %-14s %-12s %s\n", "NAME", "STATE", "INSTANCES", "MEMORY", "EXPIRES");
    print_models(c, o, NULL);
    json_decref(o);
    return 0;
}

/* ---- cluster -------------------------------------------------------------------------------- */

static int cmd_cluster(struct cli *c, char **args)
{
    struct larder__cluster *cl = calloc(1, sizeof *cl);
    char err[512];
    int r = 0;
    if (!cl)
        return 1;
    if (strcmp(args[0], "haproxy") != 0) {
        free(cl);
        return bad_usage("cluster: unknown subcommand '%s' (cluster haproxy NODE...)", args[0]);
    }
    if (!args[1]) {
        free(cl);
        return bad_usage("cluster haproxy needs at least one node ([NAME=]HOST:PORT)");
    }
    cl->bind = c->bind;
    for (char **a = args + 1; *a && r == 0; a++)
        if (larder__cluster_add_node(cl, *a, err, sizeof err) < 0)
            r = bad_usage("cluster haproxy: %s", err);
    if (r == 0 && (larder__cluster_haproxy(cl, stdout) < 0 || fflush(stdout) != 0)) {
        fprintf(stderr, "larder: cluster haproxy: cannot write the configuration\n");
        r = 1;
    }
    free(cl);
    return r;
}

/* ---- load / unload ------------------------------------------------------------------------ */

/* Appends s to buf percent-encoded as one path segment. */
static void append_segment(char *buf, size_t len, const char *s)
{
    size_t n = strlen(buf);
    for (; *s && n + 4 < len; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            strchr("-._~", ch))
            buf[n++] = (char)ch;
        else
            n += (size_t)snprintf(buf + n, len - n, "%%%02X", ch);
    }
    buf[n] = 0;
}

static int cmd_admin(struct cli *c, const char *verb, const char *name)
{
    char path[1024] = "/v1/models/";
    struct larder__http_response resp = {0};
    if (!c->token) {
        fprintf(stderr, "larder: %s needs an admin token (--token or $LARDER_TOKEN)\n", verb);
        return 1;
    }
    append_segment(path, sizeof path - 16, name);
    snprintf(path + strlen(path), sizeof path - strlen(path), "/%s", verb);
    if (call(c, "POST", path, &resp) < 0)
        return 1;
    if (resp.status / 100 != 2) {
        char what[300];
        snprintf(what, sizeof what, "%s %s", verb, name);
        report(what, &resp);
        larder__http_response_clear(&resp);
        return 1;
    }
    json_t *o = json_loads(resp.body, 0, NULL);
    const char *state = json_string_value(json_object_get(o, "state"));
    json_t *ms = json_object_get(o, "load_ms");
    if (ms)
        printf("%s: %s (%s, %.0f ms)\n", name, state ? state : "?",
               json_is_true(json_object_get(o, "cold_start")) ? "loaded now" : "already loaded",
               json_number_value(ms));
    else
        printf("%s: %s\n", name, state ? state : "?");
    json_decref(o);
    larder__http_response_clear(&resp);
    return 0;
}

static int cmd_load(struct cli *c, char **args)
{
    return cmd_admin(c, "load", args[0]);
}

static int cmd_unload(struct cli *c, char **args)
{
    return cmd_admin(c, "unload", args[0]);
}

/* ---- check ---------------------------------------------------------------------------------- */

/* check's findings go to stdout through this, which notes whether an error was among
 * them: a file check could not read is reported by check itself, and only once. */
static ssize_t tee_write(void *cookie, const char *buf, size_t size)
{
    if (memmem(buf, size, "error: ", 7))
        *(bool *)cookie = true;
    return (ssize_t)fwrite(buf, 1, size, stdout);
}

static int cmd_check(struct cli *c, char **args)
{
    const char *file = args[0] ? args[0] : c->config;
    bool reported = false;
    FILE *out = fopencookie(&reported, "w", (cookie_io_functions_t){.write = tee_write});
    if (out)
        setvbuf(out, NULL, _IOLBF, 0);
    int errors = larder__check_config(file, out ? out : stdout);
    if (out)
        fclose(out);
    if (errors < 0 && !reported)
        fprintf(stderr, "larder: check %s: %s\n", file, strerror(-errors));
    return errors == 0 ? 0 : 1;
}

/* ---- finding the daemon --------------------------------------------------------------------- */

/* The URL that messages name: http://HOST:PORT, IPv6 hosts in brackets. */
static void format_url(struct cli *c)
{
    bool v6 = strchr(c->u.host, ':') != NULL;
    snprintf(c->url, sizeof c->url, "http://%s%s%s:%s", v6 ? "[" : "", c->u.host,
             v6 ? "]" : "", c->u.port);
}

/* The address to connect to for a daemon that listens on host: loopback for a wildcard. */
static const char *connect_host(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1 && a4.s_addr == htonl(INADDR_ANY))
        return "127.0.0.1";
    if (inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_UNSPECIFIED(&a6))
        return "::1";
    return host;
}

/* The daemon of config file `file`. Returns 0 or an exit status. */
static int url_from_config(struct cli *c, const char *file)
{
    char err[1024];
    struct larder__config *conf = NULL;
    if (larder__config_load(file, &conf, err, sizeof err) < 0) {
        fprintf(stderr, "larder: %s\n", err);
        return 1;
    }
    const char *host = connect_host(conf->listen_host);
    int r = 0;
    if (conf->listen_port == 0) {
        fprintf(stderr, "larder: %s listens on any free port (:0); give --url\n", file);
        r = 1;
    } else if (strlen(host) >= sizeof c->u.host) {
        fprintf(stderr, "larder: %s: listen host too long\n", file);
        r = 1;
    } else {
        strcpy(c->u.host, host);
        snprintf(c->u.port, sizeof c->u.port, "%u", conf->listen_port);
    }
    larder__config_free(conf);
    return r;
}

/* Fills in c->u and c->url: --url, else --config, else $LARDER_URL, else the default.
 * Returns 0 or an exit status. */
static int find_daemon(struct cli *c)
{
    const char *url = c->url_opt, *from = "--url";
    if (!url && c->config) {
        int r = url_from_config(c, c->config);
        if (r == 0)
            format_url(c);
        return r;
    }
    if (!url) {
        url = getenv("LARDER_URL");
        from = "$LARDER_URL";
    }
    if (!url || !*url) {
        url = DEFAULT_URL;
        from = "the default";
    }
    if (larder__url_parse(url, &c->u) < 0) {
        fprintf(stderr, "larder: bad URL '%s' (%s; expected http://HOST:PORT)\n", url, from);
        return 2;
    }
    format_url(c);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

struct command {
    const char *name;
    const char *operand; /* what follows the command, exactly one; NULL: nothing */
    bool more;           /* operand is the first of one or more */
    unsigned opts;       /* OPT_* it takes */
    bool daemon;         /* talks to a daemon; else --config FILE may be the operand */
    int (*run)(struct cli *c, char **args);
};

static const struct command commands[] = {
    {"ps", NULL, false, OPT_URL | OPT_CONFIG | OPT_ALL | OPT_TOKEN, true, cmd_ps},
    {"load", "model NAME", false, OPT_URL | OPT_CONFIG | OPT_TOKEN, true, cmd_load},
    {"unload", "model NAME", false, OPT_URL | OPT_CONFIG | OPT_TOKEN, true, cmd_unload},
    {"check", "CONFIG file", false, OPT_CONFIG, false, cmd_check},
    {"cluster", "subcommand (haproxy)", true, OPT_BIND, false, cmd_cluster},
};

static const char *opt_name(unsigned bit)
{
    return bit == OPT_URL     ? "--url"
           : bit == OPT_TOKEN ? "--token"
           : bit == OPT_ALL   ? "--all"
           : bit == OPT_BIND  ? "--bind"
                              : "--config";
}

enum parsed { PARSED, SHOW_HELP, SHOW_VERSION };

/* The option getopt stopped at, as given: a long one whole, a short one alone ("-x" of
 * "-ax"). */
static const char *spelling(const char *arg)
{
    static char one[3] = "-?";
    if (strncmp(arg, "--", 2) == 0)
        return arg;
    one[1] = (char)optopt;
    return one;
}

/* Parses options anywhere on the line; the other arguments are moved to argv[*first..].
 * Returns a `enum parsed` or, after a message, -2. */
static int parse_options(int argc, char **argv, struct cli *c, int *first)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, 'u'},    {"token", required_argument, NULL, 't'},
        {"config", required_argument, NULL, 'c'}, {"all", no_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},         {"version", no_argument, NULL, 'V'},
        {"bind", required_argument, NULL, 'b'},   {NULL, 0, NULL, 0},
    };
    int ch, r = PARSED;
    opterr = 0;
    optind = 1;
    while ((ch = getopt_long(argc, argv, ":u:t:c:b:ahV", opts, NULL)) != -1) {
        switch (ch) {
        case 'u':
            if (c->n_urls == MAX_URLS)
                return -bad_usage("at most %d --url", MAX_URLS);
            if (!c->url_opt)
                c->url_opt = optarg;
            c->urls[c->n_urls++] = optarg;
            c->given |= OPT_URL;
            break;
        case 'b': c->bind = optarg; c->given |= OPT_BIND; break;
        case 't': c->token = optarg; c->given |= OPT_TOKEN; break;
        case 'c': c->config = optarg; c->given |= OPT_CONFIG; break;
        case 'a': c->all = true; c->given |= OPT_ALL; break;
        case 'h': r = SHOW_HELP; break;
        case 'V': if (r == PARSED) r = SHOW_VERSION; break;
        case ':': return -bad_usage("option '%s' needs a value", spelling(argv[optind - 1]));
        default: return -bad_usage("unknown option '%s'", spelling(argv[optind - 1]));
        }
    }
    *first = optind;
    return r;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return larder__daemon_main("larder serve", argc - 1, argv + 1);
    struct cli c = {0};
    int first = argc, p = parse_options(argc, argv, &c, &first);
    if (p < 0)
        return -p;
    if (p == SHOW_HELP || (first < argc && strcmp(argv[first], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (p == SHOW_VERSION) {
        printf("larder %s\n", LARDER_VERSION);
        return 0;
    }
    if (first == argc) {
        usage(stderr);
        return 2;
    }
    const char *name = argv[first];
    char **args = argv + first + 1;
    int nargs = argc - first - 1;
    if (strcmp(name, "serve") == 0)
        return bad_usage("'serve' comes first, its options after it");
    const struct command *cmd = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(name, commands[i].name) == 0)
            cmd = &commands[i];
    if (!cmd)
        return bad_usage("unknown command '%s'", name);
    for (unsigned bit = 1; bit <= OPT_BIND; bit <<= 1)
        if ((c.given & bit) && !(cmd->opts & bit))
            return bad_usage("%s does not take %s", name, opt_name(bit));
    if (!cmd->operand && nargs > 0)
        return bad_usage("%s: unexpected argument '%s'", name, args[0]);
    if (cmd->more && nargs < 1)
        return bad_usage("%s needs a %s", name, cmd->operand);
    if (cmd->operand && !cmd->more && nargs + (!cmd->daemon && c.config) != 1)
        return bad_usage("%s needs one %s", name, cmd->operand);
    if (c.n_urls > 1 && cmd->run != cmd_ps)
        return bad_usage("%s takes one --url", name);
    if (c.n_urls > 1 && c.config)
        return bad_usage("ps takes several --url or one --config, not both");
    if (!c.token) {
        const char *env = getenv("LARDER_TOKEN");
        c.token = env && *env ? env : NULL;
    }
    if (cmd->daemon) {
        int r = find_daemon(&c);
        if (r)
            return r;
    }
    return cmd->run(&c, args);
}
