/*
 * swtool: the test pods' multi-tool (static, no libc needed in the image). Each command does
 * one socket or process action the tests and attack scenarios need, prints one line saying
 * what happened ("ok ..." or "error <errno name>: ..."), and exits 0 on success, 1 otherwise.
 *
 *   swtool serve-tcp ADDR PORT [LINGER_MS]  accept forever; reply "pong" + what was read,
 *                                        then wait LINGER_MS before closing
 *   swtool connect-tcp ADDR PORT [DATA]  connect, send DATA, read the reply
 *   swtool fastopen-tcp ADDR PORT DATA   connect with TCP Fast Open (sendto MSG_FASTOPEN),
 *                                        read the reply
 *   swtool hold-tcp ADDR PORT SECONDS    connect and keep the connection open, sending
 *                                        one byte a second; reports when it breaks
 *   swtool bind-tcp ADDR PORT [SECONDS]  bind and listen, then sleep (squat a port)
 *   swtool serve-udp ADDR PORT           receive datagrams forever
 *   swtool send-udp ADDR PORT DATA       sendto, unconnected
 *   swtool flood-udp ADDR PORT SECONDS STOPFILE  sendto as fast as it can, until SECONDS
 *                                        passed or STOPFILE exists; prints
 *                                        "ok sent N refused M" (M: sends that failed EPERM)
 *   swtool connect-unix PATH|@NAME       connect a unix stream socket, read the reply
 *   swtool serve-unix PATH|@NAME         accept forever on a unix stream socket; reply "pong"
 *   swtool setns-pidfd PID TYPES CMD...  join PID's namespaces through a pidfd (TYPES: any of
 *                                        "net,mnt,uts,ipc,pid,cgroup,user"), then exec CMD
 *   swtool clone-userns                  clone3 a child into a new user namespace
 *   swtool ptrace-attach PID             PTRACE_ATTACH, then detach
 *   swtool vm-read PID ADDR              process_vm_readv 8 bytes at ADDR (hex) of PID
 *
 * With SWTOOL_HOLD=SECONDS in the environment, a command that returns stays alive that long
 * after printing its line: what a kill after the fact (by the daemon, once it has seen the
 * event) finds still running, as a longer-lived attacker would be.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
    printf("error %s: %s\n", strerrorname_np(errno) ? strerrorname_np(errno) : "?", what);
    fflush(stdout);
    return 1;
}

/* Fills an IPv4 or IPv6 sockaddr from text; returns its length, 0 if not an address. */
static socklen_t parse(const char *ip, const char *port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(atoi(port));
        return sizeof(*v4);
    }
    if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(atoi(port));
        return sizeof(*v6);
    }
    return 0;
}

static int sock_for(const struct sockaddr_storage *ss, int type) {
    return socket(ss->ss_family, type, 0);
}

static int serve_tcp(const char *ip, const char *port, const char *linger_ms) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int one = 1, s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s, (struct sockaddr *)&ss, len) < 0) return fail("bind");
    if (listen(s, 64) < 0) return fail("listen");
    printf("ok listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char buf[512], reply[600];
        ssize_t n = read(c, buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = 0;
        int m = snprintf(reply, sizeof(reply), "pong %s", buf);
        if (write(c, reply, m) < 0) { /* the client went away */ }
        if (linger_ms) usleep(atoi(linger_ms) * 1000);
        close(c);
    }
}

/* Ends our side of a connection, prints the reply ("ok REPLY") and closes. */
static int print_reply(int s) {
    shutdown(s, SHUT_WR);
    char buf[600];
    ssize_t n = read(s, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("ok %s\n", buf);
    fflush(stdout);
    close(s);
    return 0;
}

static int connect_tcp(const char *ip, const char *port, const char *data) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&ss, len) < 0) return fail("connect");
    if (data && write(s, data, strlen(data)) < 0) return fail("write");
    return print_reply(s);
}

static int fastopen_tcp(const char *ip, const char *port, const char *data) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    if (sendto(s, data, strlen(data), MSG_FASTOPEN, (struct sockaddr *)&ss, len) < 0) return fail("sendto");
    return print_reply(s);
}

static int hold_tcp(const char *ip, const char *port, const char *seconds) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&ss, len) < 0) return fail("connect");
    printf("ok connected\n");
    fflush(stdout);
    for (int i = 0; i < atoi(seconds); i++) {
        if (send(s, "x", 1, MSG_NOSIGNAL) < 0) return fail("send");
        sleep(1);
    }
    printf("ok held\n");
    return 0;
}

static int bind_tcp(const char *ip, const char *port, const char *seconds) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    if (bind(s, (struct sockaddr *)&ss, len) < 0) return fail("bind");
    if (listen(s, 8) < 0) return fail("listen");
    printf("ok bound\n");
    fflush(stdout);
    sleep(seconds ? atoi(seconds) : 0);
    return 0;
}

static int serve_udp(const char *ip, const char *port) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_DGRAM);
    if (!len || s < 0) return fail("socket");
    if (bind(s, (struct sockaddr *)&ss, len) < 0) return fail("bind");
    printf("ok listening\n");
    fflush(stdout);
    for (;;) {
        char buf[512];
        if (recv(s, buf, sizeof(buf), 0) < 0) return fail("recv");
    }
}

static int send_udp(const char *ip, const char *port, const char *data) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_DGRAM);
    if (!len || s < 0) return fail("socket");
    if (sendto(s, data, strlen(data), 0, (struct sockaddr *)&ss, len) < 0) return fail("sendto");
    printf("ok sent\n");
    return 0;
}

static int flood_udp(const char *ip, const char *port, const char *seconds, const char *stop) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_DGRAM);
    if (!len || s < 0 || !seconds || !stop) return fail("socket");
    time_t end = time(NULL) + atoi(seconds);
    unsigned long long sent = 0, refused = 0, other = 0;
    for (;;) {
        /* Look at the clock and the stop file only now and then: the sends are the point. */
        if ((sent & 4095) == 0 && (time(NULL) >= end || access(stop, F_OK) == 0)) break;
        if (sendto(s, "x", 1, 0, (struct sockaddr *)&ss, len) < 0) {
            if (errno == EPERM) refused++;
            else other++;
        }
        sent++;
    }
    printf("ok sent %llu refused %llu other %llu\n", sent, refused, other);
    return 0;
}

/* TCP connects to IP:PORT (nobody listening) as fast as possible, each a new socket: a flood
 * of telemetry, none of it refused by a rule. Until SECONDS pass or the file STOP exists. */
static int flood_connect(const char *ip, const char *port, const char *seconds, const char *stop) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    if (!len || !seconds || !stop) return fail("arguments");
    time_t end = time(NULL) + atoi(seconds);
    unsigned long long tried = 0, refused = 0;
    for (;;) {
        if ((tried & 1023) == 0 && (time(NULL) >= end || access(stop, F_OK) == 0)) break;
        int s = sock_for(&ss, SOCK_STREAM);
        if (s < 0) return fail("socket");
        if (connect(s, (struct sockaddr *)&ss, len) < 0 && errno == EPERM) refused++;
        close(s);
        tried++;
    }
    printf("ok tried %llu refused %llu\n", tried, refused);
    return 0;
}

/* A unix address for PATH, or for the abstract name NAME of "@NAME"; its length. */
static socklen_t unix_addr(const char *path, struct sockaddr_un *un) {
    size_t n = strlen(path);
    if (n >= sizeof(un->sun_path)) return 0;
    memset(un, 0, sizeof(*un));
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n);
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + n;
    if (path[0] == '@') un->sun_path[0] = 0; /* abstract name */
    else len += 1;
    return len;
}

static int connect_unix(const char *path) {
    struct sockaddr_un un;
    socklen_t len = unix_addr(path, &un);
    if (!len) return fail("path too long");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&un, len) < 0) return fail("connect");
    return print_reply(s);
}

static int serve_unix(const char *path) {
    struct sockaddr_un un;
    socklen_t len = unix_addr(path, &un);
    if (!len) return fail("path too long");
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    if (path[0] != '@') unlink(path);
    if (bind(s, (struct sockaddr *)&un, len) < 0) return fail("bind");
    if (listen(s, 64) < 0) return fail("listen");
    printf("ok listening\n");
    fflush(stdout);
    signal(SIGPIPE, SIG_IGN); /* a client killed before it read must not take us along */
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (write(c, "pong", 4) < 0) { /* the client went away */ }
        close(c);
    }
}

static int ns_flags(const char *types) {
    static const struct { const char *name; int flag; } all[] = {
        {"net", CLONE_NEWNET}, {"mnt", CLONE_NEWNS}, {"uts", CLONE_NEWUTS}, {"ipc", CLONE_NEWIPC},
        {"pid", CLONE_NEWPID}, {"cgroup", CLONE_NEWCGROUP}, {"user", CLONE_NEWUSER},
    };
    int flags = 0;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strstr(types, all[i].name)) flags |= all[i].flag;
    return flags;
}

static int setns_pidfd(const char *pid, const char *types, char **cmd) {
    int fd = syscall(SYS_pidfd_open, atoi(pid), 0);
    if (fd < 0) return fail("pidfd_open");
    if (setns(fd, ns_flags(types)) < 0) return fail("setns");
    if (!cmd[0]) { printf("ok joined\n"); return 0; }
    execv(cmd[0], cmd);
    return fail("execv");
}

static int clone_userns(void) {
    struct clone_args args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid < 0) return fail("clone3");
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    printf("ok child %ld\n", pid);
    return 0;
}

static int ptrace_attach(const char *pid) {
    pid_t p = atoi(pid);
    if (ptrace(PTRACE_ATTACH, p, 0, 0) < 0) return fail("ptrace");
    waitpid(p, NULL, __WALL);
    ptrace(PTRACE_DETACH, p, 0, 0);
    printf("ok attached\n");
    return 0;
}

static int vm_read(const char *pid, const char *addr) {
    char buf[8];
    struct iovec local = {buf, sizeof(buf)}, remote = {(void *)strtoul(addr, NULL, 16), sizeof(buf)};
    if (process_vm_readv(atoi(pid), &local, 1, &remote, 1, 0) < 0) return fail("process_vm_readv");
    printf("ok read\n");
    fflush(stdout);
    return 0;
}

static int run(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    const char *a = argc > 2 ? argv[2] : "", *b = argc > 3 ? argv[3] : "", *c = argc > 4 ? argv[4] : NULL;
    if (!strcmp(cmd, "serve-tcp")) return serve_tcp(a, b, c);
    if (!strcmp(cmd, "connect-tcp")) return connect_tcp(a, b, c);
    if (!strcmp(cmd, "fastopen-tcp")) return fastopen_tcp(a, b, c ? c : "x");
    if (!strcmp(cmd, "hold-tcp")) return hold_tcp(a, b, c ? c : "60");
    if (!strcmp(cmd, "bind-tcp")) return bind_tcp(a, b, c);
    if (!strcmp(cmd, "serve-udp")) return serve_udp(a, b);
    if (!strcmp(cmd, "send-udp")) return send_udp(a, b, c ? c : "x");
    if (!strcmp(cmd, "flood-udp")) return flood_udp(a, b, c, argc > 5 ? argv[5] : NULL);
    if (!strcmp(cmd, "flood-connect")) return flood_connect(a, b, c, argc > 5 ? argv[5] : NULL);
    if (!strcmp(cmd, "connect-unix")) return connect_unix(a);
    if (!strcmp(cmd, "serve-unix")) return serve_unix(a);
    if (!strcmp(cmd, "setns-pidfd")) return setns_pidfd(a, b, argv + 4);
    if (!strcmp(cmd, "clone-userns")) return clone_userns();
    if (!strcmp(cmd, "ptrace-attach")) return ptrace_attach(a);
    if (!strcmp(cmd, "vm-read")) return vm_read(a, b);
    fprintf(stderr, "usage: swtool serve-tcp|connect-tcp|fastopen-tcp|hold-tcp|bind-tcp|serve-udp|send-udp|flood-udp|flood-connect|connect-unix|serve-unix|"
                    "setns-pidfd|clone-userns|ptrace-attach|vm-read ...\n");
    return 2;
}

int main(int argc, char **argv) {
    int rc = run(argc, argv);
    const char *hold = getenv("SWTOOL_HOLD");
    if (hold) {
        fflush(stdout);
        sleep(atoi(hold));
    }
    return rc;
}
