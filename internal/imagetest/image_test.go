package imagetest

import (
	"archive/tar"
	"context"
	"crypto/x509"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/txsink/txsink/internal/kafkatest"
	"github.com/txsink/txsink/internal/testenv"
)

// The image's user: distroless's "nonroot", so that volumes prepared for
// distroless images fit.
const uid = 65532

// podman is the command the test and `make image` use: the vfs driver
// needs no overlay support, wherever the tests run.
var podman = []string{"podman", "--storage-driver", "vfs"}

// requirePodman fails the test with how to get podman, unless the caller
// opted out of the image test explicitly.
func requirePodman(t *testing.T) {
	t.Helper()
	if os.Getenv("TXSINK_TEST_SKIP_IMAGE") == "1" {
		t.Skip("TXSINK_TEST_SKIP_IMAGE=1: the container image test is skipped on request")
	}
	for _, tool := range []string{"podman", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the container image test needs %s: apt-get install -y %s (or set TXSINK_TEST_SKIP_IMAGE=1 to skip it): %v",
				tool, tool, err)
		}
	}
}

// run runs a command and returns its standard output; a failure ends the
// test with the command's output.
func run(ctx context.Context, t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

// inspected is the part of `podman image inspect` the test checks.
type inspected struct {
	RepoTags []string
	Config   struct {
		User         string
		Entrypoint   []string
		Cmd          []string
		Labels       map[string]string
		Volumes      map[string]struct{}
		ExposedPorts map[string]struct{}
	}
}

func TestImage(t *testing.T) {
	requirePodman(t)
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Dockerfile.prebuilt")); err != nil {
		t.Fatalf("repository root %s has no Dockerfile.prebuilt: %v", root, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// A name of its own: parallel runs and the user's images stay apart.
	name := fmt.Sprintf("localhost/txsink-imagetest-%d-%d", os.Getpid(), time.Now().UnixNano())
	version := fmt.Sprintf("v0.0.0-imagetest.%d", time.Now().Unix())
	revision := "0123456789abcdef0123456789abcdef01234567"
	tag := name + ":" + version
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rmi := exec.CommandContext(ctx, podman[0], append(podman[1:], "rmi", "--force", tag)...)
		if out, err := rmi.CombinedOutput(); err != nil {
			t.Errorf("removing image %s: %v\n%s", tag, err, out)
		}
	})
	run(ctx, t, root, "make", "image", "IMAGE_TOOL=podman", "IMAGE_NAME="+name, "VERSION="+version,
		"REVISION="+revision, "BIN="+t.TempDir())

	t.Run("config", func(t *testing.T) {
		var imgs []inspected
		out := run(ctx, t, root, append(podman, "image", "inspect", tag)...)
		if err := json.Unmarshal(out, &imgs); err != nil || len(imgs) != 1 {
			t.Fatalf("image inspect: got %d images (%v), want 1:\n%s", len(imgs), err, out)
		}
		img := imgs[0]
		if !slices.Contains(img.RepoTags, tag) {
			t.Errorf("tags: got %v, want %s among them", img.RepoTags, tag)
		}
		c := img.Config
		if want := fmt.Sprintf("%d:%d", uid, uid); c.User != want {
			t.Errorf("user: got %q, want %q", c.User, want)
		}
		if want := []string{"/sidecar"}; !slices.Equal(c.Entrypoint, want) {
			t.Errorf("entrypoint: got %q, want %q", c.Entrypoint, want)
		}
		if want := []string{"run", "--config", "/etc/txsink/txsink.yaml"}; !slices.Equal(c.Cmd, want) {
			t.Errorf("cmd: got %q, want %q", c.Cmd, want)
		}
		if _, ok := c.Volumes["/var/lib/txsink"]; !ok {
			t.Errorf("volumes: got %v, want /var/lib/txsink", c.Volumes)
		}
		for _, p := range []string{"8470/tcp", "8471/tcp"} {
			if _, ok := c.ExposedPorts[p]; !ok {
				t.Errorf("exposed ports: got %v, want %s among them", c.ExposedPorts, p)
			}
		}
		for _, l := range []struct{ key, want string }{
			{"org.opencontainers.image.title", "txsink"},
			{"org.opencontainers.image.version", version},
			{"org.opencontainers.image.revision", revision},
			{"org.opencontainers.image.source", "https://github.com/txsink/txsink"},
			{"org.opencontainers.image.licenses", "Apache-2.0"},
		} {
			if got := c.Labels[l.key]; got != l.want {
				t.Errorf("label %s: got %q, want %q", l.key, got, l.want)
			}
		}
	})

	// Not t.TempDir: the sidecar's Unix socket under it must stay within
	// the ~100 bytes a socket path may have.
	tmp, err := os.MkdirTemp("", "txsink-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	archive := filepath.Join(tmp, "image.tar")
	run(ctx, t, root, append(podman, "save", "--quiet", "--format", "docker-archive", "-o", archive, tag)...)
	rootfs := filepath.Join(tmp, "rootfs")
	hdrs := extractImage(t, archive, filepath.Join(tmp, "archive"), rootfs)

	t.Run("files", func(t *testing.T) {
		for _, f := range []struct {
			name     string
			typ      byte
			mode     int64 // permission and sticky bits
			uid, gid int
		}{
			// Root's and read-only for the sidecar's user: a compromised
			// process cannot replace its own binary.
			{"sidecar", tar.TypeReg, 0o755, 0, 0},
			{"etc/passwd", tar.TypeReg, 0o644, 0, 0},
			{"etc/group", tar.TypeReg, 0o644, 0, 0},
			{"etc/ssl/certs/ca-certificates.crt", tar.TypeReg, 0o644, 0, 0},
			{"tmp", tar.TypeDir, 0o1777, 0, 0},
			{"var", tar.TypeDir, 0o755, 0, 0},
			{"var/lib", tar.TypeDir, 0o755, 0, 0},
			{"var/lib/txsink", tar.TypeDir, 0o755, uid, uid},
		} {
			h, ok := hdrs[f.name]
			if !ok {
				t.Errorf("%s: missing from the image", f.name)
				continue
			}
			if h.Typeflag != f.typ || h.Mode&0o7777 != f.mode || h.Uid != f.uid || h.Gid != f.gid {
				t.Errorf("%s: got type %q mode %#o owner %d:%d, want type %q mode %#o owner %d:%d",
					f.name, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, f.typ, f.mode, f.uid, f.gid)
			}
		}
		passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("nonroot:x:%d:%d:", uid, uid); !strings.Contains(string(passwd), want) {
			t.Errorf("etc/passwd: got %q, want a line starting %q", passwd, want)
		}
		pem, err := os.ReadFile(filepath.Join(rootfs, "etc", "ssl", "certs", "ca-certificates.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			t.Errorf("etc/ssl/certs/ca-certificates.crt: no certificate in %d bytes", len(pem))
		}
	})

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(filepath.Join(rootfs, "sidecar"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("sidecar has a %v program header: it is not a static binary", p.Type)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("sidecar needs shared libraries %v, want none", libs)
		}
	})

	t.Run("version", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, filepath.Join(rootfs, "sidecar"), "version")
		cmd.Env = []string{}
		how := "directly"
		if os.Geteuid() == 0 {
			// Inside the image's root filesystem, which has no libc and no
			// loader, as the image's user: what a container runtime does.
			cmd.Path = "/sidecar"
			cmd.Dir = "/var/lib/txsink"
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs,
				Credential: &syscall.Credential{Uid: uid, Gid: uid}}
			how = fmt.Sprintf("chrooted into the image's root filesystem as uid %d", uid)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sidecar version (%s): %v\n%s", how, err, out)
		}
		if got, want := strings.TrimSpace(string(out)), "txsink "+version; got != want {
			t.Errorf("sidecar version (%s): got %q, want %q", how, got, want)
		}
	})

	t.Run("run", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Fatal("running the sidecar chrooted into the image's root filesystem needs root: run the tests as root, " +
				"or set TXSINK_TEST_SKIP_IMAGE=1 to skip the image test")
		}
		runSidecar(ctx, t, rootfs)
	})
}

// runSidecar starts `sidecar run` chrooted into rootfs as the image's user,
// with a config at the image's default path and a Kafka sink on an
// in-process kfake; it proves the sidecar starts from the image alone,
// writes its journal into the data volume and answers on its Unix socket
// there, then stops cleanly on SIGTERM.
func runSidecar(ctx context.Context, t *testing.T, rootfs string) {
	broker := kafkatest.NewCluster(t)
	conf := fmt.Sprintf(`node_id: node1
data_dir: /var/lib/txsink
http_addr: 127.0.0.1:0
raft_addr: 127.0.0.1:0
sink_wait: 10s
sinks:
  events:
    kind: kafka
    brokers: [%q]
    default_topic: events
jobs:
  demo:
    commit: auto
    sinks: [events]
`, kafkatest.Addr(broker))
	if err := os.MkdirAll(filepath.Join(rootfs, "etc", "txsink"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "txsink", "txsink.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The image's entrypoint and default command, in its working dir.
	cmd := exec.Command("/sidecar", "run", "--config", "/etc/txsink/txsink.yaml")
	cmd.Env = []string{}
	cmd.Dir = "/var/lib/txsink"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs, Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out testenv.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
	})

	sock := filepath.Join(rootfs, "var", "lib", "txsink", "sidecar.sock")
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	// Poll readiness: the journal and the sink come up within seconds.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get("http://unix/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-done:
			exited = true
			t.Fatalf("sidecar exited before it was ready: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready after 30s (last: %v)\n%s", err, out.String())
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}

	resp, err := hc.Post("http://unix/v1/jobs/demo/writers/0/session", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var session struct{ Epoch int64 }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &session) != nil || session.Epoch != 1 {
		t.Errorf("open session: got %d %s, want 200 with epoch 1", resp.StatusCode, body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Errorf("sidecar after SIGTERM: got %v, want exit 0\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("sidecar still running 30s after SIGTERM\n%s", out.String())
	}
	// The journal is in the volume and belongs to the image's user.
	fi, err := os.Stat(filepath.Join(rootfs, "var", "lib", "txsink", "raft", "raft.db"))
	if err != nil {
		t.Fatalf("journal in the data volume: %v\n%s", err, out.String())
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid {
		t.Errorf("raft.db owner: got uid %d, want %d", st.Uid, uid)
	}
}

// extractImage unpacks a docker-archive (`podman save --format
// docker-archive`) into dir and applies its layers in order to rootfs. It
// returns the last tar header of every path of the root filesystem (its
// owner and mode as the image has them; the files on disk belong to the
// test's user).
func extractImage(t *testing.T, archive, dir, rootfs string) map[string]*tar.Header {
	t.Helper()
	links := map[string]string{} // the archive's symlinks (layer.tar -> ../<digest>.tar)
	err := readTar(archive, func(h *tar.Header, r io.Reader) error {
		switch h.Typeflag {
		case tar.TypeDir:
			return os.MkdirAll(filepath.Join(dir, h.Name), 0o755)
		case tar.TypeSymlink:
			links[path.Clean(h.Name)] = path.Join(path.Dir(h.Name), h.Linkname)
			return nil
		case tar.TypeReg:
			return writeFile(filepath.Join(dir, h.Name), r, 0o644)
		}
		return fmt.Errorf("unexpected entry type %q", h.Typeflag)
	})
	if err != nil {
		t.Fatalf("reading %s: %v", archive, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(b, &manifest); err != nil || len(manifest) != 1 || len(manifest[0].Layers) == 0 {
		t.Fatalf("manifest.json: want one image with layers (%v):\n%s", err, b)
	}
	hdrs := map[string]*tar.Header{}
	for _, layer := range manifest[0].Layers {
		layer = path.Clean(layer)
		if target, ok := links[layer]; ok {
			layer = target
		}
		err := readTar(filepath.Join(dir, layer), func(h *tar.Header, r io.Reader) error {
			name := path.Clean(strings.TrimPrefix(h.Name, "./"))
			if name == "." {
				return nil
			}
			if strings.HasPrefix(path.Base(name), ".wh.") {
				return fmt.Errorf("whiteout %s: an image built from scratch has nothing to delete", name)
			}
			p := filepath.Join(rootfs, filepath.FromSlash(name))
			hdrs[name] = h
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(p, 0o755); err != nil {
					return err
				}
			case tar.TypeReg:
				if err := writeFile(p, r, os.FileMode(h.Mode&0o755)); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%s: unexpected entry type %q", name, h.Typeflag)
			}
			if os.Geteuid() != 0 {
				return nil
			}
			// As root, owners and modes as a container runtime sets them,
			// so that the sidecar run as the image's user meets the same
			// permissions.
			if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
				return err
			}
			return os.Chmod(p, h.FileInfo().Mode()&(os.ModePerm|os.ModeSticky|os.ModeSetuid|os.ModeSetgid))
		})
		if err != nil {
			t.Fatalf("layer %s: %v", layer, err)
		}
	}
	return hdrs
}

// readTar calls fn for each entry of a tar file, refusing names that leave
// the folder it is extracted to.
func readTar(file string, fn func(*tar.Header, io.Reader) error) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if !filepath.IsLocal(h.Name) {
			return fmt.Errorf("entry %q leaves the extraction folder", h.Name)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// writeFile writes r to a new file p with mode perm.
func writeFile(p string, r io.Reader, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
