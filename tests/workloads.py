"""C workloads shared by the tests and the bench scripts (plain strings: importing this module
needs neither pytest nor a compiler)."""

from __future__ import annotations

# Two processes keep both cores busy for argv[1] seconds, each 2/3 of its CPU time in alpha()
# and 1/3 in beta(): slices of the process's own CPU time, so the split holds however often
# it is preempted.
TWO_BUSY = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double clock_s(clockid_t id) {
    struct timespec t; clock_gettime(id, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
/* Slices of the process's own CPU time: the split holds however often it is preempted. */
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
__attribute__((noinline)) void alpha(double s) {
    volatile double x = 0; double e = cpu() + s;
    while (cpu() < e) for (int i = 0; i < 1000; i++) x += i;
}
__attribute__((noinline)) void beta(double s) {
    volatile double x = 0; double e = cpu() + s;
    while (cpu() < e) for (int i = 0; i < 1000; i++) x += i;
}
int main(int argc, char **argv) {
    double secs = atof(argv[1]);
    pid_t child = fork();
    double end = now() + secs;
    while (now() < end) { alpha(0.02); beta(0.01); }
    if (child) waitpid(child, 0, 0);
    return 0;
}
"""
