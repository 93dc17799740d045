/* Helpers shared by the backend plugins; see plugin-util.h. */
#include "plugin-util.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void larder_pu_say(const struct larder_host *host, const char *backend,
                   enum larder_log_level level, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (!host || !host->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    host->log(level, backend, line);
}

int larder_pu_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

const char *larder_pu_opt_get(const struct larder_option *opts, size_t n, const char *key)
{
    const char *found = NULL;

    for (size_t i = 0; i < n; i++)
        if (opts[i].key && strcmp(opts[i].key, key) == 0)
            found = opts[i].value; /* the last one wins, as in an INI file */
    return found;
}

int larder_pu_check_keys(const struct larder_option *opts, size_t n, const char *const *keys,
                         char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        bool known = false;

        if (!opts[i].key || !opts[i].value)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION,
                                  "option %zu has no key or value", i);
        for (size_t k = 0; keys[k]; k++)
            known = known || strcmp(opts[i].key, keys[k]) == 0;
        if (!known)
            return larder_pu_fail(err, errlen, LARDER_BACKEND_EOPTION, "unknown option '%s'",
                                  opts[i].key);
    }
    return 0;
}

bool larder_pu_parse_ull(const char *s, unsigned long long lo, unsigned long long hi,
                         unsigned long long *ret)
{
    char *end;
    unsigned long long v;

    if (!s || !isdigit((unsigned char)s[0]))
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *ret = v;
    return true;
}

bool larder_pu_media_is(const char *ct, const char *type)
{
    size_t len = strlen(type);

    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, type, len) != 0)
        return false;
    ct += len;
    while (*ct == ' ')
        ct++;
    return *ct == '\0' || *ct == ';';
}

void larder_pu_result_free(struct larder_infer_result *res)
{
    if (!res)
        return;
    free(res->json);
    free(res->bytes);
    free(res->content_type);
    memset(res, 0, sizeof(*res));
}

const struct larder_backend_ops *larder_pu_entry(const struct larder_host *host,
                                                 const struct larder_host **slot,
                                                 const struct larder_backend_ops *ops)
{
    if (host && host->abi_major != LARDER_BACKEND_ABI_MAJOR)
        return NULL;
    *slot = host;
    return ops;
}

bool larder_pu_cancelled(const struct larder_host *host, const struct larder_infer_request *req)
{
    return host && req && host->abi_minor >= 1 && host->cancelled &&
           host->cancelled(req->host_ctx) != 0;
}

int larder_pu_reserve(const struct larder_host *host, const struct larder_infer_request *req,
                      unsigned long long bytes, char *err, size_t errlen)
{
    if (!host || !req || host->abi_minor < 1 || !host->reserve_request_bytes)
        return 0;
    if (host->reserve_request_bytes(req->host_ctx, bytes) >= 0)
        return 0;
    return larder_pu_fail(err, errlen, LARDER_BACKEND_ETOOBIG,
                          "the request needs %llu bytes of memory, more than the host allows",
                          bytes);
}

#define WAIT_SLICE_MS 10

int larder_pu_wait_ms(const struct larder_host *host, const struct larder_infer_request *req,
                      unsigned long long ms)
{
    struct timespec now, end;

    if (!ms)
        return 0; /* a no-op wait must cost nothing, not even a system call */
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += (time_t)(ms / 1000);
    end.tv_nsec += (long)(ms % 1000) * 1000000;
    if (end.tv_nsec >= 1000000000) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000;
    }
    for (;;) {
        if (larder_pu_cancelled(host, req))
            return LARDER_BACKEND_ECANCELED;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long left = (long long)(end.tv_sec - now.tv_sec) * 1000000000LL +
                         (end.tv_nsec - now.tv_nsec);
        if (left <= 0)
            return 0;
        if (left > WAIT_SLICE_MS * 1000000LL)
            left = WAIT_SLICE_MS * 1000000LL;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left};
        nanosleep(&ts, NULL);
    }
}

bool larder_pu_parse_bytes(const char *s, unsigned long long *ret)
{
    static const char units[] = "kmgt";
    unsigned long long v = 0, mult = 1;
    const char *u;

    if (!s || !isdigit((unsigned char)*s))
        return false;
    for (; isdigit((unsigned char)*s); s++) {
        v = v * 10 + (unsigned long long)(*s - '0');
        if (v > 1ULL << 50)
            return false;
    }
    if (*s && (u = strchr(units, tolower((unsigned char)*s)))) {
        mult <<= 10 * (u - units + 1);
        s++;
        if (strcasecmp(s, "ib") == 0 || strcasecmp(s, "b") == 0)
            s += strlen(s);
    }
    if (*s || v == 0 || v > (1ULL << 50) / mult)
        return false;
    *ret = v * mult;
    return true;
}
