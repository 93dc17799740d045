/* larderd GET /metrics: Prometheus text exposition format 0.0.4. */
#include <stdarg.h>
#include <stdio.h>

#include "advice.h"
#include "plugin.h"
#include "routes.h"

static void put(struct larder__text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct larder__text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    larder__text_vput(t, fmt, ap);
    va_end(ap);
}

static void header(struct larder__text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Component names are [A-Za-z0-9._-], so they need no escaping in label values. */
static void per_component(struct larder__text *t, const struct larder_snapshot *s)
{
    static const struct {
        const char *name, *type, *help;
    } m[] = {
        {"larder_component_state", "gauge", "1 for the component's current state"},
        {"larder_component_reserved_bytes", "gauge", "bytes charged against the budget"},
        {"larder_component_estimate_bytes", "gauge", "estimated bytes before loading"},
        {"larder_component_measured_bytes", "gauge", "measured bytes after loading"},
        {"larder_component_instances", "gauge", "instances created"},
        {"larder_component_leases", "gauge", "live leases"},
        {"larder_component_waiters", "gauge", "acquirers waiting"},
        {"larder_component_loads_total", "counter", "loads that succeeded"},
        {"larder_component_failures_total", "counter", "loads that failed or were refused"},
        {"larder_component_hits_total", "counter", "leases served"},
        {"larder_component_cold_starts_total", "counter", "leases that waited for a load"},
        {"larder_component_evictions_total", "counter", "times the component was evicted"},
        {"larder_component_load_seconds_last", "gauge", "duration of the last load"},
    };
    for (size_t k = 0; k < sizeof m / sizeof m[0]; k++) {
        header(t, m[k].name, m[k].type, m[k].help);
        for (size_t i = 0; i < s->n; i++) {
            const struct larder_component_info *c = &s->components[i];
            double v[] = {1, (double)c->reserved_bytes, (double)c->estimate_bytes,
                          (double)c->measured_bytes, c->instances, c->leases, c->waiters,
                          (double)c->loads, (double)c->failures, (double)c->hits,
                          (double)c->cold_starts, (double)c->evictions, c->load_ms_last / 1000};
            if (k == 0)
                put(t, "%s{name=\"%s\",state=\"%s\"} 1\n", m[k].name, c->name,
                    larder_state_name(c->state));
            else
                put(t, "%s{name=\"%s\"} %.17g\n", m[k].name, c->name, v[k]);
        }
    }
}

/* What an inference gateway scrapes to route by load, named as the Gateway API Inference
 * Extension's model-server protocol names them (vLLM's names): requests waiting for their
 * model (its load, or a free instance) and requests holding a lease, per model and in all.
 * The protocol's KV-cache utilisation is not served: larder keeps no KV cache, and no other
 * figure means the same. The share of the budget reserved has larder's own name. */
static void gateway_gauges(struct larder__text *t, const struct larder_snapshot *s)
{
    unsigned long long waiting = 0, running = 0;
    header(t, "vllm:num_requests_waiting", "gauge", "requests waiting for their model");
    for (size_t i = 0; i < s->n; i++) {
        put(t, "vllm:num_requests_waiting{model_name=\"%s\"} %u\n", s->components[i].name,
            s->components[i].waiters);
        waiting += s->components[i].waiters;
    }
    header(t, "vllm:num_requests_running", "gauge", "requests holding a lease on their model");
    for (size_t i = 0; i < s->n; i++) {
        put(t, "vllm:num_requests_running{model_name=\"%s\"} %u\n", s->components[i].name,
            s->components[i].leases);
        running += s->components[i].leases;
    }
    double usage = s->budget_bytes ? (double)s->reserved_bytes / (double)s->budget_bytes : 0;
    header(t, "larder_requests_waiting", "gauge", "requests waiting for their model, all models");
    put(t, "larder_requests_waiting %llu\n", waiting);
    header(t, "larder_requests_running", "gauge", "requests holding a lease, all models");
    put(t, "larder_requests_running %llu\n", running);
    header(t, "larder_budget_usage_ratio", "gauge", "reserved bytes over the budget");
    put(t, "larder_budget_usage_ratio %.17g\n", usage);
}

static void daemon_gauges(struct larder__text *t, struct larder__daemon *d)
{
    header(t, "larder_inflight_requests", "gauge", "requests waiting for a lease or a worker");
    put(t, "larder_inflight_requests %u\n", atomic_load(&d->inflight));
    uint64_t deadline = 0, gone = 0;
    larder__infer_cancel_counts(&deadline, &gone);
    header(t, "larder_infer_cancelled_total", "counter",
           "inferences stopped by their infer_timeout or because their client went away");
    put(t, "larder_infer_cancelled_total{reason=\"deadline\"} %llu\n",
        (unsigned long long)deadline);
    put(t, "larder_infer_cancelled_total{reason=\"client_gone\"} %llu\n",
        (unsigned long long)gone);
    header(t, "larder_worker_jobs", "gauge", "inference jobs queued or running");
    put(t, "larder_worker_jobs %zu\n", larder__pool_pending(d->infer_pool));
    header(t, "larder_sse_clients", "gauge", "event stream clients connected");
    put(t, "larder_sse_clients %u\n", larder__events_clients(d->events));
}

static void manager_wide(struct larder__text *t, const struct larder_snapshot *s)
{
    header(t, "larder_budget_bytes", "gauge", "memory budget of loaded components");
    put(t, "larder_budget_bytes %llu\n", (unsigned long long)s->budget_bytes);
    header(t, "larder_reserved_bytes", "gauge", "bytes reserved by loading and loaded components");
    put(t, "larder_reserved_bytes %llu\n", (unsigned long long)s->reserved_bytes);
    header(t, "larder_rss_bytes", "gauge", "resident set size of the daemon");
    put(t, "larder_rss_bytes %llu\n", (unsigned long long)s->rss_bytes);
    header(t, "larder_peak_rss_bytes", "gauge", "peak resident set size of the daemon");
    put(t, "larder_peak_rss_bytes %llu\n", (unsigned long long)s->peak_rss_bytes);
    header(t, "larder_gpu_budget_bytes", "gauge", "device-memory budget per GPU (0: none)");
    for (unsigned g = 0; g < LARDER_MAX_GPUS; g++)
        if (s->gpu_budget_bytes[g] || s->gpu_reserved_bytes[g])
            put(t, "larder_gpu_budget_bytes{gpu=\"%u\"} %llu\n", g,
                (unsigned long long)s->gpu_budget_bytes[g]);
    header(t, "larder_gpu_reserved_bytes", "gauge", "device memory reserved per GPU");
    for (unsigned g = 0; g < LARDER_MAX_GPUS; g++)
        if (s->gpu_budget_bytes[g] || s->gpu_reserved_bytes[g])
            put(t, "larder_gpu_reserved_bytes{gpu=\"%u\"} %llu\n", g,
                (unsigned long long)s->gpu_reserved_bytes[g]);
    header(t, "larder_components", "gauge", "components defined");
    put(t, "larder_components %zu\n", s->n);
}

static void event_counters(struct larder__text *t, const struct larder__event_counts *c)
{
    header(t, "larder_events_total", "counter", "library events by type");
    for (int i = LARDER_EVENT_LOAD_START; i <= LARDER_EVENT_FALLBACK; i++)
        put(t, "larder_events_total{type=\"%s\"} %llu\n",
            larder__event_type_name((enum larder_event_type)i),
            (unsigned long long)c->by_type[i]);
    header(t, "larder_evictions_total", "counter", "whole-component evictions by reason");
    for (int i = LARDER_REASON_BUDGET; i <= LARDER_REASON_OVERSIZE; i++)
        put(t, "larder_evictions_total{reason=\"%s\"} %llu\n",
            larder__reason_name((enum larder_evict_reason)i),
            (unsigned long long)c->evict_by_reason[i]);
    header(t, "larder_load_duration_seconds", "histogram", "duration of successful loads");
    unsigned long long cum = 0;
    for (int i = 0; i < LARDER__LOAD_BUCKETS; i++) {
        cum += c->load_buckets[i];
        put(t, "larder_load_duration_seconds_bucket{le=\"%g\"} %llu\n", larder__load_buckets[i],
            cum);
    }
    cum += c->load_buckets[LARDER__LOAD_BUCKETS];
    put(t, "larder_load_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    put(t, "larder_load_duration_seconds_sum %.17g\n", c->load_seconds_sum);
    put(t, "larder_load_duration_seconds_count %llu\n", cum);
    header(t, "larder_sse_clients_total", "counter", "event stream clients accepted");
    put(t, "larder_sse_clients_total %llu\n", (unsigned long long)c->sse_clients);
    header(t, "larder_sse_dropped_total", "counter", "event stream clients dropped as too slow");
    put(t, "larder_sse_dropped_total %llu\n", (unsigned long long)c->sse_dropped);
}

static void http_counters(struct larder__text *t, const struct larder__http_counts *c)
{
    header(t, "larder_http_requests_total", "counter", "HTTP requests answered, by status class");
    for (int i = 1; i <= 5; i++)
        put(t, "larder_http_requests_total{code=\"%dxx\"} %llu\n", i,
            (unsigned long long)c->by_status[i]);
    header(t, "larder_http_request_duration_seconds", "histogram", "HTTP request durations");
    unsigned long long cum = 0;
    for (int i = 0; i < 12; i++) {
        cum += c->duration_buckets[i];
        put(t, "larder_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
            larder__http_buckets[i], cum);
    }
    cum += c->duration_buckets[12];
    put(t, "larder_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
    put(t, "larder_http_request_duration_seconds_sum %.17g\n", c->duration_sum);
    put(t, "larder_http_request_duration_seconds_count %llu\n", cum);
}

int larder__metrics_text(struct larder__daemon *d, struct larder__text *t)
{
    struct larder_snapshot *s = NULL;
    struct larder__event_counts ec;
    struct larder__http_counts hc;
    larder *m = larder__mgr_get(d);
    int e = m ? larder_snapshot(m, &s) : LARDER_ECLOSED;
    if (m)
        larder__mgr_put(d);
    if (e < 0)
        return e;
    larder__text_reserve(t, 16384 + s->n * 1400);
    larder__events_counts(d->events, &ec);
    larder__http_counts(d->http, &hc);
    manager_wide(t, s);
    daemon_gauges(t, d);
    per_component(t, s);
    gateway_gauges(t, s);
    event_counters(t, &ec);
    larder__advice_load_histograms(larder__events_advice(d->events), t);
    http_counters(t, &hc);
    header(t, "larder_reloads_total", "counter", "config reloads that succeeded");
    put(t, "larder_reloads_total %llu\n", (unsigned long long)atomic_load(&d->reloads));
    larder_snapshot_free(s);
    return 0;
}
