/*
 * swtool: the test pods' multi-tool (static, no libc needed in the image). Each command does
 * one socket or process action the tests and attack scenarios need, prints one line saying
 * what happened ("ok ..." or "error <errno name>: ..."), and exits 0 on success, 1 otherwise.
 *
 *   swtool serve-tcp ADDR PORT           accept forever; reply "pong" + what was read
 *   swtool connect-tcp ADDR PORT [DATA]  connect, send DATA, read the reply
 *   swtool hold-tcp ADDR PORT SECONDS    connect and keep the connection open, sending
 *                                        one byte a second; reports when it breaks
 *   swtool bind-tcp ADDR PORT [SECONDS]  bind and listen, then sleep (squat a port)
 *   swtool serve-udp ADDR PORT           receive datagrams forever
 *   swtool send-udp ADDR PORT DATA       sendto, unconnected
 *   swtool connect-unix PATH|@NAME       connect a unix stream socket
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
#include <sys/un.h>
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

static int serve_tcp(const char *ip, const char *port) {
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
        close(c);
    }
}

static int connect_tcp(const char *ip, const char *port, const char *data) {
    struct sockaddr_storage ss;
    socklen_t len = parse(ip, port, &ss);
    int s = sock_for(&ss, SOCK_STREAM);
    if (!len || s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&ss, len) < 0) return fail("connect");
    if (data && write(s, data, strlen(data)) < 0) return fail("write");
    shutdown(s, SHUT_WR);
    char buf[600];
    ssize_t n = read(s, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("ok %s\n", buf);
    close(s);
    return 0;
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

static int connect_unix(const char *path) {
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof(un.sun_path)) return fail("path too long");
    memcpy(un.sun_path, path, n);
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + n;
    if (path[0] == '@') un.sun_path[0] = 0; /* abstract name */
    else len += 1;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&un, len) < 0) return fail("connect");
    printf("ok connected\n");
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    const char *a = argc > 2 ? argv[2] : "", *b = argc > 3 ? argv[3] : "", *c = argc > 4 ? argv[4] : NULL;
    if (!strcmp(cmd, "serve-tcp")) return serve_tcp(a, b);
    if (!strcmp(cmd, "connect-tcp")) return connect_tcp(a, b, c);
    if (!strcmp(cmd, "hold-tcp")) return hold_tcp(a, b, c ? c : "60");
    if (!strcmp(cmd, "bind-tcp")) return bind_tcp(a, b, c);
    if (!strcmp(cmd, "serve-udp")) return serve_udp(a, b);
    if (!strcmp(cmd, "send-udp")) return send_udp(a, b, c ? c : "x");
    if (!strcmp(cmd, "connect-unix")) return connect_unix(a);
    fprintf(stderr, "usage: swtool serve-tcp|connect-tcp|hold-tcp|bind-tcp|serve-udp|send-udp|connect-unix ...\n");
    return 2;
}
