/*
 * libssh2_echo: a direct-tcpip echo through an SSH server with libssh2, the
 * library behind PHP's ssh2, curl's SFTP/SCP and several database GUIs.
 * It prints the negotiated cipher and MAC, sends a line through a tunnel
 * to HOST:PORT and prints what comes back.
 *
 *   libssh2_echo SERVER_PORT USER KEY DEST_HOST DEST_PORT MESSAGE [NONE_USER]
 *
 * With NONE_USER it first asks for the methods as NONE_USER ("none"
 * authentication), then authenticates as USER: the user name changes
 * between attempts, which sshd refuses.
 * Exit 0 when the echo matched; the failing step goes to stderr.
 */
#include <libssh2.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(LIBSSH2_SESSION *s, const char *step) {
	char *msg = NULL;
	if (s != NULL)
		libssh2_session_last_error(s, &msg, NULL, 0);
	fprintf(stderr, "%s failed: %s\n", step, msg ? msg : "");
	return 1;
}

int main(int argc, char **argv) {
	if (argc < 7) {
		fprintf(stderr, "usage: %s SERVER_PORT USER KEY DEST_HOST DEST_PORT MESSAGE [NONE_USER]\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	const char *user = argv[2], *key = argv[3], *dhost = argv[4], *msg = argv[6];
	int dport = atoi(argv[5]);
	char pub[4096];
	snprintf(pub, sizeof pub, "%s.pub", key);

	if (libssh2_init(0) != 0)
		return fail(NULL, "libssh2_init");
	int sock = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(sock, (struct sockaddr *)&sin, sizeof sin) != 0)
		return fail(NULL, "connect");
	LIBSSH2_SESSION *s = libssh2_session_init();
	libssh2_session_set_timeout(s, 10000);
	if (libssh2_session_handshake(s, sock) != 0)
		return fail(s, "handshake");
	printf("cipher %s mac %s\n", libssh2_session_methods(s, LIBSSH2_METHOD_CRYPT_CS),
	       libssh2_session_methods(s, LIBSSH2_METHOD_MAC_CS));
	if (argc > 7) {
		char *methods = libssh2_userauth_list(s, argv[7], strlen(argv[7]));
		printf("methods for %s: %s\n", argv[7], methods ? methods : "(none)");
	}
	if (libssh2_userauth_publickey_fromfile(s, user, pub, key, "") != 0)
		return fail(s, "publickey authentication");
	LIBSSH2_CHANNEL *ch = libssh2_channel_direct_tcpip_ex(s, dhost, dport, "127.0.0.1", 22);
	if (ch == NULL)
		return fail(s, "direct-tcpip");
	size_t n = strlen(msg);
	if (libssh2_channel_write(ch, msg, n) != (ssize_t)n)
		return fail(s, "write");
	char buf[4096];
	size_t got = 0;
	while (got < n) {
		ssize_t r = libssh2_channel_read(ch, buf + got, sizeof buf - got);
		if (r <= 0)
			return fail(s, "read");
		got += r;
	}
	if (got != n || memcmp(buf, msg, n) != 0) {
		fprintf(stderr, "echo mismatch\n");
		return 1;
	}
	printf("echo ok: %.*s\n", (int)n, buf);
	libssh2_channel_free(ch);
	libssh2_session_disconnect(s, "done");
	libssh2_session_free(s);
	close(sock);
	libssh2_exit();
	return 0;
}
