package systemtest

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/mysqltest"
)

// The replays of deploy/kubernetes (see kubereplay_test.go for how a pod
// maps onto this machine). Both feed the page-view app numbered click
// events at 1,000/s while they kill pods, and then prove from Kafka and
// MariaDB that every event was counted exactly once.

// pvEnv is what both replays share: a kfake broker process with the output
// topic, a database with the pv table, and the Secrets.
type pvEnv struct {
	kafka string
	dsn   string
	db    *sql.DB
}

func newPVEnv(t *testing.T, r *kubeReplay) *pvEnv {
	t.Helper()
	e := &pvEnv{}
	b := kafkatest.StartBrokerWith(t, t.TempDir(), kafkatest.BrokerOptions{Topics: []string{"pageviews"}})
	e.kafka = b.Addr
	e.dsn = mysqltest.DSN(t)
	db, err := sql.Open("mysql", e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.db = db
	if _, err := db.ExecContext(ctxT(t, 30*time.Second), "CREATE TABLE pv(app VARCHAR(64) PRIMARY KEY, views BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	// The configs' Kafka placeholder is the broker here.
	for _, cm := range r.set.ConfigMaps {
		if b := cm.Data["kafka_brokers"]; b != "" {
			r.brokers[b] = e.kafka
		}
	}
	if len(r.brokers) == 0 {
		t.Fatal("no ConfigMap has kafka_brokers: which Kafka do the manifests use?")
	}
	r.secrets["txsink-token"] = map[string][]byte{"token": newSecret(32)}
	r.secrets["txsink-mysql"] = map[string][]byte{"dsn": []byte(e.dsn)}
	r.secrets["txsink-cluster-key"] = map[string][]byte{"cluster-key": newSecret(32)}
	return e
}

// generate appends events 1..n to "clicks" (4 partitions) at rate/s, in
// the background; the returned channel yields its error.
func (e *pvEnv) generate(t *testing.T, n, rate int) <-chan error {
	t.Helper()
	cmd := exec.Command(pageviewsBinary(t), "generate", "--brokers", e.kafka, "--events", strconv.Itoa(n),
		"--rate", strconv.Itoa(rate), "--partitions", "4")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("generate: %v\n%s", err, out)
		}
		done <- err
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return done
}

// pv reads table pv.
func (e *pvEnv) pv(t *testing.T) map[string]int {
	t.Helper()
	rows, err := e.db.QueryContext(ctxT(t, 10*time.Second), "SELECT app, views FROM pv")
	if err != nil {
		t.Fatalf("read pv: %v", err)
	}
	defer rows.Close()
	got := map[string]int{}
	for rows.Next() {
		var app string
		var views int
		if err := rows.Scan(&app, &views); err != nil {
			t.Fatal(err)
		}
		got[app] = views
	}
	return got
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// clicks reads the input (the truth): each partition's events by offset.
func (e *pvEnv) clicks(t *testing.T, n int) (byPartition map[int32][]string, truth map[string]int) {
	t.Helper()
	byPartition, truth = map[int32][]string{}, map[string]int{}
	recs := kafkatest.ReadCommitted(ctxT(t, time.Minute), t, e.kafka, "clicks", n)
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].Partition != recs[j].Partition {
			return recs[i].Partition < recs[j].Partition
		}
		return recs[i].Offset < recs[j].Offset
	})
	for _, r := range recs {
		var c struct {
			App string `json:"app"`
		}
		if err := json.Unmarshal(r.Value, &c); err != nil {
			t.Fatalf("clicks: %v", err)
		}
		if int64(len(byPartition[r.Partition])) != r.Offset {
			t.Fatalf("clicks partition %d: offset %d after %d events (a gap)", r.Partition, r.Offset, len(byPartition[r.Partition]))
		}
		byPartition[r.Partition] = append(byPartition[r.Partition], c.App)
		truth[c.App]++
	}
	return byPartition, truth
}

// checkExactlyOnce proves that n events were counted exactly once: pv holds
// the true counts, and the committed increments on "pageviews" cover every
// offset of every input partition exactly once (by writer and checkpoint),
// each with the views its range really holds.
func (e *pvEnv) checkExactlyOnce(t *testing.T, n int) {
	t.Helper()
	parts, truth := e.clicks(t, n)
	if got := e.pv(t); !mapsEqual(got, truth) {
		t.Errorf("pv = %v, want the true counts %v", got, truth)
	}
	type inc struct {
		App        string           `json:"app"`
		Views      int              `json:"views"`
		Writer     string           `json:"writer"`
		Checkpoint int64            `json:"checkpoint"`
		From       map[string]int64 `json:"from"`
		To         map[string]int64 `json:"to"`
	}
	covered := map[int32][]int{} // partition -> times each offset was counted
	for p, evs := range parts {
		covered[p] = make([]int, len(evs))
	}
	seen := map[string]bool{}
	ranges := map[string]bool{} // one range per (writer, checkpoint)
	sums := map[string]int{}
	recs := kafkatest.ReadCommittedWith(ctxT(t, time.Minute), t, e.kafka, "pageviews", 1, kafkatest.ReadOptions{Linger: 2 * time.Second})
	for _, r := range recs {
		var v inc
		if err := json.Unmarshal(r.Value, &v); err != nil {
			t.Fatalf("pageviews: %v", err)
		}
		id := fmt.Sprintf("writer %s checkpoint %d app %s", v.Writer, v.Checkpoint, v.App)
		if seen[id] {
			t.Errorf("pageviews: %s twice", id)
		}
		seen[id] = true
		sums[v.App] += v.Views
		want := 0
		ck := fmt.Sprintf("%s/%d", v.Writer, v.Checkpoint)
		for ps, from := range v.From {
			p64, _ := strconv.ParseInt(ps, 10, 32)
			p := int32(p64)
			to := v.To[ps]
			if from < 0 || to < from || to > int64(len(parts[p])) {
				t.Fatalf("%s: range %d-%d of partition %d, which has %d events", id, from, to, p, len(parts[p]))
			}
			for o := from; o < to; o++ {
				if parts[p][o] == v.App {
					want++
				}
				if !ranges[ck] {
					covered[p][o]++
				}
			}
		}
		ranges[ck] = true
		if v.Views != want {
			t.Errorf("%s: views %d, its input range holds %d", id, v.Views, want)
		}
	}
	for p, cs := range covered {
		for o, c := range cs {
			if c != 1 {
				t.Errorf("partition %d offset %d counted %d times in pageviews, want once", p, o, c)
				break
			}
		}
	}
	if !mapsEqual(sums, truth) {
		t.Errorf("pageviews increments sum to %v, want %v", sums, truth)
	}
	t.Logf("exactly once: %d events, %d checkpoints, %d increments; pv = %v", n, len(ranges), len(recs), truth)
}

// waitCounted waits until pv holds every one of n events (bounded).
func (e *pvEnv) waitCounted(t *testing.T, n int, within time.Duration, pods ...*kubePod) {
	t.Helper()
	deadline := time.Now().Add(within)
	for sum(e.pv(t)) < n {
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, p := range pods {
				logs.WriteString(p.logs())
			}
			t.Fatalf("pv counts %d of %d events after %s\n%s", sum(e.pv(t)), n, within, logs.String())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestKubernetesSidecarReplay replays deploy/kubernetes/sidecar: the pod
// (native sidecar first, the app once /readyz passes), killed with SIGKILL
// mid-stream and replaced by a new pod on the same claim, then terminated
// as the kubelet does (app first). Every event is counted exactly once.
func TestKubernetesSidecarReplay(t *testing.T) {
	r := newKubeReplay(t, "sidecar")
	e := newPVEnv(t, r)
	const events = 6000
	gen := e.generate(t, events, 1000)

	pod := r.newPod("pageviews", "pageviews-"+randomSuffix()+"-a", -1)
	pod.start()
	e.waitCounted(t, 1, time.Minute, pod)
	counted := sum(e.pv(t))
	pod.kill()
	t.Logf("killed pod %s with %d of %d events counted", pod.name, counted, events)

	pod = r.newPod("pageviews", "pageviews-"+randomSuffix()+"-b", -1)
	pod.start()
	if err := <-gen; err != nil {
		t.Fatal(err)
	}
	e.waitCounted(t, events, 2*time.Minute, pod)

	// Termination: the app first; the sidecar after it, and cleanly.
	st := pod.terminate()
	if s := st["txsink"]; s == nil || !s.Success() {
		t.Errorf("the sidecar did not stop cleanly after the app (exit status 2: it outlived the grace period and got SIGQUIT; its log shows where it hung): %v\n%s", s, pod.logs())
	}
	e.checkExactlyOnce(t, events)
}

// needClusterReplay fails when the sidecar has no cluster flags; the
// replay is skipped only on explicit request (TXSINK_TEST_SKIP_K8S_CLUSTER=1).
func needClusterReplay(t *testing.T) {
	t.Helper()
	if os.Getenv("TXSINK_TEST_SKIP_K8S_CLUSTER") == "1" {
		t.Skip("TXSINK_TEST_SKIP_K8S_CLUSTER=1: the replay of deploy/kubernetes/cluster is skipped on request")
	}
	out, _ := exec.Command(sidecarBin, "run", "-h").CombinedOutput()
	if !strings.Contains(string(out), "-bootstrap-expect") || !strings.Contains(string(out), "-advertise-raft") {
		t.Fatal("deploy/kubernetes/cluster needs the sidecar's cluster flags (--join, --bootstrap-expect, --voter, --advertise-http, " +
			"--advertise-raft), which `sidecar run -h` does not list; set TXSINK_TEST_SKIP_K8S_CLUSTER=1 to skip this replay explicitly")
	}
}

// TestKubernetesClusterReplay replays deploy/kubernetes/cluster: the three
// voters of the StatefulSet started together and forming the journal, the
// two app pods whose sidecars join as non-voters; then a kill -9 of the
// leader's container, restarted on its data dir, and a kill of an app pod,
// replaced by a new pod (new name, new IP, fresh emptyDirs) as its
// Deployment would. Every event is counted exactly once.
//
// The Secrets' files have the mode the kubelet gives them under the pods'
// fsGroup: group read added, so the cluster key is 0440. A sidecar that
// refuses that mode cannot start on Kubernetes, and neither can it here
// (README "Deploy on Kubernetes", known limits).
func TestKubernetesClusterReplay(t *testing.T) {
	needClusterReplay(t)
	r := newKubeReplay(t, "cluster")
	e := newPVEnv(t, r)
	r.reserveHosts("txsink")
	voters := make([]*kubePod, 3)
	for i := range voters {
		voters[i] = r.newPod("txsink", fmt.Sprintf("txsink-%d", i), i)
	}
	allLogs := func() string {
		var b strings.Builder
		for _, p := range voters {
			b.WriteString(p.logs())
		}
		return b.String()
	}
	// podManagementPolicy Parallel: all three at once, in a random order.
	for _, i := range []int{2, 0, 1} {
		voters[i].start()
	}
	for _, v := range voters {
		v.ready()
	}
	const events = 8000
	gen := e.generate(t, events, 1000)
	apps := []*kubePod{
		r.newPod("pageviews-0", "pageviews-0-"+randomSuffix()+"-a", -1),
		r.newPod("pageviews-1", "pageviews-1-"+randomSuffix()+"-a", -1),
	}
	for _, a := range apps {
		a.start()
	}
	e.waitCounted(t, 1, time.Minute, append(apps, voters...)...)
	st, err := voters[0].client().Cluster(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("cluster status: %v\n%s", err, allLogs())
	}
	if len(st.Members) != 5 {
		t.Errorf("the journal has %d members, want 3 voters and 2 non-voters: %+v", len(st.Members), st.Members)
	}
	voterCount := 0
	for _, m := range st.Members {
		if m.Voter {
			voterCount++
		}
	}
	if voterCount != 3 {
		t.Errorf("the journal has %d voters, want 3: %+v", voterCount, st.Members)
	}
	// kill -9 of the leader's container; the kubelet restarts it in the
	// same pod, on the same claim.
	leader := -1
	for i := range voters {
		if fmt.Sprintf("txsink-%d", i) == st.Leader {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatalf("leader %q is not a voter pod\n%s", st.Leader, allLogs())
	}
	voters[leader].kill9("txsink")
	t.Logf("killed the leader %s (kill -9) with %d events counted", st.Leader, sum(e.pv(t)))
	time.Sleep(time.Second)
	voters[leader].startContainer(&voters[leader].p.Spec.Containers[0])
	voters[leader].ready()

	// An app pod dies; its Deployment makes a new one.
	before := sum(e.pv(t))
	apps[0].kill()
	t.Logf("killed app pod %s with %d events counted", apps[0].name, before)
	apps[0] = r.newPod("pageviews-0", "pageviews-0-"+randomSuffix()+"-b", -1)
	apps[0].start()

	if err := <-gen; err != nil {
		t.Fatal(err)
	}
	e.waitCounted(t, events, 3*time.Minute, append(apps, voters...)...)
	for _, a := range apps {
		if s := a.terminate()["txsink"]; s == nil || !s.Success() {
			t.Errorf("pod %s: the sidecar did not stop cleanly after the app: %v\n%s", a.name, s, a.logs())
		}
	}
	// A terminated pod's non-voter left the journal on its way out (the
	// killed one could not: removing it is the operator's, see the README).
	st, err = voters[0].client().Cluster(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("cluster status: %v", err)
	}
	for _, m := range st.Members {
		for _, a := range apps {
			if m.ID == a.name {
				t.Errorf("pod %s was terminated, but its sidecar is still a member: %+v", a.name, st.Members)
			}
		}
	}
	e.checkExactlyOnce(t, events)
}
