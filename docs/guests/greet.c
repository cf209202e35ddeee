/* A WASI command: argv, the environment, stdin and a granted directory.
 * Build: clang-19 --target=wasm32-wasi --sysroot=/usr -O2 -o greet.wasm greet.c */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("argv[0]=%s argc=%d\n", argv[0], argc);
    for (int i = 1; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);
    const char *mode = getenv("MODE");
    printf("MODE=%s\n", mode ? mode : "(unset)");
    char line[256];
    while (fgets(line, sizeof line, stdin)) printf("stdin: %s", line);
    FILE *file = fopen("/data/hello.txt", "r"); /* the directory granted with --dir */
    if (file) {
        while (fgets(line, sizeof line, file)) printf("file: %s", line);
        fclose(file);
    } else {
        printf("no /data/hello.txt\n");
    }
    return mode && mode[0] == 'f' ? 3 : 0; /* MODE=fail: exit code 3 */
}
