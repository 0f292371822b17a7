package k8stest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// env is what the checks compare the manifests with: the Makefile's image
// name and the README's Secret commands.
func env(t *testing.T) (root, image, readme string) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if image, err = MakeImageName(string(mk)); err != nil {
		t.Fatal(err)
	}
	rd, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return root, image, string(rd)
}

// TestManifests decodes every manifest strictly and runs the cross checks.
// It also pins what each directory must hold, so that a directory emptied
// by mistake does not pass for lack of objects to check.
func TestManifests(t *testing.T) {
	root, image, readme := env(t)
	want := map[string]struct{ cms, svcs, pvcs, deps, stss, pdbs int }{
		"sidecar": {cms: 1, pvcs: 1, deps: 1},
		"cluster": {cms: 1, svcs: 2, deps: 2, stss: 1, pdbs: 1},
	}
	dirs, _ := filepath.Glob(filepath.Join(root, "deploy", "kubernetes", "*", "kustomization.yaml"))
	if len(dirs) != len(want) {
		t.Fatalf("deploy/kubernetes has %d kustomizations %v, want %d (update this test with a new one)", len(dirs), dirs, len(want))
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			s, err := Load(filepath.Join(root, "deploy", "kubernetes", name))
			if err != nil {
				t.Fatal(err)
			}
			got := [6]int{len(s.ConfigMaps), len(s.Services), len(s.PVCs), len(s.Deployments), len(s.StatefulSets), len(s.PDBs)}
			if got != [6]int{w.cms, w.svcs, w.pvcs, w.deps, w.stss, w.pdbs} {
				t.Errorf("objects (ConfigMaps, Services, PVCs, Deployments, StatefulSets, PDBs) = %v, want %v", got, w)
			}
			if err := Check(s, image, readme); err != nil {
				t.Errorf("cross checks:\n%v", err)
			}
			// Every Deployment's pod has its app behind a native sidecar.
			for _, d := range s.Deployments {
				wl, _ := s.Workload(d.Name)
				p, err := s.Pod(wl)
				if err != nil {
					t.Fatal(err)
				}
				if !p.Sidecar.Native || len(p.Apps) != 1 {
					t.Errorf("Deployment %s: native sidecar %v, %d app containers; want a native sidecar and one app", d.Name, p.Sidecar.Native, len(p.Apps))
				}
			}
		})
	}
}

// TestBrokenCopies feeds deliberately broken copies of the manifests to
// Load and Check: each must fail, naming what is wrong. A case whose edit
// does not apply to the file fails too, so no case can pass by going stale.
func TestBrokenCopies(t *testing.T) {
	root, image, readme := env(t)
	cases := []struct {
		name, dir, file, old, new, want string
	}{
		// Strict decoding: what the API server (or kubectl) would refuse.
		{"mistyped field", "sidecar", "deployment.yaml", "containerPort: 8470", "containerPrt: 8470", `unknown field "containerPrt"`},
		{"wrong type", "sidecar", "deployment.yaml", "replicas: 1", "replicas: one", "replicas"},
		{"duplicate key", "cluster", "pdb.yaml", "  maxUnavailable: 1\n", "  maxUnavailable: 1\n  maxUnavailable: 2\n", "already set in map"},
		{"unknown kind", "cluster", "pdb.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgett", "not a kind these manifests use"},
		{"missing resource", "sidecar", "kustomization.yaml", "  - pvc.yaml\n", "  - pvc.yaml\n  - missing.yaml\n", `resource "missing.yaml"`},
		{"unlisted manifest", "sidecar", "kustomization.yaml", "  - pvc.yaml\n", "", "pvc.yaml is not listed"},
		{"kustomization field", "cluster", "kustomization.yaml", "images:", "imagez:", `unknown field "imagez"`},
		// Cross checks: what Kubernetes accepts but would not work.
		{"probe port", "sidecar", "deployment.yaml", "containerPort: 8470", "containerPort: 8480", "port http is 8480, http_addr"},
		{"http_addr", "cluster", "configmap.yaml", "http_addr: 0.0.0.0:8470", "http_addr: 0.0.0.0:9000", "listens on 9000"},
		{"loopback http_addr", "sidecar", "configmap.yaml", "http_addr: 0.0.0.0:8470", "http_addr: 127.0.0.1:8470", "is loopback"},
		{"liveness on readyz", "sidecar", "deployment.yaml", "path: /healthz", "path: /readyz", "livenessProbe /readyz"},
		{"startup before ready", "cluster", "app.yaml", "startupProbe:\n            httpGet:\n              path: /readyz", "startupProbe:\n            httpGet:\n              path: /healthz", "the app must start only once the sidecar is ready"},
		{"not native", "sidecar", "deployment.yaml", "          restartPolicy: Always\n", "", "is not a native sidecar"},
		{"selector", "sidecar", "deployment.yaml", "    matchLabels:\n      app.kubernetes.io/name: pageviews", "    matchLabels:\n      app.kubernetes.io/name: pageview", "does not match the pod template"},
		{"service selector", "cluster", "services.yaml", "    app.kubernetes.io/component: journal\n  ports:\n    - name: http\n      port: 8470\n      targetPort: http\n    - name: raft", "    app.kubernetes.io/component: jornal\n  ports:\n    - name: http\n      port: 8470\n      targetPort: http\n    - name: raft", "matches no pod template"},
		{"service port", "cluster", "services.yaml", "targetPort: raft", "targetPort: rafts", "no container declares port rafts"},
		{"socket path in app", "sidecar", "deployment.yaml", "            - name: socket\n              mountPath: /run/txsink\n            - name: token", "            - name: socket\n              mountPath: /run/sock\n            - name: token", "cannot reach the socket"},
		{"socket flag in app", "cluster", "app.yaml", "- unix:///run/txsink/sidecar.sock", "- unix:///run/txsink/txsink.sock", "the sidecar's socket is /run/txsink/sidecar.sock"},
		{"socket not shared", "sidecar", "configmap.yaml", "socket: /run/txsink/sidecar.sock", "socket: /var/lib/txsink/sidecar.sock", "want an emptyDir shared with the app"},
		{"image name", "cluster", "statefulset.yaml", "image: txsink:dev", "image: tx-sink:dev", "no container runs the txsink image"},
		{"image registry", "cluster", "statefulset.yaml", "image: txsink:dev", "image: registry.example.com/txsink:dev", `make image builds "txsink"`},
		{"image tag", "sidecar", "kustomization.yaml", "newTag: dev", "newTag: v1", `kustomization.yaml sets "v1"`},
		{"token not mounted", "sidecar", "configmap.yaml", "token_file: /run/secrets/txsink-token/token", "token_file: /run/secrets/tok/token", "no volume is mounted at /run/secrets/tok/token"},
		{"token readable by all", "sidecar", "deployment.yaml", "secretName: txsink-token\n            defaultMode: 0440", "secretName: txsink-token\n            defaultMode: 0444", "readable by others"},
		{"dsn in configmap", "sidecar", "configmap.yaml", "dsn_file: /run/secrets/txsink/mysql-dsn", "dsn: root@tcp(127.0.0.1:3306)/db", "put it in a Secret"},
		{"test broker", "cluster", "configmap.yaml", `brokers: ["kafka-bootstrap.kafka.svc:9092"]`, `brokers: ["127.0.0.1:9092"]`, "is not an address of your cluster"},
		{"app reads other kafka", "sidecar", "configmap.yaml", "kafka_brokers: kafka-bootstrap.kafka.svc:9092", "kafka_brokers: kafka:9092", "KAFKA_BROKERS is"},
		{"root", "sidecar", "deployment.yaml", "runAsUser: 10001", "runAsUser: 0", "runs as root"},
		{"writable root", "cluster", "statefulset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem is not true"},
		{"capabilities", "cluster", "app.yaml", `drop: ["ALL"]`, `drop: ["NET_RAW"]`, "must drop ALL"},
		{"no memory limit", "sidecar", "deployment.yaml", "            limits:\n              memory: 512Mi\n", "", "memory limit"},
		{"short grace", "sidecar", "deployment.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30"},
		{"rolling single node", "sidecar", "deployment.yaml", "type: Recreate", "type: RollingUpdate", "use Recreate"},
		{"emptyDir journal", "sidecar", "deployment.yaml", "          persistentVolumeClaim:\n            claimName: pageviews-txsink-data", "          emptyDir: {}", "must outlive the pod"},
		{"ordered start", "cluster", "statefulset.yaml", "podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady", "podManagementPolicy"},
		{"bootstrap expect", "cluster", "statefulset.yaml", "--bootstrap-expect=3", "--bootstrap-expect=2", "is not replicas 3"},
		{"join list", "cluster", "statefulset.yaml", "txsink-2.txsink-peers:8470\n", "txsink-3.txsink-peers:8470\n", "want every voter's stable name"},
		{"not published", "cluster", "services.yaml", "publishNotReadyAddresses: true", "publishNotReadyAddresses: false", "publishNotReadyAddresses"},
		{"pdb", "cluster", "pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2", "must keep a quorum"},
		{"anti-affinity", "cluster", "statefulset.yaml", "topologyKey: kubernetes.io/hostname", "topologyKey: topology.kubernetes.io/zone", "on different nodes"},
		{"app joins a wrong port", "cluster", "app.yaml", "txsink-1.txsink-peers:8470", "txsink-1.txsink-peers:8471", "is not a journal voter's stable name and API port"},
		{"voter app", "cluster", "app.yaml", "- --voter=false", "- --voter=true", "joins as a non-voter"},
		{"undefined env", "cluster", "app.yaml", "--advertise-raft=$(POD_IP):8471", "--advertise-raft=$(MY_IP):8471", "does not define"},
		{"node id", "cluster", "statefulset.yaml", "fieldPath: metadata.name", "fieldPath: metadata.namespace", "want the pod name"},
		{"secret not in README", "cluster", "statefulset.yaml", "name: txsink-cluster-key", "name: txsink-clusterkey", "is not created by"},
		{"boolean apart", "cluster", "app.yaml", "- --voter=false", "- --voter\n            - \"false\"", `"false" is not a flag`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(root, "deploy", "kubernetes", tc.dir)
			dir := filepath.Join(t.TempDir(), tc.dir)
			copyDir(t, src, dir)
			p := filepath.Join(dir, tc.file)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), tc.old) {
				t.Fatalf("the case no longer applies: %s/%s lacks %q", tc.dir, tc.file, tc.old)
			}
			if err := os.WriteFile(p, []byte(strings.Replace(string(b), tc.old, tc.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := Load(dir)
			if err == nil {
				err = Check(s, image, readme)
			}
			if err == nil {
				t.Fatalf("the broken copy passed; want an error with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name the fault %q:\n%v", tc.want, err)
			}
		})
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestParseArgs: the sidecar's flag forms, and the boolean one Go's flag
// package would misread.
func TestParseArgs(t *testing.T) {
	cmd, flags, _, err := parseArgs([]string{"run", "--config", "/etc/x.yaml", "--join=a:1,b:2", "-voter=false", "--insecure-no-token"})
	if err != nil || cmd != "run" || flags["config"] != "/etc/x.yaml" || flags["join"] != "a:1,b:2" || flags["voter"] != "false" || flags["insecure-no-token"] != "true" {
		t.Errorf("parseArgs = %q %v %v", cmd, flags, err)
	}
	for _, bad := range [][]string{{"--config", "x"}, {"run", "--config"}, {"run", "--voter", "false"}, {"run", "--join=a", "--join=b"}} {
		if _, _, _, err := parseArgs(bad); err == nil {
			t.Errorf("parseArgs(%q) accepted", bad)
		}
	}
}
