#!/bin/sh
# The README's C example must be tests/unit/readme_example.c, line for line.
set -eu
readme=$1 example=$2
block=$(awk '/^```c$/{on=1; next} /^```$/{if (on) exit} on' "$readme")
if [ "$block" = "$(cat "$example")" ]; then
    echo "README example matches $example"
else
    echo "README.md's C example differs from $example:" >&2
    printf '%s\n' "$block" | diff - "$example" >&2 || true
    exit 1
fi
