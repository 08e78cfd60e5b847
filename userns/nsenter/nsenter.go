// Package nsenter joins namespaces before the Go runtime starts.
//
// A multithreaded process cannot setns(2) into a user namespace, and the Go
// runtime starts threads before main. Importing this package links a C
// constructor that runs while the process is still single-threaded: when
// the environment names namespace fds to join, it joins them (user first,
// so that it holds the capabilities needed to join the network namespace),
// then lets the runtime start. runc and podman use the same technique.
package nsenter

/*
#cgo CFLAGS: -Wall
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>

// Exit status the parent recognises as "joining the namespaces failed";
// the reason is on stderr.
#define NSENTER_FAILED 125

__attribute__((constructor)) static void rootlessnet_nsenter(void) {
	const char *spec = getenv("_ROOTLESSNET_NSENTER");
	int userfd = -1, netfd = -1;

	if (spec == NULL || *spec == '\0')
		return;
	if (sscanf(spec, "%d,%d", &userfd, &netfd) != 2) {
		fprintf(stderr, "rootlessnet: malformed _ROOTLESSNET_NSENTER %s\n", spec);
		_exit(NSENTER_FAILED);
	}
	// ",nodump": a long-lived helper in the container's user namespace.
	// Its credentials then match the container root's, which could
	// ptrace it and reach the host through it (its mount namespace is the
	// host's); non-dumpable, ptrace needs CAP_SYS_PTRACE where it was
	// executed. Done before joining, so there is no window.
	if (strstr(spec, ",nodump") != NULL && prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
		fprintf(stderr, "cannot make the helper non-dumpable: %s\n", strerror(errno));
		_exit(NSENTER_FAILED);
	}
	if (userfd >= 0) {
		if (setns(userfd, CLONE_NEWUSER) != 0) {
			fprintf(stderr, "cannot join the user namespace: %s\n", strerror(errno));
			_exit(NSENTER_FAILED);
		}
		close(userfd);
	}
	if (netfd >= 0) {
		if (setns(netfd, CLONE_NEWNET) != 0) {
			fprintf(stderr, "cannot join the network namespace: %s\n", strerror(errno));
			_exit(NSENTER_FAILED);
		}
		close(netfd);
	}
	// ",member": new network, mount and UTS namespaces made inside the
	// joined user namespace, whose root this process now is: a member of
	// a rootless network, in the namespace that owns the network's bridge.
	if (strstr(spec, ",member") != NULL) {
		if (unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWUTS) != 0) {
			fprintf(stderr, "cannot create the member's namespaces: %s\n", strerror(errno));
			_exit(NSENTER_FAILED);
		}
	}
	unsetenv("_ROOTLESSNET_NSENTER");
}
*/
import "C"

// Env is the variable whose value "USERFD,NETFD" (-1 for none), with
// NoDump appended for a non-dumpable process, the constructor reads.
const Env = "_ROOTLESSNET_NSENTER"

// NoDump, appended to Env's value, makes the process non-dumpable before
// it joins.
const NoDump = ",nodump"

// Member, appended to Env's value, makes new network, mount and UTS
// namespaces once the user namespace is joined.
const Member = ",member"

// FailedStatus is the exit status of a child that could not join.
const FailedStatus = 125
