package k8stest

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
)

// SidecarImage is the image repository of the txsink containers: what
// `make image` builds (IMAGE_NAME in the Makefile; the check compares).
const SidecarImage = "txsink"

// Container is one container of a pod template, the txsink sidecar or the
// app, with its args already split into the command and its flags.
type Container struct {
	C *corev1.Container
	// Native: an init container with restartPolicy Always (a native sidecar).
	Native bool
	// Command is the first arg (sidecar: "run"; the page-view app: "count").
	Command string
	// Flags are the args after the command, by name without dashes. A flag
	// given as --name value or --name=value; a boolean one only as
	// --name=value (--voter false would end the flags: the Go flag package
	// does not take a separate value for a boolean).
	Flags map[string]string
	// Order is the flags' names in the order of the args.
	Order []string
}

// boolFlags are the sidecar's and the app's boolean flags.
var boolFlags = map[string]bool{"voter": true, "insecure-no-token": true}

// parseArgs splits args into the command and the flags.
func parseArgs(args []string) (cmd string, flags map[string]string, order []string, err error) {
	flags = map[string]string{}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", nil, nil, fmt.Errorf("args %q: want a command first (e.g. run)", args)
	}
	cmd = args[0]
	for i := 1; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return "", nil, nil, fmt.Errorf("args %q: %q is not a flag (a flag's value given apart from a boolean flag?)", args, a)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasVal {
			if boolFlags[name] {
				val = "true"
			} else {
				if i+1 >= len(args) {
					return "", nil, nil, fmt.Errorf("args %q: flag --%s has no value", args, name)
				}
				i++
				val = args[i]
			}
		}
		if _, dup := flags[name]; dup {
			return "", nil, nil, fmt.Errorf("args %q: flag --%s given twice", args, name)
		}
		flags[name] = val
		order = append(order, name)
	}
	return cmd, flags, order, nil
}

// Pod is a workload's pod template with its containers parsed.
type Pod struct {
	W       Workload
	Spec    *corev1.PodSpec
	Sidecar *Container // the txsink container
	Apps    []*Container
}

// Pod parses the workload's containers: exactly one runs the txsink image.
func (s *Set) Pod(w Workload) (*Pod, error) {
	p := &Pod{W: w, Spec: &w.Template.Spec}
	add := func(c *corev1.Container, native bool) error {
		cmd, flags, order, err := parseArgs(c.Args)
		if err != nil {
			return fmt.Errorf("%s %s container %s: %w", w.Kind, w.Name, c.Name, err)
		}
		pc := &Container{C: c, Native: native, Command: cmd, Flags: flags, Order: order}
		if ImageRepo(c.Image) == SidecarImage || strings.HasSuffix(ImageRepo(c.Image), "/"+SidecarImage) {
			if p.Sidecar != nil {
				return fmt.Errorf("%s %s: two txsink containers", w.Kind, w.Name)
			}
			p.Sidecar = pc
		} else {
			p.Apps = append(p.Apps, pc)
		}
		return nil
	}
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		if err := add(c, native); err != nil {
			return nil, err
		}
	}
	for i := range p.Spec.Containers {
		if err := add(&p.Spec.Containers[i], false); err != nil {
			return nil, err
		}
	}
	if p.Sidecar == nil {
		return nil, fmt.Errorf("%s %s: no container runs the %s image", w.Kind, w.Name, SidecarImage)
	}
	return p, nil
}

// ImageRepo is an image reference without its tag or digest.
func ImageRepo(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// ImageTag is an image reference's tag ("" without one).
func ImageTag(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return ""
}

// envRef is Kubernetes' $(VAR) in args; $$(VAR) is an escaped literal.
var envRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// Expand replaces $(VAR) as the kubelet does: with the value of an env var
// the container defines (vals gives the values); a reference to a variable
// the container does not define stays as it is, and is an error here.
func Expand(s string, c *corev1.Container, vals map[string]string) (string, error) {
	var missing []string
	out := envRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		name := m[2 : len(m)-1]
		for _, e := range c.Env {
			if e.Name == name {
				if v, ok := vals[name]; ok {
					return v
				}
				if e.ValueFrom == nil {
					return e.Value
				}
			}
		}
		missing = append(missing, name)
		return m
	})
	if len(missing) > 0 {
		return out, fmt.Errorf("container %s: %q refers to %v, which it does not define (or the replay has no value for)", c.Name, s, missing)
	}
	return out, nil
}

// FileSource is where a file in a container comes from.
type FileSource struct {
	Volume *corev1.Volume
	Mount  *corev1.VolumeMount
	// Kind is configMap, secret, emptyDir or persistentVolumeClaim.
	Kind string
	// Name is the ConfigMap's or Secret's name, Key the key that holds the
	// file (configMap and secret only).
	Name, Key string
	// Mode is the file's mode as the volume declares it (items' mode, the
	// volume's defaultMode, or Kubernetes' default 0644).
	Mode int32
}

// Resolve finds the volume behind file (an absolute path) in container c of
// the pod: the mount whose path contains it, and for a ConfigMap or Secret
// the key the file comes from.
func (p *Pod) Resolve(c *corev1.Container, file string) (FileSource, error) {
	if !path.IsAbs(file) {
		return FileSource{}, fmt.Errorf("container %s: %q is not an absolute path", c.Name, file)
	}
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if file == m.MountPath || strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") {
			if best == nil || len(m.MountPath) > len(best.MountPath) {
				best = m
			}
		}
	}
	if best == nil {
		return FileSource{}, fmt.Errorf("container %s: no volume is mounted at %s (or above it)", c.Name, file)
	}
	v := p.Volume(best.Name)
	if v == nil {
		return FileSource{}, fmt.Errorf("container %s: mount %s names volume %q, which the pod does not have", c.Name, best.MountPath, best.Name)
	}
	if best.SubPath != "" {
		return FileSource{}, fmt.Errorf("container %s: mount %s uses subPath, which these checks do not model", c.Name, best.MountPath)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(file, best.MountPath), "/")
	fs := FileSource{Volume: v, Mount: best, Mode: 0o644}
	item := func(items []corev1.KeyToPath, def *int32, kind, name string) error {
		fs.Kind, fs.Name = kind, name
		if def != nil {
			fs.Mode = *def
		}
		for _, it := range items {
			if it.Path == rel {
				fs.Key = it.Key
				if it.Mode != nil {
					fs.Mode = *it.Mode
				}
				return nil
			}
		}
		if len(items) == 0 && rel != "" && !strings.Contains(rel, "/") {
			fs.Key = rel // every key of the object, as a file of its name
			return nil
		}
		return fmt.Errorf("container %s: %s is not a file of %s %q mounted at %s", c.Name, file, kind, name, best.MountPath)
	}
	switch {
	case v.ConfigMap != nil:
		return fs, item(v.ConfigMap.Items, v.ConfigMap.DefaultMode, "configMap", v.ConfigMap.Name)
	case v.Secret != nil:
		return fs, item(v.Secret.Items, v.Secret.DefaultMode, "secret", v.Secret.SecretName)
	case v.Projected != nil:
		var errs []string
		for _, src := range v.Projected.Sources {
			var err error
			switch {
			case src.Secret != nil:
				err = item(src.Secret.Items, v.Projected.DefaultMode, "secret", src.Secret.Name)
			case src.ConfigMap != nil:
				err = item(src.ConfigMap.Items, v.Projected.DefaultMode, "configMap", src.ConfigMap.Name)
			default:
				continue
			}
			if err == nil {
				return fs, nil
			}
			errs = append(errs, err.Error())
		}
		return fs, fmt.Errorf("container %s: %s is in none of projected volume %s's sources: %s", c.Name, file, v.Name, strings.Join(errs, "; "))
	case v.EmptyDir != nil:
		fs.Kind = "emptyDir"
	case v.PersistentVolumeClaim != nil:
		fs.Kind, fs.Name = "persistentVolumeClaim", v.PersistentVolumeClaim.ClaimName
	default:
		return fs, fmt.Errorf("container %s: volume %s at %s is of a kind these checks do not model", c.Name, v.Name, best.MountPath)
	}
	return fs, nil
}

// Volume returns the pod's volume named name; for a StatefulSet also its
// volumeClaimTemplates (as a persistentVolumeClaim volume of that name).
func (p *Pod) Volume(name string) *corev1.Volume {
	for i := range p.Spec.Volumes {
		if p.Spec.Volumes[i].Name == name {
			return &p.Spec.Volumes[i]
		}
	}
	if p.W.Sts != nil {
		for _, t := range p.W.Sts.Spec.VolumeClaimTemplates {
			if t.Name == name {
				return &corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}}
			}
		}
	}
	return nil
}

// SidecarConfig is the txsink container's config file (--config, read from
// the ConfigMap mounted there) with the flags and TXSINK_* env on top.
type SidecarConfig struct {
	Path string // the --config path in the container
	Text string // the file as the ConfigMap holds it
	File map[string]any
	pod  *Pod
}

// Config reads the sidecar's config file from its ConfigMap.
func (s *Set) Config(p *Pod) (*SidecarConfig, error) {
	c := p.Sidecar
	cfgPath := c.Flags["config"]
	if c.Command != "run" || cfgPath == "" {
		return nil, fmt.Errorf("%s %s: the txsink container must run `run --config FILE`, has %q", p.W.Kind, p.W.Name, c.C.Args)
	}
	src, err := p.Resolve(c.C, cfgPath)
	if err != nil {
		return nil, err
	}
	if src.Kind != "configMap" {
		return nil, fmt.Errorf("%s %s: the config %s is on a %s volume, want a ConfigMap", p.W.Kind, p.W.Name, cfgPath, src.Kind)
	}
	cm := s.ConfigMap(src.Name)
	if cm == nil {
		return nil, fmt.Errorf("%s %s: ConfigMap %q (the config) is not among the manifests", p.W.Kind, p.W.Name, src.Name)
	}
	text, ok := cm.Data[src.Key]
	if !ok {
		return nil, fmt.Errorf("%s %s: ConfigMap %s has no key %q (the config)", p.W.Kind, p.W.Name, src.Name, src.Key)
	}
	sc := &SidecarConfig{Path: cfgPath, Text: text, pod: p}
	if err := yaml.Unmarshal([]byte(text), &sc.File); err != nil {
		return nil, fmt.Errorf("ConfigMap %s key %s: %w", src.Name, src.Key, err)
	}
	return sc, nil
}

// defaults are the sidecar's defaults for the keys the checks read
// (cmd/sidecar DefaultConfig).
var defaults = map[string]string{
	"http_addr": "127.0.0.1:8470", "raft_addr": "127.0.0.1:8471", "data_dir": "./data", "node_id": "node1",
	"voter": "true", "shutdown_timeout": "30s",
}

// Get returns a top-level key's effective value (flag > TXSINK_* env >
// file > default) and where it came from. A value from the downward API
// comes back as "$(fieldRef:PATH)".
func (sc *SidecarConfig) Get(key string) (val, from string) {
	flag := strings.ReplaceAll(key, "_", "-")
	if v, ok := sc.pod.Sidecar.Flags[flag]; ok {
		return v, "flag --" + flag
	}
	env := "TXSINK_" + strings.ToUpper(key)
	for _, e := range sc.pod.Sidecar.C.Env {
		if e.Name == env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				return "$(fieldRef:" + e.ValueFrom.FieldRef.FieldPath + ")", "env " + env
			}
			return e.Value, "env " + env
		}
	}
	if v, ok := sc.File[key]; ok {
		return fmt.Sprint(v), "config " + sc.Path
	}
	if key == "socket" {
		dir, _ := sc.Get("data_dir")
		return path.Join(dir, "sidecar.sock"), "default"
	}
	return defaults[key], "default"
}

// Nested returns a nested key of the file (e.g. "timeouts", "checkpoint").
func (sc *SidecarConfig) Nested(keys ...string) (any, bool) {
	var cur any = sc.File
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// Port is the port of a host:port address.
func Port(addr string) (int32, error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return 0, fmt.Errorf("%q has no port", addr)
	}
	n, err := strconv.ParseInt(addr[i+1:], 10, 32)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: bad port", addr)
	}
	return int32(n), nil
}
