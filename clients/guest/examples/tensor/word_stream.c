/* Streams its input back one word per chunk through wasi:tensor, upper-cased, and stops
 * early when the scheduler says to wind down.
 *
 * `_start` reads the staged input (at most 64 KiB) and emits "WORD " per word. `probe`
 * returns, packed: the emit code of a 64 KiB + 1 chunk (-2) in the low byte, the first
 * yield verdict in the next, and 1 in the third when deadline_remaining_ms is bounded.
 */
#include <tensorwasm/tensor.h>

#define EXPORT(name) __attribute__((export_name(name)))

static char input[64 << 10];
static char word[256];

EXPORT("_start") void start(void) {
    uint32_t len = wasi_tensor_input_len();
    if (len > sizeof input) len = sizeof input;
    uint32_t got = 0;
    int32_t n;
    while (got < len && (n = wasi_tensor_read_input(input + got, len - got)) > 0) got += n;
    uint32_t at = 0;
    while (at < got) {
        if (wasi_scheduler_yield() != WASI_SCHEDULER_CONTINUE) return;
        while (at < got && input[at] == ' ') at++;
        uint32_t w = 0;
        while (at < got && input[at] != ' ' && w < sizeof word - 1) {
            char c = input[at++];
            word[w++] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
        }
        if (w == 0) break;
        word[w++] = ' ';
        if (wasi_tensor_emit_chunk(word, w) != WASI_TENSOR_OK) return;
    }
    wasi_tensor_flush();
}

EXPORT("probe") int32_t probe(void) {
    int32_t over = wasi_tensor_emit_chunk(input, WASI_TENSOR_MAX_CHUNK_BYTES + 1);
    uint32_t verdict = wasi_scheduler_yield();
    uint32_t bounded = wasi_scheduler_deadline_remaining_ms() != WASI_SCHEDULER_UNBOUNDED;
    return (over & 0xff) | (int32_t)(verdict << 8) | (int32_t)(bounded << 16);
}
