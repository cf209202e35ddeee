/* A WASI reactor: no main, exports called one by one; state lives in linear memory.
 * Build: clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -o counter.wasm counter.c */
#include <stdint.h>
#include <stdio.h>

static int32_t count;

__attribute__((export_name("inc"))) int32_t inc(void) { return ++count; }

__attribute__((export_name("add"))) int32_t add(int32_t n) {
    count += n;
    return count;
}

__attribute__((export_name("shout"))) void shout(void) { printf("count is %d\n", count); }
