/* larderd bearer tokens (see auth.h). */
#include "auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "log.h"

#define MAX_TOKEN 512

struct larder__tokens {
    size_t n;
    char **tok;
    size_t *len;
};

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = 0;
    return s;
}

static int add_token(struct larder__tokens *t, const char *s)
{
    char **tok = realloc(t->tok, (t->n + 1) * sizeof *tok);
    if (!tok)
        return -ENOMEM;
    t->tok = tok;
    size_t *len = realloc(t->len, (t->n + 1) * sizeof *len);
    if (!len)
        return -ENOMEM;
    t->len = len;
    if (!(tok[t->n] = strdup(s)))
        return -ENOMEM;
    len[t->n++] = strlen(s);
    return 0;
}

static int read_tokens(FILE *f, struct larder__tokens *t, const char *path, char *err,
                       size_t errlen)
{
    char line[MAX_TOKEN + 8];
    unsigned lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        bool cut = !strchr(line, '\n') && !feof(f);
        char *s = trim(line);
        if (*s == '#' || (!*s && !cut)) {
            int ch;
            while (cut && (ch = getc(f)) != EOF && ch != '\n')
                ; /* the rest of a long comment */
            continue;
        }
        if (cut || strlen(s) > MAX_TOKEN) {
            snprintf(err, errlen, "%s:%u: token longer than %d bytes", path, lineno, MAX_TOKEN);
            return -EINVAL;
        }
        for (char *c = s; *c; c++) {
            if (isspace((unsigned char)*c) || !isprint((unsigned char)*c)) {
                snprintf(err, errlen, "%s:%u: a token has no spaces or control characters",
                         path, lineno);
                return -EINVAL;
            }
        }
        if (add_token(t, s) < 0) {
            snprintf(err, errlen, "%s: out of memory", path);
            return -ENOMEM;
        }
    }
    return 0;
}

/* Says so when a token file is open to more than its owner. */
static void warn_mode(const char *path, mode_t mode)
{
    char octal[8];
    if (!(mode & (S_IRGRP | S_IROTH)))
        return;
    snprintf(octal, sizeof octal, "%04o", (unsigned)(mode & 07777));
    larder__log(LARDER__LOG_WARN, "token file readable by others",
                json_pack("{s:s,s:s,s:s,s:s}", "file", path, "mode", octal, "readable_by",
                          mode & S_IROTH ? "others" : "group", "fix", "chmod 600"));
}

static int load(const char *path, bool warn, struct larder__tokens **ret_tokens, char *err,
                size_t errlen)
{
    struct stat st = {0};
    FILE *f = fopen(path, "r");
    if (!f) {
        int r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return r;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        snprintf(err, errlen, "%s: is a directory, not a token file", path);
        return -EISDIR;
    }
    struct larder__tokens *t = calloc(1, sizeof *t);
    int r = t ? read_tokens(f, t, path, err, errlen) : -ENOMEM;
    if (r == 0 && ferror(f)) {
        snprintf(err, errlen, "%s: read error", path);
        r = -EIO;
    }
    fclose(f);
    if (r == 0 && t->n == 0) {
        snprintf(err, errlen, "%s: no token in the file", path);
        r = -ENOENT;
    }
    if (r < 0) {
        larder__tokens_free(t);
        return r;
    }
    if (warn)
        warn_mode(path, st.st_mode);
    if (ret_tokens)
        *ret_tokens = t;
    else
        larder__tokens_free(t);
    return 0;
}

int larder__tokens_load(const char *path, struct larder__tokens **ret_tokens, char *err,
                        size_t errlen)
{
    return load(path, true, ret_tokens, err, errlen);
}

int larder__tokens_check_file(const char *path, char *err, size_t errlen)
{
    return load(path, false, NULL, err, errlen);
}

struct larder__tokens *larder__tokens_free(struct larder__tokens *t)
{
    if (!t)
        return NULL;
    for (size_t i = 0; i < t->n; i++) {
        /* Do not leave secrets in freed memory. */
        volatile char *p = t->tok[i];
        for (size_t j = 0; j < t->len[i]; j++)
            p[j] = 0;
        free(t->tok[i]);
    }
    free(t->tok);
    free(t->len);
    free(t);
    return NULL;
}

size_t larder__tokens_count(const struct larder__tokens *t)
{
    return t ? t->n : 0;
}

bool larder__consttime_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Walk alen bytes whatever b is; reads of b wrap around so they stay in bounds. */
    unsigned diff = (unsigned)(alen ^ blen);
    for (size_t i = 0; i < alen; i++) {
        unsigned char cb = blen ? (unsigned char)b[i % blen] : 0;
        diff |= (unsigned)((unsigned char)a[i] ^ cb);
    }
    return diff == 0 && alen == blen;
}

bool larder__tokens_check(const struct larder__tokens *t, const char *authorization)
{
    static const char scheme[] = "Bearer ";
    if (!t || !authorization || strncasecmp(authorization, scheme, sizeof scheme - 1) != 0)
        return false;
    const char *tok = authorization + sizeof scheme - 1;
    while (*tok == ' ')
        tok++;
    size_t len = strnlen(tok, MAX_TOKEN + 1);
    bool ok = false;
    for (size_t i = 0; i < t->n; i++)
        ok |= larder__consttime_equal(tok, len, t->tok[i], t->len[i]);
    return ok && len > 0;
}
