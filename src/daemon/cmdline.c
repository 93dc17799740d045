/* larderd command lines of external models (see cmdline.h). */
#include "cmdline.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void larder__cmdline_free(char **words)
{
    for (size_t i = 0; words && words[i]; i++)
        free(words[i]);
    free(words);
}

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* One word from *ps into out (room for strlen(s) + 1); false with a message on a bad
 * quote or escape. */
static bool next_word(const char **ps, char *out, char *err, size_t errlen)
{
    const char *s = *ps;
    size_t n = 0;
    while (*s && !blank(*s)) {
        if (*s == '\'') {
            const char *end = strchr(s + 1, '\'');
            if (!end) {
                snprintf(err, errlen, "unterminated single quote");
                return false;
            }
            memcpy(out + n, s + 1, (size_t)(end - s - 1));
            n += (size_t)(end - s - 1);
            s = end + 1;
        } else if (*s == '"') {
            for (s++; *s && *s != '"'; s++) {
                if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
                    s++;
                out[n++] = *s;
            }
            if (*s != '"') {
                snprintf(err, errlen, "unterminated double quote");
                return false;
            }
            s++;
        } else if (*s == '\\') {
            if (!s[1]) {
                snprintf(err, errlen, "a backslash ends the line");
                return false;
            }
            out[n++] = s[1];
            s += 2;
        } else {
            out[n++] = *s++;
        }
    }
    out[n] = 0;
    *ps = s;
    return true;
}

int larder__cmdline_split(const char *s, char ***ret_words, size_t *ret_n, char *err,
                          size_t errlen)
{
    size_t cap = 8, n = 0, len = strlen(s);
    char **words = calloc(cap, sizeof *words);
    char *buf = malloc(len + 1);
    int r = words && buf ? 0 : -ENOMEM;
    while (r == 0) {
        while (blank(*s))
            s++;
        if (!*s)
            break;
        if (!next_word(&s, buf, err, errlen)) {
            r = -EINVAL;
            break;
        }
        if (n + 2 > cap) {
            char **more = realloc(words, (cap *= 2) * sizeof *words);
            if (!more) {
                r = -ENOMEM;
                break;
            }
            words = more;
        }
        if (!(words[n] = strdup(buf)))
            r = -ENOMEM;
        else
            words[++n] = NULL;
    }
    free(buf);
    if (r == 0 && n == 0) {
        snprintf(err, errlen, "no command: the value holds no word");
        r = -EINVAL;
    }
    if (r < 0) {
        if (r == -ENOMEM)
            snprintf(err, errlen, "out of memory");
        larder__cmdline_free(words);
        return r;
    }
    *ret_words = words;
    *ret_n = n;
    return 0;
}

static const char *const macros[] = {"${PORT}", "${MODEL}"};

int larder__cmdline_check_macros(const char *s, char *err, size_t errlen)
{
    for (const char *at = s; (at = strstr(at, "${"));) {
        bool known = false;
        for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++)
            known = known || strncmp(at, macros[i], strlen(macros[i])) == 0;
        if (!known) {
            size_t n = strcspn(at, "}");
            snprintf(err, errlen, "unknown macro '%.*s%s' (known: ${PORT}, ${MODEL})",
                     (int)(n > 40 ? 40 : n), at, at[n] == '}' && n <= 40 ? "}" : "");
            return -EINVAL;
        }
        at += 2;
    }
    return 0;
}

char *larder__cmdline_expand(const char *s, unsigned port, const char *model)
{
    char portbuf[16];
    snprintf(portbuf, sizeof portbuf, "%u", port);
    const char *values[] = {portbuf, model ? model : ""};
    size_t cap = strlen(s) + 1;
    for (const char *at = s; (at = strstr(at, "${")); at += 2)
        cap += strlen(values[1]) + sizeof portbuf;
    char *out = malloc(cap), *o = out;
    if (!out)
        return NULL;
    while (*s) {
        size_t i = 0;
        while (i < 2 && strncmp(s, macros[i], strlen(macros[i])) != 0)
            i++;
        if (i < 2) {
            o = stpcpy(o, values[i]);
            s += strlen(macros[i]);
        } else {
            *o++ = *s++;
        }
    }
    *o = 0;
    return out;
}
