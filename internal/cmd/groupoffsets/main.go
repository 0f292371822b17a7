// Command groupoffsets prints a Kafka consumer group's committed offsets as
// JSON, {"<topic>": {"<partition>": <next offset>}} ({} for a group with
// none), read with require_stable (internal/kafkatest.GroupOffsets): offsets
// in an open transaction are waited for, never printed. It exists for the
// Python and Node clients' tests (clients/python/tests, clients/node/test),
// which have no Kafka client of their own to check what a checkpoint's
// "offsets" committed; kcat cannot show group offsets.
//
//	go build -o /tmp/groupoffsets ./internal/cmd/groupoffsets
//	/tmp/groupoffsets --brokers 127.0.0.1:9092 --group pageviews
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "Kafka bootstrap broker")
	group := flag.String("group", "", "consumer group id (required)")
	wait := flag.Duration("wait", 10*time.Second, "how long to wait for offsets in an open transaction to be committed or aborted")
	flag.Parse()
	if *group == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: groupoffsets --brokers host:port --group id [--wait 10s]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *wait+30*time.Second)
	defer cancel()
	offs, err := kafkatest.GroupOffsets(ctx, *brokers, *group, *wait)
	if err != nil {
		fmt.Fprintln(os.Stderr, "groupoffsets:", err)
		os.Exit(1)
	}
	out := map[string]map[string]int64{}
	for t, ps := range offs {
		out[t] = map[string]int64{}
		for p, o := range ps {
			out[t][strconv.Itoa(int(p))] = o
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
