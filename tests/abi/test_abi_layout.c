/* Frozen layouts of the public structs: the plugin ABI (larder/backend.h) and the option
 * and callback structs of the library API (larder/larder.h).
 *
 * Fields may only be appended. Reordering, resizing or removing one breaks this file's
 * build (static assertions, x86_64 LP64); appending one means updating the size here,
 * and for the plugin ABI bumping LARDER_BACKEND_ABI_MINOR. The runtime tests check that
 * the library agrees with these sizes.
 */
#include <larder/backend.h>
#include <larder/larder.h>

#include <errno.h>
#include <stdarg.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define AT(type, field, offset)                                                             \
    _Static_assert(offsetof(struct type, field) == (offset), #type "." #field " moved")
#define SIZE(type, size) _Static_assert(sizeof(struct type) == (size), #type " resized")
#define VALUE(name, value) _Static_assert((name) == (value), #name " renumbered")

#if defined(__x86_64__) && defined(__LP64__)

/* ---- plugin ABI ------------------------------------------------------------------------ */

VALUE(LARDER_BACKEND_ABI_MAJOR, 1);
VALUE(LARDER_BACKEND_EINPUT, -30001);
VALUE(LARDER_BACKEND_EMEDIA, -30002);
VALUE(LARDER_BACKEND_EOPTION, -30003);
VALUE(LARDER_BACKEND_EMODEL, -30004);
VALUE(LARDER_BACKEND_EINTERNAL, -30005);
VALUE(LARDER_BACKEND_ENOMEM, -30006);
VALUE(LARDER_BACKEND_ABI_MINOR, 2);
VALUE(LARDER_BACKEND_ECANCELED, -30007);
VALUE(LARDER_BACKEND_ETOOBIG, -30008);
VALUE(LARDER_LOG_ERROR, 0);
VALUE(LARDER_LOG_WARN, 1);
VALUE(LARDER_LOG_INFO, 2);
VALUE(LARDER_LOG_DEBUG, 3);

AT(larder_option, key, 0);
AT(larder_option, value, 8);
SIZE(larder_option, 16);

AT(larder_host, abi_major, 0);
AT(larder_host, abi_minor, 4);
AT(larder_host, log, 8);
AT(larder_host, rss_bytes, 16);
AT(larder_host, cancelled, 24);             /* minor 1 */
AT(larder_host, reserve_request_bytes, 32); /* minor 1 */
AT(larder_host, emit, 40);                  /* minor 2 */
SIZE(larder_host, 48);

AT(larder_infer_request, body, 0);
AT(larder_infer_request, body_len, 8);
AT(larder_infer_request, content_type, 16);
AT(larder_infer_request, params, 24);
AT(larder_infer_request, n_params, 32);
AT(larder_infer_request, host_ctx, 40); /* minor 1 */
AT(larder_infer_request, stream, 48);   /* minor 2 */
SIZE(larder_infer_request, 56);

AT(larder_infer_result, json, 0);
AT(larder_infer_result, bytes, 8);
AT(larder_infer_result, bytes_len, 16);
AT(larder_infer_result, content_type, 24);
SIZE(larder_infer_result, 32);

AT(larder_backend_ops, abi_major, 0);
AT(larder_backend_ops, abi_minor, 4);
AT(larder_backend_ops, name, 8);
AT(larder_backend_ops, description, 16);
AT(larder_backend_ops, option_keys, 24);
AT(larder_backend_ops, check, 32);
AT(larder_backend_ops, estimate, 40);
AT(larder_backend_ops, load, 48);
AT(larder_backend_ops, unload, 56);
AT(larder_backend_ops, instance_new, 64);
AT(larder_backend_ops, instance_free, 72);
AT(larder_backend_ops, measure, 80);
AT(larder_backend_ops, infer, 88);
AT(larder_backend_ops, result_free, 96);
SIZE(larder_backend_ops, 104);

/* ---- library API --------------------------------------------------------------------- */

AT(larder_class, struct_size, 0);
AT(larder_class, name, 8);
AT(larder_class, load, 16);
AT(larder_class, unload, 24);
AT(larder_class, instance_new, 32);
AT(larder_class, instance_free, 40);
AT(larder_class, estimate, 48);
AT(larder_class, measure, 56);
AT(larder_class, unload_report, 64); /* 0.1 */
SIZE(larder_class, 72);

AT(larder_event, struct_size, 0);
AT(larder_event, type, 8);
AT(larder_event, name, 16);
AT(larder_event, reason, 24);
AT(larder_event, error, 28);
AT(larder_event, message, 32);
AT(larder_event, bytes, 40);
AT(larder_event, bytes_returned, 48);
AT(larder_event, load_ms, 56);
AT(larder_event, detail, 64);
SIZE(larder_event, 72);

AT(larder_opts, struct_size, 0);
AT(larder_opts, budget_bytes, 8);
AT(larder_opts, budget_fraction, 16);
AT(larder_opts, policy, 24);
AT(larder_opts, loader_threads, 32);
AT(larder_opts, default_ttl_ms, 40);
AT(larder_opts, default_queue_max, 48);
AT(larder_opts, admission_timeout_ms, 56);
AT(larder_opts, file_size_factor, 64);
AT(larder_opts, cooldown_min_ms, 72);
AT(larder_opts, cooldown_max_ms, 80);
AT(larder_opts, trim_after_unload, 88);
AT(larder_opts, on_event, 96);
AT(larder_opts, event_ud, 104);
AT(larder_opts, state_dir, 112);
AT(larder_opts, high_watermark, 120);
AT(larder_opts, low_watermark, 128);
AT(larder_opts, watch_pressure, 136);
AT(larder_opts, psi_trigger, 144);
AT(larder_opts, history_seconds, 152);
AT(larder_opts, close_timeout_ms, 160);
AT(larder_opts, children_bytes, 168); /* 0.1 */
AT(larder_opts, children_ud, 176);
SIZE(larder_opts, 184);

AT(larder_component_opts, struct_size, 0);
AT(larder_component_opts, cls, 8);
AT(larder_component_opts, ud, 16);
AT(larder_component_opts, ud_free, 24);
AT(larder_component_opts, path, 32);
AT(larder_component_opts, ttl_ms, 40);
AT(larder_component_opts, max_instances, 48);
AT(larder_component_opts, pin, 52);
AT(larder_component_opts, priority, 56);
AT(larder_component_opts, preload, 60);
AT(larder_component_opts, fallback, 64);
AT(larder_component_opts, memory_bytes, 72);
AT(larder_component_opts, queue_max, 80);
AT(larder_component_opts, gpu, 84);
AT(larder_component_opts, gpu_bytes, 88);
SIZE(larder_component_opts, 96);

AT(larder_trim_result, struct_size, 0);
AT(larder_trim_result, components, 8);
AT(larder_trim_result, instances, 12);
AT(larder_trim_result, reserved_freed, 16);
AT(larder_trim_result, rss_freed, 24);
SIZE(larder_trim_result, 32);

/* Numbers that cross the API as plain ints. */
VALUE(LARDER_ENOTFOUND, -20001);
VALUE(LARDER_ECYCLE, -20014);
VALUE(LARDER_EVENT_LOAD_START, 1);
VALUE(LARDER_EVENT_FALLBACK, 9);
VALUE(LARDER_REASON_NONE, 0);
VALUE(LARDER_REASON_OVERSIZE, 7);
VALUE(LARDER_STATE_UNLOADED, 0);
VALUE(LARDER_STATE_FAILED, 4);
VALUE(LARDER_TTL_NEVER, -1);
VALUE(LARDER_TTL_IDLE, 0);
#endif

/* The library's initializers stamp the sizes this header declares. */
static void test_initializers_agree(void **state)
{
    struct larder_opts o;
    struct larder_component_opts c;

    memset(&o, 0xFF, sizeof(o));
    memset(&c, 0xFF, sizeof(c));
    larder_opts_init(&o);
    larder_component_opts_init(&c);
    assert_int_equal(o.struct_size, sizeof(struct larder_opts));
    assert_int_equal(c.struct_size, sizeof(struct larder_component_opts));
    larder_opts_init(NULL);
    larder_component_opts_init(NULL);
}

/* A struct_size smaller than any released layout is refused, not read past its end. */
static void test_short_struct_refused(void **state)
{
    struct larder_opts o;
    larder *m = (larder *)&o;

    larder_opts_init(&o);
    o.struct_size = sizeof(size_t);
    assert_int_equal(larder_open(&o, &m), -EINVAL);
    assert_ptr_equal(m, (larder *)&o); /* untouched on failure */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_initializers_agree),
        cmocka_unit_test(test_short_struct_refused),
    };

    return cmocka_run_group_tests_name("abi-layout", tests, NULL, NULL);
}
