package vxlan

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultAgeing is how long a learnt MAC -> VTEP entry lasts without a
// frame from that MAC: the kernel bridge's and vxlan's default (300 s).
const DefaultAgeing = 300 * time.Second

// FDB maps MAC addresses to the remote VTEPs they were last seen behind,
// learnt from received frames as the kernel's vxlan does with static
// remotes; entries expire after ageing. Safe for concurrent use.
type FDB struct {
	ageing time.Duration
	now    func() time.Time

	mu      sync.Mutex
	entries map[[6]byte]fdbEntry
}

type fdbEntry struct {
	vtep netip.AddrPort
	seen time.Time
}

// NewFDB returns an empty table whose entries expire after ageing.
func NewFDB(ageing time.Duration) *FDB {
	return &FDB{ageing: ageing, now: time.Now, entries: map[[6]byte]fdbEntry{}}
}

// Learn records that mac was seen behind vtep now. Multicast sources are
// not learnt (they are not a station's).
func (f *FDB) Learn(mac net.HardwareAddr, vtep netip.AddrPort) {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return
	}
	f.mu.Lock()
	f.entries[[6]byte(mac)] = fdbEntry{vtep: vtep, seen: f.now()}
	f.mu.Unlock()
}

// Lookup returns the VTEP of a unicast mac, if one was learnt and has not
// expired.
func (f *FDB) Lookup(mac net.HardwareAddr) (netip.AddrPort, bool) {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return netip.AddrPort{}, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.entries[[6]byte(mac)]
	if !ok {
		return netip.AddrPort{}, false
	}
	if f.now().Sub(e.seen) > f.ageing {
		delete(f.entries, [6]byte(mac))
		return netip.AddrPort{}, false
	}
	return e.vtep, true
}

// Forget drops every entry behind vtep (a peer removed).
func (f *FDB) Forget(vtep netip.AddrPort) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for mac, e := range f.entries {
		if e.vtep == vtep {
			delete(f.entries, mac)
		}
	}
}

// Expire drops the entries older than the ageing time, and returns how
// many are left.
func (f *FDB) Expire() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	for mac, e := range f.entries {
		if now.Sub(e.seen) > f.ageing {
			delete(f.entries, mac)
		}
	}
	return len(f.entries)
}
