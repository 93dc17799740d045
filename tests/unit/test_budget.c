/* Budget and eviction: idle components make room, leased and pinned ones never do,
 * priorities hold under both policies, surplus instances go before whole models, ttl,
 * set_ttl, trim, a lowered budget, a model whose measured size does not fit, and sizes
 * measured again while loaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "fake.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define U 1000ULL
#define BUDGET (100 * U)

struct comp {
    const char *name;
    uint64_t bytes;
    int priority;
    bool pin;
    int load_ms;
    bool has_ttl;   /* else LARDER_TTL_DEFAULT */
    int64_t ttl_ms;
};

static struct fake *define_comp(larder *m, const struct comp *c)
{
    struct fake *f = fake_new(c->name, &(struct fake_spec){.estimate = c->bytes,
                                                           .load_ms = c->load_ms});
    struct larder_component_opts o;
    fake_opts(f, false, &o);
    o.priority = c->priority;
    o.pin = c->pin;
    o.ttl_ms = c->has_ttl ? c->ttl_ms : LARDER_TTL_DEFAULT;
    assert_ok(larder_define(m, c->name, &o));
    return f;
}

static struct fake *def_comp(larder *m, const char *name, uint64_t bytes)
{
    return define_comp(m, &(struct comp){name, .bytes = bytes});
}

static larder *open_budget(struct evlog *log, const char *policy, int64_t admission_ms)
{
    struct larder_opts o;
    larder_opts_init(&o);
    if (policy)
        o.policy = policy;
    if (admission_ms)
        o.admission_timeout_ms = admission_ms;
    return open_manager(BUDGET, log, &o);
}

/* Acquires and releases at once (a use). */
static void use(larder *m, const char *name)
{
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, name, patience_ms(), &l));
    fake_release(l);
}

static enum larder_state state_of(larder *m, const char *name)
{
    struct larder_component_info i;
    assert_true(comp_info(m, name, &i));
    return i.state;
}

static void assert_consistent(larder *m)
{
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    const char *why = check_snapshot(s);
    larder_snapshot_free(s);
    if (why)
        fail_msg("%s", why);
}

static void test_evict_idle_for_room(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, *state, 0);
    struct fake *a = def_comp(m, "a", 60 * U);
    struct fake *b = def_comp(m, "b", 60 * U);
    struct fake_world world = {.budget = BUDGET};
    fake_join(a, &world, 60 * U);
    fake_join(b, &world, 60 * U);
    use(m, "a");
    use(m, "b");
    assert_int_equal(atomic_load(&a->unloads), 1);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "a", LARDER_REASON_BUDGET), 1);
    assert_int_equal(evlog_count(log, LARDER_EVENT_UNLOAD, "a"), 1);
    assert_int_equal(state_of(m, "a"), LARDER_STATE_UNLOADED);
    assert_int_equal(state_of(m, "b"), LARDER_STATE_READY);
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.evictions, 1);
    assert_int_equal(i.reserved_bytes, 0);
    assert_consistent(m);
    /* (the fakes' world checks that a's unload finished before b's load began) */
    larder_close(m);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(a);
    fake_free(b);
    evlog_free(log);
}

struct waiter {
    larder *m;
    const char *name;
    atomic_bool done;
    int rc;
    larder_lease *lease;
};

static void *wait_for(void *arg)
{
    struct waiter *w = arg;
    w->rc = fake_acquire(w->m, w->name, patience_ms(), &w->lease);
    atomic_store(&w->done, true);
    return NULL;
}

static void test_leased_never_evicted(void **state)
{
    struct evlog *log = evlog_new();
    /* Short admission timeout: the load gives up with ENOSPC. */
    larder *m = open_budget(log, NULL, 100);
    struct fake *a = def_comp(m, "a", 60 * U);
    struct fake *b = def_comp(m, "b", 60 * U);
    larder_lease *la = NULL, *lb = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &la));
    assert_err(fake_acquire(m, "b", patience_ms(), &lb), LARDER_ENOSPC);
    assert_int_equal(atomic_load(&a->unloads), 0);
    assert_int_equal(atomic_load(&b->loads), 0);
    assert_int_equal(state_of(m, "a"), LARDER_STATE_READY);
    assert_consistent(m);
    fake_release(la);
    larder_close(m);

    /* Long admission timeout: the load waits until the lease comes back. */
    evlog_clear(log);
    m = open_budget(log, NULL, patience_ms());
    assert_ok(fake_define(m, a, false));
    assert_ok(fake_define(m, b, false));
    assert_ok(fake_acquire(m, "a", patience_ms(), &la));
    struct waiter w = {.m = m, .name = "b"};
    pthread_t tid;
    assert_int_equal(pthread_create(&tid, NULL, wait_for, &w), 0);
    sleep_ms(50);
    bool early = atomic_load(&w.done);
    int a_unloads = atomic_load(&a->unloads);
    fake_release(la);
    pthread_join(tid, NULL);
    assert_false(early);
    assert_int_equal(a_unloads, 1); /* the unload when the first manager closed */
    assert_ok(w.rc);
    assert_int_equal(atomic_load(&a->unloads), 2);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "a", LARDER_REASON_BUDGET), 1);
    fake_release(w.lease);
    assert_consistent(m);
    larder_close(m);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(a);
    fake_free(b);
    evlog_free(log);
}

static void test_pin(void **state)
{
    larder *m = open_budget(NULL, NULL, 100);
    struct fake *p = define_comp(m, &(struct comp){"p", 60 * U, .pin = true});
    struct fake *b = def_comp(m, "b", 60 * U);
    use(m, "p");
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "b", patience_ms(), &l), LARDER_ENOSPC);
    struct larder_trim_result t = {.struct_size = sizeof(t)};
    assert_ok(larder_trim(m, &t));
    assert_int_equal(t.components, 0);
    assert_int_equal(state_of(m, "p"), LARDER_STATE_READY);
    assert_int_equal(atomic_load(&p->unloads), 0);
    struct larder_component_info i;
    assert_true(comp_info(m, "p", &i));
    assert_true(i.pin);
    assert_int_equal(i.expires_in_ms, -1);
    /* Still unloadable on request. */
    assert_ok(larder_unload(m, "p", patience_ms()));
    assert_int_equal(atomic_load(&p->unloads), 1);
    use(m, "b");
    larder_close(m);
    fake_assert_clean(p);
    fake_assert_clean(b);
    fake_free(p);
    fake_free(b);
}

/* a is older and used less than b; with equal priorities a goes first under both
 * policies. With a higher priority, a survives however it compares otherwise. */
static void run_priority(const char *policy, int prio_a, const char *evicted)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, policy, 0);
    struct fake *a = define_comp(m, &(struct comp){"a", 40 * U, .priority = prio_a,
                                                           .load_ms = 5});
    struct fake *b = define_comp(m, &(struct comp){"b", 40 * U, .load_ms = 5});
    struct fake *c = define_comp(m, &(struct comp){"c", 40 * U, .load_ms = 5});
    use(m, "a");
    for (int k = 0; k < 5; k++)
        use(m, "b");
    use(m, "c");
    if (evlog_count(log, LARDER_EVENT_EVICT, evicted) != 1)
        fail_msg("policy %s, priority of a %d: expected %s evicted (evictions: a %u, b %u)",
                 policy, prio_a, evicted, evlog_count(log, LARDER_EVENT_EVICT, "a"),
                 evlog_count(log, LARDER_EVENT_EVICT, "b"));
    assert_int_equal(evlog_count(log, LARDER_EVENT_EVICT, NULL), 1);
    assert_int_equal(state_of(m, evicted), LARDER_STATE_UNLOADED);
    larder_close(m);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(a);
    fake_free(b);
    fake_free(c);
    evlog_free(log);
}

static void test_priority(void **state)
{
    run_priority(*state, 0, "a");
    run_priority(*state, 5, "b");
}

/* Same size, same use: the cost policy keeps the one that is slow to reload even though
 * it is older; lru evicts the older one. */
static void test_cost_keeps_slow_loads(void **state)
{
    const char *policies[] = {"cost", "lru"};
    const char *victims[] = {"cheap", "slow"};
    for (int p = 0; p < 2; p++) {
        struct evlog *log = evlog_new();
        larder *m = open_budget(log, policies[p], 0);
        struct fake *s = define_comp(m, &(struct comp){"slow", 40 * U, .load_ms = 60});
        struct fake *c = define_comp(m, &(struct comp){"cheap", 40 * U, .load_ms = 1});
        struct fake *n = define_comp(m, &(struct comp){"new", 40 * U, .load_ms = 1});
        use(m, "slow");
        use(m, "cheap");
        use(m, "new");
        if (evlog_count(log, LARDER_EVENT_EVICT, victims[p]) != 1)
            fail_msg("policy %s should have evicted %s", policies[p], victims[p]);
        larder_close(m);
        fake_free(s);
        fake_free(c);
        fake_free(n);
        evlog_free(log);
    }
}

static void test_surplus_instances_first(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(1ULL << 32, log, NULL);
    struct fake *p = fake_new("p", &(struct fake_spec){.estimate = 8ULL << 20,
                                                       .instance_alloc = 4ULL << 20});
    struct larder_component_opts o;
    fake_opts(p, true, &o);
    o.max_instances = 3;
    assert_ok(larder_define(m, "p", &o));
    struct fake *a = fake_new("a", &(struct fake_spec){.estimate = 8ULL << 20});
    assert_ok(fake_define(m, a, false));
    larder_lease *l[3];
    for (int k = 0; k < 3; k++)
        assert_ok(fake_acquire(m, "p", patience_ms(), &l[k]));
    for (int k = 0; k < 3; k++)
        fake_release(l[k]);
    use(m, "a");
    struct larder_component_info pi;
    assert_true(comp_info(m, "p", &pi));
    assert_int_equal(pi.instances, 3);
    if (pi.instance_bytes == 0)
        fail_msg("instances are not charged (instance_bytes 0): dropping one frees nothing");
    struct larder_snapshot *s = NULL;
    assert_ok(larder_snapshot(m, &s));
    uint64_t reserved = s->reserved_bytes;
    larder_snapshot_free(s);
    assert_true(pi.reserved_bytes > pi.estimate_bytes); /* the instances are charged */

    /* No room left; b needs 1.5 instances' worth: two surplus instances must go, and
     * neither whole model. */
    assert_ok(larder_set_budget(m, reserved));
    assert_int_equal(evlog_count(log, LARDER_EVENT_EVICT, NULL), 0);
    uint64_t need = pi.instance_bytes + pi.instance_bytes / 2;
    struct fake *b = fake_new("b", &(struct fake_spec){.estimate = need});
    assert_ok(fake_define(m, b, false));
    use(m, "b");
    assert_int_equal(evlog_count(log, LARDER_EVENT_EVICT, "a"), 0);
    assert_int_equal(evlog_count(log, LARDER_EVENT_EVICT, "p"), 0);
    assert_int_equal(evlog_count(log, LARDER_EVENT_INSTANCE_FREE, "p"), 2);
    assert_true(comp_info(m, "p", &pi));
    assert_int_equal(pi.state, LARDER_STATE_READY);
    assert_int_equal(pi.instances, 1);
    assert_int_equal(atomic_load(&p->inst_free), 2);
    assert_int_equal(state_of(m, "a"), LARDER_STATE_READY);
    assert_consistent(m);
    larder_close(m);
    fake_assert_clean(p);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(p);
    fake_free(a);
    fake_free(b);
    evlog_free(log);
}

static void test_ttl_idle(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, NULL, 0);
    struct fake *z = define_comp(m, &(struct comp){"z", 10 * U, .has_ttl = true,
                                                   .ttl_ms = LARDER_TTL_IDLE});
    larder_lease *l1 = NULL, *l2 = NULL;
    assert_ok(fake_acquire(m, "z", patience_ms(), &l1));
    assert_ok(fake_acquire(m, "z", patience_ms(), &l2));
    fake_release(l1);
    sleep_ms(20);
    /* One lease is still out: nothing unloads. */
    assert_int_equal(state_of(m, "z"), LARDER_STATE_READY);
    fake_release(l2);
    assert_true(evlog_wait(log, LARDER_EVENT_UNLOAD, "z", 1, patience_ms()));
    assert_int_equal(state_of(m, "z"), LARDER_STATE_UNLOADED);
    assert_int_equal(atomic_load(&z->unloads), 1);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "z", LARDER_REASON_TTL), 1);
    larder_close(m);
    fake_assert_clean(z);
    fake_free(z);
    evlog_free(log);
}

static void test_ttl_never_and_short(void **state)
{
    struct evlog *log = evlog_new();
    struct larder_opts o;
    larder_opts_init(&o);
    o.default_ttl_ms = 50;
    larder *m = open_manager(BUDGET, log, &o);
    struct fake *n = define_comp(m, &(struct comp){"never", 10 * U, .has_ttl = true,
                                                      .ttl_ms = LARDER_TTL_NEVER});
    struct fake *d = def_comp(m, "dflt", 10 * U);
    struct fake *t = define_comp(m, &(struct comp){"short", 10 * U, .has_ttl = true,
                                                   .ttl_ms = 100});
    use(m, "never");
    use(m, "dflt");
    use(m, "short");
    struct larder_component_info i;
    assert_true(comp_info(m, "short", &i));
    if (i.state == LARDER_STATE_READY)
        assert_true(i.expires_in_ms >= 0 && i.expires_in_ms <= 100);
    assert_true(comp_info(m, "never", &i));
    assert_int_equal(i.ttl_ms, LARDER_TTL_NEVER);
    assert_int_equal(i.expires_in_ms, -1);

    /* The default-ttl component goes once its 50 ms are up, the short one after 100;
     * the never one has been idle longer than both and stays. */
    assert_true(evlog_wait(log, LARDER_EVENT_UNLOAD, "dflt", 1, patience_ms()));
    assert_true(wait_state(m, "short", LARDER_STATE_UNLOADED, patience_ms()));
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "short", LARDER_REASON_TTL), 1);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "dflt", LARDER_REASON_TTL), 1);
    assert_int_equal(state_of(m, "never"), LARDER_STATE_READY);
    assert_int_equal(atomic_load(&n->unloads), 0);
    assert_int_equal(atomic_load(&d->unloads), 1);
    assert_int_equal(atomic_load(&t->unloads), 1);
    larder_close(m);
    fake_assert_clean(n);
    fake_free(n);
    fake_free(d);
    fake_free(t);
    evlog_free(log);
}

/* larder_set_ttl: a new keep-alive from now on. 0 on an idle model unloads it at once, on
 * a leased one when the last lease returns; -1 keeps it; LARDER_TTL_DEFAULT goes back to
 * the manager's default; bad values and unknown names are refused and change nothing. */
static void test_set_ttl(void **state)
{
    struct evlog *log = evlog_new();
    struct larder_opts o;
    larder_opts_init(&o);
    o.default_ttl_ms = 50;
    larder *m = open_manager(BUDGET, log, &o);
    struct fake *z = define_comp(m, &(struct comp){"z", 10 * U, .has_ttl = true,
                                                   .ttl_ms = LARDER_TTL_NEVER});
    struct fake *d = def_comp(m, "dflt", 10 * U);
    struct larder_component_info i;

    assert_err(larder_set_ttl(m, "nosuch", 0), LARDER_ENOTFOUND);
    assert_err(larder_set_ttl(m, "z", -2), -EINVAL);
    assert_err(larder_set_ttl(m, "z", INT64_MIN + 1), -EINVAL);
    assert_err(larder_set_ttl(m, NULL, 0), -EINVAL);
    assert_err(larder_set_ttl(NULL, "z", 0), -EINVAL);
    assert_true(comp_info(m, "z", &i));
    assert_int_equal(i.ttl_ms, LARDER_TTL_NEVER);

    /* 0 on an idle loaded model: the reaper unloads it now. */
    use(m, "z");
    assert_int_equal(state_of(m, "z"), LARDER_STATE_READY);
    assert_ok(larder_set_ttl(m, "z", LARDER_TTL_IDLE));
    assert_true(comp_info(m, "z", &i));
    assert_int_equal(i.ttl_ms, 0);
    assert_true(wait_state(m, "z", LARDER_STATE_UNLOADED, patience_ms()));
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "z", LARDER_REASON_TTL), 1);

    /* 0 while a lease is out: nothing unloads until it comes back. */
    larder_lease *l = NULL;
    assert_ok(larder_set_ttl(m, "z", LARDER_TTL_NEVER));
    assert_ok(fake_acquire(m, "z", patience_ms(), &l));
    assert_ok(larder_set_ttl(m, "z", 0));
    assert_int_equal(state_of(m, "z"), LARDER_STATE_READY);
    assert_int_equal(atomic_load(&z->unloads), 1);
    fake_release(l);
    assert_true(evlog_wait(log, LARDER_EVENT_UNLOAD, "z", 2, patience_ms()));
    assert_true(wait_state(m, "z", LARDER_STATE_UNLOADED, patience_ms()));

    /* -1: kept, while a model on the default ttl used after it goes. */
    assert_ok(larder_set_ttl(m, "z", LARDER_TTL_NEVER));
    use(m, "z");
    use(m, "dflt");
    assert_true(wait_state(m, "dflt", LARDER_STATE_UNLOADED, patience_ms()));
    assert_true(comp_info(m, "z", &i));
    assert_int_equal(i.state, LARDER_STATE_READY);
    assert_int_equal(i.ttl_ms, LARDER_TTL_NEVER);
    assert_int_equal(i.expires_in_ms, -1);

    /* A duration, then the manager's default again: idle longer than 50 ms, it goes. */
    assert_ok(larder_set_ttl(m, "z", 600000));
    assert_true(comp_info(m, "z", &i));
    assert_int_equal(i.ttl_ms, 600000);
    assert_true(i.expires_in_ms > 0 && i.expires_in_ms <= 600000);
    assert_ok(larder_set_ttl(m, "z", LARDER_TTL_DEFAULT));
    assert_true(comp_info(m, "z", &i));
    assert_int_equal(i.ttl_ms, 50);
    assert_true(wait_state(m, "z", LARDER_STATE_UNLOADED, patience_ms()));
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "z", LARDER_REASON_TTL), 3);
    assert_int_equal(atomic_load(&z->unloads), 3);

    larder_close(m);
    fake_assert_clean(z);
    fake_assert_clean(d);
    fake_free(z);
    fake_free(d);
    evlog_free(log);
}

static void test_trim(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_manager(1ULL << 32, log, NULL);
    struct fake *a = def_comp(m, "a", 30 * U);
    struct fake *b = def_comp(m, "b", 30 * U);
    struct fake *p = define_comp(m, &(struct comp){"p", 20 * U, .pin = true});
    struct fake *l = def_comp(m, "l", 10 * U);
    struct fake *q = fake_new("q", &(struct fake_spec){.estimate = 10 * U,
                                                       .instance_alloc = 1ULL << 20});
    struct larder_component_opts o;
    fake_opts(q, true, &o);
    o.max_instances = 2;
    o.pin = true;
    assert_ok(larder_define(m, "q", &o));
    use(m, "a");
    use(m, "b");
    use(m, "p");
    larder_lease *lq[2], *ll = NULL;
    assert_ok(fake_acquire(m, "q", patience_ms(), &lq[0]));
    assert_ok(fake_acquire(m, "q", patience_ms(), &lq[1]));
    fake_release(lq[0]);
    fake_release(lq[1]);
    assert_ok(fake_acquire(m, "l", patience_ms(), &ll));

    struct larder_component_info ia, ib, iq0, iq1;
    assert_true(comp_info(m, "a", &ia));
    assert_true(comp_info(m, "b", &ib));
    assert_true(comp_info(m, "q", &iq0));
    assert_int_equal(iq0.instances, 2);
    struct larder_trim_result t = {.struct_size = sizeof(t)};
    assert_ok(larder_trim(m, &t));
    assert_int_equal(t.components, 2);
    assert_int_equal(t.instances, 1);
    assert_true(comp_info(m, "q", &iq1));
    assert_int_equal(iq1.instances, 1);
    assert_int_equal(t.reserved_freed, ia.reserved_bytes + ib.reserved_bytes +
                                           (iq0.reserved_bytes - iq1.reserved_bytes));
    assert_int_equal(state_of(m, "a"), LARDER_STATE_UNLOADED);
    assert_int_equal(state_of(m, "b"), LARDER_STATE_UNLOADED);
    assert_int_equal(state_of(m, "p"), LARDER_STATE_READY);
    assert_int_equal(state_of(m, "l"), LARDER_STATE_READY);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "a", LARDER_REASON_TRIM), 1);
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "b", LARDER_REASON_TRIM), 1);
    assert_int_equal(atomic_load(&l->unloads), 0);

    /* Nothing left to trim; ret may be NULL. */
    assert_ok(larder_trim(m, NULL));
    assert_ok(larder_trim(m, &t));
    assert_int_equal(t.components, 0);
    assert_int_equal(t.instances, 0);
    assert_int_equal(t.reserved_freed, 0);
    fake_release(ll);
    assert_consistent(m);
    larder_close(m);
    struct fake *all[] = {a, b, p, l, q};
    for (int k = 0; k < 5; k++) {
        fake_assert_clean(all[k]);
        fake_free(all[k]);
    }
    evlog_free(log);
}

static void test_set_budget(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, NULL, 0);
    struct fake *a = def_comp(m, "a", 40 * U);
    struct fake *b = def_comp(m, "b", 40 * U);
    use(m, "a");
    use(m, "b");
    assert_ok(larder_set_budget(m, 50 * U));
    assert_int_equal(larder_get_budget(m), 50 * U);
    double end = now_ms() + patience_ms();
    while (atomic_load(&a->unloads) + atomic_load(&b->unloads) < 1 && now_ms() < end)
        sleep_ms(1);
    assert_int_equal(atomic_load(&a->unloads) + atomic_load(&b->unloads), 1);
    assert_consistent(m);

    /* A leased component stays over a lowered budget until its lease returns. */
    const char *kept = state_of(m, "a") == LARDER_STATE_READY ? "a" : "b";
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, kept, patience_ms(), &l));
    assert_ok(larder_set_budget(m, 10 * U));
    assert_int_equal(state_of(m, kept), LARDER_STATE_READY);
    fake_release(l);
    assert_true(wait_state(m, kept, LARDER_STATE_UNLOADED, patience_ms()));
    assert_consistent(m);
    assert_int_equal(atomic_load(&a->unloads) + atomic_load(&b->unloads), 2);
    larder_close(m);
    fake_assert_clean(a);
    fake_assert_clean(b);
    fake_free(a);
    fake_free(b);
    evlog_free(log);
}

/* Estimated to fit, measured too big: evicted at once, reason OVERSIZE. */
static void test_oversize_after_load(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, NULL, 100);
    struct fake *f = fake_new("liar", &(struct fake_spec){.estimate = 50 * U,
                                                          .measured = 150 * U});
    assert_ok(fake_define(m, f, false));
    larder_lease *l = NULL;
    assert_err(fake_acquire(m, "liar", patience_ms(), &l), LARDER_ETOOBIG);
    assert_true(evlog_wait(log, LARDER_EVENT_UNLOAD, "liar", 1, patience_ms()));
    assert_int_equal(evlog_count_reason(log, LARDER_EVENT_EVICT, "liar", LARDER_REASON_OVERSIZE),
                     1);
    assert_int_equal(atomic_load(&f->loads), atomic_load(&f->unloads));
    assert_consistent(m);
    /* Its measured size is remembered: the next acquire is refused without a load. */
    assert_err(fake_acquire(m, "liar", patience_ms(), &l), LARDER_ETOOBIG);
    assert_int_equal(atomic_load(&f->load_calls), 1);
    larder_close(m);
    fake_assert_clean(f);
    fake_free(f);
    evlog_free(log);
}

static uint64_t reserved_of(larder *m, const char *name)
{
    struct larder_component_info i;
    assert_true(comp_info(m, name, &i));
    return i.reserved_bytes;
}

/* A loaded component measured again (as an external model's process tree is): the
 * reservation follows growth, never shrinks, makes room by evicting idle others, and
 * past the budget it puts the manager over it until the component can go. */
static void test_update_measured(void **state)
{
    struct evlog *log = evlog_new();
    larder *m = open_budget(log, NULL, 100);
    struct fake *a = def_comp(m, "a", 10 * U);
    struct fake *b = def_comp(m, "b", 50 * U);
    struct fake *c = def_comp(m, "c", 20 * U);
    assert_err(larder_update_measured(m, "nobody", 10 * U), LARDER_ENOTFOUND);
    assert_err(larder_update_measured(m, "a", 0), -EINVAL);
    assert_err(larder_update_measured(NULL, "a", 10 * U), -EINVAL);
    assert_err(larder_update_measured(m, "a", 10 * U), -EAGAIN); /* not loaded */
    use(m, "a");
    use(m, "b");

    /* Growth that fits. */
    assert_ok(larder_update_measured(m, "a", 30 * U));
    struct larder_component_info i;
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.measured_bytes, 30 * U);
    assert_int_equal(i.measure_method, LARDER_MEASURE_CLASS);
    assert_int_equal(i.reserved_bytes, 30 * U);
    /* Shrinking changes the figure, not the reservation. */
    assert_ok(larder_update_measured(m, "a", 5 * U));
    assert_true(comp_info(m, "a", &i));
    assert_int_equal(i.measured_bytes, 5 * U);
    assert_int_equal(i.reserved_bytes, 30 * U);
    assert_consistent(m);

    /* Growth that needs room: idle b goes. */
    assert_ok(larder_update_measured(m, "a", 70 * U));
    assert_int_equal(state_of(m, "b"), LARDER_STATE_UNLOADED);
    assert_int_equal(reserved_of(m, "a"), 70 * U);
    assert_consistent(m);

    /* Past the budget while leased: over it, no load admitted, and a goes as soon as
     * its lease returns. */
    larder_lease *l = NULL;
    assert_ok(fake_acquire(m, "a", patience_ms(), &l));
    assert_err(larder_update_measured(m, "a", 120 * U), LARDER_ENOSPC);
    assert_true(evlog_count(log, LARDER_EVENT_PRESSURE, "a") >= 1);
    assert_int_equal(state_of(m, "a"), LARDER_STATE_READY);
    assert_int_equal(reserved_of(m, "a"), 120 * U);
    larder_lease *lc = NULL;
    assert_err(fake_acquire(m, "c", 0, &lc), LARDER_ETIMEDOUT);
    fake_release(l);
    assert_true(wait_state(m, "a", LARDER_STATE_UNLOADED, patience_ms()));
    assert_consistent(m);
    /* Its last figure is what its next load reserves: too big now. */
    assert_err(fake_acquire(m, "a", patience_ms(), &l), LARDER_ETOOBIG);
    use(m, "c");
    assert_consistent(m);
    larder_close(m);
    struct fake *all[] = {a, b, c};
    for (size_t k = 0; k < 3; k++) {
        fake_assert_clean(all[k]);
        fake_free(all[k]);
    }
    evlog_free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_evict_idle_for_room, (void *)"lru"),
        cmocka_unit_test_prestate(test_evict_idle_for_room, (void *)"cost"),
        cmocka_unit_test(test_leased_never_evicted),
        cmocka_unit_test(test_pin),
        cmocka_unit_test_prestate(test_priority, (void *)"lru"),
        cmocka_unit_test_prestate(test_priority, (void *)"cost"),
        cmocka_unit_test(test_cost_keeps_slow_loads),
        cmocka_unit_test(test_surplus_instances_first),
        cmocka_unit_test(test_ttl_idle),
        cmocka_unit_test(test_ttl_never_and_short),
        cmocka_unit_test(test_set_ttl),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_set_budget),
        cmocka_unit_test(test_oversize_after_load),
        cmocka_unit_test(test_update_measured),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
