package kafkabroker

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func TestArgsRoundTrip(t *testing.T) {
	for _, c := range []Config{
		{Addr: "127.0.0.1:0"},
		{Addr: "127.0.0.1:9092", DataDir: "/d", Partitions: 3, Topics: []string{"a", "b"}, TxnMaxTimeout: time.Minute},
	} {
		got := DefaultConfig()
		got.Partitions = 7 // Args must override it
		fs := flag.NewFlagSet("", flag.ContinueOnError)
		got.Bind(fs)
		if err := fs.Parse(c.Args()); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("Bind(Args(%+v)): got %+v", c, got)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{{Partitions: -1}, {TxnMaxTimeout: -time.Second}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v): got nil, want an error", c)
		}
	}
}

// TestRunServesUntilCancelled: Run reports its address, answers Kafka
// requests with the seeded topic, and returns once ctx ends.
func TestRunServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	c := Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Topics: []string{"seeded"}}
	go func() {
		done <- Run(ctx, c, slog.New(slog.NewTextHandler(io.Discard, nil)), func(a string) error { addrs <- a; return nil })
	}()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("Run returned before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready within 30s")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	if err := cl.Ping(pctx); err != nil {
		t.Fatalf("ping %s: %v", addr, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of the cancel")
	}
}
