/* The README's example: one component, loaded on first use, shared, unloaded at close. */
#include <larder/larder.h>

#include <stdio.h>
#include <stdlib.h>

/* The "model": a table of squares, built when someone first needs it. */
static int load_squares(void *ud, void **ret_model, char *err, size_t errlen)
{
    size_t n = *(size_t *)ud;
    long *table = malloc(n * sizeof(*table));
    if (!table) {
        snprintf(err, errlen, "no memory for %zu entries", n);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        table[i] = (long)(i * i);
    *ret_model = table;
    return 0;
}

static void unload_squares(void *ud, void *model)
{
    free(model);
}

static const struct larder_class squares_class = {
    .struct_size = sizeof(struct larder_class),
    .name = "squares",
    .load = load_squares,
    .unload = unload_squares,
};

int main(void)
{
    static size_t entries = 1000;
    struct larder_opts opts;
    larder_opts_init(&opts);
    opts.budget_bytes = 64 << 20; /* what loaded components may take, all together */
    larder *m = NULL;
    int rc = larder_open(&opts, &m);

    struct larder_component_opts def;
    larder_component_opts_init(&def);
    def.cls = &squares_class;
    def.ud = &entries;
    def.memory_bytes = entries * sizeof(long); /* the estimate admission goes by */
    if (rc == 0)
        rc = larder_define(m, "squares", &def); /* cheap: nothing is loaded yet */

    larder_lease *lease = NULL;
    if (rc == 0)
        rc = larder_acquire(m, "squares", 5000, &lease); /* loads it once, then shares it */
    long result = -1;
    if (rc == 0) {
        const long *squares = larder_lease_model(lease);
        result = squares[12];
        printf("12 x 12 = %ld (cold start: %s)\n", result,
               larder_lease_cold_start(lease) ? "yes" : "no");
        larder_release(lease); /* idle now: kept warm for its ttl, evicted if room is needed */
    } else {
        fprintf(stderr, "larder: %s\n", larder_strerror(rc));
    }
    larder_close(m); /* unloads what is still loaded */
    return result == 144 ? 0 : 1;
}
