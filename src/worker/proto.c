/* The worker protocol's framing (see proto.h). */
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* sendmsg with MSG_NOSIGNAL: a peer that has gone is -EPIPE, never a SIGPIPE. */
static int write_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

int larder__wp_send(int fd, uint32_t type, uint64_t id, json_t *meta, const void *data,
                    size_t data_len)
{
    char *text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    const char *m = text ? text : "{}";
    size_t mlen = strlen(m);
    if (mlen > LARDER__WP_MAX_META || data_len > LARDER__WP_MAX_PAYLOAD - 4 - mlen) {
        free(text);
        return -EMSGSIZE;
    }
    uint32_t ml = (uint32_t)mlen;
    struct larder__wp_hdr h = {.type = type, .len = (uint32_t)(4 + mlen + data_len), .id = id};
    struct iovec iov[4] = {
        {&h, sizeof h}, {&ml, sizeof ml}, {(void *)m, mlen}, {(void *)data, data_len}};
    int r = write_all(fd, iov, data_len ? 4 : 3);
    free(text);
    return r;
}

/* 1: read all, 0: end of stream before any byte, < 0: error (-EPROTO: cut short). */
static int read_all(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return got ? -EPROTO : 0;
        got += (size_t)r;
    }
    return 1;
}

int larder__wp_recv(int fd, struct larder__wp_frame *ret, char *err, size_t errlen)
{
    struct larder__wp_hdr h;
    memset(ret, 0, sizeof *ret);
    int r = read_all(fd, &h, sizeof h);
    if (r <= 0) {
        if (r == -EPROTO)
            snprintf(err, errlen, "the stream ended inside a frame header");
        return r;
    }
    if (h.len < 4 || h.len > LARDER__WP_MAX_PAYLOAD) {
        snprintf(err, errlen, "frame of type %u has a bad length %u", h.type, h.len);
        return -EPROTO;
    }
    unsigned char *buf = malloc(h.len + 1);
    if (!buf)
        return -ENOMEM;
    r = read_all(fd, buf, h.len);
    if (r <= 0) {
        free(buf);
        snprintf(err, errlen, "the stream ended inside a frame of type %u", h.type);
        return r < 0 ? r : -EPROTO;
    }
    buf[h.len] = 0;
    uint32_t ml;
    memcpy(&ml, buf, sizeof ml);
    if (ml > h.len - 4 || ml > LARDER__WP_MAX_META) {
        free(buf);
        snprintf(err, errlen, "frame of type %u: meta length %u past its payload", h.type, ml);
        return -EPROTO;
    }
    json_error_t je;
    json_t *meta = ml ? json_loadb((const char *)buf + 4, ml, 0, &je) : json_object();
    if (!json_is_object(meta)) {
        json_decref(meta);
        free(buf);
        snprintf(err, errlen, "frame of type %u: meta is not a JSON object", h.type);
        return -EPROTO;
    }
    ret->type = h.type;
    ret->id = h.id;
    ret->meta = meta;
    ret->buf = buf;
    ret->data = buf + 4 + ml;
    ret->data_len = h.len - 4 - ml;
    return 1;
}

void larder__wp_frame_clear(struct larder__wp_frame *f)
{
    json_decref(f->meta);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

json_t *larder__wp_opts_json(const struct larder_option *o, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_pack("[s,s]", o[i].key, o[i].value));
    return a;
}

void larder__wp_opts_free(struct larder_option *o, size_t n)
{
    for (size_t i = 0; o && i < n; i++) {
        free((char *)o[i].key);
        free((char *)o[i].value);
    }
    free(o);
}

int larder__wp_opts_parse(json_t *arr, struct larder_option **ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    if (!arr)
        return 0;
    if (!json_is_array(arr))
        return -EPROTO;
    size_t n = json_array_size(arr);
    struct larder_option *o = calloc(n + 1, sizeof *o);
    if (!o)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(arr, i);
        const char *k = json_string_value(json_array_get(p, 0));
        const char *v = json_string_value(json_array_get(p, 1));
        if (!json_is_array(p) || json_array_size(p) != 2 || !k || !v) {
            larder__wp_opts_free(o, i);
            return -EPROTO;
        }
        o[i].key = strdup(k);
        o[i].value = strdup(v);
        if (!o[i].key || !o[i].value) {
            larder__wp_opts_free(o, i + 1);
            return -ENOMEM;
        }
    }
    *ret = o;
    *ret_n = n;
    return 0;
}

int64_t larder__wp_int(json_t *meta, const char *key, int64_t def)
{
    json_t *v = json_object_get(meta, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : def;
}

const char *larder__wp_str(json_t *meta, const char *key)
{
    return json_string_value(json_object_get(meta, key));
}
