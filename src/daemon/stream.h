/* larderd streamed replies: the bytes an inference produces as it goes (tokens), carried
 * from the thread that runs the backend to the client's connection through a bounded
 * queue.
 *
 * The producer pushes bytes; the connection's response (MHD_create_response_from_callback)
 * takes them as the client reads. While more than `limit` bytes wait, a push blocks: a
 * slow client slows its generation down instead of growing the queue. A push fails (and
 * the producer stops) once the client has gone, the server is stopping, or the client read
 * nothing for STREAM_STALL_S while the queue was full. The connection is suspended while
 * the queue is empty, so a stream holds no HTTP thread.
 *
 * A server that stops first lets streams run for its drain, then stops the ones still
 * running (larder__streams_stop): their producers' pushes fail, so that the inference
 * stops, while the last bytes (an error saying why) still reach the client; then it closes
 * them all (larder__streams_close).
 *
 * A stream is counted: the producer's reference and the response's. Threads: one producer
 * thread; MHD's threads for the response; larder__streams_close from any thread.
 */
#ifndef LARDER_DAEMON_STREAM_H
#define LARDER_DAEMON_STREAM_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

/* Seconds a full queue may wait for its client before the stream is given up. */
#define LARDER__STREAM_STALL_S 30
/* Bytes queued per stream before a push waits. */
#define LARDER__STREAM_QUEUE (64u << 10)

struct larder__stream;

/* A stream for the connection conn, with its response (content type as given) in
 * *ret_resp: the caller queues it as the request's reply. NULL (and no response) on ENOMEM
 * or once larder__streams_close has run. */
struct larder__stream *larder__stream_new(struct MHD_Connection *conn, const char *content_type,
                                          struct MHD_Response **ret_resp);

/* Appends n bytes. Waits while the queue is full; `alive(ud)` (may be NULL) is asked about
 * every 50 ms while it waits, and a false answer gives up. 0, or -1 when the receiver is
 * gone (or the stream was given up). Producer thread. */
int larder__stream_push(struct larder__stream *s, const char *bytes, size_t n,
                        bool (*alive)(void *ud), void *ud);

/* True once the receiver is gone. Producer thread. */
bool larder__stream_gone(struct larder__stream *s);

/* True once larder__streams_stop stopped the stream. Producer thread. */
bool larder__stream_stopping(struct larder__stream *s);

/* Appends the stream's last n bytes (when the receiver is still there), ends the stream
 * after them and drops the producer's reference. Waits for room as a push does, except
 * in a stopped stream, whose last bytes are queued at once. */
void larder__stream_end(struct larder__stream *s, const char *bytes, size_t n);

/* Stops every stream whose producer still runs (the drain of a stopping server is over):
 * pushes fail from now on, each producer's last bytes still go out, and streams made
 * from now on are refused. Returns how many were stopped. */
unsigned larder__streams_stop(void);

/* Ends every stream at once (the server stops): suspended connections are resumed and
 * their responses finish with an error; streams made from now on are refused. */
void larder__streams_close(void);
/* Streams may be made again (a server starts): undoes stop and close. */
void larder__streams_open(void);

#endif
