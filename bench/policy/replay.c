/* Trace replayer: a discrete-event simulation of the manager's eviction protocol
 * (see replay.h). */
#include "replay.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum cstate { CS_UNLOADED, CS_WAITING, CS_LOADING, CS_READY };
enum evtype { EV_LOAD_DONE, EV_RELEASE };

struct waiter {
    double arrival;
    double dur;
};

struct simcomp {
    enum cstate state;
    unsigned leases;
    struct waiter *w; /* requests waiting for the load */
    size_t nw, capw;
    size_t first;     /* this component's request times: sim.uses[first .. first + count) */
    size_t count;
    size_t next;      /* the next one not yet arrived */
    struct larder__pstat ps;
};

struct event {
    double t;
    uint64_t seq;
    enum evtype type;
    uint32_t comp;
};

struct sim {
    const struct trace *tr;
    const struct replay_opts *o;
    struct simcomp *c;
    double *uses;
    struct event *heap;
    size_t nheap, capheap;
    uint64_t seq;
    uint32_t *queue; /* components waiting for room, first come first */
    size_t nq;
    uint64_t reserved;
    void *state;     /* the policy's */
    struct replay_result r;
};

/* ---- event heap, ordered by (time, sequence) ------------------------------------------ */

static bool before(const struct event *a, const struct event *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static int push(struct sim *s, double t, enum evtype type, uint32_t comp)
{
    size_t i;

    if (s->nheap == s->capheap) {
        size_t cap = s->capheap ? s->capheap * 2 : 256;
        struct event *h = realloc(s->heap, cap * sizeof(*h));

        if (!h)
            return -ENOMEM;
        s->heap = h;
        s->capheap = cap;
    }
    i = s->nheap++;
    s->heap[i] = (struct event){.t = t, .seq = s->seq++, .type = type, .comp = comp};
    while (i > 0 && before(&s->heap[i], &s->heap[(i - 1) / 2])) {
        struct event tmp = s->heap[i];

        s->heap[i] = s->heap[(i - 1) / 2];
        s->heap[(i - 1) / 2] = tmp;
        i = (i - 1) / 2;
    }
    return 0;
}

static struct event pop(struct sim *s)
{
    struct event top = s->heap[0];
    size_t i = 0;

    s->heap[0] = s->heap[--s->nheap];
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;

        if (l < s->nheap && before(&s->heap[l], &s->heap[m]))
            m = l;
        if (r < s->nheap && before(&s->heap[r], &s->heap[m]))
            m = r;
        if (m == i)
            break;
        struct event tmp = s->heap[i];
        s->heap[i] = s->heap[m];
        s->heap[m] = tmp;
        i = m;
    }
    return top;
}

/* ---- oracle --------------------------------------------------------------------------- */

static const struct simcomp *comp_of(const struct larder__pstat *ps)
{
    return (const struct simcomp *)((const char *)ps - offsetof(struct simcomp, ps));
}

static double next_use(const void *ctx, const struct larder__pstat *ps, double now)
{
    const struct sim *s = ctx;
    const struct simcomp *c = comp_of(ps);

    (void)now;
    return c->next < c->count ? s->uses[c->first + c->next] : INFINITY;
}

static double rate(const void *ctx, const struct larder__pstat *ps)
{
    const struct sim *s = ctx;
    const struct trace *t = s->tr;
    double span = t->nreqs ? t->reqs[t->nreqs - 1].t - t->reqs[0].t : 0;

    return (double)comp_of(ps)->count / (span > 1 ? span : 1);
}

/* Groups the request times by component, for the oracle. */
static int index_uses(struct sim *s)
{
    const struct trace *t = s->tr;
    size_t *fill;

    s->uses = malloc((t->nreqs ? t->nreqs : 1) * sizeof(*s->uses));
    fill = calloc(t->ncomps ? t->ncomps : 1, sizeof(*fill));
    if (!s->uses || !fill) {
        free(fill);
        return -ENOMEM;
    }
    for (size_t i = 0; i < t->nreqs; i++)
        s->c[t->reqs[i].comp].count++;
    for (size_t i = 1; i < t->ncomps; i++)
        s->c[i].first = s->c[i - 1].first + s->c[i - 1].count;
    for (size_t i = 0; i < t->nreqs; i++) {
        struct simcomp *c = &s->c[t->reqs[i].comp];

        s->uses[c->first + fill[t->reqs[i].comp]++] = t->reqs[i].t;
    }
    free(fill);
    return 0;
}

/* ---- the manager's side of the protocol ----------------------------------------------- */

static void hook(struct sim *s, void (*fn)(void *, struct larder__pstat *, double),
                 struct simcomp *c, double now)
{
    if (fn)
        fn(s->state, &c->ps, now);
}

/* Serves one acquire of a READY component: the lease lasts dur seconds. */
static int serve(struct sim *s, uint32_t i, double now, double arrival, double dur)
{
    struct simcomp *c = &s->c[i];

    c->ps.hits++;
    c->ps.last_use = now;
    hook(s, s->o->policy->on_hit, c, now);
    c->leases++;
    s->r.wait_s += now - arrival;
    return push(s, now + dur, EV_RELEASE, i);
}

static bool evictable(const struct sim *s, uint32_t i)
{
    return s->c[i].state == CS_READY && s->c[i].leases == 0 && !s->tr->comps[i].pin;
}

/* The candidate with the lowest score; the earliest declared among equals. */
static uint32_t pick_victim(struct sim *s, double now)
{
    uint32_t best = UINT32_MAX;
    double best_score = 0;

    for (uint32_t i = 0; i < s->tr->ncomps; i++) {
        if (!evictable(s, i))
            continue;
        double score = s->o->policy->score(s->state, &s->c[i].ps, now);

        if (best == UINT32_MAX || score < best_score) {
            best = i;
            best_score = score;
        }
    }
    return best;
}

static void evict(struct sim *s, uint32_t i, double now)
{
    struct simcomp *c = &s->c[i];

    hook(s, s->o->policy->on_evict, c, now);
    c->state = CS_UNLOADED;
    s->reserved -= s->tr->comps[i].bytes;
    s->r.evictions++;
    if (s->o->on_evict)
        s->o->on_evict(s->o->ud, i, now);
}

/* Evicts idle components, lowest score first, until component i fits; false when it still
 * does not (every idle one is gone: it waits for leases to come back). */
static bool make_room(struct sim *s, uint32_t i, double now)
{
    uint64_t need = s->tr->comps[i].bytes, budget = s->o->budget, idle = 0;

    if (s->reserved + need <= budget)
        return true;
    for (uint32_t j = 0; j < s->tr->ncomps; j++)
        if (evictable(s, j))
            idle += s->tr->comps[j].bytes;
    while (s->reserved + need > budget && idle > 0) {
        uint32_t v = pick_victim(s, now);

        idle -= s->tr->comps[v].bytes;
        evict(s, v, now);
    }
    return s->reserved + need <= budget;
}

static int start_load(struct sim *s, uint32_t i, double now)
{
    s->c[i].state = CS_LOADING;
    s->reserved += s->tr->comps[i].bytes;
    s->r.loads++;
    s->r.cold_s += s->tr->comps[i].load_s;
    return push(s, now + s->tr->comps[i].load_s, EV_LOAD_DONE, i);
}

/* Starts every queued load that fits (or can be made to fit), first come first. */
static int admit(struct sim *s, double now)
{
    size_t k = 0;
    int rc = 0;

    for (size_t q = 0; q < s->nq; q++) {
        uint32_t i = s->queue[q];

        if (rc == 0 && make_room(s, i, now))
            rc = start_load(s, i, now);
        else
            s->queue[k++] = i;
    }
    s->nq = k;
    return rc;
}

static int add_waiter(struct simcomp *c, double arrival, double dur)
{
    if (c->nw == c->capw) {
        size_t cap = c->capw ? c->capw * 2 : 4;
        struct waiter *w = realloc(c->w, cap * sizeof(*w));

        if (!w)
            return -ENOMEM;
        c->w = w;
        c->capw = cap;
    }
    c->w[c->nw++] = (struct waiter){.arrival = arrival, .dur = dur};
    return 0;
}

static int arrive(struct sim *s, const struct trace_req *r)
{
    struct simcomp *c = &s->c[r->comp];
    int rc;

    c->next++;
    if (c->state == CS_READY) {
        s->r.hits++;
        return serve(s, r->comp, r->t, r->t, r->dur);
    }
    if (s->tr->comps[r->comp].bytes > s->o->budget) {
        s->r.rejected++;
        return 0;
    }
    if ((rc = add_waiter(c, r->t, r->dur)) < 0)
        return rc;
    if (c->state != CS_UNLOADED)
        return 0;
    c->state = CS_WAITING;
    s->queue[s->nq++] = r->comp;
    return admit(s, r->t);
}

static int load_done(struct sim *s, uint32_t i, double now)
{
    struct simcomp *c = &s->c[i];
    int rc = 0;

    c->state = CS_READY;
    c->ps.bytes = s->tr->comps[i].bytes;
    c->ps.load_cost = s->tr->comps[i].load_s;
    c->ps.loaded_at = now;
    c->ps.last_use = now;
    hook(s, s->o->policy->on_load, c, now);
    for (size_t k = 0; k < c->nw && rc == 0; k++)
        rc = serve(s, i, now, c->w[k].arrival, c->w[k].dur);
    c->nw = 0;
    return rc;
}

static int release(struct sim *s, uint32_t i, double now)
{
    struct simcomp *c = &s->c[i];

    c->leases--;
    c->ps.last_use = now;
    if (now > s->r.end)
        s->r.end = now;
    return c->leases == 0 && s->nq ? admit(s, now) : 0;
}

static int step(struct sim *s, size_t *next_req)
{
    const struct trace *t = s->tr;

    if (s->nheap && (*next_req == t->nreqs || s->heap[0].t <= t->reqs[*next_req].t)) {
        struct event e = pop(s);

        return e.type == EV_LOAD_DONE ? load_done(s, e.comp, e.t) : release(s, e.comp, e.t);
    }
    return arrive(s, &t->reqs[(*next_req)++]);
}

/* ---- setup ---------------------------------------------------------------------------- */

static int sim_init(struct sim *s, const struct trace *t, const struct replay_opts *o)
{
    const struct larder__policy *p = o->policy;
    size_t n = t->ncomps ? t->ncomps : 1, size = p->state_size;

    *s = (struct sim){.tr = t, .o = o};
    if (o->oracle && size < sizeof(struct replay_oracle))
        size = sizeof(struct replay_oracle);
    s->c = calloc(n, sizeof(*s->c));
    s->queue = calloc(n, sizeof(*s->queue));
    s->state = calloc(1, size ? size : 1);
    if (!s->c || !s->queue || !s->state || index_uses(s) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < t->ncomps; i++) {
        s->c[i].ps.bytes = t->comps[i].bytes;
        s->c[i].ps.load_cost = t->comps[i].load_s;
        s->c[i].ps.priority = t->comps[i].priority;
        s->c[i].ps.ttl_ms = t->comps[i].ttl_ms;
    }
    if (p->init)
        p->init(s->state);
    if (o->oracle)
        memcpy(s->state, &(struct replay_oracle){.next_use = next_use, .rate = rate, .ctx = s},
               sizeof(struct replay_oracle));
    s->r.requests = t->nreqs;
    return 0;
}

static void sim_free(struct sim *s)
{
    if (s->c)
        for (size_t i = 0; i < s->tr->ncomps; i++)
            free(s->c[i].w);
    free(s->c);
    free(s->queue);
    free(s->state);
    free(s->uses);
    free(s->heap);
}

int replay_run(const struct trace *t, const struct replay_opts *o, struct replay_result *ret)
{
    struct sim s;
    size_t next_req = 0;
    int rc;

    if (!t || !o || !o->policy || !o->policy->score || o->budget == 0 || !ret)
        return -EINVAL;
    rc = sim_init(&s, t, o);
    while (rc == 0 && (next_req < t->nreqs || s.nheap))
        rc = step(&s, &next_req);
    /* Loads still queued can never fit: pinned components hold the room they need. */
    for (size_t q = 0; q < s.nq; q++)
        s.r.rejected += s.c[s.queue[q]].nw;
    if (rc == 0)
        *ret = s.r;
    sim_free(&s);
    return rc;
}
