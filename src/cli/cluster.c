/* The HAProxy configuration of a larder cluster (see cluster.h and docs/scale-out.md). */
#include "cluster.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

/* The routes whose model is the "model" field of a JSON body (OpenAI and Ollama). */
static const char body_routes[] = "/v1/chat/completions /v1/completions /v1/embeddings "
                                  "/api/chat /api/generate /api/embed";

static bool parse_port(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return *s && !*end && !errno && v >= 1 && v <= 65535;
}

/* HOST:PORT or [V6]:PORT with a port of 1..65535. */
static bool addr_ok(const char *a)
{
    const char *colon = a[0] == '[' ? strstr(a, "]:") : strrchr(a, ':');
    if (!colon || colon == a)
        return false;
    if (a[0] == '[')
        colon++;
    else if (memchr(a, ':', (size_t)(colon - a)))
        return false; /* a bare IPv6 address: its port is ambiguous */
    for (const char *p = a; p < colon; p++)
        if (*p <= ' ' || *p == '#' || *p == '\\' || *p == '"' || *p == '\'')
            return false;
    return parse_port(colon + 1);
}

int larder__cluster_add_node(struct larder__cluster *c, const char *spec, char *err,
                             size_t errlen)
{
    if (c->n == LARDER__CLUSTER_MAX_NODES) {
        snprintf(err, errlen, "at most %d nodes", LARDER__CLUSTER_MAX_NODES);
        return -EINVAL;
    }
    struct larder__cluster_node *n = &c->nodes[c->n];
    const char *eq = strchr(spec, '=');
    const char *addr = eq ? eq + 1 : spec;
    if (eq && ((size_t)(eq - spec) >= sizeof n->name)) {
        snprintf(err, errlen, "node '%s': name longer than %d characters", spec,
                 LARDER__NODE_NAME_MAX);
        return -EINVAL;
    }
    if (eq)
        snprintf(n->name, sizeof n->name, "%.*s", (int)(eq - spec), spec);
    else
        snprintf(n->name, sizeof n->name, "node%u", c->n + 1);
    if (!larder__node_name_valid(n->name)) {
        snprintf(err, errlen, "node '%s': a name is 1 to %d letters, digits, '.', '_', ':' "
                 "or '-'", spec, LARDER__NODE_NAME_MAX);
        return -EINVAL;
    }
    if (strlen(addr) >= sizeof n->addr || !addr_ok(addr)) {
        snprintf(err, errlen, "node '%s': expected [NAME=]HOST:PORT (IPv6 as [ADDR]:PORT)",
                 spec);
        return -EINVAL;
    }
    for (unsigned i = 0; i < c->n; i++)
        if (strcmp(c->nodes[i].name, n->name) == 0) {
            snprintf(err, errlen, "node name '%s' given twice", n->name);
            return -EINVAL;
        }
    strcpy(n->addr, addr);
    c->n++;
    return 0;
}

/* A server's id places it on HAProxy's hash ring. Derived from its name (FNV-1a), not
 * from its position in the list, so that a node joining or leaving moves no other node's
 * models. Collisions take the next free id. */
static void server_ids(const struct larder__cluster *c, unsigned *ids)
{
    for (unsigned i = 0; i < c->n; i++) {
        uint32_t h = 2166136261u;
        for (const unsigned char *p = (const unsigned char *)c->nodes[i].name; *p; p++)
            h = (h ^ *p) * 16777619u;
        unsigned id = 1 + h % 999999u;
        for (bool clash = true; clash;) {
            clash = false;
            for (unsigned k = 0; k < i; k++)
                if (ids[k] == id) {
                    clash = true;
                    id = id % 999999u + 1;
                }
        }
        ids[i] = id;
    }
}

static void write_front(const struct larder__cluster *c, FILE *f)
{
    fprintf(f,
            "global\n"
            "    maxconn 4096\n"
            "    tune.bufsize 65536\n"
            "    log stdout format raw local0 info\n"
            "\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    option httplog\n"
            "    timeout connect 2s\n"
            "    timeout client 10m\n"
            "    timeout server 10m\n"
            "    timeout http-request 30s\n"
            "    timeout queue 60s\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            "    retry-on conn-failure empty-response junk-response response-timeout\n"
            "\n"
            "frontend larder\n"
            "    bind %s\n"
            "    option http-buffer-request\n"
            "    http-request del-header X-Larder-Model\n"
            "    http-request set-header X-Larder-Model %%[path,field(4,/)] if "
            "{ path_beg /v1/models/ }\n"
            "    http-request set-header X-Larder-Model %%[req.body,json_query('$.model')] if "
            "METH_POST { path %s }\n"
            "    http-request set-var(txn.node) path,field(3,/) if { path_beg /node/ }\n"
            "    http-request replace-path /node/[^/]*(.*) \\1 if { path_beg /node/ }\n"
            "    default_backend larder_nodes\n"
            "\n",
            c->bind ? c->bind : "*:8377", body_routes);
}

/* HAProxy lets a node carry at most factor/100 times the mean load of the nodes before
 * it sends a model's request to the next node on the ring. The mean counts idle nodes
 * too, so with N nodes a factor under 100 x N spills a node's second request at once
 * (a reply still closing counts). 90 x N spills a node only once it carries about ten
 * requests in flight while the others are idle: a hot model gets a second node, a warm
 * one keeps its own. */
static unsigned default_factor(unsigned n)
{
    return n * 90 < 150 ? 150 : n * 90;
}

int larder__cluster_haproxy(const struct larder__cluster *c, FILE *f)
{
    unsigned ids[LARDER__CLUSTER_MAX_NODES];
    if (!c->n)
        return -EINVAL;
    server_ids(c, ids);
    fprintf(f, "# HAProxy configuration for %u larderd node%s (larder cluster haproxy).\n"
               "# docs/scale-out.md explains each line.\n",
            c->n, c->n == 1 ? "" : "s");
    write_front(c, f);
    fprintf(f, "backend larder_nodes\n");
    if (c->round_robin)
        fprintf(f, "    balance roundrobin\n");
    else
        fprintf(f, "    balance hdr(X-Larder-Model)\n"
                   "    hash-type consistent\n"
                   "    hash-balance-factor %u\n",
                c->balance_factor ? c->balance_factor : default_factor(c->n));
    fprintf(f, "    option httpchk GET /ready\n"
               "    http-check expect status 200\n"
               "    default-server check inter %ums fall 2 rise 2 maxconn 200 weight 100\n",
            c->check_ms ? c->check_ms : 1000);
    for (unsigned i = 0; i < c->n; i++)
        fprintf(f, "    use-server %s if { var(txn.node) -m str %s }\n", c->nodes[i].name,
                c->nodes[i].name);
    for (unsigned i = 0; i < c->n; i++)
        fprintf(f, "    server %s %s id %u\n", c->nodes[i].name, c->nodes[i].addr, ids[i]);
    return ferror(f) ? -EIO : 0;
}
