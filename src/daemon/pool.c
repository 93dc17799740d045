/* larderd worker threads (see pool.h). */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct job {
    larder__job_fn fn;
    void *arg;
    struct job *next;
};

/* A short mutex guards the queue; a semaphore counts the jobs (plus one post per thread
 * at shutdown). Posting a semaphore wakes one sleeper without the condition variable's
 * hand-over, which under load made submitters wait for the workers. */
struct larder__pool {
    pthread_mutex_t lock;
    sem_t ready;
    struct job *head, *tail;
    size_t pending;
    bool stopping;
    unsigned n;
    pthread_t *threads;
};

static void *worker(void *arg)
{
    struct larder__pool *p = arg;
    for (;;) {
        while (sem_wait(&p->ready) != 0)
            continue; /* EINTR */
        pthread_mutex_lock(&p->lock);
        struct job *j = p->head;
        if (j) {
            p->head = j->next;
            if (!p->head)
                p->tail = NULL;
        }
        bool stop = !j && p->stopping;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            break;
        if (!j)
            continue;
        j->fn(j->arg);
        free(j);
        pthread_mutex_lock(&p->lock);
        p->pending--;
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

int larder__pool_new(const char *name, unsigned threads, struct larder__pool **ret_pool)
{
    struct larder__pool *p = calloc(1, sizeof *p);
    if (!p || threads == 0 || !(p->threads = calloc(threads, sizeof *p->threads))) {
        free(p);
        return threads ? -ENOMEM : -EINVAL;
    }
    pthread_mutex_init(&p->lock, NULL);
    sem_init(&p->ready, 0, 0);
    for (; p->n < threads; p->n++) {
        if (pthread_create(&p->threads[p->n], NULL, worker, p) != 0) {
            larder__pool_free(p);
            return -EAGAIN;
        }
        pthread_setname_np(p->threads[p->n], name);
    }
    *ret_pool = p;
    return 0;
}

int larder__pool_submit(struct larder__pool *p, larder__job_fn fn, void *arg)
{
    struct job *j = malloc(sizeof *j);
    if (!j)
        return -ENOMEM;
    *j = (struct job){fn, arg, NULL};
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        free(j);
        return -ESHUTDOWN;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    p->pending++;
    pthread_mutex_unlock(&p->lock);
    sem_post(&p->ready);
    return 0;
}

size_t larder__pool_pending(struct larder__pool *p)
{
    pthread_mutex_lock(&p->lock);
    size_t n = p->pending;
    pthread_mutex_unlock(&p->lock);
    return n;
}

static void stop_threads(struct larder__pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_mutex_unlock(&p->lock);
    /* Queued jobs hold their own posts; one more per thread wakes each to exit. */
    for (unsigned i = 0; i < p->n; i++)
        sem_post(&p->ready);
}

static void destroy(struct larder__pool *p)
{
    sem_destroy(&p->ready);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}

unsigned larder__pool_stop(struct larder__pool *p, int64_t timeout_ms)
{
    if (!p)
        return 0;
    stop_threads(p);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until); /* pthread_timedjoin_np's clock */
    until.tv_sec += (time_t)(timeout_ms / 1000);
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    unsigned stuck = 0;
    for (unsigned i = 0; i < p->n; i++) {
        if (pthread_timedjoin_np(p->threads[i], NULL, &until) != 0) {
            pthread_detach(p->threads[i]);
            stuck++;
        }
    }
    if (!stuck)
        destroy(p);
    return stuck;
}

struct larder__pool *larder__pool_free(struct larder__pool *p)
{
    if (!p)
        return NULL;
    stop_threads(p);
    for (unsigned i = 0; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    destroy(p);
    return NULL;
}
