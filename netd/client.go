package netd

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/rootlessnet/rootlessnet/userns"
)

// ErrGone is a network whose process is not there (it was killed, or the
// machine rebooted): its state remains until `network rm`.
var ErrGone = errors.New("the network's process is gone")

// clientTimeout bounds a control request that is not a membership.
const clientTimeout = 10 * time.Second

// Dial connects to network p's control socket.
func Dial(p Paths) (*userns.Conn, error) {
	conn, err := userns.Dial(p.Control())
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrGone, err)
	}
	return conn, nil
}

// Call sends one request and returns the reply, with its files.
func Call(conn *userns.Conn, req Request, files ...*os.File) (Reply, []*os.File, error) {
	if err := conn.Send(req, files...); err != nil {
		return Reply{}, nil, err
	}
	var reply Reply
	got, err := conn.Recv(&reply)
	if err != nil {
		return Reply{}, nil, err
	}
	if reply.Error != "" {
		for _, f := range got {
			f.Close()
		}
		return reply, nil, errors.New(reply.Error)
	}
	return reply, got, nil
}

// Inspect asks network p for its config and members.
func Inspect(p Paths) (Reply, error) {
	conn, err := Dial(p)
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(clientTimeout))
	r, _, err := Call(conn, Request{Op: "inspect"})
	if err != nil && !errors.Is(err, ErrGone) && r.Error == "" {
		err = fmt.Errorf("%w (%v)", ErrGone, err)
	}
	return r, err
}

// Stop asks network p to end (Force: stopping its members).
func Stop(p Paths, force bool) error {
	conn, err := Dial(p)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(clientTimeout))
	r, _, err := Call(conn, Request{Op: "stop", Force: force})
	if err != nil && r.Error == "" {
		// No answer: the process died as it was asked (a kill racing
		// the request); what is left of it is its state.
		return fmt.Errorf("%w (%v)", ErrGone, err)
	}
	return err
}
