// Command rootlessnet gives a network namespace connectivity without root,
// through a userspace TCP/IP stack (gVisor's netstack), like slirp4netns.
//
//	rootlessnet run [flags] -- CMD [ARGS...]
//	rootlessnet [flags] --netns PATH
//	rootlessnet ports --api-socket PATH
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/rootlessnet/rootlessnet/launcher"
	"github.com/rootlessnet/rootlessnet/userns"
	_ "github.com/rootlessnet/rootlessnet/userns/nsenter"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0"

func main() {
	if conn, role, ok := userns.ChildConn(); ok {
		os.Exit(launcher.ChildMain(conn, role))
	}
	stopProfiles := startProfiles()
	status := realMain(os.Args[1:])
	stopProfiles()
	os.Exit(status)
}

// usageError is a bad command line: exit status 2, as flag parsers do.
type usageError struct{ error }

func realMain(args []string) int {
	var err error
	status := 0
	switch {
	case len(args) > 0 && args[0] == "run":
		status, err = runCommand(args[1:])
	case len(args) > 0 && args[0] == "ports":
		err = portsCommand(args[1:])
	case len(args) > 0 && args[0] == "network":
		err = networkCommand(args[1:])
	default:
		err = attachCommand(args)
	}
	if err == nil {
		return status
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintln(os.Stderr, "rootlessnet:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var ee *launcher.ExecError
	if errors.As(err, &ee) {
		return ee.Status
	}
	return 1
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError{fmt.Errorf("invalid --log-level %q: want debug, info, warn or error", level)}
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
