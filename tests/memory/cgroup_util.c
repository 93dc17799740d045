/* Memory cgroups for tests (see cgroup_util.h). */
#include "cgroup_util.h"

#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int cgroup_util_put(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = write(fd, text, strlen(text)) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int cgroup_util_make(const char *prefix, unsigned long long limit, char *dir, size_t len,
                     char *why, size_t whylen)
{
    char own[PATH_MAX - 64], text[32];
    int version = 0, r = larder__cgroup_find(NULL, own, sizeof own, &version);
    if (r < 0) {
        snprintf(why, whylen, "no memory cgroup here: %s", strerror(-r));
        return -1;
    }
    snprintf(dir, len, "%s/%s-%d", own, prefix, (int)getpid());
    if (mkdir(dir, 0755) < 0) {
        snprintf(why, whylen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(text, sizeof text, "%llu", limit);
    if (version == 2) {
        /* fails where the controller is on already, or where it may not be enabled */
        cgroup_util_put(own, "cgroup.subtree_control", "+memory");
        r = cgroup_util_put(dir, "memory.max", text);
        cgroup_util_put(dir, "memory.swap.max", "0");
    } else {
        r = cgroup_util_put(dir, "memory.limit_in_bytes", text);
        cgroup_util_put(dir, "memory.memsw.limit_in_bytes", text);
    }
    if (r < 0) {
        snprintf(why, whylen, "cannot set a memory limit in %s: %s", dir, strerror(-r));
        rmdir(dir);
        return -1;
    }
    return 0;
}

int cgroup_util_remove(const char *dir)
{
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 6000; i++) {
        if (rmdir(dir) == 0)
            return 0;
        if (errno != EBUSY)
            return -errno;
        nanosleep(&pause, NULL);
    }
    return -EBUSY;
}
