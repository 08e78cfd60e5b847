// Package relay copies between the netstack and host sockets: TCP streams
// (Stream), passing half-closes and resets from each side to the other,
// and UDP datagrams (UDPToHost, ReadGuest, ReadHost).
package relay
