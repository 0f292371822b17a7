package api

import (
	"embed"
	"net/http"
)

// The status page (GET /ui): one HTML file, a script and a style sheet
// embedded in the binary, so the page works on a closed network and no
// third party sees who looks at the sidecar. The page holds no data: it
// loads without the token and asks for it when a /v1 call answers 401, so
// every datum it shows went through the same authorization as any client.

//go:embed ui/index.html ui/app.js ui/app.css
var uiFiles embed.FS

// uiCSP allows only the page's own script, style sheet and /v1 calls: no
// inline script or style (the script builds the DOM with textContent, never
// with markup from data), no frames, no forms posting elsewhere.
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"

// uiAssets maps each served path to its embedded file and content type.
var uiAssets = map[string]struct{ file, contentType string }{
	"/ui":         {"ui/index.html", "text/html; charset=utf-8"},
	"/ui/":        {"ui/index.html", "text/html; charset=utf-8"},
	"/ui/app.js":  {"ui/app.js", "text/javascript; charset=utf-8"},
	"/ui/app.css": {"ui/app.css", "text/css; charset=utf-8"},
}

func (s *Server) ui(w http.ResponseWriter, r *http.Request) error {
	a, ok := uiAssets[r.URL.Path]
	if !ok {
		return &apiErr{Status: http.StatusNotFound, Code: CodeNotFound, Detail: "no such resource: " + r.URL.Path}
	}
	b, err := uiFiles.ReadFile(a.file)
	if err != nil {
		return err // cannot happen: the files are embedded
	}
	h := w.Header()
	h.Set("Content-Type", a.contentType)
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	// The assets change with the binary; a cached copy from an older
	// sidecar could call endpoints this one lacks.
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
	return nil
}
