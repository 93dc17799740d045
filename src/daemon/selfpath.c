/* Where the running program lies (see selfpath.h). */
#include "selfpath.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The executable's resolved path, or NULL (free it). */
static char *self_exe(void)
{
    return realpath("/proc/self/exe", NULL);
}

bool larder__self_under(const char *dir)
{
    char *exe = self_exe();
    char *root = realpath(dir, NULL);
    bool under = false;
    if (exe && root) {
        size_t n = strlen(root);
        /* "/" contains everything; else root must be followed by a separator */
        under = strncmp(exe, root, n) == 0 && (n == 1 || exe[n] == '/');
    }
    free(exe);
    free(root);
    return under;
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static char found[PATH_MAX];
static pthread_once_t found_once = PTHREAD_ONCE_INIT;

/* The installed plugins relative to the program, or false. */
static bool relative_dir(char *buf, size_t len)
{
    const char *rel = LARDER_BACKEND_DIR_FROM_BINDIR;
    char *exe = *rel ? self_exe() : NULL;
    char *slash = exe ? strrchr(exe, '/') : NULL;
    bool ok = false;
    if (slash) {
        char joined[PATH_MAX];
        *slash = 0;
        int n = snprintf(joined, sizeof joined, "%s/%s", exe, rel);
        char *resolved = n > 0 && (size_t)n < sizeof joined ? realpath(joined, NULL) : NULL;
        if (resolved && strlen(resolved) < len && is_dir(resolved)) {
            strcpy(buf, resolved);
            ok = true;
        }
        free(resolved);
    }
    free(exe);
    return ok;
}

static void find_dir(void)
{
    if (larder__self_under(LARDER_BUILD_ROOT))
        snprintf(found, sizeof found, "%s", LARDER_BUILD_BACKEND_DIR);
    else if (!relative_dir(found, sizeof found))
        snprintf(found, sizeof found, "%s", LARDER_INSTALL_BACKEND_DIR);
}

const char *larder__default_backend_dir(void)
{
    pthread_once(&found_once, find_dir);
    return found;
}

static char worker[PATH_MAX];
static pthread_once_t worker_once = PTHREAD_ONCE_INIT;

static void find_worker(void)
{
    const char *env = getenv("LARDER_WORKER");
    char *exe = NULL, *slash;
    if (env && *env)
        snprintf(worker, sizeof worker, "%s", env);
    else if (larder__self_under(LARDER_BUILD_ROOT))
        snprintf(worker, sizeof worker, "%s", LARDER_BUILD_WORKER);
    else if ((exe = self_exe()) && (slash = strrchr(exe, '/'))) {
        *slash = 0;
        snprintf(worker, sizeof worker, "%s/larder-worker", exe);
    } else
        snprintf(worker, sizeof worker, "%s", LARDER_INSTALL_WORKER);
    free(exe);
}

const char *larder__worker_path(void)
{
    pthread_once(&worker_once, find_worker);
    return worker;
}
