// Package relay copies a stream between a netstack connection and a host
// socket, passing half-closes and resets from each side to the other.
package relay

import (
	"context"
	"io"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// BufferSize is the copy buffer per direction. io.Copy's own 32 KiB would
// do, but a pooled buffer avoids an allocation per connection.
const BufferSize = 32 << 10

var buffers = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// TCP copies both ways until both directions ended, then closes both
// connections. A FIN is passed on as a half-close; an error on either
// side (a reset) resets the other. Cancelling ctx resets both.
func TCP(ctx context.Context, guest *gonet.TCPConn, ep tcpip.Endpoint, host *net.TCPConn) {
	var resetOnce sync.Once
	reset := func() {
		resetOnce.Do(func() {
			ep.Abort()
			host.SetLinger(0)
			host.Close()
		})
	}
	stop := context.AfterFunc(ctx, reset)
	defer stop()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := copyStream(host, guest); err != nil {
			reset()
			return
		}
		host.CloseWrite()
	}()
	if err := copyStream(guest, host); err != nil {
		reset()
	} else {
		guest.CloseWrite()
	}
	wg.Wait()
	guest.Close()
	host.Close()
}

// copyStream copies until EOF (nil) or an error. The wrappers hide
// ReadFrom/WriteTo so that the pooled buffer is used.
func copyStream(dst io.Writer, src io.Reader) error {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
	return err
}
