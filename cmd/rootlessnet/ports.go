package main

// rootlessnet ports: the published ports of a running rootlessnet, asked
// over its API socket (list_hostfwd).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
)

// portsTimeout bounds the whole exchange with the API socket.
const portsTimeout = 5 * time.Second

// maxPortsReply bounds the reply read (a -p range of every port lists
// 65535 entries of about 130 bytes).
const maxPortsReply = 16 << 20

type portsEntry struct {
	ID        int    `json:"id"`
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  uint16 `json:"host_port"`
	GuestAddr string `json:"guest_addr"`
	GuestPort uint16 `json:"guest_port"`
	Source    string `json:"source"`
}

func portsCommand(args []string) error {
	fs := pflag.NewFlagSet("rootlessnet ports", pflag.ContinueOnError)
	var sock string
	var asJSON bool
	fs.StringVarP(&sock, "api-socket", "a", "", "the API socket of the running rootlessnet (its -a/--api-socket)")
	fs.BoolVar(&asJSON, "json", false, "print list_hostfwd's entries as JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: rootlessnet ports --api-socket PATH

Lists the ports a running rootlessnet publishes, with where each came from:
flag (-p), api (add_hostfwd on the API socket) or auto (-p auto: the container
listens on it). The running rootlessnet must have been started with
--api-socket PATH (-a PATH).

Flags:
%s`, fs.FlagUsages())
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("ports: unexpected argument %q", fs.Arg(0))}
	}
	if sock == "" {
		return usageError{errors.New("ports: no API socket given: start rootlessnet with --api-socket PATH and pass the same PATH here")}
	}
	entries, err := listHostfwd(sock)
	if err != nil {
		return err
	}
	return printPorts(os.Stdout, entries, asJSON)
}

// printPorts writes entries as a table, or as JSON.
func printPorts(w io.Writer, entries []portsEntry, asJSON bool) error {
	if asJSON {
		if entries == nil {
			entries = []portsEntry{}
		}
		b, err := json.Marshal(entries)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROTO\tHOST\tGUEST\tSOURCE")
	for _, e := range entries {
		src := e.Source
		if src == "" {
			src = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", e.ID, e.Proto, hostPort(e.HostAddr, e.HostPort), hostPort(e.GuestAddr, e.GuestPort), src)
	}
	return tw.Flush()
}

func hostPort(addr string, port uint16) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Sprintf("%s:%d", addr, port)
	}
	return netip.AddrPortFrom(a, port).String()
}

// listHostfwd asks the API socket at path for list_hostfwd.
func listHostfwd(path string) ([]portsEntry, error) {
	c, err := net.DialTimeout("unix", path, portsTimeout)
	if err != nil {
		return nil, fmt.Errorf("ports: is rootlessnet running with --api-socket %s? %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(portsTimeout))
	if _, err := io.WriteString(c, `{"execute":"list_hostfwd"}`+"\n"); err != nil {
		return nil, fmt.Errorf("ports: %w", err)
	}
	c.(*net.UnixConn).CloseWrite()
	b, err := io.ReadAll(io.LimitReader(c, maxPortsReply))
	if err != nil {
		return nil, fmt.Errorf("ports: reading the reply: %w", err)
	}
	var reply struct {
		Return *struct {
			Entries []portsEntry `json:"entries"`
		} `json:"return"`
		Entries []portsEntry `json:"entries"` // slirp4netns 1.2's shape
		Error   *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		return nil, fmt.Errorf("ports: %s does not answer as a slirp4netns API socket: %w", path, err)
	}
	switch {
	case reply.Error != nil:
		return nil, fmt.Errorf("ports: %s", reply.Error.Desc)
	case reply.Return != nil && reply.Return.Entries != nil:
		return reply.Return.Entries, nil
	}
	return reply.Entries, nil
}
