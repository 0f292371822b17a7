package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBrokerStateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), brokerStateFile)
	if _, err := readBrokerState(path); !os.IsNotExist(err) {
		t.Fatalf("missing file: got %v, want not-exist", err)
	}
	want := brokerState{PID: 4242, Addr: "127.0.0.1:9092"}
	if err := writeBrokerState(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := readBrokerState(path)
	if err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	left, _ := filepath.Glob(path + ".*")
	if len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readBrokerState(path); err == nil {
		t.Error("a broken file: got nil, want an error")
	}
}

func TestPidAlive(t *testing.T) {
	if !pidAlive(os.Getpid()) {
		t.Error("this process: got not alive")
	}
	if pidAlive(0) || pidAlive(-1) {
		t.Error("pid 0/-1: got alive")
	}
}

func TestIsDevBroker(t *testing.T) {
	// This test binary is alive but is no dev broker: a broker.json naming
	// its pid must count as stale.
	if isDevBroker(os.Getpid()) {
		t.Error("the test process: got a dev broker")
	}
}
