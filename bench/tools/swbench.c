/*
 * swbench: the benchmark's load generator (static; it runs on the host and, copied in, inside
 * test pods that carry no libc). Every command prints one result line, "ok ..." or
 * "error <errno name>: ...", and exits 0 on success, 1 otherwise. Times are CLOCK_MONOTONIC
 * nanoseconds, the clock the host and every container share.
 *
 *   swbench connect-loop ADDR PORT N [UID [NETNS]]
 *       serve ADDR:PORT from a forked child (accept, close), then time N rounds of
 *       socket+connect+close (SO_LINGER 0: no TIME_WAIT) after N/10 warm-up rounds. With UID
 *       the loop runs as that uid. With NETNS ("new"): first unshare a network namespace,
 *       bring lo up, and load the iptables rules read from stdin with `iptables-restore`
 *       (when stdin is not empty): the rules live and die with this process.
 *       prints: ok N ELAPSED_NS
 *   swbench connect-once ADDR PORT       one connect; prints "ok" or "error EPERM: connect"
 *   swbench getppid N                    prints: ok N ELAPSED_NS
 *   swbench forkexec N PATH              fork, execv PATH, wait; N times. ok N ELAPSED_NS
 *   swbench udp-flood                    in a new network namespace (lo up, no other route):
 *                                        prints "ready PID", then reads "RATE COUNT MODE" lines
 *                                        from stdin; for each, sends COUNT datagrams paced at
 *                                        RATE per second (0: as fast as possible), each to a
 *                                        destination never used before. MODE "lo": to
 *                                        127.a.b.c:port with sendmmsg (delivered on loopback);
 *                                        "unreach": to 10.a.b.c:port with sendto, which the
 *                                        cgroup sendmsg hook sees before routing fails with
 *                                        ENETUNREACH. prints: ok SENT ELAPSED_NS
 *   swbench latency-loop ADDR PORT N INTERVAL_US
 *       serve ADDR:PORT from a forked child, then N times: take the time, connect, read the
 *       local port, close, sleep. prints one line per attempt "t T_NS LPORT RESULT", then ok.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    const char *name = strerrorname_np(errno);
    printf("error %s: %s\n", name ? name : "?", what);
    fflush(stdout);
    return 1;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int addr4(const char *ip, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons(atoi(port));
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1;
}

/* Forks a child that accepts and closes connections on sa until its parent dies. Returns its
 * pid once it listens, or -1. */
static pid_t serve(const struct sockaddr_in *sa) {
    int one = 1, ready[2];
    if (pipe(ready) < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(ready[0]);
        int s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        char ok = 1;
        if (s < 0 || bind(s, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(s, 4096) < 0) ok = 0;
        if (write(ready[1], &ok, 1) != 1) _exit(1);
        close(ready[1]);
        if (!ok) _exit(1);
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c >= 0) close(c);
        }
    }
    close(ready[1]);
    char ok = 0;
    if (read(ready[0], &ok, 1) != 1 || !ok) {
        close(ready[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        errno = EADDRINUSE;
        return -1;
    }
    close(ready[0]);
    return pid;
}

static void stop(pid_t pid) {
    if (geteuid() != 0 && seteuid(0) < 0) return;
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* One connect+close; 0 on success, else errno. */
static int one_connect(const struct sockaddr_in *sa) {
    static const struct linger rst = {1, 0};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return errno;
    int err = 0;
    if (connect(s, (const struct sockaddr *)sa, sizeof(*sa)) < 0) err = errno;
    setsockopt(s, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
    close(s);
    return err;
}

static int lo_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) return -1;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    int r = ioctl(s, SIOCSIFFLAGS, &ifr);
    close(s);
    return r;
}

/* A network namespace of our own, never the one we started in. */
static int own_netns(void) {
    struct stat before, after;
    if (stat("/proc/self/ns/net", &before) < 0) return fail("stat netns");
    if (unshare(CLONE_NEWNET) < 0) return fail("unshare(CLONE_NEWNET)");
    if (stat("/proc/self/ns/net", &after) < 0) return fail("stat netns");
    if (before.st_ino == after.st_ino) {
        errno = EINVAL;
        return fail("still in the original network namespace");
    }
    if (lo_up() < 0) return fail("lo up");
    return 0;
}

/* Runs `iptables-restore` on our stdin, in our (private) network namespace. Skipped when stdin
 * is empty or a terminal. */
static int load_rules(void) {
    struct stat st;
    if (fstat(0, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode))) return 0;
    if (S_ISREG(st.st_mode) && st.st_size == 0) return 0;
    pid_t pid = fork();
    if (pid < 0) return fail("fork");
    if (pid == 0) {
        execlp("iptables-restore", "iptables-restore", (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        errno = EINVAL;
        return fail("iptables-restore");
    }
    return 0;
}

static int connect_loop(char **argv, int argc) {
    struct sockaddr_in sa;
    if (argc < 5 || !addr4(argv[2], argv[3], &sa)) return fail("usage");
    long n = atol(argv[4]);
    long uid = argc > 5 ? atol(argv[5]) : -1;
    if (argc > 6 && !strcmp(argv[6], "new")) {
        if (own_netns()) return 1;
        if (load_rules()) return 1;
    }
    pid_t server = serve(&sa);
    if (server < 0) return fail("serve");
    /* Real and effective uid UID (sockets are owned by it); the saved uid stays 0 so that the
     * server, a root process, can still be stopped. */
    if (uid >= 0 && setresuid(uid, uid, 0) < 0) {
        stop(server);
        return fail("setresuid");
    }
    for (long i = 0; i < n / 10; i++) {
        int err = one_connect(&sa);
        if (err) {
            stop(server);
            errno = err;
            return fail("connect (warm-up)");
        }
    }
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        int err = one_connect(&sa);
        if (err) {
            stop(server);
            errno = err;
            return fail("connect");
        }
    }
    uint64_t t1 = now_ns();
    stop(server);
    printf("ok %ld %llu\n", n, (unsigned long long)(t1 - t0));
    return 0;
}

static int connect_once(char **argv, int argc) {
    struct sockaddr_in sa;
    if (argc < 4 || !addr4(argv[2], argv[3], &sa)) return fail("usage");
    int err = one_connect(&sa);
    if (err) {
        errno = err;
        return fail("connect");
    }
    printf("ok\n");
    return 0;
}

static int getppid_loop(long n) {
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    uint64_t t1 = now_ns();
    printf("ok %ld %llu\n", n, (unsigned long long)(t1 - t0));
    return 0;
}

static int forkexec_loop(long n, char *path) {
    char *args[] = {path, NULL};
    uint64_t t0 = now_ns();
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) return fail("fork");
        if (pid == 0) {
            execv(path, args);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0) return fail("waitpid");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            errno = ENOEXEC;
            return fail("child failed");
        }
    }
    uint64_t t1 = now_ns();
    printf("ok %ld %llu\n", n, (unsigned long long)(t1 - t0));
    return 0;
}

#define BATCH 64

static int udp_flood(void) {
    if (own_netns()) return 1;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return fail("socket");
    printf("ready %d\n", getpid());
    fflush(stdout);
    /* Destination number d: port 1024 + d % 64000 at address number d / 64000. */
    uint64_t d = 0;
    struct sockaddr_in dst[BATCH];
    struct mmsghdr msgs[BATCH];
    struct iovec iov = {"x", 1};
    char line[128];
    while (fgets(line, sizeof(line), stdin)) {
        double rate = 0;
        long count = 0;
        char mode[16] = "lo";
        if (sscanf(line, "%lf %ld %15s", &rate, &count, mode) < 2) break;
        int unreach = !strcmp(mode, "unreach");
        uint32_t net = unreach ? 0x0a000001u : 0x7f000001u;
        uint64_t t0 = now_ns();
        long sent = 0;
        while (sent < count) {
            if (rate > 0) {
                /* Paced: sleep until the schedule allows the next batch. */
                uint64_t due = t0 + (uint64_t)((double)sent * 1e9 / rate);
                uint64_t t = now_ns();
                if (due > t + 50000) {
                    struct timespec ts = {(time_t)((due - t) / 1000000000ull), (long)((due - t) % 1000000000ull)};
                    nanosleep(&ts, NULL);
                }
            }
            int k = count - sent < BATCH ? (int)(count - sent) : BATCH;
            if (rate > 0) {
                /* At most ~100 µs worth of datagrams per batch. */
                long per = (long)(rate / 10000);
                if (per < 1) per = 1;
                if (k > per) k = (int)per;
            }
            for (int i = 0; i < k; i++, d++) {
                dst[i].sin_family = AF_INET;
                dst[i].sin_port = htons((uint16_t)(1024 + d % 64000));
                dst[i].sin_addr.s_addr = htonl(net + (uint32_t)(d / 64000));
                memset(&msgs[i], 0, sizeof(msgs[i]));
                msgs[i].msg_hdr.msg_name = &dst[i];
                msgs[i].msg_hdr.msg_namelen = sizeof(dst[i]);
                msgs[i].msg_hdr.msg_iov = &iov;
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            if (unreach) {
                /* Each one fails after the hook: one syscall each. */
                for (int i = 0; i < k; i++) {
                    if (sendto(s, "x", 1, 0, (struct sockaddr *)&dst[i], sizeof(dst[i])) >= 0 || errno == ENETUNREACH) sent++;
                    else return fail("sendto");
                }
                continue;
            }
            int r = sendmmsg(s, msgs, k, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                return fail("sendmmsg");
            }
            /* Destinations of unsent messages were consumed too: never reuse one. */
            sent += r;
        }
        uint64_t t1 = now_ns();
        printf("ok %ld %llu\n", sent, (unsigned long long)(t1 - t0));
        fflush(stdout);
    }
    return 0;
}

static int latency_loop(char **argv, int argc) {
    struct sockaddr_in sa;
    if (argc < 6 || !addr4(argv[2], argv[3], &sa)) return fail("usage");
    long n = atol(argv[4]), interval = atol(argv[5]);
    pid_t server = serve(&sa);
    if (server < 0) return fail("serve");
    for (long i = 0; i < n; i++) {
        struct sockaddr_in local;
        socklen_t len = sizeof(local);
        uint64_t t = now_ns();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int err = connect(s, (const struct sockaddr *)&sa, sizeof(sa)) < 0 ? errno : 0;
        getsockname(s, (struct sockaddr *)&local, &len);
        close(s);
        const char *name = err ? strerrorname_np(err) : "ok";
        printf("t %llu %u %s\n", (unsigned long long)t, ntohs(local.sin_port), name ? name : "?");
        usleep(interval);
    }
    stop(server);
    printf("ok %ld\n", n);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "connect-loop")) return connect_loop(argv, argc);
    if (!strcmp(cmd, "connect-once")) return connect_once(argv, argc);
    if (!strcmp(cmd, "getppid") && argc > 2) return getppid_loop(atol(argv[2]));
    if (!strcmp(cmd, "forkexec") && argc > 3) return forkexec_loop(atol(argv[2]), argv[3]);
    if (!strcmp(cmd, "udp-flood")) return udp_flood();
    if (!strcmp(cmd, "latency-loop")) return latency_loop(argv, argc);
    fprintf(stderr, "usage: swbench connect-loop|connect-once|getppid|forkexec|udp-flood|latency-loop ...\n");
    return 2;
}
