// Command bench measures rootlessnet side by side with slirp4netns and
// pasta: iperf3 TCP throughput from a namespace to a server on the host's
// loopback (through each tool's gateway) and back, at two MTUs, runs
// interleaved, medians printed with ratios. Loopback only.
//
//	go build -o /tmp/rootlessnet ./cmd/rootlessnet && go run ./test/bench -rootlessnet /tmp/rootlessnet
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"
)

type tool struct {
	name string
	// start serves the namespace of pid; the returned command is killed
	// after the measurement.
	start   func(pid int, mtu int) (*exec.Cmd, error)
	gateway string
}

func main() {
	bin := flag.String("rootlessnet", "./rootlessnet", "rootlessnet binary")
	runs := flag.Int("runs", 3, "runs per figure (median reported)")
	secs := flag.Int("t", 4, "seconds per iperf3 run")
	out := flag.String("o", "", "append the dated table to this markdown file")
	flag.Parse()
	for _, need := range []string{"iperf3", "unshare", "nsenter", "slirp4netns", "pasta"} {
		if _, err := exec.LookPath(need); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s not found (apt-get install iperf3 slirp4netns passt util-linux)\n", need)
			os.Exit(1)
		}
	}
	srv := exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", "5299")
	if err := srv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)

	tools := []tool{
		{name: "rootlessnet", gateway: "10.0.2.2", start: func(pid, mtu int) (*exec.Cmd, error) {
			return startAndWait(unprivileged(exec.Command(*bin, "--netns", fmt.Sprintf("/proc/%d/ns/net", pid), "--mtu", fmt.Sprint(mtu), "--log-level", "error")), "serving")
		}},
		{name: "slirp4netns", gateway: "10.0.2.2", start: func(pid, mtu int) (*exec.Cmd, error) {
			return startReadyFD(unprivileged(exec.Command("slirp4netns", "--configure", fmt.Sprintf("--mtu=%d", mtu), "--ready-fd=3", fmt.Sprint(pid), "tap0")))
		}},
		{name: "pasta", gateway: "", start: func(pid, mtu int) (*exec.Cmd, error) {
			c := unprivileged(exec.Command("pasta", "--config-net", "--mtu", fmt.Sprint(mtu), "-f", "-q", "-t", "none", "-u", "none", "-T", "none", "-U", "none", fmt.Sprint(pid)))
			if err := c.Start(); err != nil {
				return nil, err
			}
			time.Sleep(time.Second)
			return c, nil
		}},
	}
	type key struct{ tool, fig string }
	results := map[key][]float64{}
	var figs []string
	for _, mtu := range []int{65520, 1500} {
		for _, dir := range []string{"ns->host", "host->ns"} {
			figs = append(figs, fmt.Sprintf("%s MTU %d", dir, mtu))
		}
	}
	for r := 0; r < *runs; r++ {
		for _, mtu := range []int{65520, 1500} {
			for _, t := range tools {
				gbps, err := measure(t, mtu, *secs)
				if err != nil {
					fmt.Fprintf(os.Stderr, "bench: %s MTU %d: %v\n", t.name, mtu, err)
					continue
				}
				results[key{t.name, fmt.Sprintf("ns->host MTU %d", mtu)}] = append(results[key{t.name, fmt.Sprintf("ns->host MTU %d", mtu)}], gbps[0])
				results[key{t.name, fmt.Sprintf("host->ns MTU %d", mtu)}] = append(results[key{t.name, fmt.Sprintf("host->ns MTU %d", mtu)}], gbps[1])
			}
		}
	}
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "\n## %s, %s, %d CPUs, iperf3 -t %d, median of %d\n\n", time.Now().Format("2006-01-02"), host, numCPU(), *secs, *runs)
	fmt.Fprintf(&b, "| TCP Gbit/s | rootlessnet | slirp4netns | pasta | rootlessnet/slirp4netns | rootlessnet/pasta |\n|---|---|---|---|---|---|\n")
	for _, f := range figs {
		rn, sl, pa := median(results[key{"rootlessnet", f}]), median(results[key{"slirp4netns", f}]), median(results[key{"pasta", f}])
		fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f | %s | %s |\n", f, rn, sl, pa, ratio(rn, sl), ratio(rn, pa))
	}
	fmt.Print(b.String())
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.WriteString(b.String())
			f.Close()
		}
	}
}

// measure starts a namespace and the tool, then runs iperf3 both ways.
func measure(t tool, mtu, secs int) ([2]float64, error) {
	var res [2]float64
	ns := unprivileged(exec.Command("unshare", "--user", "--map-root-user", "--net", "sleep", "300"))
	if err := ns.Start(); err != nil {
		return res, err
	}
	defer func() { ns.Process.Kill(); ns.Wait() }()
	time.Sleep(200 * time.Millisecond)
	pid := ns.Process.Pid
	c, err := t.start(pid, mtu)
	if err != nil {
		return res, err
	}
	defer func() { c.Process.Signal(syscall.SIGTERM); c.Wait() }()
	gw := t.gateway
	if gw == "" {
		gw, err = defaultGateway(pid)
		if err != nil {
			return res, err
		}
	}
	for i, reverse := range []bool{false, true} {
		args := []string{"--preserve-credentials", "-U", "-n", "-t", fmt.Sprint(pid), "iperf3", "-c", gw, "-p", "5299", "-t", fmt.Sprint(secs), "-J"}
		if reverse {
			args = append(args, "-R")
		}
		out, err := exec.Command("nsenter", args...).Output()
		if err != nil {
			return res, fmt.Errorf("iperf3: %w: %s", err, firstLine(out))
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(out, &r); err != nil || r.Error != "" {
			return res, fmt.Errorf("iperf3: %v %s", err, r.Error)
		}
		res[i] = r.End.SumReceived.BitsPerSecond / 1e9
	}
	return res, nil
}

func defaultGateway(pid int) (string, error) {
	out, err := exec.Command("nsenter", "--preserve-credentials", "-U", "-n", "-t", fmt.Sprint(pid), "ip", "-4", "route", "show", "default").Output()
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "via" {
			return f[i+1], nil
		}
	}
	return "", errors.New("no default route in the namespace")
}

func startAndWait(c *exec.Cmd, word string) (*exec.Cmd, error) {
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.Contains(line, word) {
		c.Process.Kill()
		c.Wait()
		return nil, fmt.Errorf("%s did not start: %q", c.Path, line)
	}
	return c, nil
}

func startReadyFD(c *exec.Cmd) (*exec.Cmd, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	c.ExtraFiles = []*os.File{w}
	if err := c.Start(); err != nil {
		w.Close()
		return nil, err
	}
	w.Close()
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil {
		c.Process.Kill()
		c.Wait()
		return nil, fmt.Errorf("%s never became ready", c.Path)
	}
	return c, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

func numCPU() int {
	n := 0
	f, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		n = strings.Count(string(f), "processor\t:")
	}
	return n
}

// unprivileged runs c as uid/gid 65534 when the benchmark runs as root:
// every tool is measured as the rootless user it is meant for.
func unprivileged(c *exec.Cmd) *exec.Cmd {
	if os.Geteuid() == 0 {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		c.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
	}
	return c
}
