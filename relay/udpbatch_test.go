package relay

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpPair is two UDP sockets on 127.0.0.1 connected to each other.
func udpPair(t *testing.T) (a, b *net.UDPConn) {
	t.Helper()
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, err = net.DialUDP("udp4", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = net.DialUDP("udp4", a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	for _, c := range []*net.UDPConn{a, b} {
		c.SetReadBuffer(4 << 20)
	}
	return a, b
}

// datagram i of a test: its index, then a pattern.
func testDatagram(i, size int) []byte {
	d := make([]byte, size)
	for j := range d {
		d[j] = byte(i*13 + j)
	}
	if size >= 2 {
		binary.BigEndian.PutUint16(d, uint16(i))
	}
	return d
}

// testRun is count test datagrams from first on, of seg bytes but the
// last of last, and their concatenation.
func testRun(first, count, seg, last int) (run []byte, ds [][]byte) {
	for i := range count {
		size := seg
		if i == count-1 {
			size = last
		}
		d := testDatagram(first+i, size)
		ds = append(ds, d)
		run = append(run, d...)
	}
	return run, ds
}

// readDatagrams reads what b has queued, one datagram each.
func readDatagrams(t *testing.T, b *net.UDPConn, want int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 1<<16)
	for len(got) < want {
		b.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := b.Read(buf)
		if err != nil {
			t.Fatalf("after %d of %d datagrams: %v", len(got), want, err)
		}
		got = append(got, append([]byte(nil), buf[:n]...))
	}
	return got
}

// TestUDPBatcher gives a batcher datagrams of mixed sizes, some of them
// the container's own runs, flushing now and then, and wants each to
// arrive whole, in order, on the peer socket (which splits runs: it has
// no UDP_GRO).
func TestUDPBatcher(t *testing.T) {
	a, b := udpPair(t)
	var seen []int
	bt, err := NewUDPBatcher(a, func(n int) { seen = append(seen, n) })
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{1000, 1000, 1000, 300, 1000, 2000, 2000, 2000, 0, 5, 5, 60000, 1400}
	var want [][]byte
	for i, size := range sizes {
		d := testDatagram(i, size)
		want = append(want, d)
		bt.Datagram([][]byte{d[:size/2], d[size/2:]}, 0)
		if i == 6 {
			bt.Flush()
		}
	}
	// A run of the container's: 7 datagrams of 700, the last of 10.
	run, ds := testRun(100, 8, 700, 10)
	want = append(want, ds...)
	bt.Datagram([][]byte{run[:1000], run[1000:]}, 700)
	bt.Flush()
	got := readDatagrams(t, b, len(want))
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	if len(seen) != len(want) {
		t.Errorf("seen called %d times, want %d", len(seen), len(want))
	}
}

// TestRunReader queues datagrams on a socket and wants ReadRuns to give
// them back in order as runs of one size (the last may be shorter), and a
// sender's UDP_SEGMENT run as one where UDP_GRO is on.
func TestRunReader(t *testing.T) {
	a, b := udpPair(t)
	sizes := []int{1000, 1000, 1000, 1000, 300, 1000, 2000, 2000, 500, 500, 0, 7}
	for i := range 70 {
		_ = i
		sizes = append(sizes, 100) // more than a run holds
	}
	var want [][]byte
	for i, size := range sizes {
		d := testDatagram(i, size)
		want = append(want, d)
		if _, err := a.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewRunReader(b)
	if err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(2 * time.Second))
	var got [][]byte
	runs := 0
	if err := r.ReadRuns(func(run []byte, seg int, _ netip.AddrPort) {
		runs++
		if seg == 0 {
			if len(run) != 0 {
				t.Errorf("a run of %d bytes with seg 0", len(run))
			}
			got = append(got, []byte{})
			return
		}
		if len(run) > seg*maxRunSegments {
			t.Errorf("a run of %d bytes of %d-byte datagrams: over %d", len(run), seg, maxRunSegments)
		}
		for off := 0; off < len(run); off += seg {
			got = append(got, append([]byte(nil), run[off:min(off+seg, len(run))]...))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: got %d bytes, want %d", i, len(got[i]), len(want[i]))
		}
	}
	if runs >= len(want)/2 {
		t.Errorf("%d datagrams came in %d runs: not gathered", len(want), runs)
	}

	// A sender's run with UDP_GRO on: one super-datagram, split at its
	// segment size.
	if !EnableGRO(b) {
		t.Skip("no UDP_GRO in this kernel")
	}
	run, want := testRun(200, 10, 1200, 100)
	var oob [unix.SizeofCmsghdr + 8]byte
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = 1200
	if _, _, err := a.WriteMsgUDP(run, oob[:unix.CmsgSpace(2)], nil); err != nil {
		t.Skipf("no UDP_SEGMENT: %v", err)
	}
	got = nil
	var segs []int
	b.SetReadDeadline(time.Now().Add(2 * time.Second))
	if err := r.ReadRuns(func(run []byte, seg int, _ netip.AddrPort) {
		segs = append(segs, seg)
		for off := 0; off < len(run); off += seg {
			got = append(got, append([]byte(nil), run[off:min(off+seg, len(run))]...))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(segs) != 1 || segs[0] != 1200 {
		t.Errorf("runs of %v, want one of 1200", segs)
	}
	for i := range want {
		if i >= len(got) || !bytes.Equal(got[i], want[i]) {
			t.Fatalf("GRO run: datagram %d differs (got %d datagrams)", i, len(got))
		}
	}
}

// TestRunReaderSources reads an unconnected socket that two clients
// send to, interleaved: runs never mix them, each run names its source,
// and a batcher with a destination answers each client.
func TestRunReaderSources(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) { testRunReaderSources(t, network) })
	}
}

func testRunReaderSources(t *testing.T, network string) {
	ip := net.IPv4(127, 0, 0, 1)
	if network == "udp6" {
		ip = net.IPv6loopback
	}
	srv, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	defer srv.Close()
	var clients [2]*net.UDPConn
	for i := range clients {
		if clients[i], err = net.DialUDP(network, nil, srv.LocalAddr().(*net.UDPAddr)); err != nil {
			t.Fatal(err)
		}
		defer clients[i].Close()
	}
	// a a b b b a: three runs at least.
	order := []int{0, 0, 1, 1, 1, 0}
	for i, c := range order {
		if _, err := clients[c].Write(testDatagram(i, 500)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewRunReader(srv)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	got := map[netip.AddrPort][]int{}
	var sources []netip.AddrPort
	if err := r.ReadRuns(func(run []byte, seg int, from netip.AddrPort) {
		sources = append(sources, from)
		for off := 0; off < len(run); off += seg {
			got[from] = append(got[from], int(binary.BigEndian.Uint16(run[off:])))
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(sources) < 3 {
		t.Errorf("runs from %v: two clients' datagrams mixed", sources)
	}
	for c, want := range [2][]int{{0, 1, 5}, {2, 3, 4}} {
		from := clients[c].LocalAddr().(*net.UDPAddr).AddrPort()
		if !slices.Equal(got[from], want) {
			t.Errorf("client %d (%v): datagrams %v, want %v (all: %v)", c, from, got[from], want, got)
		}
		// And back, as a published port answers its client.
		b, err := NewUDPBatcherTo(srv, from, func(int) {})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			b.Datagram([][]byte{testDatagram(10*c+i, 300)}, 0)
		}
		b.Flush()
		for i, d := range readDatagrams(t, clients[c], 3) {
			if !bytes.Equal(d, testDatagram(10*c+i, 300)) {
				t.Errorf("client %d: answer %d differs", c, i)
			}
		}
	}
}
