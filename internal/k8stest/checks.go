package k8stest

import (
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Check runs every cross check on s: what Kubernetes would accept but
// would not work. image is the repository `make image` builds (from the
// Makefile, see MakeImageName); readme is the README's text, whose
// "kubectl create secret" lines must create every Secret the pods use.
func Check(s *Set, image, readme string) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	checkLabels(s, bad)
	checkImages(s, image, bad)
	checkServices(s, bad)
	for _, w := range s.Workloads() {
		p, err := s.Pod(w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		cfg, err := s.Config(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c := checker{s: s, p: p, cfg: cfg, bad: func(format string, args ...any) {
			bad("%s %s: "+format, append([]any{w.Kind, w.Name}, args...)...)
		}}
		c.selector()
		c.security()
		c.envRefs()
		c.ports()
		c.files(readme)
		c.socket()
		c.sinks()
		c.termination()
		if w.Sts != nil {
			c.journal()
		} else {
			c.appSidecar()
		}
	}
	return errors.Join(errs...)
}

const nameLabel = "app.kubernetes.io/name"

// checkLabels: every object and pod template carries app.kubernetes.io/name.
func checkLabels(s *Set, bad func(string, ...any)) {
	var metas []metav1.ObjectMeta
	for _, o := range s.ConfigMaps {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range s.Services {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range s.PVCs {
		metas = append(metas, o.ObjectMeta)
	}
	for _, o := range s.PDBs {
		metas = append(metas, o.ObjectMeta)
	}
	for _, w := range s.Workloads() {
		metas = append(metas, metav1.ObjectMeta{Name: w.Name + " (pod template)", Labels: w.Template.Labels})
	}
	for _, d := range s.Deployments {
		metas = append(metas, d.ObjectMeta)
	}
	for _, st := range s.StatefulSets {
		metas = append(metas, st.ObjectMeta)
	}
	for _, m := range metas {
		if m.Labels[nameLabel] == "" {
			bad("%s has no label %s", m.Name, nameLabel)
		}
	}
}

// checkImages: the txsink containers run the image `make image` builds, and
// the kustomization's images entry names it with the same tag.
func checkImages(s *Set, image string, bad func(string, ...any)) {
	var entry *Image
	for i, im := range s.Kustomization.Images {
		if im.Name == image {
			entry = &s.Kustomization.Images[i]
		}
	}
	if entry == nil {
		bad("kustomization.yaml: images has no entry named %q (what make image builds)", image)
	}
	for _, w := range s.Workloads() {
		p, err := s.Pod(w)
		if err != nil {
			continue // reported by Check
		}
		img := p.Sidecar.C.Image
		if ImageRepo(img) != image {
			bad("%s %s: container %s runs %q; make image builds %q", w.Kind, w.Name, p.Sidecar.C.Name, img, image)
		}
		if entry != nil && entry.NewTag != "" && ImageTag(img) != entry.NewTag {
			bad("%s %s: container %s runs tag %q; kustomization.yaml sets %q", w.Kind, w.Name, p.Sidecar.C.Name, ImageTag(img), entry.NewTag)
		}
		for _, c := range append([]*Container{p.Sidecar}, p.Apps...) {
			if c.C.ImagePullPolicy != corev1.PullIfNotPresent {
				bad("%s %s: container %s: imagePullPolicy %q, want IfNotPresent (a tag like dev would be pulled each start)",
					w.Kind, w.Name, c.C.Name, c.C.ImagePullPolicy)
			}
		}
	}
}

// podsOf returns the workloads whose pod labels a selector matches.
func podsOf(s *Set, sel labels.Selector) []Workload {
	var out []Workload
	for _, w := range s.Workloads() {
		if sel.Matches(labels.Set(w.Template.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

// checkServices: each Service and PDB selects pods, and a Service's
// targetPorts are ports those pods' containers declare.
func checkServices(s *Set, bad func(string, ...any)) {
	for _, svc := range s.Services {
		if len(svc.Spec.Selector) == 0 {
			bad("Service %s has no selector", svc.Name)
			continue
		}
		ws := podsOf(s, labels.SelectorFromSet(svc.Spec.Selector))
		if len(ws) == 0 {
			bad("Service %s: selector %v matches no pod template", svc.Name, svc.Spec.Selector)
		}
		for _, w := range ws {
			for _, sp := range svc.Spec.Ports {
				if _, err := containerPort(w.Template.Spec, sp.TargetPort); err != nil {
					bad("Service %s port %s: pods of %s %s: %v", svc.Name, sp.Name, w.Kind, w.Name, err)
				}
			}
		}
	}
	for _, pdb := range s.PDBs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || pdb.Spec.Selector == nil {
			bad("PodDisruptionBudget %s: selector: %v", pdb.Name, err)
			continue
		}
		if len(podsOf(s, sel)) == 0 {
			bad("PodDisruptionBudget %s: selector matches no pod template", pdb.Name)
		}
	}
}

// containerPort resolves a port by name or number among the pod's
// containers (init containers included: native sidecars serve ports).
func containerPort(spec corev1.PodSpec, port intstr.IntOrString) (int32, error) {
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, cp := range c.Ports {
			if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
				return cp.ContainerPort, nil
			}
		}
	}
	return 0, fmt.Errorf("no container declares port %s", port.String())
}

type checker struct {
	s   *Set
	p   *Pod
	cfg *SidecarConfig
	bad func(string, ...any)
}

// selector: the workload's selector matches its own pod template.
func (c checker) selector() {
	var sel *metav1.LabelSelector
	for _, d := range c.s.Deployments {
		if d.Name == c.p.W.Name {
			sel = d.Spec.Selector
		}
	}
	if c.p.W.Sts != nil {
		sel = c.p.W.Sts.Spec.Selector
	}
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || sel == nil || ls.Empty() {
		c.bad("selector %v: %v", sel, err)
		return
	}
	if !ls.Matches(labels.Set(c.p.W.Template.Labels)) {
		c.bad("selector %v does not match the pod template's labels %v", ls, c.p.W.Template.Labels)
	}
	// Two workloads whose selectors match each other's pods fight over them.
	for _, o := range c.s.Workloads() {
		if o.Name != c.p.W.Name && ls.Matches(labels.Set(o.Template.Labels)) {
			c.bad("selector %v also matches the pods of %s %s", ls, o.Kind, o.Name)
		}
	}
}

// security: non-root, read-only root filesystem, no capabilities, no
// privilege escalation, resources requested and memory limited.
func (c checker) security() {
	psc := c.p.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		c.bad("pod securityContext.runAsNonRoot is not true")
	}
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		c.bad("pod securityContext.runAsUser is not a non-root uid")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.bad("pod securityContext.seccompProfile is not RuntimeDefault")
	}
	for _, ct := range append([]*Container{c.p.Sidecar}, c.p.Apps...) {
		sc := ct.C.SecurityContext
		switch {
		case sc == nil:
			c.bad("container %s has no securityContext", ct.C.Name)
			continue
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			c.bad("container %s: allowPrivilegeEscalation is not false", ct.C.Name)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			c.bad("container %s: readOnlyRootFilesystem is not true", ct.C.Name)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			c.bad("container %s: capabilities must drop ALL and add none", ct.C.Name)
		case sc.Privileged != nil && *sc.Privileged:
			c.bad("container %s is privileged", ct.C.Name)
		case sc.RunAsUser != nil && *sc.RunAsUser == 0:
			c.bad("container %s runs as root", ct.C.Name)
		}
		r := ct.C.Resources
		if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
			c.bad("container %s: want cpu and memory requests and a memory limit", ct.C.Name)
		}
	}
}

// envRefs: every $(VAR) in args names an env var the container defines
// (otherwise the kubelet passes it on literally).
func (c checker) envRefs() {
	for _, ct := range append([]*Container{c.p.Sidecar}, c.p.Apps...) {
		defined := map[string]bool{}
		for _, e := range ct.C.Env {
			defined[e.Name] = true
		}
		for _, a := range ct.C.Args {
			for _, m := range envRef.FindAllStringSubmatch(a, -1) {
				if m[0] != "$$" && !defined[m[1]] {
					c.bad("container %s: arg %q refers to $(%s), which the container does not define", ct.C.Name, a, m[1])
				}
			}
		}
	}
}

// ports: the sidecar's HTTP API and raft ports are declared, its probes hit
// the API's port, the startup probe of a native sidecar is /readyz (the app
// starts once the sidecar is ready) and liveness is never /readyz (a sink
// outage must not restart the sidecar).
func (c checker) ports() {
	sc := c.p.Sidecar.C
	httpAddr, from := c.cfg.Get("http_addr")
	httpPort, err := Port(httpAddr)
	if err != nil {
		c.bad("http_addr (%s): %v", from, err)
		return
	}
	if host, _, _ := net.SplitHostPort(httpAddr); host != "" && net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback() {
		c.bad("http_addr %s (%s) is loopback: the kubelet's probes come to the pod's IP", httpAddr, from)
	}
	declared := map[string]int32{}
	for _, cp := range sc.Ports {
		declared[cp.Name] = cp.ContainerPort
	}
	if declared["http"] != httpPort {
		c.bad("container %s: port http is %d, http_addr (%s) listens on %d", sc.Name, declared["http"], from, httpPort)
	}
	if c.p.W.Sts != nil || c.cfg.isMember() {
		raftAddr, rfrom := c.cfg.Get("raft_addr")
		if rp, err := Port(raftAddr); err != nil || declared["raft"] != rp {
			c.bad("container %s: port raft is %d, raft_addr %s (%s)", sc.Name, declared["raft"], raftAddr, rfrom)
		}
	}
	probes := map[string]*corev1.Probe{"startupProbe": sc.StartupProbe, "readinessProbe": sc.ReadinessProbe, "livenessProbe": sc.LivenessProbe}
	for kind, pr := range probes {
		if pr == nil || pr.HTTPGet == nil {
			c.bad("container %s: %s is missing or not an httpGet", sc.Name, kind)
			continue
		}
		port, err := containerPort(corev1.PodSpec{Containers: []corev1.Container{*sc}}, pr.HTTPGet.Port)
		if err != nil || port != httpPort {
			c.bad("container %s: %s hits port %s (%d), the API listens on %d (%s)", sc.Name, kind, pr.HTTPGet.Port.String(), port, httpPort, from)
		}
		if s := pr.HTTPGet.Scheme; s != "" && s != corev1.URISchemeHTTP && c.cfg.File["tls_cert_file"] == nil {
			c.bad("container %s: %s scheme %s, the API is plain HTTP", sc.Name, kind, s)
		}
		if p := pr.HTTPGet.Path; p != "/readyz" && p != "/healthz" {
			c.bad("container %s: %s path %q: the sidecar serves /readyz and /healthz", sc.Name, kind, p)
		}
	}
	if pr := sc.LivenessProbe; pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Path != "/healthz" {
		c.bad("container %s: livenessProbe %s: a sink outage would restart the sidecar; use /healthz", sc.Name, pr.HTTPGet.Path)
	}
	if pr := sc.ReadinessProbe; pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Path != "/readyz" {
		c.bad("container %s: readinessProbe %s, want /readyz", sc.Name, pr.HTTPGet.Path)
	}
	if len(c.p.Apps) > 0 {
		if !c.p.Sidecar.Native {
			c.bad("container %s is not a native sidecar (an init container with restartPolicy: Always)", sc.Name)
		}
		if pr := sc.StartupProbe; pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Path != "/readyz" {
			c.bad("container %s: startupProbe %s: the app must start only once the sidecar is ready (/readyz)", sc.Name, pr.HTTPGet.Path)
		}
	}
}

// isMember: the sidecar is part of a cluster (it joins or forms one).
func (sc *SidecarConfig) isMember() bool {
	j, _ := sc.Get("join")
	return j != ""
}

// kubeletMode is the mode the kubelet gives a Secret's file: with fsGroup it
// adds group read (0440) to whatever the volume says.
func kubeletMode(mode int32, fsGroup bool) int32 {
	if fsGroup {
		mode |= 0o440
	}
	return mode
}

// files: every file the config or the flags name (config, token, cluster
// key, MySQL DSN, data dir) is mounted in the sidecar from a volume of the
// right kind, and the Secrets are created by the README's commands.
func (c checker) files(readme string) {
	sc := c.p.Sidecar.C
	fsGroup := c.p.Spec.SecurityContext != nil && c.p.Spec.SecurityContext.FSGroup != nil
	secretFile := func(key, file string) *FileSource {
		src, err := c.p.Resolve(sc, file)
		if err != nil {
			c.bad("%s %s: %v", key, file, err)
			return nil
		}
		if src.Kind != "secret" {
			c.bad("%s %s comes from a %s volume, want a Secret", key, file, src.Kind)
			return nil
		}
		if !secretCreated(readme, src.Name, src.Key) {
			c.bad("%s: Secret %s (key %s) is not created by a `kubectl create secret generic %s --from-file=%s=...` line of the README",
				key, src.Name, src.Key, src.Name, src.Key)
		}
		if m := kubeletMode(src.Mode, fsGroup); m&0o007 != 0 {
			c.bad("%s %s: the kubelet gives it mode %#o, readable by others; the sidecar wants 0400 or 0440", key, file, m)
		}
		return &src
	}
	tok, _ := c.cfg.Get("token_file")
	if tok == "" {
		c.bad("no token_file: the API listens on the pod's IP and needs a token")
	} else {
		secretFile("token_file", tok)
	}
	if c.p.W.Sts != nil || c.cfg.isMember() {
		key, _ := c.cfg.Get("cluster_key_file")
		if key == "" {
			c.bad("a cluster member needs cluster_key_file")
		} else {
			secretFile("cluster_key_file", key)
		}
	}
	for name, sink := range c.cfg.sinks() {
		if f, ok := sink["dsn_file"].(string); ok {
			secretFile("sink "+name+" dsn_file", f)
		}
	}
	dataDir, from := c.cfg.Get("data_dir")
	src, err := c.p.Resolve(sc, dataDir)
	switch {
	case err != nil:
		c.bad("data_dir %s (%s): %v", dataDir, from, err)
	case src.Mount.MountPath != dataDir:
		c.bad("data_dir %s (%s) is inside the mount %s, want a volume of its own", dataDir, from, src.Mount.MountPath)
	case c.p.W.Sts != nil && src.Kind != "persistentVolumeClaim":
		c.bad("data_dir %s of a voter is on a %s volume; a voter's journal must outlive its pod (volumeClaimTemplates)", dataDir, src.Kind)
	case c.p.W.Sts == nil && !c.cfg.isMember() && src.Kind != "persistentVolumeClaim":
		c.bad("data_dir %s of a single-node sidecar is on a %s volume; its journal (decided commits, the app's state) must outlive the pod", dataDir, src.Kind)
	case c.p.W.Sts == nil && src.Kind == "persistentVolumeClaim" && c.claim(src.Name) == nil:
		c.bad("data_dir: PersistentVolumeClaim %s is not among the manifests", src.Name)
	}
}

func (c checker) claim(name string) *corev1.PersistentVolumeClaim {
	for _, pvc := range c.s.PVCs {
		if pvc.Name == name {
			return pvc
		}
	}
	return nil
}

// secretCreated: the README creates Secret name with key (from a file or a
// literal).
func secretCreated(readme, name, key string) bool {
	re := regexp.MustCompile(`kubectl create secret generic ` + regexp.QuoteMeta(name) + `\b[^\n]*--from-(file|literal)=` + regexp.QuoteMeta(key) + `=`)
	return re.MatchString(readme)
}

// socket: the sidecar's socket is in an emptyDir that every app container
// mounts at the same path, and each app is pointed at that socket.
func (c checker) socket() {
	if len(c.p.Apps) == 0 {
		return
	}
	sock, from := c.cfg.Get("socket")
	if sock == "off" || !path.IsAbs(sock) {
		c.bad("socket %q (%s): the app talks to the sidecar over a socket at an absolute path", sock, from)
		return
	}
	src, err := c.p.Resolve(c.p.Sidecar.C, sock)
	if err != nil {
		c.bad("socket %s (%s): %v", sock, from, err)
		return
	}
	if src.Kind != "emptyDir" {
		c.bad("socket %s (%s) is on a %s volume, want an emptyDir shared with the app", sock, from, src.Kind)
	}
	if path.Dir(sock) != src.Mount.MountPath {
		c.bad("socket %s (%s): its directory is not the mount %s itself", sock, from, src.Mount.MountPath)
	}
	for _, app := range c.p.Apps {
		want, ok := app.Flags["sidecar"]
		if !ok {
			c.bad("app container %s has no --sidecar flag", app.C.Name)
			continue
		}
		if want != "unix://"+sock {
			c.bad("app container %s: --sidecar %s, the sidecar's socket is %s (%s)", app.C.Name, want, sock, from)
		}
		asrc, err := c.p.Resolve(app.C, sock)
		switch {
		case err != nil:
			c.bad("app container %s cannot reach the socket: %v", app.C.Name, err)
		case asrc.Volume.Name != src.Volume.Name || asrc.Mount.MountPath != src.Mount.MountPath:
			c.bad("app container %s mounts volume %s at %s for the socket; the sidecar has volume %s at %s",
				app.C.Name, asrc.Volume.Name, asrc.Mount.MountPath, src.Volume.Name, src.Mount.MountPath)
		}
		tok, _ := c.cfg.Get("token_file")
		atok, ok := app.Flags["token-file"]
		if !ok {
			c.bad("app container %s has no --token-file; the sidecar wants the token (%s)", app.C.Name, tok)
			continue
		}
		sidecarSrc, err1 := c.p.Resolve(c.p.Sidecar.C, tok)
		appSrc, err2 := c.p.Resolve(app.C, atok)
		if err1 != nil || err2 != nil || sidecarSrc.Name != appSrc.Name || sidecarSrc.Key != appSrc.Key {
			c.bad("app container %s: --token-file %s is not the sidecar's token %s (%v %v)", app.C.Name, atok, tok, err1, err2)
		}
		psc := c.p.Spec.SecurityContext
		uid := app.C.SecurityContext.RunAsUser
		if uid != nil && psc != nil && psc.RunAsUser != nil && *uid != *psc.RunAsUser && psc.FSGroup == nil {
			c.bad("app container %s runs as another uid without a pod fsGroup: it cannot open the socket (0660) or read the token", app.C.Name)
		}
	}
}

// sinks: brokers and DSNs come from the config and Secrets, never a test
// address, and the app reads the same Kafka as the sidecar writes.
func (c checker) sinks() {
	var brokers []string
	for name, sink := range c.cfg.sinks() {
		switch sink["kind"] {
		case "kafka":
			bs, _ := sink["brokers"].([]any)
			if len(bs) == 0 {
				c.bad("sink %s has no brokers", name)
			}
			for _, b := range bs {
				host, _, err := net.SplitHostPort(fmt.Sprint(b))
				if err != nil || host == "localhost" || (net.ParseIP(host) != nil && net.ParseIP(host).IsLoopback()) {
					c.bad("sink %s: broker %v is not an address of your cluster", name, b)
				}
				brokers = append(brokers, fmt.Sprint(b))
			}
		case "mysql":
			if _, ok := sink["dsn"]; ok {
				c.bad("sink %s: dsn in the ConfigMap; put it in a Secret (dsn_file)", name)
			}
			if _, ok := sink["dsn_file"]; !ok {
				c.bad("sink %s has no dsn_file", name)
			}
		}
	}
	for _, app := range c.p.Apps {
		for _, e := range app.C.Env {
			if e.Name != "KAFKA_BROKERS" {
				continue
			}
			if e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil {
				c.bad("app %s: KAFKA_BROKERS must come from the ConfigMap", app.C.Name)
				continue
			}
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := c.s.ConfigMap(ref.Name)
			if cm == nil {
				c.bad("app %s: KAFKA_BROKERS from ConfigMap %s, which is not among the manifests", app.C.Name, ref.Name)
				continue
			}
			if got := cm.Data[ref.Key]; got != strings.Join(brokers, ",") {
				c.bad("app %s: KAFKA_BROKERS is %q, the sidecar's Kafka sink has %q", app.C.Name, got, strings.Join(brokers, ","))
			}
		}
	}
}

func (sc *SidecarConfig) sinks() map[string]map[string]any {
	out := map[string]map[string]any{}
	m, _ := sc.File["sinks"].(map[string]any)
	for name, v := range m {
		if s, ok := v.(map[string]any); ok {
			out[name] = s
		}
	}
	return out
}

// duration reads a duration of the config (def when absent).
func (sc *SidecarConfig) duration(def time.Duration, keys ...string) (time.Duration, error) {
	v, ok := sc.Nested(keys...)
	if !ok {
		return def, nil
	}
	return time.ParseDuration(fmt.Sprint(v))
}

// termination: the grace period covers the app's last checkpoint and then
// the sidecar's graceful stop (a native sidecar gets SIGTERM only after the
// app exited).
func (c checker) termination() {
	grace := int64(30)
	if g := c.p.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	stop, err := c.cfg.duration(30*time.Second, "shutdown_timeout")
	if err != nil {
		c.bad("shutdown_timeout: %v", err)
	}
	need := stop
	if len(c.p.Apps) > 0 {
		ckpt, err := c.cfg.duration(60*time.Second, "timeouts", "checkpoint")
		if err != nil {
			c.bad("timeouts.checkpoint: %v", err)
		}
		need += ckpt
	}
	if time.Duration(grace)*time.Second <= need {
		c.bad("terminationGracePeriodSeconds %d does not exceed %s (the app's last checkpoint and the sidecar's stop)", grace, need)
	}
}

// journal: a StatefulSet of voters that form the cluster together.
func (c checker) journal() {
	st := c.p.W.Sts
	n := c.p.W.Replicas
	expect, from := c.cfg.Get("bootstrap_expect")
	if e, err := strconv.Atoi(expect); err != nil || int32(e) != n {
		c.bad("bootstrap_expect %q (%s) is not replicas %d", expect, from, n)
	}
	if v, _ := c.cfg.Get("voter"); v != "true" {
		c.bad("journal pods must be voters, voter is %s", v)
	}
	if st.Spec.PodManagementPolicy != "Parallel" {
		c.bad("podManagementPolicy %q: with OrderedReady the second voter waits for the first to be ready, which needs a leader, which needs the second", st.Spec.PodManagementPolicy)
	}
	var headless *corev1.Service
	for _, svc := range c.s.Services {
		if svc.Name == st.Spec.ServiceName {
			headless = svc
		}
	}
	switch {
	case headless == nil:
		c.bad("serviceName %q: no such Service", st.Spec.ServiceName)
	case headless.Spec.ClusterIP != corev1.ClusterIPNone:
		c.bad("Service %s must be headless (clusterIP: None) to give the pods DNS names", headless.Name)
	case !headless.Spec.PublishNotReadyAddresses:
		c.bad("Service %s: publishNotReadyAddresses must be true: the voters must find each other before any is ready", headless.Name)
	case !labels.SelectorFromSet(headless.Spec.Selector).Matches(labels.Set(c.p.W.Template.Labels)):
		c.bad("Service %s does not select the journal's pods", headless.Name)
	}
	httpAddr, _ := c.cfg.Get("http_addr")
	port, _ := Port(httpAddr)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", st.Name, i, st.Spec.ServiceName, port))
	}
	join, from := c.cfg.Get("join")
	if got := splitList(join); !slices.Equal(got, want) {
		c.bad("join %q (%s), want every voter's stable name %q", join, from, strings.Join(want, ","))
	}
	adv, from := c.cfg.Get("advertise_http")
	if want := fmt.Sprintf("http://$(TXSINK_NODE_ID).%s:%d", st.Spec.ServiceName, port); adv != want {
		c.bad("advertise_http %q (%s), want %q (the pod's stable name)", adv, from, want)
	}
	c.nodeIDFromPodName()
	c.advertiseRaft("$(TXSINK_NODE_ID)." + st.Spec.ServiceName)
	// A PDB that keeps a quorum.
	found := false
	for _, pdb := range c.s.PDBs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(c.p.W.Template.Labels)) {
			continue
		}
		found = true
		quorum := n/2 + 1
		switch {
		case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MaxUnavailable.Type == intstr.Int && pdb.Spec.MaxUnavailable.IntVal <= n-quorum && pdb.Spec.MaxUnavailable.IntVal >= 1:
		case pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.Type == intstr.Int && pdb.Spec.MinAvailable.IntVal >= quorum && pdb.Spec.MinAvailable.IntVal < n:
		default:
			c.bad("PodDisruptionBudget %s must keep a quorum of %d of %d and allow one voter down", pdb.Name, quorum, n)
		}
	}
	if !found {
		c.bad("no PodDisruptionBudget selects the journal's pods")
	}
	aff := c.p.Spec.Affinity
	if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution)+len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		c.bad("no pod anti-affinity: the voters could land on one node")
	} else {
		for _, term := range aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
			if err != nil || !sel.Matches(labels.Set(c.p.W.Template.Labels)) || term.TopologyKey != "kubernetes.io/hostname" {
				c.bad("anti-affinity term %v does not keep the journal's pods on different nodes", term.LabelSelector)
			}
		}
	}
	if len(st.Spec.VolumeClaimTemplates) == 0 {
		c.bad("no volumeClaimTemplates: a voter's journal must outlive its pod")
	}
}

// nodeIDFromPodName: the node id is the pod's name (downward API).
func (c checker) nodeIDFromPodName() {
	if id, from := c.cfg.Get("node_id"); id != "$(fieldRef:metadata.name)" {
		c.bad("node_id %q (%s): want the pod name (env TXSINK_NODE_ID from fieldRef metadata.name)", id, from)
	}
}

// advertiseRaft: raft is advertised at want (with the raft port): a
// voter's stable name, so a voter whose pod is recreated with a new IP is
// dialled again by name, or an app pod's IP (env POD_IP from the downward
// API; an app pod recreated is a new node anyway).
func (c checker) advertiseRaft(want string) {
	raftAddr, _ := c.cfg.Get("raft_addr")
	port, _ := Port(raftAddr)
	adv, from := c.cfg.Get("advertise_raft")
	if want := fmt.Sprintf("%s:%d", want, port); adv != want {
		c.bad("advertise_raft %q (%s), want %q", adv, from, want)
	}
	if want != "$(POD_IP)" {
		return
	}
	ok := false
	for _, e := range c.p.Sidecar.C.Env {
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			ok = true
		}
	}
	if !ok {
		c.bad("container %s: env POD_IP must come from fieldRef status.podIP", c.p.Sidecar.C.Name)
	}
}

// appSidecar: an app's sidecar is either a single node, or a non-voter that
// joins the journal's voters by their stable names.
func (c checker) appSidecar() {
	if len(c.p.Apps) == 0 {
		c.bad("a Deployment with txsink and no app")
	}
	if c.p.W.Replicas != 1 {
		c.bad("replicas %d: the app's writer number is fixed per Deployment, so one pod", c.p.W.Replicas)
	}
	for _, d := range c.s.Deployments {
		if d.Name == c.p.W.Name && d.Spec.Strategy.Type != "Recreate" {
			c.bad("strategy %q: a rolling update runs two pods of one writer (and two single-node journals on one claim) at once; use Recreate", d.Spec.Strategy.Type)
		}
	}
	if !c.cfg.isMember() {
		return
	}
	if v, from := c.cfg.Get("voter"); v != "false" {
		c.bad("an app's sidecar joins as a non-voter, voter is %s (%s)", v, from)
	}
	if e, _ := c.cfg.Get("bootstrap_expect"); e != "" && e != "0" {
		c.bad("an app's sidecar must not set bootstrap_expect")
	}
	if len(c.s.StatefulSets) != 1 {
		c.bad("a non-voting sidecar needs the journal's StatefulSet in the same manifests")
		return
	}
	st := c.s.StatefulSets[0]
	// The voters' API port, as their own config says.
	var voters []string
	if vp, err := c.s.Pod(Workload{Kind: "StatefulSet", Name: st.Name, Template: &st.Spec.Template, Sts: st}); err == nil {
		if vcfg, err := c.s.Config(vp); err == nil {
			vaddr, _ := vcfg.Get("http_addr")
			vport, _ := Port(vaddr)
			for i := range deref(st.Spec.Replicas, 1) {
				voters = append(voters, fmt.Sprintf("%s-%d.%s:%d", st.Name, i, st.Spec.ServiceName, vport))
			}
		}
	}
	join, from := c.cfg.Get("join")
	if len(splitList(join)) == 0 {
		c.bad("join %q (%s) names no voter", join, from)
	}
	for _, a := range splitList(join) {
		if !slices.Contains(voters, a) {
			c.bad("join address %s (%s) is not a journal voter's stable name and API port %v", a, from, voters)
		}
	}
	c.nodeIDFromPodName()
	c.advertiseRaft("$(POD_IP)")
	httpAddr, _ := c.cfg.Get("http_addr")
	port, _ := Port(httpAddr)
	if adv, from := c.cfg.Get("advertise_http"); adv != fmt.Sprintf("http://$(POD_IP):%d", port) {
		c.bad("advertise_http %q (%s), want http://$(POD_IP):%d", adv, from, port)
	}
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// MakeImageName reads IMAGE_NAME's default from the Makefile.
func MakeImageName(makefile string) (string, error) {
	m := regexp.MustCompile(`(?m)^IMAGE_NAME\s*\?=\s*(\S+)\s*$`).FindStringSubmatch(makefile)
	if m == nil {
		return "", errors.New("the Makefile has no IMAGE_NAME ?= line")
	}
	return m[1], nil
}
