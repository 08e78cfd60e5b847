package e2e

// The TCP fast path (--tcp-fastpath, on by default): outbound TCP from
// the container skips the netstack. The tests of outbound TCP run on both
// paths: forEachTCPPath runs a test with --tcp-fastpath=false (TestX/USER,
// the netstack, as these tests ran before the fast path) and again with
// the flag (TestX/fastpath/USER). Every helper that opens a connection prints
// the options its handshake negotiated (tcpOptions): the netstack offers
// SACK and the fast path does not, so each run also checks which path
// carried its connections, lest a fast-path test pass on the netstack.

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rootlessnet/rootlessnet/test/world"
)

// fastPath and netstackPath select the path explicitly, whatever the
// default.
var (
	fastPath     = []string{"--tcp-fastpath"}
	netstackPath = []string{"--tcp-fastpath=false"}
)

// unprivilegedOnly is for the tests that run as the unprivileged user
// alone (the product is rootless; the root paths are the same code).
var unprivilegedOnly = []variant{{name: "unprivileged", cred: world.Nobody}}

// rootOnly is for the tests that run as root alone.
var rootOnly = []variant{{name: "root"}}

// forEachTCPPath runs fn as each of users with outbound TCP through the
// netstack (TestX/USER, as forEachVariant names them; the tests that ran
// as one user with no subtest are now TestX/unprivileged or TestX/root)
// and then through the fast path (TestX/fastpath/USER). tcp is
// netstackPath or fastPath: the flags to put before a run's own
// (withFlags).
func forEachTCPPath(t *testing.T, users []variant, fn func(t *testing.T, e *env, tcp []string)) {
	run := func(t *testing.T, tcp []string) {
		for _, v := range users {
			t.Run(v.name, func(t *testing.T) { fn(t, newVariantEnv(t, v), tcp) })
		}
	}
	run(t, netstackPath)
	t.Run("fastpath", func(t *testing.T) { run(t, fastPath) })
}

// isFast says whether flags turn the fast path on.
func isFast(flags []string) bool { return slices.Contains(flags, "--tcp-fastpath") }

// withFlags is the path's flags followed by more, in a new slice.
func withFlags(tcp []string, more ...string) []string {
	return append(slices.Clone(tcp), more...)
}

// checkCarrier wants out (a helper's output) to report at least one
// connection, and every one it reports carried by the path tcp selects:
// "sack=false" on the fast path, "sack=true" on the netstack.
func checkCarrier(t *testing.T, tcp []string, out string) {
	t.Helper()
	want, other, path := "sack=true", "sack=false", "the netstack"
	if isFast(tcp) {
		want, other, path = other, want, "the fast path"
	}
	if !strings.Contains(out, want) || strings.Contains(out, other) {
		t.Errorf("connections were not all carried by %s (want %q on each, from TCP_INFO):\n%s", path, want, out)
	}
}

// mustTCP runs a helper as mustOK does, with the path's flags before
// flags, and checks that its connections took that path.
func (e *env) mustTCP(tcp, flags []string, mode string, args ...string) string {
	e.t.Helper()
	out := e.mustOK(withFlags(tcp, flags...), mode, args...)
	checkCarrier(e.t, tcp, out)
	return out
}

// sizes of the large transfers: the netstack's 1 GiB one-way transfer
// is as it was; the fast path's is smaller to keep the suite's time (the
// checks are the same, and the transfers both ways at two MTUs and
// without offloads run in full on both paths).
func largeSinkSize(tcp []string) int {
	if isFast(tcp) {
		return 256 << 20
	}
	return 1 << 30
}

// bothWaysSize is the size of each transfer both ways at once.
const bothWaysSize = 32 << 20

// publishedWhoami asks the container's whoami server (slirp-whoami-server,
// run by p) through the published port at addr, from local when not
// empty, and checks its reply: the address the container saw starts with
// wantPrefix, and the path tcp selects carried the connection (the
// server's TCP_INFO of its accepted connection, as checkCarrier reads
// it). It returns the address the container saw.
func (e *env) publishedWhoami(t *testing.T, tcp []string, p *slirpProc, addr, local, wantPrefix string) string {
	t.Helper()
	got, err := e.slirpWhoami(addr, local)
	if err != nil {
		t.Fatalf("dialing %s (from %q): %v\n%s", addr, local, err, p.output())
	}
	seen, opts, _ := strings.Cut(got, " ")
	if !strings.HasPrefix(seen, wantPrefix) {
		t.Errorf("through %s (from %q) the container saw %q, want %sPORT", addr, local, seen, wantPrefix)
	}
	checkCarrier(t, tcp, "through "+addr+": "+opts)
	return seen
}

// TestRunDrainsOnExit: a command that sends, closes and exits at once
// loses nothing. Its socket lives on in the namespace with data still
// queued; `run` waits (up to a second) for the fast path to hand that
// data to the host before the network goes. Without the wait the world
// received 3.2-3.5 MiB of 4 at MTU 1500.
func TestRunDrainsOnExit(t *testing.T) {
	forEachVariant(t, func(t *testing.T, e *env) {
		const size = 4 << 20
		got := make(chan string, 4)
		peer := startSoakServer(t, e.w, "198.51.100.1:0", func(c *net.TCPConn) {
			h := sha256.New()
			n, err := io.Copy(h, plainConn{c})
			got <- fmt.Sprintf("sha256 %x, %d bytes, error %v", h.Sum(nil), n, err)
		})
		want := fmt.Sprintf("sha256 %x, %d bytes, error <nil>", sha256.Sum256(pattern(size)), size)
		for _, flags := range [][]string{nil, {"--mtu", "1500", "--offload=false"}} {
			e.mustTCP(fastPath, flags, "tcp-send-exit", peer, fmt.Sprint(size))
			select {
			case s := <-got:
				if s != want {
					t.Errorf("%v: the world received %s; want %s", flags, s, want)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%v: the world's server is still reading 30 s after the command exited", flags)
			}
		}
	})
}
