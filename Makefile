# larder: the two commands of the quick start, and a few more.
#   make run     install missing packages, build, start larderd with examples/larder.ini
#   make check   install missing packages, build, run every test
#   make check-repeat   the same, every test REPEAT times (20), stopping at the first failure
BUILD ?= build
MESON_OPTS ?= --buildtype=debugoptimized
CONFIG ?= examples/larder.ini
LISTEN ?= 127.0.0.1:8377
REPEAT ?= 20

.PHONY: all deps build check check-repeat run bench check-asan check-tsan clean

all: build

deps:
	@sh scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

check: build
	meson test -C $(BUILD) --print-errorlogs $(TESTS)

# Flakes show up under repetition: the plain build only (the sanitizer builds are slow).
check-repeat: build
	meson test -C $(BUILD) --print-errorlogs --repeat $(REPEAT) $(TESTS)

run: build
	@# a token file others may read draws a warning; git keeps no such permission
	chmod go-rwx examples/admin.tokens
	OMP_THREAD_LIMIT=1 $(BUILD)/src/daemon/larderd --config $(CONFIG) --listen $(LISTEN)

bench: build
	sh scripts/deps.sh scripts/packages.txt scripts/bench-packages.txt
	sh bench/run-all.sh $(BUILD)

check-asan: deps
	[ -f build-asan/build.ninja ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug
	ninja -C build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
		meson test -C build-asan --print-errorlogs --timeout-multiplier 4 $(TESTS)

check-tsan: deps
	[ -f build-tsan/build.ninja ] || meson setup build-tsan -Db_sanitize=thread -Db_lundef=false --buildtype=debug
	ninja -C build-tsan
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
		meson test -C build-tsan --print-errorlogs --timeout-multiplier 6 $(TESTS)

clean:
	rm -rf $(BUILD) build-asan build-tsan

# Fuzzing: every libFuzzer harness of tests/fuzz for FUZZ_SECONDS each, in build-fuzz
# (clang, ASan+UBSan); fails when one crashes.
FUZZ_SECONDS ?= 30
.PHONY: fuzz
fuzz:
	sh scripts/deps.sh scripts/packages.txt scripts/fuzz-packages.txt
	sh scripts/fuzz.sh $(FUZZ_SECONDS)

# Soak: larderd under mixed, invalid and hostile traffic with reloads and cleanups for
# SOAK_SECONDS (at most 600), in a memory-limited cgroup when permitted; fails if larderd
# dies, hangs or does not stop cleanly. Not part of check.
SOAK_SECONDS ?= 180
.PHONY: soak
soak: build
	python3 bench/soak/soak.py --build $(BUILD) --seconds $(SOAK_SECONDS)
