/* The HAProxy configuration of a larder cluster: N larderd nodes behind one HAProxy that
 * sends every request for one model to the same node (consistent hashing on the model
 * name), for `larder cluster haproxy` and the cluster benchmark. docs/scale-out.md
 * explains the configuration line by line.
 *
 * Threads: no state; any thread.
 */
#ifndef LARDER_CLI_CLUSTER_H
#define LARDER_CLI_CLUSTER_H

#include <stdbool.h>
#include <stdio.h>

#define LARDER__CLUSTER_MAX_NODES 64

struct larder__cluster_node {
    char name[65]; /* HAProxy's server name; by default node1, node2, ... */
    char addr[300]; /* HOST:PORT ([V6]:PORT) as HAProxy takes it */
};

struct larder__cluster {
    struct larder__cluster_node nodes[LARDER__CLUSTER_MAX_NODES];
    unsigned n;
    const char *bind;       /* the frontend's address; NULL = "*:8377" */
    bool round_robin;       /* the baseline a benchmark compares with: no model affinity */
    unsigned check_ms;      /* health-check interval; 0 = 1000 */
    unsigned balance_factor; /* hash-balance-factor; 0 = 90 x nodes, at least 150 */
};

/* Parses "[NAME=]HOST:PORT" and appends that node to c. Errors: -EINVAL
 * with a message in err (a bad name, no port, a port out of range, a name given twice,
 * too many nodes). */
int larder__cluster_add_node(struct larder__cluster *c, const char *spec, char *err,
                             size_t errlen);

/* Writes the configuration for c's nodes to f. Returns 0 or a negative errno (a write
 * error, or no node). */
int larder__cluster_haproxy(const struct larder__cluster *c, FILE *f);

#endif
