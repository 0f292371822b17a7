package api_test

import (
	"io/fs"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/txsink/txsink/api"
)

// TestStatusPage: /ui, /ui/ and the page's assets are served on TCP and the
// Unix socket without the token, as the embedded files, with the content
// type and the strict CSP; every /v1 call still needs the token; unknown
// paths under /ui are 404 problems.
func TestStatusPage(t *testing.T) {
	e := newEnv(t, func(c *api.Config) { c.Token = "s3cret" })
	files := map[string]string{
		"/ui":         "ui/index.html",
		"/ui/":        "ui/index.html",
		"/ui/app.js":  "ui/app.js",
		"/ui/app.css": "ui/app.css",
	}
	types := map[string]string{
		"/ui": "text/html; charset=utf-8", "/ui/": "text/html; charset=utf-8",
		"/ui/app.js": "text/javascript; charset=utf-8", "/ui/app.css": "text/css; charset=utf-8",
	}
	for _, tr := range e.ts {
		for path, file := range files {
			t.Run(tr.name+path, func(t *testing.T) {
				want, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				r := tr.do(t, http.MethodGet, path, "")
				if r.status != http.StatusOK {
					t.Fatalf("GET %s: got %s, want 200 without a token", path, r)
				}
				if got := r.header.Get("Content-Type"); got != types[path] {
					t.Errorf("GET %s: Content-Type %q, want %q", path, got, types[path])
				}
				csp := r.header.Get("Content-Security-Policy")
				for _, d := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
					if !strings.Contains(csp, d) {
						t.Errorf("GET %s: Content-Security-Policy %q lacks %q", path, csp, d)
					}
				}
				if strings.Contains(csp, "unsafe-") {
					t.Errorf("GET %s: Content-Security-Policy %q allows unsafe-*", path, csp)
				}
				if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
					t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", path, got)
				}
				if string(r.body) != string(want) {
					t.Errorf("GET %s: body (%d bytes) is not %s (%d bytes)", path, len(r.body), file, len(want))
				}
			})
		}
		for _, path := range []string{"/ui/nope.js", "/ui/app.js/x", "/ui/index.html"} {
			if r := tr.do(t, http.MethodGet, path, ""); r.status == http.StatusOK {
				t.Errorf("%s GET %s: got %s, want no page", tr.name, path, r)
			}
		}
		if r := tr.do(t, http.MethodGet, "/ui/nope.js", ""); r.status != http.StatusNotFound || r.problem(t).Code != api.CodeNotFound {
			t.Errorf("%s GET /ui/nope.js: got %s, want 404 not_found", tr.name, r)
		}
		if r := tr.do(t, http.MethodPost, "/ui", ""); r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s POST /ui: got %s, want 405", tr.name, r)
		}
		// The page's data still needs the token.
		if r := tr.do(t, http.MethodGet, "/v1/jobs", ""); r.status != http.StatusUnauthorized {
			t.Errorf("%s GET /v1/jobs without token: got %s, want 401", tr.name, r)
		}
		if r := tr.do(t, http.MethodGet, "/v1/jobs", "", "Authorization", "Bearer s3cret"); r.status != http.StatusOK {
			t.Errorf("%s GET /v1/jobs with token: got %s, want 200", tr.name, r)
		}
	}
}

// TestStatusPageAssetsSelfContained: the embedded files load nothing from
// elsewhere (the CSP would block it, and the page must work on a closed
// network), use no inline script or style, and never put text into the
// DOM as markup.
func TestStatusPageAssetsSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i)(https?:|wss?:|ftp:|data:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\()`)
	var n int
	err := fs.WalkDir(os.DirFS("ui"), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := os.ReadFile("ui/" + p)
		if err != nil {
			return err
		}
		s := string(b)
		if m := external.FindString(s); m != "" {
			t.Errorf("ui/%s refers to something outside the binary: %q", p, m)
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
			if strings.Contains(s, bad) {
				t.Errorf("ui/%s uses %s: build the DOM with textContent", p, bad)
			}
		}
		if strings.HasSuffix(p, ".html") {
			if m := regexp.MustCompile(`(?i)<script>|<style|\sstyle=|\son[a-z]+=`).FindString(s); m != "" {
				t.Errorf("ui/%s has inline %q, which the CSP blocks", p, m)
			}
			for _, ref := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(s, -1) {
				if ref[1] != "/ui/app.js" && ref[1] != "/ui/app.css" {
					t.Errorf("ui/%s refers to %q, not an embedded asset", p, ref[1])
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("ui/ holds %d files, want 3 (index.html, app.js, app.css): embed and serve any new one", n)
	}
}
