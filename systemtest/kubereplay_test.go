package systemtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/txsink/txsink/api/client"
	"github.com/txsink/txsink/internal/k8stest"
	"github.com/txsink/txsink/internal/testenv"
)

// The Kubernetes replay runs the pods of deploy/kubernetes on this machine
// as processes, with the args, env and config the manifests give them
// (read by internal/k8stest), mapped onto one machine like this:
//
//	manifest                              here
//	a pod                                 its own loopback IP 127.0.0.x; ports as in the manifest
//	0.0.0.0 or 127.0.0.1 in an address    the pod's IP (one network namespace for all pods here)
//	a pod's DNS name (txsink-0.txsink-peers)  that pod's IP
//	status.podIP, metadata.name           the pod's IP and name
//	a volume's mountPath                  a directory of the pod (emptyDir: new per pod;
//	                                      a claim: kept across pods; ConfigMap and Secret:
//	                                      their files, Secrets with the mode the kubelet gives
//	                                      them under fsGroup)
//	the Kafka brokers of the config       a kfake broker process
//	Secret txsink-mysql's dsn             a database of the test MariaDB
//	image txsink / txsink-pageviews       the sidecar binary / examples/pageviews-go built here
//	native sidecar (restartPolicy Always) started first; the app once its startupProbe passes;
//	                                      stopped last (SIGTERM after the app exited)
//
// Nothing else of the args or the config is changed.

// kubeReplay is one replay: the manifests, the addresses and the files.
type kubeReplay struct {
	t       *testing.T
	set     *k8stest.Set
	root    string
	hosts   map[string]string            // DNS name -> IP
	brokers map[string]string            // broker in the config -> kfake address
	secrets map[string]map[string][]byte // Secret -> key -> data
	claims  map[string]string            // claim name -> directory, kept across pods
	images  map[string]string            // image repository -> binary
	nextIP  int
	mu      sync.Mutex
}

var appBinOnce struct {
	sync.Once
	path string
	err  error
}

// pageviewsBinary builds examples/pageviews-go once per test process.
func pageviewsBinary(t *testing.T) string {
	t.Helper()
	appBinOnce.Do(func() {
		appBinOnce.path = filepath.Join(filepath.Dir(sidecarBin), "pageviews")
		cmd := exec.Command("go", "build", "-o", appBinOnce.path, "./examples/pageviews-go")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			appBinOnce.err = fmt.Errorf("build pageviews: %v\n%s", err, out)
		}
	})
	if appBinOnce.err != nil {
		t.Fatal(appBinOnce.err)
	}
	return appBinOnce.path
}

func newKubeReplay(t *testing.T, dir string) *kubeReplay {
	t.Helper()
	set, err := k8stest.Load(filepath.Join(repoRoot(t), "deploy", "kubernetes", dir))
	if err != nil {
		t.Fatal(err)
	}
	// The pods' IPs start at a random 127.0.0.x so that two runs on one
	// machine rarely meet; a taken port moves on to the next address.
	n, _ := rand.Int(rand.Reader, big.NewInt(150))
	return &kubeReplay{t: t, set: set, root: shortTempDir(t), hosts: map[string]string{}, brokers: map[string]string{},
		secrets: map[string]map[string][]byte{}, claims: map[string]string{},
		images: map[string]string{k8stest.SidecarImage: sidecarBin, "txsink-pageviews": pageviewsBinary(t)},
		nextIP: 20 + int(n.Int64())}
}

// shortTempDir: Unix socket paths must stay under 108 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "k8s-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// ip hands out a loopback address on which every port ports is free.
func (r *kubeReplay) ip(ports []int32) string {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for range 100 {
		ip := fmt.Sprintf("127.0.0.%d", r.nextIP)
		r.nextIP++
		if r.nextIP > 250 {
			r.nextIP = 2
		}
		free := true
		for _, p := range ports {
			ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			return ip
		}
	}
	r.t.Fatalf("no 127.0.0.x with ports %v free", ports)
	return ""
}

// kubePod is one pod of a workload, replayed.
type kubePod struct {
	r     *kubeReplay
	name  string
	ip    string
	p     *k8stest.Pod
	dir   string
	vols  map[string]string // volume name -> directory
	procs map[string]*kubeProc
}

type kubeProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	logs *testenv.Buffer
}

// newPod prepares pod name of workload: its IP, volumes and files.
// ordinal >= 0 for a StatefulSet's pod (its claims are data-<sts>-<n>).
func (r *kubeReplay) newPod(workload, name string, ordinal int) *kubePod {
	r.t.Helper()
	w, err := r.set.Workload(workload)
	if err != nil {
		r.t.Fatal(err)
	}
	p, err := r.set.Pod(w)
	if err != nil {
		r.t.Fatal(err)
	}
	var ports []int32
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		for _, cp := range c.Ports {
			ports = append(ports, cp.ContainerPort)
		}
	}
	ip := ""
	if ordinal >= 0 {
		// A StatefulSet pod's DNS name keeps its address across restarts here.
		ip = r.hosts[fmt.Sprintf("%s-%d.%s", w.Name, ordinal, w.Sts.Spec.ServiceName)]
	}
	if ip == "" {
		ip = r.ip(ports)
	}
	if ordinal >= 0 {
		r.hosts[fmt.Sprintf("%s-%d.%s", w.Name, ordinal, w.Sts.Spec.ServiceName)] = ip
	}
	kp := &kubePod{r: r, name: name, ip: ip, p: p, dir: filepath.Join(r.root, name), vols: map[string]string{}, procs: map[string]*kubeProc{}}
	r.t.Cleanup(kp.kill)
	for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
		for _, m := range c.VolumeMounts {
			if _, ok := kp.vols[m.Name]; ok {
				continue
			}
			v := p.Volume(m.Name)
			if v == nil {
				r.t.Fatalf("pod %s: no volume %s", name, m.Name)
			}
			kp.vols[m.Name] = kp.volumeDir(v, ordinal)
		}
	}
	// The files last: the config names paths of every volume.
	for name, dir := range kp.vols {
		kp.fill(kp.p.Volume(name), dir)
	}
	return kp
}

// reserveHosts gives every pod of a StatefulSet its IP before any starts,
// so that --join can name them all.
func (r *kubeReplay) reserveHosts(sts string) {
	r.t.Helper()
	w, err := r.set.Workload(sts)
	if err != nil || w.Sts == nil {
		r.t.Fatalf("no StatefulSet %s: %v", sts, err)
	}
	var ports []int32
	for _, c := range w.Template.Spec.Containers {
		for _, cp := range c.Ports {
			ports = append(ports, cp.ContainerPort)
		}
	}
	for i := range w.Replicas {
		r.hosts[fmt.Sprintf("%s-%d.%s", w.Name, i, w.Sts.Spec.ServiceName)] = r.ip(ports)
	}
}

func (kp *kubePod) volumeDir(v *corev1.Volume, ordinal int) string {
	t := kp.r.t
	dir := filepath.Join(kp.dir, "v-"+v.Name)
	switch {
	case v.PersistentVolumeClaim != nil:
		claim := v.PersistentVolumeClaim.ClaimName
		if ordinal >= 0 {
			claim = fmt.Sprintf("%s-%s-%d", claim, kp.p.W.Name, ordinal)
		}
		if d, ok := kp.r.claims[claim]; ok {
			return d
		}
		dir = filepath.Join(kp.r.root, "claim-"+claim)
		kp.r.claims[claim] = dir
	case v.EmptyDir != nil, v.ConfigMap != nil, v.Secret != nil, v.Projected != nil:
	default:
		t.Fatalf("pod %s: volume %s: a kind the replay does not know", kp.name, v.Name)
	}
	mkdir(t, dir)
	return dir
}

// fill writes a ConfigMap's or Secret's files into its volume's directory.
func (kp *kubePod) fill(v *corev1.Volume, dir string) {
	t := kp.r.t
	fsGroup := kp.p.Spec.SecurityContext != nil && kp.p.Spec.SecurityContext.FSGroup != nil
	switch {
	case v.ConfigMap != nil:
		for _, it := range v.ConfigMap.Items {
			kp.writeConfigMapItem(dir, v.ConfigMap.Name, it)
		}
	case v.Secret != nil:
		for _, it := range v.Secret.Items {
			kp.writeSecretItem(dir, v.Secret.SecretName, it, v.Secret.DefaultMode, fsGroup)
		}
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			if src.Secret == nil {
				t.Fatalf("pod %s: projected volume %s: only Secrets are replayed", kp.name, v.Name)
			}
			for _, it := range src.Secret.Items {
				kp.writeSecretItem(dir, src.Secret.Name, it, v.Projected.DefaultMode, fsGroup)
			}
		}
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// writeSecretItem writes a Secret's key with the mode the kubelet gives it:
// the item's or volume's mode, plus group read when the pod has fsGroup.
func (kp *kubePod) writeSecretItem(dir, secret string, it corev1.KeyToPath, def *int32, fsGroup bool) {
	t := kp.r.t
	data, ok := kp.r.secrets[secret][it.Key]
	if !ok {
		t.Fatalf("the replay has no Secret %s key %s", secret, it.Key)
	}
	mode := int32(0o644)
	if def != nil {
		mode = *def
	}
	if it.Mode != nil {
		mode = *it.Mode
	}
	if fsGroup {
		mode |= 0o440
	}
	p := filepath.Join(dir, it.Path)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, os.FileMode(mode)); err != nil {
		t.Fatal(err)
	}
}

// writeConfigMapItem writes a ConfigMap's key; the txsink config gets the
// replay's mapping of paths and addresses.
func (kp *kubePod) writeConfigMapItem(dir, name string, it corev1.KeyToPath) {
	t := kp.r.t
	cm := kp.r.set.ConfigMap(name)
	if cm == nil {
		t.Fatalf("no ConfigMap %s", name)
	}
	text, ok := cm.Data[it.Key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s", name, it.Key)
	}
	text = kp.mapString(kp.p.Sidecar.C, text)
	if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// loopbackOrAny matches 0.0.0.0 or 127.0.0.1 as the host of host:port.
var loopbackOrAny = regexp.MustCompile(`\b(0\.0\.0\.0|127\.0\.0\.1):`)

// mapString maps what a container reads (an arg or the config) onto this
// machine: mount paths, DNS names, brokers, 0.0.0.0 and 127.0.0.1.
func (kp *kubePod) mapString(c *corev1.Container, s string) string {
	s = loopbackOrAny.ReplaceAllString(s, kp.ip+":")
	for from, to := range kp.r.brokers {
		s = strings.ReplaceAll(s, from, to)
	}
	s = replaceBounded(s, kp.r.hosts, `[:/]`)
	paths := map[string]string{}
	for _, m := range c.VolumeMounts {
		paths[m.MountPath] = kp.vols[m.Name]
	}
	return replaceBounded(s, paths, `[/"'\s,\]]|$`)
}

// replaceBounded replaces each key of m (longest first, one pass) where it
// is followed by what `after` matches, so that /run/txsink does not touch
// /run/txsink-token.
func replaceBounded(s string, m map[string]string, after string) string {
	if len(m) == 0 {
		return s
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, regexp.QuoteMeta(k))
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	re := regexp.MustCompile(`(?m)(` + strings.Join(keys, "|") + `)(` + after + `)`)
	return re.ReplaceAllStringFunc(s, func(match string) string {
		sub := re.FindStringSubmatch(match)
		return m[sub[1]] + sub[2]
	})
}

// env resolves a container's env as the kubelet would: vals as the
// manifest gives them (for $(VAR) in args, mapped after expansion), list
// mapped onto this machine (the process's environment).
func (kp *kubePod) env(c *corev1.Container) (vals map[string]string, list []string) {
	t := kp.r.t
	vals = map[string]string{}
	for _, e := range c.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			v = kp.name
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP":
			v = kp.ip
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := kp.r.set.ConfigMap(ref.Name)
			if cm == nil {
				t.Fatalf("env %s: no ConfigMap %s", e.Name, ref.Name)
			}
			v = cm.Data[ref.Key]
		default:
			t.Fatalf("container %s env %s: a source the replay does not know", c.Name, e.Name)
		}
		vals[e.Name] = v
		list = append(list, e.Name+"="+kp.mapString(c, v))
	}
	return vals, list
}

// start runs the pod's containers as the kubelet would: native sidecars
// first, each until its startupProbe passes, then the app containers.
func (kp *kubePod) start() {
	kp.r.t.Helper()
	for i := range kp.p.Spec.InitContainers {
		c := &kp.p.Spec.InitContainers[i]
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			kp.r.t.Fatalf("pod %s: init container %s is not a native sidecar; the replay runs only those", kp.name, c.Name)
		}
		kp.startContainer(c)
		if c.StartupProbe != nil {
			kp.waitProbe(c, c.StartupProbe, "startupProbe")
		}
	}
	for i := range kp.p.Spec.Containers {
		kp.startContainer(&kp.p.Spec.Containers[i])
	}
}

// startContainer runs one container's process (again, after a kill: the
// kubelet's restart of a container in the same pod).
func (kp *kubePod) startContainer(c *corev1.Container) {
	t := kp.r.t
	t.Helper()
	bin, ok := kp.r.images[k8stest.ImageRepo(c.Image)]
	if !ok {
		t.Fatalf("container %s: image %s: the replay has no binary for it", c.Name, c.Image)
	}
	vals, envList := kp.env(c)
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		e, err := k8stest.Expand(a, c, vals)
		if err != nil {
			t.Fatal(err)
		}
		args[i] = kp.mapString(c, e)
	}
	tmp := kp.dir
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/tmp" {
			tmp = kp.vols[m.Name]
		}
	}
	pr := &kubeProc{name: kp.name + "/" + c.Name, logs: &testenv.Buffer{}, done: make(chan struct{})}
	pr.cmd = exec.Command(bin, args...)
	// Only what the manifest gives (plus PATH and TMPDIR): nothing of the
	// test's own environment (TXSINK_*) leaks into the pod.
	pr.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "TMPDIR=" + tmp, "HOME=" + tmp}, envList...)
	pr.cmd.Dir = kp.dir
	pr.cmd.Stdout, pr.cmd.Stderr = pr.logs, pr.logs
	if err := pr.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", pr.name, err)
	}
	go func() { _ = pr.cmd.Wait(); close(pr.done) }()
	kp.procs[c.Name] = pr
	t.Logf("pod %s (%s): started %s: %s %s", kp.name, kp.ip, c.Name, filepath.Base(bin), strings.Join(args, " "))
}

// waitProbe polls an httpGet probe as the kubelet would, for at most
// failureThreshold periods (bounded by 3 minutes here).
func (kp *kubePod) waitProbe(c *corev1.Container, pr *corev1.Probe, kind string) {
	t := kp.r.t
	t.Helper()
	if pr.HTTPGet == nil {
		t.Fatalf("container %s: %s is not an httpGet", c.Name, kind)
	}
	port := pr.HTTPGet.Port.IntVal
	for _, cp := range c.Ports {
		if cp.Name == pr.HTTPGet.Port.StrVal {
			port = cp.ContainerPort
		}
	}
	url := fmt.Sprintf("http://%s:%d%s", kp.ip, port, pr.HTTPGet.Path)
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	limit := min(time.Duration(max(pr.FailureThreshold, 3))*period, 3*time.Minute)
	deadline := time.Now().Add(limit)
	hc := &http.Client{Timeout: 3 * time.Second}
	var last string
	for time.Now().Before(deadline) {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode >= 200 && resp.StatusCode < 400 {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-kp.procs[c.Name].done:
			t.Fatalf("pod %s: %s exited before its %s passed:\n%s", kp.name, c.Name, kind, tail(kp.procs[c.Name].logs, 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("pod %s: %s %s %s did not pass within %s (last: %s):\n%s", kp.name, c.Name, kind, url, limit, last, tail(kp.procs[c.Name].logs, 40))
}

// ready polls the sidecar's readinessProbe until it passes.
func (kp *kubePod) ready() {
	kp.r.t.Helper()
	c := kp.p.Sidecar.C
	kp.waitProbe(c, c.ReadinessProbe, "readinessProbe")
}

// client talks to the pod's sidecar API with the token.
func (kp *kubePod) client() *client.Client {
	tok := kp.r.secrets["txsink-token"]["token"]
	return client.New("http://"+kp.ip+":8470", client.WithToken(strings.TrimSpace(string(tok))))
}

// kill9 kills one container with SIGKILL and waits for it.
func (kp *kubePod) kill9(container string) {
	kp.r.t.Helper()
	pr := kp.procs[container]
	if pr == nil {
		return
	}
	_ = pr.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-pr.done:
	case <-time.After(30 * time.Second):
		kp.r.t.Fatalf("%s did not die of SIGKILL within 30s", pr.name)
	}
}

// kill kills every container (a node failing, kubectl delete --force).
func (kp *kubePod) kill() {
	for name := range kp.procs {
		kp.kill9(name)
	}
}

// terminate stops the pod as the kubelet does with native sidecars: SIGTERM
// to the app containers, and to the sidecars only once they exited, all
// within terminationGracePeriodSeconds; then SIGKILL. It returns each
// container's exit status.
func (kp *kubePod) terminate() map[string]*os.ProcessState {
	grace := 30 * time.Second
	if g := kp.p.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	deadline := time.Now().Add(grace)
	stop := func(names []string) {
		for _, n := range names {
			if pr := kp.procs[n]; pr != nil {
				_ = pr.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, n := range names {
			if pr := kp.procs[n]; pr != nil {
				select {
				case <-pr.done:
				case <-time.After(time.Until(deadline)):
					// Past the grace period: SIGQUIT first, so that a Go
					// process's log shows where it hung, then SIGKILL.
					_ = pr.cmd.Process.Signal(syscall.SIGQUIT)
					select {
					case <-pr.done:
					case <-time.After(2 * time.Second):
					}
					_ = pr.cmd.Process.Signal(syscall.SIGKILL)
					<-pr.done
				}
			}
		}
	}
	var apps, sidecars []string
	for _, c := range kp.p.Spec.Containers {
		apps = append(apps, c.Name)
	}
	for _, c := range kp.p.Spec.InitContainers {
		sidecars = append([]string{c.Name}, sidecars...)
	}
	stop(apps)
	stop(sidecars)
	out := map[string]*os.ProcessState{}
	for n, pr := range kp.procs {
		out[n] = pr.cmd.ProcessState
	}
	return out
}

// logs returns the tails of every container's log, for a failure.
func (kp *kubePod) logs() string {
	var b strings.Builder
	for name, pr := range kp.procs {
		fmt.Fprintf(&b, "--- pod %s container %s:\n%s\n", kp.name, name, tail(pr.logs, 30))
	}
	return b.String()
}

// randomSuffix is a Deployment pod's name suffix.
func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newSecret returns random hex of n bytes, like `openssl rand -hex n`.
func newSecret(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b) + "\n")
}

// ctxT is a bounded context for one call of a test.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
