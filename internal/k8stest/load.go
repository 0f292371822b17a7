// Package k8stest reads the Kubernetes manifests under deploy/kubernetes
// strictly into the k8s.io/api types and checks what the API server would
// not: that selectors match labels, that probes and ports match the
// sidecar's flags and config, that the app and the sidecar mount the
// socket's directory where each of them looks for it, that every file the
// config names is mounted, and that the image is the one `make image`
// builds. The tests of this package run those checks on the real manifests
// and on broken copies of them (each broken copy must fail);
// systemtest/kubernetes_test.go replays the manifests' pods on one machine
// with the args and config read here.
//
// No Kubernetes cluster is needed: go test ./internal/k8stest/
package k8stest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// Kustomization is the part of kustomize's kustomization.yaml the manifests
// use. It is decoded strictly too: a field kustomize has but this struct
// lacks is an error, so that nothing in it goes unchecked.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
		IncludeTemplates bool              `json:"includeTemplates,omitempty"`
	} `json:"labels,omitempty"`
	Images []Image `json:"images,omitempty"`
}

// Image is one entry of a kustomization's images (kustomize edit set image).
type Image struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

// Set is one directory of manifests: its kustomization and every object of
// the files it lists, each decoded into its k8s.io/api type.
type Set struct {
	Dir           string
	Kustomization Kustomization
	ConfigMaps    []*corev1.ConfigMap
	Services      []*corev1.Service
	PVCs          []*corev1.PersistentVolumeClaim
	Deployments   []*appsv1.Deployment
	StatefulSets  []*appsv1.StatefulSet
	PDBs          []*policyv1.PodDisruptionBudget
}

// docSep splits a YAML stream into documents.
var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// Load reads dir/kustomization.yaml and every resource it lists. Any
// unknown or mistyped field, duplicate key, unknown kind, missing file, or
// YAML file in dir that the kustomization does not list is an error.
func Load(dir string) (*Set, error) {
	s := &Set{Dir: dir}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	if err := yaml.UnmarshalStrict(b, &s.Kustomization); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	k := s.Kustomization
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s/kustomization.yaml: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization",
			dir, k.APIVersion, k.Kind)
	}
	if len(k.Resources) == 0 {
		return nil, fmt.Errorf("%s/kustomization.yaml lists no resources", dir)
	}
	var errs []error
	for _, r := range k.Resources {
		if filepath.IsAbs(r) || strings.Contains(r, "..") || filepath.Base(r) != r {
			errs = append(errs, fmt.Errorf("%s/kustomization.yaml: resource %q: want a file of this directory", dir, r))
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/kustomization.yaml: resource %q: %w", dir, r, err))
			continue
		}
		if err := s.decodeFile(r, b); err != nil {
			errs = append(errs, err)
		}
	}
	// A manifest the kustomization forgets is never applied: an error too.
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		if name := filepath.Base(f); name != "kustomization.yaml" && !slices.Contains(k.Resources, name) {
			errs = append(errs, fmt.Errorf("%s: %s is not listed in kustomization.yaml's resources", dir, name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// decodeFile decodes every document of one file by its apiVersion and kind.
func (s *Set) decodeFile(name string, b []byte) error {
	var errs []error
	n := 0
	for i, doc := range docSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		n++
		if err := s.decodeDoc([]byte(doc)); err != nil {
			errs = append(errs, fmt.Errorf("%s/%s document %d: %w", s.Dir, name, i+1, err))
		}
	}
	if n == 0 {
		errs = append(errs, fmt.Errorf("%s/%s holds no object", s.Dir, name))
	}
	return errors.Join(errs...)
}

func stripComments(doc string) string {
	var out []string
	for l := range strings.SplitSeq(doc, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// decodeDoc decodes one object strictly into its type. UnmarshalStrict
// refuses duplicate keys, and fields the type does not have (its JSON
// decoder disallows unknown fields at every depth).
func (s *Set) decodeDoc(doc []byte) error {
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	strict := func(obj any) error { return yaml.UnmarshalStrict(doc, obj) }
	var err error
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 ConfigMap":
		o := &corev1.ConfigMap{}
		err = strict(o)
		s.ConfigMaps = append(s.ConfigMaps, o)
	case "v1 Service":
		o := &corev1.Service{}
		err = strict(o)
		s.Services = append(s.Services, o)
	case "v1 PersistentVolumeClaim":
		o := &corev1.PersistentVolumeClaim{}
		err = strict(o)
		s.PVCs = append(s.PVCs, o)
	case "apps/v1 Deployment":
		o := &appsv1.Deployment{}
		err = strict(o)
		s.Deployments = append(s.Deployments, o)
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		err = strict(o)
		s.StatefulSets = append(s.StatefulSets, o)
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		err = strict(o)
		s.PDBs = append(s.PDBs, o)
	default:
		return fmt.Errorf("apiVersion %q kind %q: not a kind these manifests use (add it to k8stest.decodeDoc)", tm.APIVersion, tm.Kind)
	}
	return err
}

// ConfigMap returns the ConfigMap named name, or nil.
func (s *Set) ConfigMap(name string) *corev1.ConfigMap {
	for _, c := range s.ConfigMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Workload is a Deployment's or StatefulSet's pod template with its name.
type Workload struct {
	Kind     string // Deployment or StatefulSet
	Name     string
	Replicas int32
	Template *corev1.PodTemplateSpec
	Sts      *appsv1.StatefulSet // nil for a Deployment
}

// Workloads lists the Deployments, then the StatefulSets.
func (s *Set) Workloads() []Workload {
	var out []Workload
	for _, d := range s.Deployments {
		out = append(out, Workload{Kind: "Deployment", Name: d.Name, Replicas: deref(d.Spec.Replicas, 1), Template: &d.Spec.Template})
	}
	for _, st := range s.StatefulSets {
		out = append(out, Workload{Kind: "StatefulSet", Name: st.Name, Replicas: deref(st.Spec.Replicas, 1), Template: &st.Spec.Template, Sts: st})
	}
	return out
}

// Workload returns the workload named name, or an error.
func (s *Set) Workload(name string) (Workload, error) {
	for _, w := range s.Workloads() {
		if w.Name == name {
			return w, nil
		}
	}
	return Workload{}, fmt.Errorf("%s: no Deployment or StatefulSet %q", s.Dir, name)
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// RepoRoot finds the module root from the working directory (go test runs
// in the package's directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/txsink/txsink")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("k8stest: no go.mod of github.com/txsink/txsink above the working directory")
		}
		dir = parent
	}
}
