/* A tiny HTTP/1.1 client on plain sockets, for the `larder` command, the integration
 * tests and the benchmarks. One request per connection (Connection: close); bodies in
 * Content-Length or chunked form; no TLS, no redirects.
 *
 * Threads: every function may be called from any thread; a response belongs to the
 * caller.
 */
#ifndef LARDER_CLI_CLIENT_H
#define LARDER_CLI_CLIENT_H

#include <stddef.h>

struct larder__url {
    char host[256];
    char port[8];
};

struct larder__http_response {
    int status;
    char *headers;    /* the raw header block, lines separated by "\r\n" */
    char *body;       /* NUL-terminated (the NUL is not counted in body_len) */
    size_t body_len;
};

/* Parses "http://HOST:PORT[/]" or "HOST:PORT". Errors: -EINVAL. */
int larder__url_parse(const char *url, struct larder__url *ret_url);

/* Opens a TCP connection to url within timeout_ms. Returns the socket or a negative
 * errno (-ETIMEDOUT, -ECONNREFUSED, ...). */
int larder__http_connect(const struct larder__url *url, int timeout_ms);

/* Sends one request on fd. headers: NULL or a NULL-terminated list of "Name: value".
 * content_type may be NULL. Errors: negative errno. */
int larder__http_send(int fd, const struct larder__url *url, const char *method,
                      const char *path, const char *const *headers, const char *content_type,
                      const void *body, size_t body_len);

/* Reads a whole response from fd (until the body ends or the peer closes), waiting at
 * most timeout_ms for each piece. Errors: negative errno (-ETIMEDOUT, -EPROTO). */
int larder__http_read(int fd, int timeout_ms, struct larder__http_response *ret);

/* Connect, send, read, close. Errors: negative errno. */
int larder__http_request(const struct larder__url *url, const char *method, const char *path,
                         const char *const *headers, const char *content_type,
                         const void *body, size_t body_len, int timeout_ms,
                         struct larder__http_response *ret);

/* The value of header `name` (case-insensitive) copied into buf, or NULL. */
const char *larder__http_header(const struct larder__http_response *resp, const char *name,
                                char *buf, size_t len);

/* Frees what a response holds and zeroes it. */
void larder__http_response_clear(struct larder__http_response *resp);

/* Reads from fd into buf (len bytes, kept NUL-terminated) until `needle` appears in
 * what was read or timeout_ms passes. Returns bytes read so far (>= 0) when found,
 * -ETIMEDOUT, or another negative errno. For event streams. */
int larder__http_read_until(int fd, char *buf, size_t len, size_t *used, const char *needle,
                            int timeout_ms);

#endif
