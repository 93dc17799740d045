/* larder_parse_size() and larder__parse_budget(). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "larder/larder.h"
#include "probe.h"

#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)
#define TIB (1024ull * GIB)

struct good {
    const char *text;
    uint64_t bytes;
};

static void parses_sizes(void **state)
{
    static const struct good cases[] = {
        {"0", 0},
        {"123", 123},
        {"123B", 123},
        {"123 b", 123},
        {"512MiB", 512 * MIB},
        {"512mib", 512 * MIB},
        {"512Mi", 512 * MIB},
        {"2GiB", 2 * GIB},
        {"1.5G", 3 * GIB / 2},
        {"1.5g", 3 * GIB / 2},
        {"100kB", 100000},
        {"100KB", 100000},
        {"1 GB", 1000000000ull},
        {"  1 GB  ", 1000000000ull},
        {"\t7\tMB", 7000000ull},
        {"4K", 4 * KIB},
        {"4k", 4 * KIB},
        {"3M", 3 * MIB},
        {"2T", 2 * TIB},
        {"2TB", 2000000000000ull},
        {"1TiB", TIB},
        {"1P", 1024 * TIB},
        {"0.5KiB", 512},
        {"0.001kB", 1},
        {"1.0000009k", 1024},           /* digits past the 6th are dropped */
        {"0.3", 0},                     /* fractions of a byte round down */
        {"2.75MiB", 2 * MIB + 3 * MIB / 4},
        {"18446744073709551615", UINT64_MAX},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 0xdead;
        int r = larder_parse_size(cases[i].text, &v);
        if (r != 0 || v != cases[i].bytes)
            print_error("\"%s\": r=%d v=%llu want %llu\n", cases[i].text, r,
                        (unsigned long long)v, (unsigned long long)cases[i].bytes);
        assert_int_equal(r, 0);
        assert_int_equal(v, cases[i].bytes);
    }
}

static void rejects_garbage(void **state)
{
    static const char *const bad[] = {
        "", " ", "abc", "-1", "-1MiB", "+5", "1.", ".5G", "1..5", "1.5.5", "12 34", "5 XB",
        "5MiBs", "5 MiB B", "5iB", "0x10", "1e9", "10%", "5 k B", "16EiB", "1,5G", "MiB", "i",
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 77;
        int r = larder_parse_size(bad[i], &v);
        if (r != -EINVAL)
            print_error("\"%s\" gave %d\n", bad[i], r);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(v, 77); /* untouched on failure */
    }
    assert_int_equal(larder_parse_size(NULL, &(uint64_t){0}), -EINVAL);
    assert_int_equal(larder_parse_size("1", NULL), -EINVAL);
}

static void rejects_overflow(void **state)
{
    static const char *const big[] = {
        "18446744073709551616", "99999999999999999999999", "16384PiB", "17179869184GiB",
        "18446744073709551615.5k", "20000000TB",
    };

    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        uint64_t v = 77;
        int r = larder_parse_size(big[i], &v);
        if (r != -ERANGE)
            print_error("\"%s\" gave %d\n", big[i], r);
        assert_int_equal(r, -ERANGE);
        assert_int_equal(v, 77);
    }
    /* the largest value that fits, reached through a fraction */
    uint64_t v;
    assert_int_equal(larder_parse_size("16383.999999PiB", &v), 0);
    assert_true(v < UINT64_MAX && v > UINT64_MAX - 1024 * TIB / 1000000 * 2);
}

static void budgets(void **state)
{
    uint64_t v = 0;

    assert_int_equal(larder__parse_budget("75%", 4 * GIB, &v), 0);
    assert_int_equal(v, 3 * GIB);
    assert_int_equal(larder__parse_budget(" 12.5 % ", 8 * GIB, &v), 0);
    assert_int_equal(v, GIB);
    assert_int_equal(larder__parse_budget("100%", 1000, &v), 0);
    assert_int_equal(v, 1000);
    assert_int_equal(larder__parse_budget("0%", 1000, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(larder__parse_budget("33.333333%", 3000000, &v), 0);
    assert_int_equal(v, 999999); /* rounded down */
    assert_int_equal(larder__parse_budget("50%", UINT64_MAX, &v), 0);
    assert_int_equal(v, UINT64_MAX / 2);
    assert_int_equal(larder__parse_budget("2GiB", 1000, &v), 0); /* a size ignores limit */
    assert_int_equal(v, 2 * GIB);

    v = 5;
    assert_int_equal(larder__parse_budget("101%", 1000, &v), -ERANGE);
    assert_int_equal(larder__parse_budget("100.5%", 1000, &v), -ERANGE);
    assert_int_equal(larder__parse_budget("-5%", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("%", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("5%%", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("5% of it", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("5 x%", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("50%", 0, &v), -EINVAL);
    assert_int_equal(larder__parse_budget("lots", 1000, &v), -EINVAL);
    assert_int_equal(larder__parse_budget(NULL, 1000, &v), -EINVAL);
    assert_int_equal(v, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_sizes),
        cmocka_unit_test(rejects_garbage),
        cmocka_unit_test(rejects_overflow),
        cmocka_unit_test(budgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
