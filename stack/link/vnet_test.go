package link

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestVnetHdrFor(t *testing.T) {
	tcp4 := stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1460, L3HdrLen: 20}
	tcp6 := stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, CsumOffset: 16, MSS: 1440, L3HdrLen: 40}
	for _, tc := range []struct {
		name    string
		gso     stack.GSO
		l3      int
		payload int
		want    VnetHeader
	}{
		{"no gso", stack.GSO{}, 20, 3000, VnetHeader{}},
		{"tcp4 super-frame", tcp4, 20, 3000, VnetHeader{Flags: 1, GSOType: VnetGSOTCPv4, HdrLen: 54, GSOSize: 1460, CsumStart: 34, CsumOffset: 16}},
		{"tcp4 one segment: checksum only", tcp4, 20, 1000, VnetHeader{Flags: 1, HdrLen: 54, CsumStart: 34, CsumOffset: 16}},
		{"tcp4 exactly MSS", tcp4, 20, 1460, VnetHeader{Flags: 1, HdrLen: 54, CsumStart: 34, CsumOffset: 16}},
		{"tcp6 super-frame", tcp6, 40, 60000, VnetHeader{Flags: 1, GSOType: VnetGSOTCPv6, HdrLen: 74, GSOSize: 1440, CsumStart: 54, CsumOffset: 16}},
	} {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			ReserveHeaderBytes: 128,
			Payload:            buffer.MakeWithData(make([]byte, tc.payload)),
		})
		pkt.TransportHeader().Push(20)
		pkt.NetworkHeader().Push(tc.l3)
		pkt.LinkHeader().Push(14)
		pkt.GSOOptions = tc.gso
		if got := vnetHdrFor(pkt); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
		pkt.DecRef()
	}
}

func TestVnetHdrEncode(t *testing.T) {
	h := VnetHeader{Flags: 1, GSOType: 4, HdrLen: 0x0102, GSOSize: 0x0304, CsumStart: 0x0506, CsumOffset: 0x0708}
	var b [VnetHdrSize]byte
	h.Encode(b[:])
	// Little-endian, as virtio 1.0 and the TAP (without TUNSETVNETBE) use.
	want := []byte{1, 4, 0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07}
	if !bytes.Equal(b[:], want) {
		t.Errorf("encode = % x, want % x", b, want)
	}
}

// TestTxQueue: the stack's frames go to a queue by their flow's hash,
// the first queue when there is one.
func TestTxQueue(t *testing.T) {
	for _, tc := range []struct {
		hash uint32
		n    int
		want int
	}{
		{12345, 1, 0},
		{12345, 0, 0},
		{0, 2, 0},
		{1, 2, 1},
		{0xffffffff, 2, 1},
		{7, 4, 3},
		{0xffffffff, 3, 0},
	} {
		if got := txQueue(tc.hash, tc.n); got != tc.want {
			t.Errorf("txQueue(%#x, %d) = %d, want %d", tc.hash, tc.n, got, tc.want)
		}
	}
}
