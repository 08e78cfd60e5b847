package launcher

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/rootlessnet/rootlessnet/hub"
	"github.com/rootlessnet/rootlessnet/userns"
)

// RoleHub is the child that holds a rootless network's namespaces (user,
// network, mount): it builds the bridge and the uplink TAP, then plugs
// members in and out for the network's process until that closes the
// channel, which ends the network.
const RoleHub = "hub"

// HubSetup is the hub's first message (parent -> hub).
type HubSetup struct {
	MTU     int
	VnetHdr bool
}

// HubRequest plugs a member in (Op "attach", with the member's network
// namespace attached; Op "tap": a TAP on the bridge for a member the
// network's process relays frames to, sent back) or out (Op "detach")
// (parent -> hub).
type HubRequest struct {
	Op  string
	ID  int
	MTU int
}

// HubReply answers HubSetup (with the uplink TAP's fd) and HubRequest
// (hub -> parent).
type HubReply struct {
	Error string
}

func hubMain(conn *userns.Conn) int {
	var setup HubSetup
	if _, err := conn.Recv(&setup); err != nil {
		fmt.Fprintln(os.Stderr, "rootlessnet hub:", err)
		return 1
	}
	f, err := hub.Setup(setup.MTU, setup.VnetHdr)
	if err != nil {
		conn.Send(HubReply{Error: err.Error()})
		return 1
	}
	err = conn.Send(HubReply{}, f)
	f.Close()
	if err != nil {
		return 1
	}
	for {
		var req HubRequest
		files, err := conn.Recv(&req)
		if err != nil {
			if errors.Is(err, userns.ErrMessage) {
				conn.Send(HubReply{Error: err.Error()})
				continue
			}
			return 0 // the network's process is gone: so is the network
		}
		if req.Op == "tap" {
			f, err := hub.AttachTap(req.ID, req.MTU)
			if err != nil {
				conn.Send(HubReply{Error: err.Error()})
			} else {
				conn.Send(HubReply{}, f)
				f.Close()
			}
			closeFiles(files)
			continue
		}
		conn.Send(HubReply{Error: errString(serveHub(req, files))})
		closeFiles(files)
	}
}

func serveHub(req HubRequest, files []*os.File) error {
	switch req.Op {
	case "attach":
		if len(files) != 1 {
			return fmt.Errorf("attach: got %d descriptors, want the member's network namespace", len(files))
		}
		return hub.Attach(req.ID, files[0], req.MTU)
	case "detach":
		return hub.Detach(req.ID)
	}
	return fmt.Errorf("unknown hub request %q", req.Op)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Hub is the parent's handle on a network's hub child.
type Hub struct {
	child *userns.Child
	// mu keeps one request in flight: replies come in order.
	mu sync.Mutex
}

// StartHub creates the network's namespaces with a hub child in them and
// returns it with the uplink TAP's fd (non-blocking).
func StartHub(setup HubSetup) (*Hub, *os.File, error) {
	child, err := userns.Spawn(userns.SpawnOptions{Role: RoleHub, NewNamespaces: true})
	if err != nil {
		return nil, nil, err
	}
	h := &Hub{child: child}
	if err := child.Conn.Send(setup); err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("talking to the hub: %w", err)
	}
	var reply HubReply
	files, err := child.Conn.Recv(&reply)
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	} else if err == nil && len(files) != 1 {
		err = errors.New("the hub sent no TAP fd")
	}
	if err != nil {
		closeFiles(files)
		if s := child.Stderr(); s != "" {
			err = fmt.Errorf("%w: %s", err, s)
		}
		h.Close()
		return nil, nil, err
	}
	f, err := nonBlocking(files[0])
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return h, f, nil
}

// Pid is the hub's process id: its /proc/PID/ns/user is the network's
// user namespace, which members join.
func (h *Hub) Pid() int { return h.child.Cmd.Process.Pid }

// Attach plugs member id's network namespace into the bridge.
func (h *Hub) Attach(id int, memberNS *os.File, mtu int) error {
	return h.do(HubRequest{Op: "attach", ID: id, MTU: mtu}, memberNS)
}

// Tap returns a TAP on the bridge for member id (non-blocking).
func (h *Hub) Tap(id, mtu int) (*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.child.Conn.Send(HubRequest{Op: "tap", ID: id, MTU: mtu}); err != nil {
		return nil, fmt.Errorf("talking to the hub: %w", err)
	}
	var reply HubReply
	files, err := h.child.Conn.Recv(&reply)
	if err != nil {
		return nil, fmt.Errorf("talking to the hub: %w", err)
	}
	if reply.Error != "" || len(files) != 1 {
		closeFiles(files)
		if reply.Error == "" {
			reply.Error = "the hub sent no TAP fd"
		}
		return nil, errors.New(reply.Error)
	}
	return nonBlocking(files[0])
}

// Detach unplugs member id.
func (h *Hub) Detach(id int) error { return h.do(HubRequest{Op: "detach", ID: id}) }

func (h *Hub) do(req HubRequest, files ...*os.File) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.child.Conn.Send(req, files...); err != nil {
		return fmt.Errorf("talking to the hub: %w", err)
	}
	var reply HubReply
	if _, err := h.child.Conn.Recv(&reply); err != nil {
		return fmt.Errorf("talking to the hub: %w", err)
	}
	if reply.Error != "" {
		return errors.New(reply.Error)
	}
	return nil
}

// Close ends the hub, and with it the network's namespaces.
func (h *Hub) Close() {
	h.child.Conn.Close()
	h.child.Cmd.Process.Kill()
	h.child.Cmd.Wait()
}
