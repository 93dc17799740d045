/* Calls in progress and the manager's last reference.
 *
 * A manager may be freed by larder_close or, later, by whichever thread drops its last
 * reference (a lease counted at close, a loader close left inside a class call). Either
 * way it must not be freed while another thread is still inside the library on it: a
 * release that has already given its lease back but still settles the component, an
 * acquire woken by close, a snapshot. So every entry point marks itself:
 *
 * - a call adds LARDER__CALL to m->refs (larder__enter) and takes it off when it returns
 *   (larder__leave);
 * - the warm acquire and release paths, which must stay free of shared atomic writes,
 *   store m in the calling thread's hazard slot instead, and enter as a call before they
 *   do anything that may block or call back (larder__upgrade).
 *
 * Close sets `closing`, then issues one membarrier(): every slot store made before it is
 * visible to close's later scans, without a fence on the warm path. At its end close waits
 * until no call and no slot is left on m (larder__calls_wait), so that when it returns no
 * other thread runs library code on m except through a lease that keeps m alive. The
 * thread that takes m->refs to zero marks it LARDER__FREEING, waits for the same, and frees.
 * A thread still in a leaf when that happens (it gave its lease back and saw `closing`)
 * may enter as a call meanwhile; the freeing thread then waits for it too. */
#include "internal.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <malloc.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

__thread struct larder__hazard larder__hz __attribute__((tls_model("initial-exec")));
static atomic_bool asym; /* membarrier() is there: slots need no fence */

static pthread_mutex_t hz_mu = PTHREAD_MUTEX_INITIALIZER;
static struct larder__hazard *hz_head;
static pthread_key_t hz_key;
static pthread_once_t hz_once = PTHREAD_ONCE_INIT;
static bool hz_key_ok;

/* At thread exit: the slot (in the thread's TLS) leaves the list before its memory goes. */
static void hz_unlist(void *arg)
{
    struct larder__hazard *h = arg;
    pthread_mutex_lock(&hz_mu);
    if (h->prev)
        h->prev->next = h->next;
    else
        hz_head = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->listed = false;
    pthread_mutex_unlock(&hz_mu);
}

static void hz_init(void)
{
    hz_key_ok = pthread_key_create(&hz_key, hz_unlist) == 0;
#ifdef __NR_membarrier
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        atomic_store(&asym, true);
#endif
}

bool larder__hazard_list(struct larder__hazard *h)
{
    pthread_once(&hz_once, hz_init);
    if (h->failed || !hz_key_ok || !atomic_load(&asym)) {
        h->failed = true;
        return false;
    }
    /* The key's value is what makes the destructor run: set it before listing. */
    if (pthread_setspecific(hz_key, h) != 0) {
        h->failed = true;
        return false;
    }
    pthread_mutex_lock(&hz_mu);
    h->prev = NULL;
    h->next = hz_head;
    if (hz_head)
        hz_head->prev = h;
    hz_head = h;
    h->listed = true;
    pthread_mutex_unlock(&hz_mu);
    return true;
}

void larder__calls_fence(void)
{
    pthread_once(&hz_once, hz_init);
#ifdef __NR_membarrier
    if (atomic_load(&asym) &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return;
#endif
    atomic_thread_fence(memory_order_seq_cst);
}

/* Whether another thread's slot holds m now. */
static bool slot_busy(struct larder *m)
{
    bool busy = false;
    pthread_mutex_lock(&hz_mu);
    for (struct larder__hazard *h = hz_head; h && !busy; h = h->next)
        busy = h != &larder__hz && atomic_load_explicit(&h->m, memory_order_acquire) == m;
    pthread_mutex_unlock(&hz_mu);
    return busy;
}

/* Backs off while another thread finishes: leaves take nanoseconds, calls woken by close
 * return as soon as they run. */
static void pause_a_little(unsigned *spins)
{
    if (++*spins < 64) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, *spins < 1024 ? 50000 : 1000000};
    nanosleep(&ts, NULL);
}

static uint64_t calls_of(uint64_t v)
{
    return (v & ~LARDER__FREEING) >> 32;
}

void larder__calls_wait(struct larder *m)
{
    unsigned spins = 0;
    /* Slots first: a leaf enters as a call before it clears its slot. */
    while (slot_busy(m) || calls_of(atomic_load(&m->refs)) != 0)
        pause_a_little(&spins);
}

void larder__enter(struct larder *m)
{
    atomic_fetch_add(&m->refs, LARDER__CALL);
}

void larder__leave(struct larder *m)
{
    larder__put(m, LARDER__CALL);
}

void larder__put(struct larder *m, uint64_t n)
{
    uint64_t v = atomic_load(&m->refs);
    bool last;
    do
        last = v - n == 0;
    while (!atomic_compare_exchange_weak(&m->refs, &v, last ? LARDER__FREEING : v - n));
    if (!last)
        return;
    /* This thread frees: once the threads still in a leaf on m are out, and the calls
     * they entered meanwhile have returned. */
    unsigned spins = 0;
    while (slot_busy(m) || atomic_load(&m->refs) != LARDER__FREEING)
        pause_a_little(&spins);
    larder__free_manager(m);
    malloc_trim(0);
}
