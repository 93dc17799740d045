/* Memory cgroups for tests that run a process under a real memory limit: made as a child
 * of this process's own memory cgroup (cgroup v2 with the memory controller delegated,
 * or v1's memory controller), without swap where the kernel allows it, and removed
 * again once their processes are gone. */
#ifndef LARDER_TESTS_CGROUP_UTIL_H
#define LARDER_TESTS_CGROUP_UTIL_H

#include <stddef.h>

/* Writes text into file `name` of directory dir. Returns 0 or -errno. */
int cgroup_util_put(const char *dir, const char *name, const char *text);

/* Makes <this process's memory cgroup>/<prefix>-PID limited to `limit` bytes and puts
 * its path in dir (len bytes). Returns 0, or -1 with the reason in why (whylen bytes);
 * nothing is left behind then. */
int cgroup_util_make(const char *prefix, unsigned long long limit, char *dir, size_t len,
                     char *why, size_t whylen);

/* Removes cgroup dir, waiting (at most 60 s) while processes that just exited still hold
 * it. Returns 0 or -errno. */
int cgroup_util_remove(const char *dir);

#endif
