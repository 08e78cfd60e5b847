package stack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestTimeWaitBounded: closed connections leave TIME_WAIT after seconds,
// not gVisor's default minute.
func TestTimeWaitBounded(t *testing.T) {
	a, err := ParseCIDR(DefaultCIDR)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Link: channel.New(16, 1500, ""), Addressing: a})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close(); s.Wait() }()
	var tw tcpip.TCPTimeWaitTimeoutOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		t.Fatal(err)
	}
	if got := tw; got != tcpip.TCPTimeWaitTimeoutOption(timeWaitTimeout) || timeWaitTimeout > 10e9 {
		t.Fatalf("TIME_WAIT %v, want %v (at most 10 s)", got, timeWaitTimeout)
	}
}
